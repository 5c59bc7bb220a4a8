/**
 * Two `tessera serve` processes on the shared Redis (one unique prefix, the same temp CA material),
 * loaded at the same time by concurrent clients. Afterwards the merged audit log must verify on its
 * own: no gaps (it is one list), no duplicates, every credential any client received is in it at the
 * index its receipt names, every inclusion proof holds against the recomputed root, and every stored
 * checkpoint is a prefix of the same log (one signer at a time: no forks).
 */
import { spawnSync } from 'node:child_process';
import https from 'node:https';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../../src/store/redis.js';
import { SHARED_REDIS_URL, deletePrefix, redisRequiredUnderCi, sharedRedis, uniquePrefix } from '../helpers/redis.js';
import { CLI, issueOnce, startReplicas, verifyMergedLog, type Attempt, type Issued, type ReplicaSet } from '../helpers/replicas.js';

/** Runs the tessera CLI (REDIS_URL cleared so the config file decides). */
function tessera(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, REDIS_URL: '', TESSERA_CONFIG: '' }, timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const redis = await sharedRedis();

describe('Redis availability for the replica e2e', () => {
  redisRequiredUnderCi(redis);
});

describe.skipIf(!redis.ok)('two broker replicas on one Redis', () => {
  const prefix = uniquePrefix('replicas-e2e');
  let set: ReplicaSet;
  let store: RedisStore;

  beforeAll(async () => {
    set = await startReplicas(2, SHARED_REDIS_URL, prefix);
    store = await RedisStore.connect({ url: SHARED_REDIS_URL, prefix });
  }, 60_000);

  afterAll(async () => {
    await set?.close();
    await store?.close();
    await deletePrefix(prefix);
  });

  it('both replicas are ready on the shared store', async () => {
    const { httpsCall } = await import('../helpers/https.js');
    for (const r of set.replicas) {
      const res = await httpsCall(r.url, set.ca, { path: '/readyz' });
      expect(res.status, r.output()).toBe(200);
    }
  });

  it('concurrent load on both: one log that verifies and contains every credential handed out', async () => {
    const token = await set.token();
    const agent = new https.Agent({ keepAlive: true, maxSockets: 16 });
    const TOTAL = 240;
    const WORKERS = 16;
    const issued: Issued[] = [];
    const attempts: Attempt[] = [];
    let next = 0;
    const t0 = Date.now();
    await Promise.all(
      Array.from({ length: WORKERS }, async () => {
        // Bounded by count and by time.
        while (next < TOTAL && Date.now() - t0 < 60_000) {
          const i = next++;
          const replica = set.replicas[i % set.replicas.length];
          if (!replica) throw new Error('no replica');
          const r = await issueOnce(set, replica, i % 3 === 2 ? 'jwt' : 'x509', token, agent);
          attempts.push(r.attempt);
          if (r.issued) issued.push(r.issued);
        }
      }),
    );
    agent.destroy();
    const elapsed = Date.now() - t0;
    const failed = attempts.filter((a) => a.status !== 200);
    expect(failed, JSON.stringify(failed.slice(0, 5))).toEqual([]);
    expect(issued).toHaveLength(TOTAL);
    expect(new Set(issued.map((i) => i.replica)).size).toBe(2);

    const report = await verifyMergedLog(store, issued);
    expect(report.size).toBe(TOTAL);
    expect([...report.replicasSeen].sort()).toEqual(['replica-a', 'replica-b']);
    // Receipts from both replicas interleave in one index space.
    const byReplica = (id: string) => issued.filter((i) => i.replica === id).map((i) => i.audit.index);
    const a = byReplica('replica-a');
    const b = byReplica('replica-b');
    expect(Math.min(...a)).toBeLessThan(Math.max(...b));
    expect(Math.min(...b)).toBeLessThan(Math.max(...a));
    // The check is not a tautology: a credential the log lacks, or a receipt with another root, fails it.
    const one = issued[0] as Issued;
    await expect(verifyMergedLog(store, [...issued, { ...one, id: 'ff00ff00' }])).rejects.toThrow(/not in the log/);
    const badRoot = { ...one, audit: { ...one.audit, rootHash: Buffer.alloc(32).toString('base64') } };
    await expect(verifyMergedLog(store, [badRoot])).rejects.toThrow(/root differs/);
    // And the project's own verifier agrees: against a live replica, and on an export read from Redis.
    const verifyLive = tessera(['audit', 'verify', '--log', set.replicas[1]?.url ?? '', '--key', set.auditPubFile, '--cacert', set.bundleFile]);
    expect(verifyLive.status, verifyLive.stdout + verifyLive.stderr).toBe(0);
    expect(verifyLive.stdout).toMatch(/^OK: the audit log/m);
    const out = path.join(set.dir, 'export');
    const exported = tessera(['audit', 'export', '--out', out, '--config', set.configFile]);
    expect(exported.status, exported.stdout + exported.stderr).toBe(0);
    const verifyExport = tessera(['audit', 'verify', '--log', out, '--key', set.auditPubFile]);
    expect(verifyExport.status, verifyExport.stdout + verifyExport.stderr).toBe(0);
    console.info(
      `[replicas] ${TOTAL} credentials from 2 replicas in ${elapsed} ms (${Math.round((TOTAL * 1000) / elapsed)}/s), ` +
        `log size ${report.size}, ${report.checkpoints} checkpoints, all verified`,
    );
  }, 90_000);

  it("a replica reports the log's size, including entries another replica just appended", async () => {
    const { httpsCall } = await import('../helpers/https.js');
    const [a, b] = set.replicas;
    if (a === undefined || b === undefined) throw new Error('two replicas expected');
    const token = await set.token();
    const agent = new https.Agent({ keepAlive: true });
    const sizeAt = async (url: string): Promise<number> => {
      // The public leaf-hash page reports the log's size exactly as the entries page does.
      const res = await httpsCall<{ treeSize: number }>(url, set.ca, { path: '/v1/audit/leaves?start=0&end=0' });
      expect(res.status).toBe(200);
      return res.json.treeSize;
    };
    await sizeAt(b.url); // b has read the log as it is now
    for (let i = 0; i < 3; i++) {
      const r = await issueOnce(set, a, 'jwt', token, agent);
      expect(r.issued).toBeDefined();
      // Straight after a's append, b must not report a shorter log than the entry a's receipt names.
      expect(await sizeAt(b.url)).toBeGreaterThan(r.issued?.audit.index ?? Number.POSITIVE_INFINITY);
    }
    agent.destroy();
  });
});
