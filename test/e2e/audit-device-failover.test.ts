/**
 * One audit device, two `tessera serve` replicas on the shared Redis: the device lease makes exactly
 * one replica ship, so under normal operation every entry reaches the reader once; when the shipping
 * replica is SIGKILLed, the other takes the lease over once it lapses and resumes from the stored
 * position — no gap (duplicates of the last unconfirmed entries are allowed: same index).
 */
import https from 'node:https';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../../src/store/redis.js';
import { httpsCall } from '../helpers/https.js';
import { SHARED_REDIS_URL, deletePrefix, redisRequiredUnderCi, sharedRedis, uniquePrefix } from '../helpers/redis.js';
import { issueOnce, startReplicas, type Replica, type ReplicaSet } from '../helpers/replicas.js';
import { until } from '../helpers/until.js';

const redis = await sharedRedis();

describe('Redis availability for the audit device failover e2e', () => {
  redisRequiredUnderCi(redis);
});

describe.skipIf(!redis.ok)('audit device shipped by one of two replicas, with failover', () => {
  const prefix = uniquePrefix('device-failover');
  let set: ReplicaSet;
  let store: RedisStore;
  let server: net.Server;
  const got: { index: number; replicaId: string }[] = [];

  beforeAll(async () => {
    server = net.createServer((s) => {
      let buf = '';
      s.on('data', (d: Buffer) => {
        buf += d.toString('utf8');
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const r = JSON.parse(buf.slice(0, nl)) as { index: number; replicaId: string };
          got.push({ index: r.index, replicaId: r.replicaId });
          buf = buf.slice(nl + 1);
        }
      });
      s.on('error', () => {});
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    set = await startReplicas(2, SHARED_REDIS_URL, prefix, {
      audit: { devices: [{ name: 'siem', type: 'socket', address: `tcp://127.0.0.1:${port}`, resendWindowMs: 500, retryInitialMs: 50, retryMaxMs: 300 }] },
    });
    store = await RedisStore.connect({ url: SHARED_REDIS_URL, prefix });
  }, 90_000);

  afterAll(async () => {
    await set?.close();
    await store?.close();
    await deletePrefix(prefix);
    await new Promise<void>((r) => server?.close(() => r()));
  });

  async function issueOn(replicas: readonly Replica[], n: number): Promise<void> {
    const token = await set.token();
    const agent = new https.Agent({ keepAlive: true, maxSockets: 4 });
    try {
      for (let i = 0; i < n; i++) {
        const r = replicas[i % replicas.length] as Replica;
        const { attempt } = await issueOnce(set, r, 'jwt', token, agent);
        expect(attempt.status, attempt.error).toBe(200);
      }
    } finally {
      agent.destroy();
    }
  }

  it('normal operation: every entry once, shipped by one replica; SIGKILL of that replica: the other resumes with no gap', async () => {
    await issueOn(set.replicas, 40);
    const n = await store.auditSize();
    await until('all entries at the reader', async () => (new Set(got.map((g) => g.index)).size >= n ? true : undefined), 30_000);
    await until('cursor stored', async () => ((await store.auditCursor('siem')) >= n ? true : undefined), 10_000);
    expect(got.map((g) => g.index)).toEqual(Array.from({ length: n }, (_, i) => i)); // once each, in order
    const shippers = new Set(got.map((g) => g.replicaId));
    expect(shippers.size).toBe(1);
    const shipperId = [...shippers][0] as string;
    const shipper = set.replicas.find((r) => r.id === shipperId) as Replica;
    const survivor = set.replicas.find((r) => r.id !== shipperId) as Replica;
    expect(shipper).toBeDefined();
    const ready = await httpsCall<{ devices: { name: string; shipping: boolean }[] }>(survivor.url, set.ca, { path: '/readyz' });
    expect(ready.json.devices).toEqual([expect.objectContaining({ name: 'siem', shipping: false })]);

    // Kill the shipper in the middle of a stream of issuances on both replicas.
    const before = got.length;
    const stream = issueOn([survivor], 30);
    await until('some of the stream shipped', async () => (got.length >= before + 5 ? true : undefined), 20_000);
    shipper.proc.kill('SIGKILL');
    await stream;
    await issueOn([survivor], 10);
    const total = await store.auditSize();
    await until('every entry after failover', async () => (new Set(got.map((g) => g.index)).size >= total ? true : undefined), 60_000);
    const firsts: number[] = [];
    const seen = new Set<number>();
    for (const g of got) {
      if (!seen.has(g.index)) firsts.push(g.index);
      seen.add(g.index);
    }
    expect(firsts).toEqual(Array.from({ length: total }, (_, i) => i));
    expect(got[got.length - 1]?.replicaId).toBe(survivor.id);
    await until('survivor ships', async () => {
      const r = await httpsCall<{ devices: { shipping: boolean; lagEntries: number }[] }>(survivor.url, set.ca, { path: '/readyz' });
      return r.json.devices[0]?.shipping === true && r.json.devices[0].lagEntries === 0 ? true : undefined;
    }, 20_000);
  }, 180_000);
});
