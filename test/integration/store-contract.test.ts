/**
 * One contract, two stores: every Store operation, run against the EmbeddedStore (temp dir) and the
 * RedisStore (real Redis on 127.0.0.1:6379, a unique key prefix per run, keys deleted afterwards).
 * Both must accept, refuse and answer exactly alike. Time moves through the harness: the embedded
 * store runs on a frozen test clock that expiry tests step forward; Redis keeps its own clock, so there
 * they wait the same few hundred ms in real time.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/log.js';
import { leafHash, rootFromLeaves } from '../../src/audit/merkle.js';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { CA_STATE_KEY, CA_STATE_SPACE, CaRotation, rootIssuer, type AuthorityMaterial, type CaRotationOptions } from '../../src/ca/rotation.js';
import { issuerFromPem, mintCa } from '../../src/ca/x509.js';
import { BrokerError } from '../../src/errors.js';
import { KeyRing, kekIdOf } from '../../src/secrets/envelope.js';
import { EmbeddedStore } from '../../src/store/embedded.js';
import { RedisStore } from '../../src/store/redis.js';
import type { Store } from '../../src/store/store.js';
import { TestClock } from '../helpers/clock.js';
import { SHARED_REDIS_URL, deletePrefix, redisRequiredUnderCi, sharedRedis, uniquePrefix } from '../helpers/redis.js';

const redis = await sharedRedis();

async function expectBroker(p: Promise<unknown>, code: string, status: number): Promise<void> {
  const err = await p.then(
    () => new Error('expected a rejection'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BrokerError);
  expect((err as BrokerError).code).toBe(code);
  expect((err as BrokerError).status).toBe(status);
}

/** A root, and a first signing CA in the middle of its life (its next is due at once). */
function caMaterial(now: number): { rootPem: string; rootKeyPem: string; initial: AuthorityMaterial } {
  const pem = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();
  const rk = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const rootPem = mintCa(
    { commonName: 'R', trustDomain: 'example.org', subjectPublicKey: rk.publicKey, notBefore: new Date(now - 86_400_000), notAfter: new Date(now + 86_400_000), pathLen: 1 },
    { selfSignedKey: rk.privateKey },
  ).pem;
  const ik = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const cert = mintCa(
    { commonName: 'I', trustDomain: 'example.org', subjectPublicKey: ik.publicKey, notBefore: new Date(now - 100_000), notAfter: new Date(now + 100_000), pathLen: 0 },
    issuerFromPem(rootPem, pem(rk.privateKey)),
  );
  const jwt = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { rootPem, rootKeyPem: pem(rk.privateKey), initial: { certPem: cert.pem, intermediatesPem: '', key: { pem: pem(ik.privateKey) }, jwtKey: { pem: pem(jwt.privateKey) } } };
}

const RING = KeyRing.of({ id: kekIdOf(Buffer.alloc(32, 7)), key: Buffer.alloc(32, 7) });

function rotationOptions(store: Store, clock: { now(): number }, owner: string, rootPem: string, rootKeyPem: string): CaRotationOptions {
  return {
    store,
    clock,
    ring: RING,
    rootsPem: rootPem,
    root: rootIssuer(rootPem, rootKeyPem),
    trustDomain: 'example.org',
    caTtlMs: 200_000,
    pollIntervalMs: 60_000,
    limits: { maxX509TtlMs: 5000, maxJwtTtlMs: 30_000 },
    owner,
    refreshHintSeconds: 300,
    onChange: () => {},
    onError: (err) => {
      throw err;
    },
  };
}

const entry = (i: number): Buffer => Buffer.from(JSON.stringify({ i, type: 'x509', pad: 'é'.repeat(i % 7) }));

interface Harness {
  store: Store;
  /** The store's notion of now (absolute expiries are computed from it). */
  now(): number;
  /** Lets `ms` pass for the store. */
  elapse(ms: number): Promise<void>;
  /** Closes the store and removes what it wrote. */
  dispose(): Promise<void>;
}

function contract(label: string, open: () => Promise<Harness>): void {
  describe(`Store contract: ${label}`, () => {
    let h: Harness;
    let s: Store;
    const now = (): number => h.now();
    const elapse = (ms: number): Promise<void> => h.elapse(ms);
    beforeEach(async () => {
      h = await open();
      s = h.store;
    });
    afterEach(async () => {
      await h.dispose();
    });

    it('audit: concurrent appends get contiguous unique indexes, reads return the same bytes in order', async () => {
      expect(await s.auditSize()).toBe(0);
      const idx = await Promise.all(Array.from({ length: 200 }, (_, i) => s.appendAuditEntries([entry(i)])));
      expect([...idx].sort((a, b) => a - b)).toEqual(Array.from({ length: 200 }, (_, i) => i));
      expect(await s.auditSize()).toBe(200);
      const got = await s.readAuditEntries(0, 200);
      // Each entry sits at the index its append returned.
      idx.forEach((at, i) => expect(got[at]?.equals(entry(i))).toBe(true));
      expect(await s.readAuditEntries(10, 10)).toEqual([]);
      expect((await s.readAuditEntries(199, 200))[0]?.equals(got[199] as Buffer)).toBe(true);
    });

    it('audit: a multi-entry append is contiguous and returns its first index', async () => {
      await s.appendAuditEntries([entry(0)]);
      const first = await s.appendAuditEntries([entry(1), entry(2), entry(3)]);
      expect(first).toBe(1);
      const got = await s.readAuditEntries(0, 4);
      expect(got.map((b) => JSON.parse(b.toString()).i)).toEqual([0, 1, 2, 3]);
    });

    it('audit: refuses bad ranges and bad entries with 400', async () => {
      await s.appendAuditEntries([entry(0), entry(1)]);
      await expectBroker(s.readAuditEntries(0, 3), 'bad_request', 400);
      await expectBroker(s.readAuditEntries(2, 1), 'bad_request', 400);
      await expectBroker(s.readAuditEntries(-1, 1), 'bad_request', 400);
      await expectBroker(s.appendAuditEntries([Buffer.alloc((1 << 20) + 1)]), 'bad_request', 400);
      expect(await s.auditSize()).toBe(2);
    });

    it('audit: an AuditLog on this store rebuilds the same root', async () => {
      const log = await AuditLog.open(s);
      const receipts = [];
      for (let i = 0; i < 20; i++) {
        receipts.push(
          await log.append({
            ts: 1_700_000_000_000 + i, type: 'x509-svid.issued', decision: 'allow', actor: null,
            subject: 'spiffe://example.org/ns/shop/sa/web', serial: `0${i}`, requestId: `r${i}`, replica: 'contract',
          }),
        );
      }
      const again = await AuditLog.open(s);
      expect(again.size).toBe(20);
      expect(again.root().equals(log.root())).toBe(true);
      const leaves = (await s.readAuditEntries(0, 20)).map((e) => leafHash(e));
      expect(rootFromLeaves(leaves).equals(log.root())).toBe(true);
      expect(receipts[19]?.treeSize).toBe(20);
    });

    it('checkpoints: append and list in order; empty notes refused', async () => {
      expect(await s.listCheckpoints()).toEqual([]);
      await s.appendCheckpoint('tessera/log\n1\nabc=\n\n— sig\n');
      await s.appendCheckpoint('second ✓');
      expect(await s.listCheckpoints()).toEqual(['tessera/log\n1\nabc=\n\n— sig\n', 'second ✓']);
      await expectBroker(s.appendCheckpoint(''), 'bad_request', 400);
    });

    it('appendCheckpointIfNewer: stores only a larger size (or the same size, other bytes); concurrent signers leave a list that never shrinks', async () => {
      const note = (n: number, sig = 'a'): string => `example.org/log\n${n}\nroot${n}=\n\n— example.org/log ${sig}\n`;
      // Never a checkpoint beyond the stored entries.
      await expectBroker(s.appendCheckpointIfNewer(note(3), 3), 'audit_history_lost', 503);
      await s.appendAuditEntries(Array.from({ length: 11 }, (_, i) => Buffer.from(`{"i":${i}}`)));
      expect(await s.listCheckpoints()).toEqual([]);
      expect(await s.appendCheckpointIfNewer(note(3), 3)).toBeUndefined();
      expect(await s.appendCheckpointIfNewer(note(2), 2)).toBe(note(3));
      expect(await s.appendCheckpointIfNewer(note(3), 3)).toBe(note(3));
      expect(await s.appendCheckpointIfNewer(note(3, 'other key'), 3)).toBeUndefined();
      const results = await Promise.all([7, 5, 9, 6, 8].map((n) => s.appendCheckpointIfNewer(note(n), n)));
      const sizes = (await s.listCheckpoints()).map((n) => Number(n.split('\n')[1]));
      expect(sizes).toEqual([...sizes].sort((a, b) => a - b));
      expect(sizes[sizes.length - 1]).toBe(9);
      // Every refused signer was handed a stored note at least as large as its own.
      for (const [i, n] of [7, 5, 9, 6, 8].entries()) {
        const r = results[i];
        if (r !== undefined) expect(Number(r.split('\n')[1])).toBeGreaterThanOrEqual(n);
      }
      await expectBroker(s.appendCheckpointIfNewer('', 1), 'bad_request', 400);
      await expectBroker(s.appendCheckpointIfNewer(note(10), -1), 'bad_request', 400);
      // A newest note without a size is never silently outranked.
      await s.appendCheckpoint('no size here');
      await expectBroker(s.appendCheckpointIfNewer(note(11), 11), 'store_unavailable', 503);
    });

    it('appendAuditEntriesUnless: appends only while none of the records exists; otherwise appends nothing and returns their values', async () => {
      const unless = [
        { space: 'revocation', key: 'spiffeId:spiffe://example.org/ns/shop/sa/web' },
        { space: 'freeze', key: 'global' },
      ];
      expect(await s.appendAuditEntriesUnless([Buffer.from('{"a":1}')], unless)).toEqual({ index: 0 });
      await s.kvPut('freeze', 'global', 'frozen');
      expect(await s.appendAuditEntriesUnless([Buffer.from('{"a":2}')], unless)).toEqual({ blocked: [undefined, 'frozen'] });
      expect(await s.auditSize()).toBe(1);
      await s.kvDelete('freeze', 'global');
      expect(await s.appendAuditEntriesUnless([Buffer.from('{"a":3}'), Buffer.from('{"a":4}')], unless)).toEqual({ index: 1 });
      expect((await s.readAuditEntries(0, 3)).map(String)).toEqual(['{"a":1}', '{"a":3}', '{"a":4}']);
      await expectBroker(s.appendAuditEntriesUnless([], unless), 'bad_request', 400);
      await expectBroker(s.appendAuditEntriesUnless([Buffer.from('{}')], [{ space: 'Bad', key: 'k' }]), 'bad_request', 400);
    });

    it('kvGetMany: values in the order asked, undefined for missing or expired records, across spaces', async () => {
      await s.kvPut('revocation', 'spiffeId:a', 'ra');
      await s.kvPut('freeze', 'global', 'fg');
      await s.kvPut('freeze', 'ns:x', 'short', now() + 150);
      expect(
        await s.kvGetMany([
          { space: 'freeze', key: 'global' },
          { space: 'revocation', key: 'missing' },
          { space: 'revocation', key: 'spiffeId:a' },
          { space: 'freeze', key: 'ns:x' },
        ]),
      ).toEqual(['fg', undefined, 'ra', 'short']);
      await elapse(250);
      expect(await s.kvGetMany([{ space: 'freeze', key: 'ns:x' }])).toEqual([undefined]);
      expect(await s.kvGetMany([])).toEqual([]);
      await expectBroker(s.kvGetMany([{ space: 'Bad Space', key: 'k' }]), 'bad_request', 400);
    });

    it('consumeOnce: exactly one concurrent caller wins; expiry frees the key; past expiry is refused', async () => {
      const t = now();
      const results = await Promise.all(Array.from({ length: 40 }, () => s.consumeOnce('jti-1', t + 60_000)));
      expect(results.filter(Boolean)).toHaveLength(1);
      expect(await s.consumeOnce('jti-2', t + 60_000)).toBe(true);
      expect(await s.consumeOnce('jti-1', t + 60_000)).toBe(false);
      expect(await s.consumeOnce('short', now() + 150)).toBe(true);
      expect(await s.consumeOnce('short', now() + 150)).toBe(false);
      await elapse(250);
      expect(await s.consumeOnce('short', now() + 1000)).toBe(true);
      expect(await s.consumeOnce('old', now() - 1)).toBe(false);
      await expectBroker(s.consumeOnce('', t + 1000), 'bad_request', 400);
      await expectBroker(s.consumeOnce('k', 1.5), 'bad_request', 400);
    });

    it('kv: put, overwrite, get, list, delete; spaces are separate', async () => {
      await s.kvPut('revocation', 'serial-1', 'why=compromised');
      await s.kvPut('revocation', 'serial:2', 'v1');
      await s.kvPut('revocation', 'serial:2', 'v2 ✓');
      await s.kvPut('lease', 'serial-1', 'other space');
      expect(await s.kvGet('revocation', 'serial:2')).toBe('v2 ✓');
      expect(await s.kvGet('revocation', 'missing')).toBeUndefined();
      expect(await s.kvGet('freeze', 'serial-1')).toBeUndefined();
      const sorted = (l: { key: string; value: string }[]) => [...l].sort((a, b) => a.key.localeCompare(b.key));
      expect(sorted(await s.kvList('revocation'))).toEqual([
        { key: 'serial-1', value: 'why=compromised' },
        { key: 'serial:2', value: 'v2 ✓' },
      ]);
      expect(await s.kvDelete('revocation', 'serial-1')).toBe(true);
      expect(await s.kvDelete('revocation', 'serial-1')).toBe(false);
      expect(await s.kvDelete('revocation', 'never')).toBe(false);
      expect(await s.kvList('revocation')).toEqual([{ key: 'serial:2', value: 'v2 ✓' }]);
      expect(await s.kvList('lease')).toEqual([{ key: 'serial-1', value: 'other space' }]);
      expect(await s.kvList('empty')).toEqual([]);
    });

    it('kv: records expire at expiresAtMs (get, list and delete stop seeing them); a later put without expiry keeps it', async () => {
      await s.kvPut('lease', 'a', 'short', now() + 200);
      await s.kvPut('lease', 'b', 'long', now() + 60_000);
      await s.kvPut('lease', 'c', 'was short', now() + 200);
      await s.kvPut('lease', 'c', 'now forever');
      expect(await s.kvGet('lease', 'a')).toBe('short');
      await elapse(300);
      expect(await s.kvGet('lease', 'a')).toBeUndefined();
      expect(await s.kvDelete('lease', 'a')).toBe(false);
      expect([...(await s.kvList('lease'))].sort((x, y) => x.key.localeCompare(y.key))).toEqual([
        { key: 'b', value: 'long' },
        { key: 'c', value: 'now forever' },
      ]);
      await s.kvPut('lease', 'd', 'already over', now() - 10);
      expect(await s.kvGet('lease', 'd')).toBeUndefined();
    });

    it('kv: refuses bad arguments with 400', async () => {
      await expectBroker(s.kvPut('Bad Space', 'k', 'v'), 'bad_request', 400);
      await expectBroker(s.kvPut('a:b', 'k', 'v'), 'bad_request', 400);
      await expectBroker(s.kvPut('ok', '', 'v'), 'bad_request', 400);
      await expectBroker(s.kvPut('ok', 'k'.repeat(1025), 'v'), 'bad_request', 400);
      await expectBroker(s.kvPut('ok', 'k', 'x'.repeat(256 * 1024 + 1)), 'bad_request', 400);
      await expectBroker(s.kvPut('ok', 'k', '\uD800'), 'bad_request', 400);
      await expectBroker(s.kvPut('ok', 'k', 'v', 1.5), 'bad_request', 400);
      await expectBroker(s.kvGet('ok', ''), 'bad_request', 400);
      await expectBroker(s.kvDelete('', 'k'), 'bad_request', 400);
      await expectBroker(s.kvList('a/b'), 'bad_request', 400);
      expect(await s.kvList('ok')).toEqual([]);
    });

    it('hit: counts every concurrent hit exactly once per window and key, then a new window starts', async () => {
      const first = await s.hit('rate:shop/web', 400);
      expect(first.count).toBe(1);
      expect(first.resetInMs).toBeGreaterThan(300);
      expect(first.resetInMs).toBeLessThanOrEqual(400);
      const many = await Promise.all(Array.from({ length: 30 }, () => s.hit('rate:shop/web', 400)));
      expect(many.map((r) => r.count).sort((a, b) => a - b)).toEqual(Array.from({ length: 30 }, (_, i) => i + 2));
      expect((await s.hit('rate:other', 400)).count).toBe(1);
      expect((await s.hit('rate:shop/web', 10_000)).count).toBe(1); // another window length is another counter
      await elapse(450);
      expect((await s.hit('rate:shop/web', 400)).count).toBe(1);
      await expectBroker(s.hit('k', 0), 'bad_request', 400);
      await expectBroker(s.hit('', 1000), 'bad_request', 400);
    });

    it('tryLock/unlock: one holder, renewal by the holder, compare-and-delete unlock, expiry', async () => {
      expect(await s.tryLock('checkpoint', 'replica-a', 300)).toBe(true);
      expect(await s.tryLock('checkpoint', 'replica-b', 300)).toBe(false);
      expect(await s.tryLock('checkpoint', 'replica-a', 300)).toBe(true);
      await s.unlock('checkpoint', 'replica-b'); // not the owner: nothing happens
      expect(await s.tryLock('checkpoint', 'replica-b', 300)).toBe(false);
      await s.unlock('checkpoint', 'replica-a');
      expect(await s.tryLock('checkpoint', 'replica-b', 300)).toBe(true);
      await elapse(400);
      expect(await s.tryLock('checkpoint', 'replica-a', 300)).toBe(true); // b's lease ran out
      const race = await Promise.all(Array.from({ length: 20 }, (_, i) => s.tryLock('sweep', `r${i}`, 5000)));
      expect(race.filter(Boolean)).toHaveLength(1);
      await expectBroker(s.tryLock('x', 'a', 0), 'bad_request', 400);
      await expectBroker(s.tryLock('', 'a', 10), 'bad_request', 400);
      await expectBroker(s.unlock('x', ''), 'bad_request', 400);
    });

    it('CA rotation state: replicas starting together agree on one state; a step one writes is what the other reads', async () => {
      const material = caMaterial(now());
      const replica = (owner: string) => CaRotation.open(rotationOptions(s, { now }, owner, material.rootPem, material.rootKeyPem), material.initial);
      const [a, b] = await Promise.all([replica('a'), replica('b')]);
      expect(b.current().state).toEqual(a.current().state);
      expect(a.current().state.sequence).toBe(1);
      // The first CA is half-way through its life: one tick prepares the next; both tick, one writes.
      await Promise.all([a.tick(), b.tick()]);
      await Promise.all([a.tick(), b.tick()]);
      expect(a.current().state.sequence).toBe(2);
      expect(b.current().state).toEqual(a.current().state);
      expect(JSON.parse((await s.kvGet(CA_STATE_SPACE, CA_STATE_KEY)) ?? '{}')).toEqual(a.current().state);
      await a.close();
      await b.close();
    });

    it('audit cursors: 0 until set, only move forward (concurrent advances keep the max), per device, bad input 400', async () => {
      expect(await s.auditCursor('siem')).toBe(0);
      expect(await s.advanceAuditCursor('siem', 5)).toBe(5);
      expect(await s.advanceAuditCursor('siem', 3)).toBe(5); // never back
      expect(await s.auditCursor('siem')).toBe(5);
      const all = await Promise.all([9, 7, 12, 8, 11].map((n) => s.advanceAuditCursor('siem', n)));
      for (const n of all) expect(n).toBeGreaterThanOrEqual(7);
      expect(await s.auditCursor('siem')).toBe(12);
      expect(await s.auditCursor('local')).toBe(0); // another device
      expect(await s.advanceAuditCursor('local', 0)).toBe(0);
      // Not a kv record a caller can see or overwrite.
      expect(await s.kvList('audit-cursor')).toEqual([]);
      await expectBroker(s.advanceAuditCursor('siem', -1), 'bad_request', 400);
      await expectBroker(s.advanceAuditCursor('siem', 1.5), 'bad_request', 400);
      await expectBroker(s.advanceAuditCursor('bad name', 1), 'bad_request', 400);
      await expectBroker(s.auditCursor(''), 'bad_request', 400);
      expect(await s.auditCursor('siem')).toBe(12);
    });

    it('checkWritable resolves while healthy; every operation on a closed store is a 503', async () => {
      await s.checkWritable();
      await s.close();
      await expectBroker(s.checkWritable(), 'store_unavailable', 503);
      await expectBroker(s.kvPut('a', 'b', 'c'), 'store_unavailable', 503);
      await expectBroker(s.appendAuditEntries([entry(0)]), 'audit_unavailable', 503);
      await expectBroker(s.advanceAuditCursor('siem', 1), 'store_unavailable', 503);
    });
  });
}

const tempDirs: string[] = [];
afterAll(() => {
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
});

contract('embedded', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-contract-'));
  tempDirs.push(dir);
  const clock = TestClock.frozen();
  const store = await EmbeddedStore.open(path.join(dir, 'data'), { fsync: false, clock });
  return {
    store,
    now: () => clock.now(),
    elapse: async (ms) => clock.advance(ms),
    dispose: () => store.close(),
  };
});

describe.skipIf(!redis.ok)('Redis-backed contract', () => {
  contract('redis', async () => {
    const prefix = uniquePrefix('contract');
    const store = await RedisStore.connect({ url: SHARED_REDIS_URL, prefix });
    return {
      store,
      now: Date.now,
      // Expiry is Redis's own (PX, PXAT): only real time moves it.
      elapse: (ms) => new Promise((r) => setTimeout(r, ms)),
      dispose: async () => {
        await store.close();
        await deletePrefix(prefix);
      },
    };
  });
});

describe('Redis availability for the Redis contract', () => {
  redisRequiredUnderCi(redis);
});
