import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { AuditEntry } from '../audit/entry.js';
import type { AuditReceipt } from '../audit/log.js';
import { BrokerError } from '../errors.js';
import { EmbeddedStore } from '../store/embedded.js';
import { type Lease, type LeaseBackend, LeaseManager, MAX_RETRY_DELAY_MS, PERMANENT_RETRY_DELAY_MS, SWEEPER_LOCK, parseLease } from './leases.js';

class ManualClock {
  t = 1_700_000_000_000;
  now(): number {
    return this.t;
  }
}

/** A backend standing in for an engine: records calls and can be told to fail. */
class FakeBackend implements LeaseBackend {
  failing = false;
  /** When set, revoke throws this instead (e.g. a permanent revoke_failed). */
  refusal: BrokerError | undefined;
  revoked: string[] = [];
  renewed: { id: string; expiresAt: number }[] = [];
  async renew(lease: Lease, expiresAt: number): Promise<void> {
    if (this.failing) throw new BrokerError('engine_unavailable', 'engine down');
    this.renewed.push({ id: lease.id, expiresAt });
  }
  async revoke(lease: Lease): Promise<void> {
    if (this.refusal !== undefined) throw this.refusal;
    if (this.failing) throw new BrokerError('engine_unavailable', 'engine down');
    this.revoked.push(lease.id);
  }
}

let dir: string;
let store: EmbeddedStore;
let clock: ManualClock;
let backend: FakeBackend;
let entries: AuditEntry[];

const receipt: AuditReceipt = { index: 0, treeSize: 1, rootHash: '', leafHash: '', inclusionProof: [] };

let failures: { id: string; permanent: boolean }[];

function manager(overrides: { replicaId?: string; store?: EmbeddedStore } = {}): LeaseManager {
  return new LeaseManager({
    store: overrides.store ?? store,
    clock,
    record: async (e) => {
      entries.push(e);
      return receipt;
    },
    replicaId: overrides.replicaId ?? 'r1',
    backends: { postgres: backend },
    sweepIntervalMs: 1000,
    onRevokeFailure: (lease, permanent) => failures.push({ id: lease.id, permanent }),
  });
}

const pgLease = { kind: 'postgres', identity: 'spiffe://example.org/ns/shop/sa/web', secret: 'postgres/ro', engine: 'main', role: 'ro', username: 'tessera_ro_0123456789abcdef' } as const;
const ctx = { actor: 'spiffe://example.org/ns/shop/sa/web', requestId: 'req-1', reason: 'test' };

beforeEach(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'tessera-leases-'));
  clock = new ManualClock();
  store = await EmbeddedStore.open(dir, { fsync: false, clock });
  backend = new FakeBackend();
  entries = [];
  failures = [];
});
afterEach(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('leases', () => {
  it('creates a lease with a random 128-bit id, stored so a reopened store still has it', async () => {
    const m = manager();
    const a = await m.create({ ...pgLease, ttlMs: 60_000, maxTtlMs: 300_000 });
    const b = await m.create({ ...pgLease, ttlMs: 60_000, maxTtlMs: 300_000 });
    expect(a.id).toMatch(/^[0-9a-f]{32}$/);
    expect(a.id).not.toBe(b.id);
    expect(a).toMatchObject({ issuedAt: clock.t, expiresAt: clock.t + 60_000, maxExpiresAt: clock.t + 300_000, state: 'active', attempts: 0 });
    await store.close();
    store = await EmbeddedStore.open(dir, { fsync: false, clock });
    expect(await manager().get(a.id)).toEqual(a);
  });

  it('caps the first TTL and every renewal at the max TTL', async () => {
    const m = manager();
    const lease = await m.create({ ...pgLease, ttlMs: 900_000, maxTtlMs: 120_000 });
    expect(lease.expiresAt).toBe(clock.t + 120_000);
    const l2 = await m.create({ ...pgLease, ttlMs: 60_000, maxTtlMs: 120_000 });
    const start = clock.t;
    clock.t += 50_000;
    const r1 = await m.renew(l2, 60_000);
    expect(r1.expiresAt).toBe(start + 110_000);
    clock.t += 50_000;
    const r2 = await m.renew(r1, 60_000);
    expect(r2.expiresAt).toBe(start + 120_000);
    expect(backend.renewed.map((r) => r.expiresAt)).toEqual([start + 110_000, start + 120_000]);
    expect((await m.get(l2.id))?.expiresAt).toBe(start + 120_000);
    clock.t = start + 120_000;
    await expect(m.renew(r2, 60_000)).rejects.toMatchObject({ code: 'not_found' });
  });

  it('a renewal the backend refuses changes nothing', async () => {
    const m = manager();
    const lease = await m.create({ ...pgLease, ttlMs: 60_000, maxTtlMs: 120_000 });
    backend.failing = true;
    await expect(m.renew(lease, 60_000)).rejects.toMatchObject({ code: 'engine_unavailable' });
    expect(await m.get(lease.id)).toEqual(lease);
  });

  it('revoke drops the credential, deletes the lease and audits it', async () => {
    const m = manager();
    const lease = await m.create({ ...pgLease, ttlMs: 60_000, maxTtlMs: 120_000 });
    const out = await m.revoke(lease, ctx);
    expect(out.revoked).toBe(true);
    expect(backend.revoked).toEqual([lease.id]);
    expect(await m.get(lease.id)).toBeUndefined();
    expect(entries).toEqual([
      expect.objectContaining({ type: 'lease.revoked', leaseId: lease.id, secret: 'postgres/ro', dbUsername: pgLease.username, subject: pgLease.identity, reason: 'test' }),
    ]);
  });

  it('a failed revoke is kept, reported, and retried with backoff until it succeeds', async () => {
    const m = manager();
    const lease = await m.create({ ...pgLease, ttlMs: 10_000, maxTtlMs: 120_000 });
    backend.failing = true;
    const out = await m.revoke(lease, ctx);
    expect(out.revoked).toBe(false);
    const kept = await m.get(lease.id);
    expect(kept).toMatchObject({ state: 'revoking', attempts: 1, lastError: 'engine down', nextAttemptAt: clock.t + 1000 });
    expect(entries.at(-1)).toMatchObject({ type: 'lease.revoke-failed', leaseId: lease.id, code: 'engine_unavailable' });
    expect(await m.failedRevocations()).toHaveLength(1);

    // Not due yet: the sweeper leaves it.
    expect((await m.sweepOnce()).failed).toEqual([]);
    // Due: it fails again, and the delay doubles.
    clock.t += 1000;
    expect((await m.sweepOnce()).failed).toEqual([{ id: lease.id, error: 'engine down' }]);
    expect(await m.get(lease.id)).toMatchObject({ attempts: 2, nextAttemptAt: clock.t + 2000 });
    // Many failures later the delay is capped, and the lease is still there.
    for (let i = 0; i < 20; i++) {
      clock.t = ((await m.get(lease.id))?.nextAttemptAt ?? clock.t) + 1;
      await m.sweepOnce();
    }
    const stuck = await m.get(lease.id);
    expect(stuck?.attempts).toBe(22);
    expect((stuck?.nextAttemptAt ?? 0) - clock.t).toBe(MAX_RETRY_DELAY_MS);
    expect(entries.filter((e) => e.type === 'lease.revoke-failed')).toHaveLength(22);

    backend.failing = false;
    clock.t = (stuck?.nextAttemptAt ?? 0) + 1;
    expect((await m.sweepOnce()).revoked).toEqual([lease.id]);
    expect(await m.get(lease.id)).toBeUndefined();
    expect(entries.at(-1)).toMatchObject({ type: 'lease.revoked', reason: 'retry: test' });
  });

  it('a revoke the engine refuses for good is revoke_failed: counted, audited with its code, retried only hourly, healed once fixed', async () => {
    const m = manager();
    const lease = await m.create({ ...pgLease, ttlMs: 10_000, maxTtlMs: 120_000 });
    // First a transient failure: revoking, short backoff.
    backend.failing = true;
    await m.revoke(lease, ctx);
    expect(await m.get(lease.id)).toMatchObject({ state: 'revoking', attempts: 1 });
    // Then the engine refuses for good.
    backend.refusal = new BrokerError('revoke_failed', 'refused (42501)');
    clock.t += 1000;
    expect((await m.sweepOnce()).failed).toEqual([{ id: lease.id, error: 'refused (42501)' }]);
    const failed = await m.get(lease.id);
    expect(failed).toMatchObject({ state: 'revoke_failed', attempts: 2, lastError: 'refused (42501)', nextAttemptAt: clock.t + PERMANENT_RETRY_DELAY_MS, revokeReason: 'test' });
    expect(parseLease(JSON.stringify(failed))).toEqual(failed);
    expect(failures).toEqual([{ id: lease.id, permanent: false }, { id: lease.id, permanent: true }]);
    expect(entries.at(-1)).toMatchObject({ type: 'lease.revoke-failed', leaseId: lease.id, code: 'revoke_failed' });
    expect((await m.failedRevocations()).map((l) => l.id)).toEqual([lease.id]);
    // Well past the transient backoff cap, but within the hour: left alone, and renewals are refused.
    clock.t += MAX_RETRY_DELAY_MS * 2;
    expect(await m.sweepOnce()).toMatchObject({ revoked: [], failed: [] });
    await expect(m.renew(failed as Lease, 60_000)).rejects.toMatchObject({ code: 'not_found' });
    // The hourly retry: fixed meanwhile, so the lease is revoked with its original reason.
    backend.refusal = undefined;
    backend.failing = false;
    clock.t = (failed?.nextAttemptAt ?? 0) + 1;
    expect((await m.sweepOnce()).revoked).toEqual([lease.id]);
    expect(await m.get(lease.id)).toBeUndefined();
    expect(entries.at(-1)).toMatchObject({ type: 'lease.revoked', reason: 'retry: test' });
  });

  it('the sweeper revokes expired leases only', async () => {
    const m = manager();
    const short = await m.create({ ...pgLease, ttlMs: 5_000, maxTtlMs: 120_000 });
    const long = await m.create({ ...pgLease, ttlMs: 60_000, maxTtlMs: 120_000 });
    clock.t += 5_000;
    const report = await m.sweepOnce();
    expect(report).toEqual({ ran: true, revoked: [short.id], failed: [] });
    expect(await m.get(long.id)).toBeDefined();
    expect(entries.at(-1)).toMatchObject({ type: 'lease.revoked', leaseId: short.id, actor: null, reason: 'expired' });
  });

  it('only one replica sweeps at a time (store lock)', async () => {
    const a = manager({ replicaId: 'a' });
    const b = manager({ replicaId: 'b' });
    await a.create({ ...pgLease, ttlMs: 1000, maxTtlMs: 2000 });
    clock.t += 1000;
    expect((await a.sweepOnce()).ran).toBe(true);
    expect((await b.sweepOnce()).ran).toBe(false);
    await a.stop();
    expect((await b.sweepOnce()).ran).toBe(true);
    expect(await store.tryLock(SWEEPER_LOCK, 'someone-else', 1000)).toBe(false);
  });

  it('static-secret leases vanish from the store at expiry; revokeIdentity revokes every lease of one identity', async () => {
    const m = manager();
    const kvLease = await m.create({ kind: 'kv', identity: pgLease.identity, secret: 'db/key', ttlMs: 1000, maxTtlMs: 5000 });
    const mine = await m.create({ ...pgLease, ttlMs: 60_000, maxTtlMs: 120_000 });
    const other = await m.create({ ...pgLease, identity: 'spiffe://example.org/ns/shop/sa/cart', ttlMs: 60_000, maxTtlMs: 120_000 });
    const kv2 = await m.create({ kind: 'kv', identity: pgLease.identity, secret: 'db/key', ttlMs: 60_000, maxTtlMs: 120_000 });
    clock.t += 1000;
    expect(await m.get(kvLease.id)).toBeUndefined();
    const out = await m.revokeIdentity(pgLease.identity, { actor: 'spiffe://example.org/admin/alice', requestId: 'r', reason: 'identity revoked' });
    expect(out.revoked.sort()).toEqual([mine.id, kv2.id].sort());
    expect(out.pending).toEqual([]);
    expect(backend.revoked).toEqual([mine.id]);
    expect(await m.get(other.id)).toBeDefined();
    expect(entries.filter((e) => e.type === 'lease.revoked').map((e) => e.actor)).toEqual([
      'spiffe://example.org/admin/alice',
      'spiffe://example.org/admin/alice',
    ]);
  });

  it('revokeIdentity reports leases the backend cannot drop yet, and keeps them for the sweeper', async () => {
    const m = manager();
    const lease = await m.create({ ...pgLease, ttlMs: 60_000, maxTtlMs: 120_000 });
    backend.failing = true;
    const out = await m.revokeIdentity(pgLease.identity, ctx);
    expect(out).toEqual({ revoked: [], pending: [{ id: lease.id, error: 'engine down' }] });
    expect((await m.get(lease.id))?.state).toBe('revoking');
  });

  it('parses only well-formed lease records', () => {
    expect(parseLease('nope')).toBeUndefined();
    expect(parseLease(JSON.stringify({ v: 1, id: 'x' }))).toBeUndefined();
    const good: Lease = { v: 1, id: 'a'.repeat(32), kind: 'kv', identity: 'i', secret: 's', issuedAt: 1, expiresAt: 2, maxExpiresAt: 3, state: 'active', attempts: 0 };
    expect(parseLease(JSON.stringify(good))).toEqual(good);
    expect(parseLease(JSON.stringify({ ...good, kind: 'postgres' }))).toBeUndefined();
  });
});
