/**
 * IpcStore ↔ serveStore against a real EmbeddedStore, over a real IPC channel: a forked relay process
 * (advanced serialization, as node:cluster uses) echoes every message back, so requests and results
 * both cross the same serialization a cluster worker's do.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../audit/log.js';
import { leafHash } from '../audit/merkle.js';
import { BrokerError } from '../errors.js';
import { EmbeddedStore } from './embedded.js';
import { AuditLeafHashCache, type IpcEndpoint, IpcStore, LOCK_WAIT_MS, LockWaiters, MAX_LEAF_HASHES_PER_READ, STORE_REQUEST, STORE_RESPONSE, type StoreServer, endpointOf, serveStore } from './ipc.js';
import type { Store } from './store.js';

const RELAY = "process.on('message', (m) => process.send(m)); process.on('disconnect', () => process.exit(0));";

function startRelay(): ChildProcess {
  return spawn(process.execPath, ['-e', RELAY], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
}

/** Counts the request messages (not calls) a client sends. */
function counting(e: IpcEndpoint): IpcEndpoint & { requests: number; calls: number } {
  const out = {
    requests: 0,
    calls: 0,
    send(m: unknown, onError: (err: Error | null) => void) {
      if ((m as { t?: unknown }).t === STORE_REQUEST) {
        out.requests++;
        out.calls += (m as { calls: unknown[] }).calls.length;
      }
      e.send(m, onError);
    },
    subscribe: (l: (m: unknown) => void) => e.subscribe(l),
    onClose: (l: () => void) => e.onClose(l),
  };
  return out;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => new Error('expected a rejection'),
    (e: unknown) => e,
  );
}

async function expectBroker(p: Promise<unknown>, code: string, status: number): Promise<BrokerError> {
  const err = await rejection(p);
  expect(err).toBeInstanceOf(BrokerError);
  expect((err as BrokerError).code).toBe(code);
  expect((err as BrokerError).status).toBe(status);
  return err as BrokerError;
}

const entry = (i: number): Buffer => Buffer.from(JSON.stringify({ i, type: 'x509', pad: 'é'.repeat(i % 7) }));

let dir: string;
let real: EmbeddedStore;
/** The relay of the first client (tests that swap the server or kill the channel use it). */
let relay: ChildProcess;
let stopServer: () => void;
const relays: ChildProcess[] = [];
const clients: IpcStore[] = [];
const servers: (() => void)[] = [];

beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'tessera-ipc-'));
  real = await EmbeddedStore.open(path.join(dir, 'data'), { fsync: false });
});

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  servers.splice(0).forEach((stop) => stop());
  storeServers.length = 0;
  await Promise.all(
    relays.splice(0).map(async (r) => {
      if (r.exitCode !== null || r.signalCode !== null) return;
      const gone = new Promise((res) => r.once('exit', res));
      r.kill('SIGKILL');
      await gone;
    }),
  );
  await real.close();
  await fsp.rm(dir, { recursive: true, force: true });
});

const storeServers: StoreServer[] = [];
const lastServer = (): StoreServer => storeServers[storeServers.length - 1] as StoreServer;

/** A relay served by `real`, for a hand-built client. */
function startRelayFor(): ChildProcess {
  const r = startRelay();
  relays.push(r);
  const server = serveStore(real, endpointOf(r));
  storeServers.push(server);
  servers.push(server.close);
  return r;
}

/** A client with its own channel (as each cluster worker has), served by `real` in this process. */
function client(opts: { timeoutMs?: number } = {}): IpcStore & { endpoint: ReturnType<typeof counting> } {
  const r = startRelay();
  relays.push(r);
  const stop = serveStore(real, endpointOf(r)).close;
  servers.push(stop);
  if (relays.length === 1) {
    relay = r;
    stopServer = stop;
  }
  const endpoint = counting(endpointOf(r));
  const c = new IpcStore(endpoint, { kind: 'embedded', ...opts });
  clients.push(c);
  return Object.assign(c, { endpoint });
}

describe('IpcStore over a real IPC channel', () => {
  it('audit: concurrent appends get contiguous indexes; reads return the same bytes, as Buffers', async () => {
    const s = client();
    expect(s.kind).toBe('embedded');
    const idx = await Promise.all(Array.from({ length: 100 }, (_, i) => s.appendAuditEntries([entry(i)])));
    expect([...idx].sort((a, b) => a - b)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(await s.appendAuditEntries([entry(100), entry(101)])).toBe(100);
    expect(await s.auditSize()).toBe(102);
    expect(await real.auditSize()).toBe(102);
    const got = await s.readAuditEntries(0, 102);
    expect(got.every((b) => Buffer.isBuffer(b))).toBe(true);
    idx.forEach((at, i) => expect(got[at]?.equals(entry(i))).toBe(true));
    expect(got[101]?.equals(entry(101))).toBe(true);
    expect(await s.readAuditEntries(5, 5)).toEqual([]);
    // The store's own argument checks come back as the same BrokerError.
    const direct = await rejection(real.readAuditEntries(0, 500));
    const remote = await expectBroker(s.readAuditEntries(0, 500), 'bad_request', 400);
    expect(remote.message).toBe((direct as Error).message);
  });

  it('readAuditLeafHashes: the leaf hash of each entry, hashed once in the primary for every worker', async () => {
    const entries = Array.from({ length: 50 }, (_, i) => entry(i));
    await real.appendAuditEntries(entries);
    const cache = new AuditLeafHashCache(real);
    // Two "workers" on one cache.
    const [r1, r2] = [startRelay(), startRelay()];
    relays.push(r1, r2);
    for (const r of [r1, r2]) servers.push(serveStore(real, endpointOf(r), { leafHashes: cache }).close);
    const [w1, w2] = [r1, r2].map((r) => new IpcStore(endpointOf(r), { kind: 'embedded' })) as [IpcStore, IpcStore];
    clients.push(w1, w2);
    const got = await w1.readAuditLeafHashes(10, 50);
    expect(got.map((h) => h.toString('hex'))).toEqual(entries.slice(10).map((e) => leafHash(e).toString('hex')));
    expect(cache.count).toBe(50);
    expect((await w2.readAuditLeafHashes(0, 3)).map((h) => h.toString('hex'))).toEqual(entries.slice(0, 3).map((e) => leafHash(e).toString('hex')));
    expect(await w2.readAuditLeafHashes(7, 7)).toEqual([]);
    // The log grows: the cache follows.
    await w2.appendAuditEntries([entry(50)]);
    expect((await w1.readAuditLeafHashes(50, 51))[0]?.equals(leafHash(entry(50)))).toBe(true);
    await expectBroker(w1.readAuditLeafHashes(0, 52), 'bad_request', 400);
    await expectBroker(w1.readAuditLeafHashes(5, 4), 'bad_request', 400);
    await expectBroker(w1.readAuditLeafHashes(0, MAX_LEAF_HASHES_PER_READ + 1), 'bad_request', 400);
  });

  it('checkpoints, consumeOnce, kv (with expiry), hit, tryLock/unlock and checkWritable round-trip', async () => {
    const s = client();
    await s.appendCheckpoint('origin\n1\nAAAA\n\n— sig\n');
    await s.appendCheckpoint('origin\n2\nBBBB\n\n— sig\n');
    expect(await s.listCheckpoints()).toEqual(await real.listCheckpoints());
    expect((await s.listCheckpoints()).length).toBe(2);

    const now = Date.now();
    const once = await Promise.all(Array.from({ length: 20 }, () => s.consumeOnce('jti-1', now + 60_000)));
    expect(once.filter(Boolean).length).toBe(1);
    expect(await real.consumeOnce('jti-1', now + 60_000)).toBe(false);

    await s.kvPut('revocation', 'a', 'va');
    await s.kvPut('revocation', 'b', 'vb', now + 60_000);
    await s.kvPut('revocation', 'gone', 'x', Date.now() + 100);
    expect(await s.kvGet('revocation', 'a')).toBe('va');
    expect(await s.kvGet('revocation', 'missing')).toBeUndefined();
    expect(await real.kvGet('revocation', 'b')).toBe('vb');
    await new Promise((r) => setTimeout(r, 150));
    expect(await s.kvGet('revocation', 'gone')).toBeUndefined();
    expect((await s.kvList('revocation')).sort((x, y) => x.key.localeCompare(y.key))).toEqual([
      { key: 'a', value: 'va' },
      { key: 'b', value: 'vb' },
    ]);
    expect(await s.kvDelete('revocation', 'a')).toBe(true);
    expect(await s.kvDelete('revocation', 'a')).toBe(false);
    await expectBroker(s.kvPut('Bad Space', 'k', 'v'), 'bad_request', 400);

    const hits = await Promise.all(Array.from({ length: 10 }, () => s.hit('rate:x', 60_000)));
    expect(hits.map((h) => h.count).sort((a, b) => a - b)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    expect(hits.every((h) => h.resetInMs > 0 && h.resetInMs <= 60_000)).toBe(true);
    // Shared with everyone else on the same store (another worker, or the primary itself).
    expect((await real.hit('rate:x', 60_000)).count).toBe(11);

    expect(await s.tryLock('checkpoint', 'w1', 5_000)).toBe(true);
    expect(await client().tryLock('checkpoint', 'w2', 5_000)).toBe(false);
    await s.unlock('checkpoint', 'w1');
    expect(await real.tryLock('checkpoint', 'w2', 5_000)).toBe(true);
    await expectBroker(s.tryLock('checkpoint', 'w1', 0), 'bad_request', 400);

    await expect(s.checkWritable()).resolves.toBeUndefined();
  });

  it('a lock another worker holds is handed over on unlock (no polling), or refused after LOCK_WAIT_MS', async () => {
    const locks = new LockWaiters();
    const [r1, r2] = [startRelay(), startRelay()];
    relays.push(r1, r2);
    for (const r of [r1, r2]) servers.push(serveStore(real, endpointOf(r), { locks }).close);
    const [a, b] = [r1, r2].map((r) => new IpcStore(endpointOf(r), { kind: 'embedded' })) as [IpcStore, IpcStore];
    clients.push(a, b);
    expect(await a.tryLock('checkpoint', 'a', 60_000)).toBe(true);
    let t0 = Date.now();
    expect(await b.tryLock('checkpoint', 'b', 60_000)).toBe(false);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(LOCK_WAIT_MS - 5);
    const waiting = b.tryLock('checkpoint', 'b', 60_000);
    await new Promise((r) => setTimeout(r, 10));
    t0 = Date.now();
    await a.unlock('checkpoint', 'a');
    expect(await waiting).toBe(true);
    expect(Date.now() - t0).toBeLessThan(LOCK_WAIT_MS);
    expect(await real.tryLock('checkpoint', 'c', 60_000)).toBe(false);
  });

  it('releaseLocks: the locks a dead worker held are freed for the others, and only those', async () => {
    const dead = new IpcStore(endpointOf(startRelayFor()), { kind: 'embedded' });
    clients.push(dead);
    expect(await dead.tryLock('checkpoint', 'w1/a', 60_000)).toBe(true);
    expect(await dead.tryLock('sweeper', 'w1/a', 60_000)).toBe(true);
    await dead.unlock('sweeper', 'w1/a');
    expect(await real.tryLock('sweeper', 'other', 60_000)).toBe(true);
    expect(await real.tryLock('checkpoint', 'w2/b', 60_000)).toBe(false);
    await lastServer().releaseLocks();
    expect(await real.tryLock('checkpoint', 'w2/b', 60_000)).toBe(true);
    // The sweeper lock now belongs to someone else: releasing did not touch it.
    expect(await real.tryLock('sweeper', 'w2/b', 60_000)).toBe(false);
  });

  it('batches the calls of one event-loop turn into one message', async () => {
    const s = client();
    const before = s.endpoint.requests;
    const got = await Promise.all(Array.from({ length: 200 }, (_, i) => s.kvGet('freeze', `k${i}`)));
    expect(got.every((v) => v === undefined)).toBe(true);
    expect(s.endpoint.requests - before).toBe(1);
  });

  it('identical kvGets in one turn share one call; a later turn reads again and sees a new value', async () => {
    const s = client();
    await real.kvPut('freeze', 'global', 'v1');
    const calls0 = s.endpoint.calls;
    const got = await Promise.all([...Array.from({ length: 20 }, () => s.kvGet('freeze', 'global')), s.kvGet('freeze', 'other')]);
    expect(got.slice(0, 20).every((v) => v === 'v1')).toBe(true);
    expect(got[20]).toBeUndefined();
    expect(s.endpoint.calls - calls0).toBe(2);
    await real.kvPut('freeze', 'global', 'v2');
    expect(await s.kvGet('freeze', 'global')).toBe('v2');
    expect(s.endpoint.calls - calls0).toBe(3);
  });

  it('two AuditLogs on two IpcStores (two workers) agree; catch-up reads are batched', async () => {
    const a = client();
    const b = client();
    const reads = { n: 0, entries: 0, full: 0 };
    const read = b.readAuditLeafHashes.bind(b);
    b.readAuditLeafHashes = async (start, end) => {
      reads.n++;
      reads.entries += end - start;
      return read(start, end);
    };
    const readFull = b.readAuditEntries.bind(b);
    b.readAuditEntries = async (start, end) => {
      reads.full++;
      return readFull(start, end);
    };
    const [logA, logB] = await Promise.all([AuditLog.open(a), AuditLog.open(b)]);
    const mk = (w: string, i: number) => ({
      ts: 1, type: 'x509-svid.issued', decision: 'allow', actor: 'spiffe://example.org/ns/a/sa/b', subject: 'spiffe://example.org/ns/a/sa/b',
      requestId: `${w}-${i}`, replica: w,
    }) as unknown as Parameters<AuditLog['append']>[0];
    // Interleaved bursts from both "workers".
    for (let round = 0; round < 5; round++) {
      await Promise.all([
        ...Array.from({ length: 40 }, (_, i) => logA.append(mk('a', round * 40 + i))),
        ...Array.from({ length: 40 }, (_, i) => logB.append(mk('b', round * 40 + i))),
      ]);
    }
    await logA.refresh();
    await logB.refresh();
    expect(logA.size).toBe(400);
    expect(logB.size).toBe(400);
    expect(logA.root().equals(logB.root())).toBe(true);
    // B read only the leaf hashes of what A appended (200 entries), in far fewer reads than entries,
    // and never the entries themselves.
    expect(reads.entries).toBe(200);
    expect(reads.n).toBeLessThanOrEqual(60);
    expect(reads.full).toBe(0);
  });

  it('a store call that is not allowed is refused by the server, and the store stays open', async () => {
    const s = client();
    const e = endpointOf(relay);
    const answer = new Promise<unknown>((resolve) => {
      const off = e.subscribe((m) => {
        if ((m as { t?: unknown }).t === STORE_RESPONSE) {
          off();
          resolve(m);
        }
      });
    });
    e.send({ t: STORE_REQUEST, calls: [[7, 'close', []]] }, () => {});
    expect(await answer).toMatchObject({ results: [[7, 0, { code: 'bad_request', status: 400 }]] });
    await expect(real.checkWritable()).resolves.toBeUndefined();
    expect(await s.auditSize()).toBe(0);
  });

  it('an error that is not a BrokerError crosses as a plain Error (not mistaken for a 4xx)', async () => {
    const broken = { kvGet: async () => { throw new TypeError('boom'); } } as unknown as Store;
    const s = client();
    stopServer();
    servers.push(serveStore(broken, endpointOf(relay)).close);
    const err = await rejection(s.kvGet('x', 'y'));
    expect(err).toBeInstanceOf(Error);
    expect(err).not.toBeInstanceOf(BrokerError);
    expect((err as Error).message).toMatch(/boom/);
  });

  it('a primary that never answers: store_unavailable (503) after the timeout, not a hang', async () => {
    const s = client({ timeoutMs: 200 });
    stopServer(); // the relay still echoes, but nobody serves the requests
    const t0 = Date.now();
    await expectBroker(s.kvGet('revocation', 'a'), 'store_unavailable', 503);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(s.inFlight).toBe(0);
  });

  it('a channel that closes: calls in flight and later calls fail at once with store_unavailable', async () => {
    const s = client({ timeoutMs: 30_000 });
    stopServer();
    const pending = s.appendAuditEntries([entry(1)]);
    await new Promise((r) => setTimeout(r, 50));
    const t0 = Date.now();
    relay.kill('SIGKILL');
    await expectBroker(pending, 'store_unavailable', 503);
    await expectBroker(s.auditSize(), 'store_unavailable', 503);
    expect(Date.now() - t0).toBeLessThan(5_000);
  });
});
