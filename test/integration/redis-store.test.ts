/**
 * RedisStore beyond the shared contract: the documented key layout, several clients (replicas) on one
 * prefix agreeing, `requireReplicaAck` against a real replica, and fail-closed behaviour when Redis
 * dies, hangs or is absent at start — the fault tests use private redis-server children on their own
 * ports, never the shared Redis on 6379.
 */
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/log.js';
import { leafHash, rootFromLeaves } from '../../src/audit/merkle.js';
import { BrokerError } from '../../src/errors.js';
import { RedisStore } from '../../src/store/redis.js';
import {
  SHARED_REDIS_URL,
  deletePrefix,
  freePort,
  keysUnder,
  redisRequiredUnderCi,
  redisServerAvailable,
  sharedRedis,
  startPrivateRedis,
  uniquePrefix,
} from '../helpers/redis.js';
import { until } from '../helpers/until.js';

const redis = await sharedRedis();
const haveServer = redisServerAvailable();
if (!haveServer) console.warn('[redis] private redis-server tests SKIPPED: the redis-server binary is not on PATH');

const entry = (r: string, i: number): Buffer => Buffer.from(JSON.stringify({ replica: r, i }));

/** Resolves with the error (must be a 503 BrokerError) and how long the call took. */
async function timed503(p: () => Promise<unknown>): Promise<{ err: BrokerError; ms: number }> {
  const t0 = Date.now();
  const err = await p().then(
    () => new Error('expected a 503'),
    (e: unknown) => e,
  );
  const ms = Date.now() - t0;
  expect(err, String(err)).toBeInstanceOf(BrokerError);
  expect((err as BrokerError).status).toBe(503);
  return { err: err as BrokerError, ms };
}

const cleanup: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => {});
});

describe('Redis availability for the RedisStore suites', () => {
  redisRequiredUnderCi(redis);
});

describe.skipIf(!redis.ok)('RedisStore on the shared Redis', () => {
  it('keeps every key under one hash-tagged prefix, named as docs/redis.md documents', async () => {
    const prefix = uniquePrefix('layout');
    cleanup.push(() => deletePrefix(prefix));
    const s = await RedisStore.connect({ url: SHARED_REDIS_URL, prefix });
    cleanup.push(() => s.close());
    await s.appendAuditEntries([entry('a', 0)]);
    await s.appendCheckpoint('note');
    await s.consumeOnce('jti-secret-value', Date.now() + 60_000);
    await s.kvPut('revocation', 'serial-1', 'v');
    await s.hit('rate:x', 60_000);
    await s.tryLock('checkpoint', 'me', 60_000);
    await s.checkWritable();
    const keys = await keysUnder(prefix);
    const p = `{${prefix}}:`;
    expect(keys.every((k) => k.startsWith(p))).toBe(true);
    const names = keys.map((k) => k.slice(p.length).replace(/^once:[A-Za-z0-9_-]{43}$/, 'once:<sha256>'));
    expect(names.sort()).toEqual(
      ['audit', 'checkpoints', 'hit:60000:rate:x', 'kv:revocation:serial-1', 'kvi:revocation', 'lock:checkpoint', 'once:<sha256>', 'probe'].sort(),
    );
    // The raw nonce never reaches Redis, only its hash.
    expect(keys.some((k) => k.includes('jti-secret-value'))).toBe(false);
    await s.close();
    expect(await deletePrefix(prefix)).toBe(8);
  });

  it('two replicas on one prefix: one total order, AuditLogs converge to the same root, shared nonces, counters and locks', async () => {
    const prefix = uniquePrefix('replicas');
    cleanup.push(() => deletePrefix(prefix));
    const [a, b] = await Promise.all([RedisStore.connect({ url: SHARED_REDIS_URL, prefix }), RedisStore.connect({ url: SHARED_REDIS_URL, prefix })]);
    cleanup.push(() => a.close(), () => b.close());
    const [logA, logB] = await Promise.all([AuditLog.open(a), AuditLog.open(b)]);
    const mk = (replica: string, i: number) => ({
      ts: 1_700_000_000_000 + i, type: 'x509-svid.issued' as const, decision: 'allow' as const, actor: null,
      subject: 'spiffe://example.org/ns/shop/sa/web', serial: `${replica}-${i}`, requestId: `${replica}-${i}`, replica,
    });
    const receipts = await Promise.all([
      ...Array.from({ length: 150 }, (_, i) => logA.append(mk('a', i))),
      ...Array.from({ length: 150 }, (_, i) => logB.append(mk('b', i))),
    ]);
    const indexes = receipts.map((r) => r.index).sort((x, y) => x - y);
    expect(indexes).toEqual(Array.from({ length: 300 }, (_, i) => i));
    await Promise.all([logA.refresh(), logB.refresh()]);
    expect(logA.size).toBe(300);
    expect(logB.root().equals(logA.root())).toBe(true);
    const leaves = (await a.readAuditEntries(0, 300)).map((e) => leafHash(e));
    expect(rootFromLeaves(leaves).equals(logA.root())).toBe(true);

    const won = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).consumeOnce('jti-shared', Date.now() + 60_000)));
    expect(won.filter(Boolean)).toHaveLength(1);
    const hits = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).hit('rate:shared', 60_000)));
    expect(hits.map((h) => h.count).sort((x, y) => x - y)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect(await a.tryLock('checkpoint-signer', 'replica-a', 60_000)).toBe(true);
    expect(await b.tryLock('checkpoint-signer', 'replica-b', 60_000)).toBe(false);
    await b.kvPut('freeze', 'ns/shop', 'frozen by b');
    expect(await a.kvGet('freeze', 'ns/shop')).toBe('frozen by b');
  });

  it('refuses a bad prefix and a bad topology before connecting', async () => {
    await expect(RedisStore.connect({ url: SHARED_REDIS_URL, prefix: 'has{brace}' })).rejects.toMatchObject({ code: 'store_unavailable' });
    await expect(RedisStore.connect({ prefix: 'x' })).rejects.toMatchObject({ code: 'store_unavailable' });
    await expect(RedisStore.connect({ url: 'http://127.0.0.1:6379', prefix: 'x' })).rejects.toMatchObject({ code: 'store_unavailable' });
  });
});

describe.skipIf(!haveServer)('RedisStore fails closed and recovers (private redis-server)', () => {
  it('startup against nothing fails with store_unavailable within the startup timeout', async () => {
    const port = await freePort();
    const t0 = Date.now();
    await expect(RedisStore.connect({ url: `redis://127.0.0.1:${port}`, startupTimeoutMs: 800 })).rejects.toMatchObject({
      code: 'store_unavailable',
      status: 503,
    });
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it('Redis killed: every operation is a 503 within 2 s; Redis back on the same port: the same store recovers with its data', async () => {
    const r = await startPrivateRedis();
    cleanup.push(() => r.destroy());
    const s = await RedisStore.connect({ url: r.url, prefix: 'fault' });
    cleanup.push(() => s.close());
    for (let i = 0; i < 10; i++) await s.appendAuditEntries([entry('x', i)]);
    await s.kvPut('lease', 'l1', 'kept');
    await r.kill();
    const ops: [string, () => Promise<unknown>, string][] = [
      ['append', () => s.appendAuditEntries([entry('x', 99)]), 'audit_unavailable'],
      ['size', () => s.auditSize(), 'audit_unavailable'],
      ['read', () => s.readAuditEntries(0, 1), 'audit_unavailable'],
      ['kvPut', () => s.kvPut('lease', 'l2', 'v'), 'store_unavailable'],
      ['kvGet', () => s.kvGet('lease', 'l1'), 'store_unavailable'],
      ['consumeOnce', () => s.consumeOnce('n', Date.now() + 10_000), 'store_unavailable'],
      ['hit', () => s.hit('k', 1000), 'store_unavailable'],
      ['tryLock', () => s.tryLock('l', 'o', 1000), 'store_unavailable'],
      ['checkWritable', () => s.checkWritable(), 'store_unavailable'],
    ];
    for (const [name, op, code] of ops) {
      const { err, ms } = await timed503(op);
      expect(err.code, name).toBe(code);
      expect(ms, name).toBeLessThan(2000);
    }
    await r.start();
    await until('store recovers', async () => (await s.checkWritable(), true), 10_000);
    expect(await s.auditSize()).toBe(10);
    expect(await s.kvGet('lease', 'l1')).toBe('kept');
    expect(await s.appendAuditEntries([entry('x', 10)])).toBe(10);
  });

  it('Redis restarted empty: the store reports the reconnect and never appends to a list shorter than it has seen', async () => {
    const r = await startPrivateRedis(['--appendonly', 'no']); // no persistence: a restart loses everything
    cleanup.push(() => r.destroy());
    const s = await RedisStore.connect({ url: r.url, prefix: 'loss' });
    cleanup.push(() => s.close());
    let reconnects = 0;
    s.onReconnect(() => reconnects++);
    for (let i = 0; i < 5; i++) await s.appendAuditEntries([entry('x', i)]);
    await r.kill();
    await r.start();
    await until('store reconnects', async () => (await s.checkWritable(), true), 10_000);
    expect(reconnects).toBeGreaterThanOrEqual(1);
    expect(await s.auditSize()).toBe(0);
    for (let i = 0; i < 3; i++) {
      await expect(s.appendAuditEntries([entry('x', 5 + i)])).rejects.toMatchObject({
        code: 'audit_history_lost',
        status: 503,
        message: expect.stringMatching(/holds 0 entries, fewer than the 5 seen before/),
      });
    }
    expect(await s.auditSize()).toBe(0);
    // A fresh client (a new process) has seen nothing and may append: the broker's AuditLog, not the
    // store, decides whether a log is new (docs/redis.md "Data loss").
    const fresh = await RedisStore.connect({ url: r.url, prefix: 'loss' });
    cleanup.push(() => fresh.close());
    expect(await fresh.appendAuditEntries([entry('y', 0)])).toBe(0);
  });

  it('Redis hanging (SIGSTOP): operations fail with 503 within 2 s instead of waiting; SIGCONT: back to normal', async () => {
    const r = await startPrivateRedis();
    cleanup.push(() => r.destroy());
    const s = await RedisStore.connect({ url: r.url, prefix: 'hang' });
    cleanup.push(() => s.close());
    await s.appendAuditEntries([entry('h', 0)]);
    const pid = r.pid;
    process.kill(pid, 'SIGSTOP');
    try {
      const [w, a] = await Promise.all([timed503(() => s.checkWritable()), timed503(() => s.appendAuditEntries([entry('h', 1)]))]);
      expect(w.ms).toBeLessThan(2000);
      expect(a.ms).toBeLessThan(2000);
      expect(a.err.code).toBe('audit_unavailable');
      // Redis is known not to answer now: further calls are refused at once, not after another timeout,
      // so a request making several store calls still fails within one command timeout.
      for (const op of [() => s.kvGet('a', 'b'), () => s.checkWritable(), () => s.auditSize()]) {
        expect((await timed503(op)).ms).toBeLessThan(200);
      }
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await until('store answers again', async () => (await s.checkWritable(), true), 5000);
    // The timed-out append may have run once Redis woke up (documented); it never runs twice.
    const size = await s.auditSize();
    expect([1, 2]).toContain(size);
    expect(await s.appendAuditEntries([entry('h', 2)])).toBe(size);
  });

  it('requireReplicaAck: writes succeed once a replica acknowledges, and fail with 503 when none can', async () => {
    const primary = await startPrivateRedis(['--repl-diskless-sync-delay', '0']);
    cleanup.push(() => primary.destroy());
    const replica = await startPrivateRedis(['--replicaof', '127.0.0.1', String(primary.port)]);
    cleanup.push(() => replica.destroy());
    const s = await RedisStore.connect({ url: primary.url, prefix: 'ack', requireReplicaAck: true, commandTimeoutMs: 1000 });
    cleanup.push(() => s.close());
    await until('replica in sync', async () => ((await s.appendAuditEntries([entry('r', 0)])) >= 0 ? true : undefined), 10_000);
    await s.kvPut('secret', 'db', 'ciphertext');
    await s.checkWritable();
    await replica.kill();
    const { err, ms } = await timed503(() => s.kvPut('secret', 'db2', 'ciphertext'));
    expect(err.message).toMatch(/replica/);
    expect(ms).toBeLessThan(2000);
    await timed503(() => s.checkWritable());
  });

  it('requireReplicaAck: a WAIT that Redis refuses fails the writes of its pipeline closed, and nothing else', async () => {
    const r = await startPrivateRedis(['--rename-command', 'WAIT', '""']);
    cleanup.push(() => r.destroy());
    const s = await RedisStore.connect({ url: r.url, prefix: 'nowait', requireReplicaAck: true, commandTimeoutMs: 1000 });
    cleanup.push(() => s.close());
    const put = s.kvPut('secret', 'db', 'ciphertext');
    const read = s.kvGetMany([{ space: 'secret', key: 'db' }]);
    const { err } = await timed503(() => put);
    expect(err.message).toMatch(/no replica acknowledged/);
    // The read in the same pipeline needs no acknowledgement and gets its answer (the put is in Redis,
    // unacknowledged: the caller was told it failed).
    expect(await read).toEqual(['ciphertext']);
  });
});

describe.skipIf(!haveServer)('RedisStore sends one event-loop turn as one pipeline (private redis-server)', () => {
  it('the steps of one turn reach Redis in one write, in order, each with its own replies and errors', async () => {
    const r = await startPrivateRedis();
    cleanup.push(() => r.destroy());
    const s = await RedisStore.connect({ url: r.url, prefix: 'batch' });
    cleanup.push(() => s.close());
    const raw = new Redis(r.url);
    cleanup.push(async () => raw.quit());
    // A rate-limit counter key holding a list: its script fails with WRONGTYPE, mid-batch.
    await raw.rpush('{batch}:hit:60000:broken', 'x');
    await s.appendAuditEntries([entry('warm', 0)]); // loads the scripts
    const readsProcessed = async (): Promise<number> => Number(/total_reads_processed:(\d+)/.exec(await raw.info('stats'))?.[1]);
    const before = await readsProcessed();

    // All in one synchronous turn: puts, reads of what the puts wrote, appends, and one failing step.
    const puts = Array.from({ length: 8 }, (_, i) => s.kvPut('revocation', `k${i}`, `v${i}`));
    const reads = Array.from({ length: 4 }, (_, i) => s.kvGetMany([{ space: 'revocation', key: `k${2 * i}` }, { space: 'revocation', key: 'absent' }]));
    const broken = s.hit('broken', 60_000);
    const appends = Array.from({ length: 6 }, (_, i) => s.appendAuditEntries([entry('batch', i)]));
    const settled = await Promise.allSettled([...puts, ...reads, broken, ...appends]);

    const after = await readsProcessed();
    // One read for the batch (two if the kernel split it) and one for the INFO that measured it; one
    // write per step would be ~19 reads.
    expect(after - before).toBeLessThanOrEqual(3);
    expect(settled.filter((x) => x.status === 'rejected')).toHaveLength(1);
    const err = await broken.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BrokerError);
    expect((err as BrokerError).status).toBe(503);
    // Reads queued after the puts of the same turn see them; appends get consecutive indexes in order.
    expect(await Promise.all(reads)).toEqual([0, 1, 2, 3].map((i) => [`v${2 * i}`, undefined]));
    expect(await Promise.all(appends)).toEqual([1, 2, 3, 4, 5, 6]);
    // The failing step did not stop the store: the next operations work.
    expect(await s.kvGet('revocation', 'k7')).toBe('v7');
  });
});
