/**
 * Redis dies under load and comes back. Uses a PRIVATE redis-server (own free port, AOF
 * `appendfsync always` in a temp dir), never the shared Redis on 6379. Two `tessera serve` replicas
 * are loaded continuously; Redis is SIGKILLed mid-load. Expected:
 *   - requests fail closed with 503 (audit_unavailable / store_unavailable) within 2 s, none hangs;
 *   - /readyz goes red on both replicas within 2 s;
 *   - Redis restarted on the same port with its data: both replicas issue again by themselves
 *     (no broker restart) within seconds;
 *   - the log verifies and holds every credential any client received (no credential without an entry).
 */
import https from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../../src/store/redis.js';
import { httpsCall } from '../helpers/https.js';
import { redisServerAvailable, startPrivateRedis, type PrivateRedis } from '../helpers/redis.js';
import { issueOnce, startReplicas, verifyMergedLog, type Attempt, type Issued, type ReplicaSet } from '../helpers/replicas.js';

const haveServer = redisServerAvailable();
if (!haveServer) console.warn('[redis] fault e2e SKIPPED: the redis-server binary is not on PATH');

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Load {
  readonly issued: Issued[];
  readonly attempts: Attempt[];
  /** Stops the workers and waits for them. */
  stop(): Promise<void>;
}

/** Steady load on every replica until stopped (never longer than 60 s or 20 000 calls). */
async function startLoad(set: ReplicaSet): Promise<Load> {
  const token = await set.token();
  const agent = new https.Agent({ keepAlive: true, maxSockets: 8 });
  const issued: Issued[] = [];
  const attempts: Attempt[] = [];
  let stopped = false;
  let n = 0;
  const t0 = Date.now();
  const workers = Promise.all(
    Array.from({ length: 6 }, async () => {
      while (!stopped && n < 20_000 && Date.now() - t0 < 90_000) {
        const i = n++;
        const replica = set.replicas[i % set.replicas.length];
        if (!replica) throw new Error('no replica');
        const r = await issueOnce(set, replica, i % 4 === 3 ? 'jwt' : 'x509', token, agent);
        attempts.push(r.attempt);
        if (r.issued) issued.push(r.issued);
        if (r.attempt.status !== 200) await sleep(20); // do not spin while Redis is down
      }
    }),
  );
  return {
    issued,
    attempts,
    stop: async () => {
      stopped = true;
      await workers;
      agent.destroy();
    },
  };
}

/** Waits (at most 10 s, for a loaded CI machine) until the load has more than `n` credentials. */
async function untilIssued(load: Load, n: number): Promise<void> {
  for (const t0 = Date.now(); load.issued.length <= n && Date.now() - t0 < 10_000; ) await sleep(50);
}

/** Milliseconds after `since` until /readyz answers `status` on every replica (or -1 after `withinMs`). */
async function readyzBecomes(set: ReplicaSet, status: number, since: number, withinMs: number): Promise<number> {
  let worst = 0;
  for (const r of set.replicas) {
    let at = -1;
    while (Date.now() - since < withinMs) {
      const res = await httpsCall(r.url, set.ca, { path: '/readyz' });
      if (res.status === status) {
        at = Date.now() - since;
        break;
      }
      await sleep(50);
    }
    if (at < 0) return -1;
    worst = Math.max(worst, at);
  }
  return worst;
}

/** Both replicas have issued a credential requested after `since`; returns ms per replica. */
async function recovery(set: ReplicaSet, load: Load, since: number, withinMs: number): Promise<Map<string, number>> {
  const recovered = new Map<string, number>();
  while (recovered.size < set.replicas.length && Date.now() - since < withinMs) {
    for (const a of load.attempts) {
      if (a.status === 200 && a.startedAt >= since && !recovered.has(a.replica)) recovered.set(a.replica, a.startedAt + a.ms - since);
    }
    await sleep(50);
  }
  return recovered;
}

describe.skipIf(!haveServer)('Redis killed mid-load and restarted', () => {
  let redis: PrivateRedis;
  let set: ReplicaSet;

  beforeAll(async () => {
    redis = await startPrivateRedis();
    set = await startReplicas(2, redis.url, 'fault-e2e');
  }, 60_000);

  afterAll(async () => {
    await set?.close();
    await redis?.destroy();
  });

  it('fails closed within 2 s, goes unready, recovers without a restart, and the log verifies', async () => {
    const load = await startLoad(set);
    let killedAt = 0;
    let red = -1;
    let firstRefusal = 0;
    let slowest = 0;
    let back = new Map<string, number>();
    try {
      await untilIssued(load, 10);
      expect(load.issued.length, 'load was issuing before the kill').toBeGreaterThan(10);
      await redis.kill();
      killedAt = Date.now();
      red = await readyzBecomes(set, 503, killedAt, 2000);
      await sleep(1500);
      const downUntil = Date.now();
      // Every call started after the kill was refused with 503 (fail closed), none hung.
      const during = load.attempts.filter((a) => a.startedAt >= killedAt && a.startedAt + a.ms <= downUntil);
      expect(during.length, 'requests were made while Redis was down').toBeGreaterThan(5);
      for (const a of during) {
        expect(a.status, JSON.stringify(a)).toBe(503);
        expect(['audit_unavailable', 'store_unavailable']).toContain(a.error);
      }
      const overlapping = load.attempts.filter((a) => a.startedAt + a.ms >= killedAt && a.startedAt <= downUntil);
      slowest = Math.max(...overlapping.map((a) => a.ms));
      firstRefusal = Math.min(...during.map((a) => a.startedAt + a.ms)) - killedAt;
      // Redis back on the same port with its data; the brokers are NOT restarted.
      await redis.start();
      back = await recovery(set, load, Date.now(), 30_000);
      for (const r of set.replicas) expect((await httpsCall(r.url, set.ca, { path: '/readyz' })).status).toBe(200);
      await sleep(300);
    } finally {
      await load.stop();
    }
    expect(red, '/readyz red within 2 s of the kill').toBeGreaterThanOrEqual(0);
    expect(firstRefusal).toBeLessThan(2000);
    expect(slowest, 'no request waited 2 s or more').toBeLessThan(2000);
    expect([...back.keys()].sort(), 'both replicas issue again').toEqual(['replica-a', 'replica-b']);
    const bad = load.attempts.find((a) => a.status !== 200 && a.status !== 503);
    expect(bad, JSON.stringify(bad)).toBeUndefined();
    console.info(
      `[fault] kill: ${load.issued.length} issued, ${load.attempts.filter((a) => a.status === 503).length} refused with 503; ` +
        `/readyz red after ${red} ms, first refusal ${firstRefusal} ms after the kill, slowest call ${slowest} ms; ` +
        `recovered ${[...back.entries()].map(([k, v]) => `${k} in ${v} ms`).join(', ')} after Redis restart`,
    );
    const store = await RedisStore.connect({ url: redis.url, prefix: 'fault-e2e' });
    try {
      const report = await verifyMergedLog(store, load.issued);
      // Every credential is in the log; the log may also hold entries for requests refused mid-kill.
      expect(report.size).toBeGreaterThanOrEqual(load.issued.length);
    } finally {
      await store.close();
    }
  }, 90_000);

  it('Redis hanging (SIGSTOP) mid-load: every request still answers within 2 s with 503, /readyz red; SIGCONT: recovery', async () => {
    expect(redis.running).toBe(true);
    const load = await startLoad(set);
    let stoppedAt = 0;
    let slowest = 0;
    let red = -1;
    let back = new Map<string, number>();
    try {
      await untilIssued(load, 5);
      expect(load.issued.length).toBeGreaterThan(5);
      process.kill(redis.pid, 'SIGSTOP');
      stoppedAt = Date.now();
      try {
        red = await readyzBecomes(set, 503, stoppedAt, 2000);
        await sleep(2500);
        const hungUntil = Date.now();
        const during = load.attempts.filter((a) => a.startedAt >= stoppedAt && a.startedAt + a.ms <= hungUntil);
        expect(during.length).toBeGreaterThan(5);
        for (const a of during) expect(a.status, JSON.stringify(a)).toBe(503);
        const overlapping = load.attempts.filter((a) => a.startedAt + a.ms >= stoppedAt && a.startedAt <= hungUntil);
        slowest = Math.max(...overlapping.map((a) => a.ms));
      } finally {
        process.kill(redis.pid, 'SIGCONT');
      }
      const resumedAt = Date.now();
      back = await recovery(set, load, resumedAt, 30_000);
    } finally {
      await load.stop();
    }
    expect(red, '/readyz red within 2 s of the hang').toBeGreaterThanOrEqual(0);
    expect(slowest, 'no request waited 2 s or more').toBeLessThan(2000);
    expect([...back.keys()].sort()).toEqual(['replica-a', 'replica-b']);
    console.info(
      `[fault] hang: /readyz red after ${red} ms, slowest call ${slowest} ms; recovered ` +
        `${[...back.entries()].map(([k, v]) => `${k} in ${v} ms`).join(', ')} after SIGCONT`,
    );
    const store = await RedisStore.connect({ url: redis.url, prefix: 'fault-e2e' });
    try {
      await verifyMergedLog(store, load.issued);
    } finally {
      await store.close();
    }
  }, 90_000);
});
