/**
 * Redis loses its data (restarted without persistence: `--appendonly no --save ""`) under two running
 * replicas. Uses a PRIVATE redis-server (own free port), never the shared Redis on 6379. Expected
 * (docs/redis.md "Data loss"): the replicas notice that the store no longer continues the log they
 * know and stay failed closed — every issuance is a 503, /readyz is 503 and names the cause, a loud
 * log line is written, and nothing at all is appended to the emptied Redis (no entry for a history
 * Redis does not hold, no checkpoint). Then the operator's way out: `tessera audit recover` re-seeds
 * the empty Redis from an export taken before the loss, and restarted replicas issue again on a log
 * that verifies.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../../src/store/redis.js';
import { httpsCall } from '../helpers/https.js';
import { redisServerAvailable, startPrivateRedis, type PrivateRedis } from '../helpers/redis.js';
import { CLI, issueOnce, startReplicas, verifyMergedLog, type Attempt, type Issued, type ReplicaSet } from '../helpers/replicas.js';
import { until } from '../helpers/until.js';

const haveServer = redisServerAvailable();
if (!haveServer) console.warn('[redis] data-loss e2e SKIPPED: the redis-server binary is not on PATH');

const PREFIX = 'loss-e2e';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Runs the compiled CLI with the replicas' config (REDIS_URL cleared as the replicas do). */
function cli(args: readonly string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, REDIS_URL: '', TESSERA_CONFIG: '' }, timeout: 60_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe.skipIf(!haveServer)('Redis restarted empty under running replicas', () => {
  let redis: PrivateRedis;
  let set: ReplicaSet;
  const work = mkdtempSync(path.join(tmpdir(), 'tessera-loss-'));
  const exportDir = path.join(work, 'export');
  const before: Issued[] = [];

  beforeAll(async () => {
    // No persistence at all: a restart comes back empty (the configuration docs/redis.md warns about).
    redis = await startPrivateRedis(['--appendonly', 'no']);
    // …which the broker refuses unless told to accept it (store.redis.allowVolatile).
    set = await startReplicas(2, redis.url, PREFIX, { allowVolatile: true });
  }, 60_000);

  afterAll(async () => {
    await set?.close();
    await redis?.destroy();
    rmSync(work, { recursive: true, force: true });
  });

  it('refuses every issuance with 503, /readyz names the lost history, and appends nothing to the empty Redis', async () => {
    const token = await set.token();
    const agent = new https.Agent({ keepAlive: true, maxSockets: 4 });
    try {
      for (let i = 0; i < 6; i++) {
        const replica = set.replicas[i % 2];
        if (!replica) throw new Error('no replica');
        const r = await issueOnce(set, replica, 'x509', token, agent);
        expect(r.attempt.status, JSON.stringify(r.attempt)).toBe(200);
        if (r.issued) before.push(r.issued);
      }
      // The operator's regular export (used by the recovery test below).
      const exp = cli(['audit', 'export', '--config', set.configFile, '--out', exportDir]);
      expect(exp.status, exp.out).toBe(0);
      await redis.kill();
      await redis.start();
      const client = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
      await client.connect();
      try {
        expect(await client.llen(`{${PREFIX}}:audit`), 'Redis came back empty').toBe(0);
        // Wait until both replicas talk to the new Redis again (their store probe succeeds).
        for (const r of set.replicas) {
          await until(
            `${r.id} reaches the restarted Redis`,
            async () => {
              const res = await httpsCall<{ message?: string }>(r.url, set.ca, { path: '/readyz' });
              return res.status === 200 || /store: ok/.test(res.json?.message ?? '') ? true : undefined;
            },
            15_000,
          );
        }
        // Steady requests for a while: on the broken broker the first refusals each pushed an entry,
        // and issuance resumed once Redis held as many entries as the replica's old tree.
        const attempts: Attempt[] = [];
        for (let i = 0; i < 30; i++) {
          const replica = set.replicas[i % 2];
          if (!replica) throw new Error('no replica');
          attempts.push((await issueOnce(set, replica, i % 3 === 2 ? 'jwt' : 'x509', token, agent)).attempt);
          await sleep(50);
        }
        for (const a of attempts) expect(a.status, JSON.stringify(a)).toBe(503);
        // Once the store answers again the refusal names the cause.
        for (const r of set.replicas) {
          const last = attempts.filter((a) => a.replica === r.id).at(-1);
          expect(last?.error, `${r.id}: ${JSON.stringify(last)}`).toBe('audit_history_lost');
          const ready = await httpsCall<{ error?: string; message?: string }>(r.url, set.ca, { path: '/readyz' });
          expect(ready.status).toBe(503);
          expect(ready.json.message).toMatch(/audit history lost/);
          expect(r.output(), `${r.id} logged the loss`).toMatch(/audit history lost/);
        }
        expect(await client.llen(`{${PREFIX}}:audit`), 'nothing was appended to the emptied log').toBe(0);
        expect(await client.llen(`{${PREFIX}}:checkpoints`), 'no checkpoint was signed for the empty log').toBe(0);
      } finally {
        client.disconnect();
      }
    } finally {
      agent.destroy();
    }
  }, 90_000);

  it('tessera audit recover re-seeds the empty Redis from the export; restarted replicas issue again and the log verifies', async () => {
    // Recovery is an operator action with every replica stopped.
    for (const r of set.replicas) await r.stop();
    const bad = cli(['audit', 'recover', '--config', set.configFile, '--from', exportDir, '--key', path.join(work, 'missing.pub')]);
    expect(bad.status, bad.out).toBe(2);
    const rec = cli(['audit', 'recover', '--config', set.configFile, '--from', exportDir, '--key', set.auditPubFile]);
    expect(rec.status, rec.out).toBe(0);
    expect(rec.out).toMatch(/recovered \d+ entries and \d+ checkpoints/);
    // Run twice: the store is no longer empty, so a second recover refuses and writes nothing.
    const again = cli(['audit', 'recover', '--config', set.configFile, '--from', exportDir, '--key', set.auditPubFile]);
    expect(again.status, again.out).toBe(1);
    expect(again.out).toMatch(/store is not empty/);

    await set.close();
    set = await startReplicas(2, redis.url, PREFIX, { allowVolatile: true });
    const token = await set.token();
    const agent = new https.Agent({ keepAlive: true, maxSockets: 4 });
    const after: Issued[] = [];
    try {
      for (const r of set.replicas) {
        const res = await issueOnce(set, r, 'x509', token, agent);
        expect(res.attempt.status, JSON.stringify(res.attempt)).toBe(200);
        if (res.issued) after.push(res.issued);
        expect((await httpsCall(r.url, set.ca, { path: '/readyz' })).status).toBe(200);
      }
    } finally {
      agent.destroy();
    }
    const v = cli(['audit', 'verify', '--log', set.replicas[0]?.url ?? '', '--key', set.auditPubFile, '--cacert', set.bundleFile]);
    expect(v.status, v.out).toBe(0);
    const store = await RedisStore.connect({ url: redis.url, prefix: PREFIX });
    try {
      // Credentials from before the loss (in the export) and after the recovery are all in the one log.
      await verifyMergedLog(store, [...before, ...after]);
    } finally {
      await store.close();
    }
  }, 90_000);
});
