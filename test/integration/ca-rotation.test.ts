/**
 * CA rotation on real brokers, in real time (TLS checks certificates against the wall clock): a signing
 * CA that lives 24 s is prepared at 12 s, replaced at 20 s and dropped once the last JWT-SVID of its key
 * has expired (20 s + 30 s + grace), under continuous issuance and continuous mutual TLS between two SDK
 * workloads — zero failed requests, zero SVIDs cut short, the bundle sequence 1 → 2 → 3. Then the same
 * with two replicas on one Redis: one prepares, both switch within a second.
 */
import { X509Certificate } from 'node:crypto';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { TesseraClient } from '../../src/sdk/index.js';
import { RedisStore } from '../../src/store/redis.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { SHARED_REDIS_URL, deletePrefix, redisRequiredUnderCi, sharedRedis, uniquePrefix } from '../helpers/redis.js';
import { cleanRotationTemps, rotatingConfig } from '../helpers/rotation.js';

const redis = await sharedRedis();
const S = 1000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const A = 'spiffe://example.org/ns/shop/sa/web';
const B = 'spiffe://example.org/ns/payments/sa/api';
afterAll(cleanRotationTemps);

interface Issued {
  requestedAt: number;
  notAfter: number;
  /** The signing CA that issued it (the chain's second certificate). */
  issuerPem: string;
  receivedAt: number;
}

/** Issues X.509- and JWT-SVIDs back to back until stopped; every failure is kept. */
class Issuance {
  readonly x509: Issued[] = [];
  readonly jwtKids: { kid: string; receivedAt: number }[] = [];
  readonly failures: string[] = [];
  #stop = false;
  readonly #done: Promise<void>[] = [];

  constructor(private readonly brokers: readonly TestBroker[]) {}

  start(): void {
    for (const b of this.brokers) {
      this.#done.push(this.#loop(async () => {
        const requestedAt = Date.now();
        const r = await b.call<{ certificates: string[]; expiresAt: string }>({ path: '/v1/svid/x509', token: await b.token(), body: { keyType: 'ec-p256' } });
        if (r.status !== 200) throw new Error(`x509 ${r.status} ${JSON.stringify(r.json)}`);
        this.x509.push({ requestedAt, notAfter: Date.parse(r.json.expiresAt), issuerPem: r.json.certificates[1] ?? '', receivedAt: Date.now() });
      }));
      this.#done.push(this.#loop(async () => {
        const r = await b.call<{ token: string }>({ path: '/v1/svid/jwt', token: await b.token(), body: { audience: ['payments'] } });
        if (r.status !== 200) throw new Error(`jwt ${r.status} ${JSON.stringify(r.json)}`);
        const header = JSON.parse(Buffer.from(r.json.token.split('.')[0] ?? '', 'base64url').toString()) as { kid: string };
        this.jwtKids.push({ kid: header.kid, receivedAt: Date.now() });
        await sleep(100);
      }));
    }
  }

  async #loop(fn: () => Promise<void>): Promise<void> {
    while (!this.#stop) {
      try {
        await fn();
      } catch (err) {
        this.failures.push((err as Error).message);
      }
    }
  }

  async stop(): Promise<void> {
    this.#stop = true;
    await Promise.all(this.#done);
  }
}

/** Watches GET /v1/bundle: each sequence number with the time it was first seen and its JWT kids. */
class BundleWatch {
  readonly seen: { sequence: number; at: number; kids: string[] }[] = [];
  #stop = false;
  readonly #done: Promise<void>;

  constructor(b: TestBroker) {
    this.#done = (async () => {
      while (!this.#stop) {
        const r = await b.call<{ spiffe_sequence: number; keys: { use: string; kid?: string }[] }>({ method: 'GET', path: '/v1/bundle' });
        const last = this.seen[this.seen.length - 1];
        if (last?.sequence !== r.json.spiffe_sequence) {
          this.seen.push({ sequence: r.json.spiffe_sequence, at: Date.now(), kids: r.json.keys.filter((k) => k.use === 'jwt-svid').map((k) => k.kid ?? '') });
        }
        await sleep(100);
      }
    })();
  }

  async stop(): Promise<void> {
    this.#stop = true;
    await this.#done;
  }
}

/** Two SDK workloads: B serves mTLS and authorises A by SPIFFE ID; A calls B continuously. */
async function mtlsPair(b: TestBroker): Promise<{ ok: () => number; failures: string[]; issuers: Set<string>; stop: () => Promise<void> }> {
  const client = (ns: string, sa: string): TesseraClient =>
    new TesseraClient({ broker: b.url, bundle: b.ca, token: () => b.token({ namespace: ns, serviceAccount: sa }) });
  const a = client('shop', 'web');
  const bb = client('payments', 'api');
  await Promise.all([a.start(), bb.start()]);
  const check = bb.verifyPeer([A]);
  const issuers = new Set<string>();
  const server = https.createServer(bb.serverOptions(), (req, res) => {
    const v = check(req);
    res.statusCode = v.ok ? 200 : 403;
    res.end(v.ok ? v.spiffeId : v.reason);
  });
  bb.attachServer(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const agent = a.httpsAgent({ allowedServerIds: [B] });
  const failures: string[] = [];
  let ok = 0;
  let stop = false;
  const done = (async () => {
    while (!stop) {
      try {
        const body = await new Promise<string>((resolve, reject) => {
          const req = https.request({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
            let data = '';
            res.on('data', (d: Buffer) => (data += d.toString()));
            res.on('end', () => (res.statusCode === 200 ? resolve(data) : reject(new Error(`${res.statusCode}: ${data}`))));
          });
          req.on('error', reject);
          req.end();
        });
        if (body !== A) throw new Error(`unexpected peer ${body}`);
        ok++;
        for (const c of [a, bb]) issuers.add((await c.x509Svid()).chainPem.split('-----END CERTIFICATE-----')[1]?.trim() ?? '');
      } catch (err) {
        failures.push((err as Error).message);
      }
      await sleep(50);
    }
  })();
  return {
    ok: () => ok,
    failures,
    issuers,
    stop: async () => {
      stop = true;
      await done;
      agent.destroy();
      server.close();
      server.closeAllConnections();
      a.close();
      bb.close();
    },
  };
}

async function waitFor(what: string, cond: () => boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

const sameCert = (pem: string, cert: X509Certificate): boolean => pem !== '' && new X509Certificate(pem).raw.equals(cert.raw);

describe('CA rotation, one broker (real time)', () => {
  it('rotates the X.509 CA and the JWT key under continuous issuance and mTLS: no failure, no SVID cut short, bundle 1 → 2 → 3', async () => {
    const { config, firstCa } = await rotatingConfig(24);
    const b = await startBroker({ config });
    const issuance = new Issuance([b]);
    const watch = new BundleWatch(b);
    const pair = await mtlsPair(b);
    try {
      issuance.start();
      const rotation = b.broker.rotation;
      expect(rotation).toBeDefined();
      const firstKid = b.broker.jwt.kid;
      await waitFor('the old authority to be dropped', () => rotation?.current().state.sequence === 3, 90 * S);
      await sleep(1500);
      await issuance.stop();
      await watch.stop();
      await pair.stop();

      expect(issuance.failures).toEqual([]);
      expect(pair.failures).toEqual([]);
      expect(pair.ok()).toBeGreaterThan(50);
      expect(watch.seen.map((s) => s.sequence)).toEqual([1, 2, 3]);
      const [s1, s2, s3] = watch.seen as [(typeof watch.seen)[0], (typeof watch.seen)[0], (typeof watch.seen)[0]];
      expect(s1.kids).toEqual([firstKid]);
      expect(s2.kids).toHaveLength(2);
      const nextKid = s2.kids.find((k) => k !== firstKid) as string;
      expect(s3.kids).toEqual([nextKid]);

      // Every X.509-SVID got its whole TTL (5 s, whole seconds) — the first CA's end cut none short.
      for (const svid of issuance.x509) expect(svid.notAfter).toBeGreaterThanOrEqual(Math.floor((svid.requestedAt + 5 * S) / S) * S - S);
      const fromNew = issuance.x509.filter((s) => !sameCert(s.issuerPem, firstCa));
      const fromOld = issuance.x509.filter((s) => sameCert(s.issuerPem, firstCa));
      expect(fromOld.length).toBeGreaterThan(0);
      expect(fromNew.length).toBeGreaterThan(0);
      // The next CA was in the bundle (its JWT key published) before its first SVID came out.
      expect(Math.min(...fromNew.map((s) => s.receivedAt))).toBeGreaterThan(s2.at);
      const firstNewJwt = issuance.jwtKids.find((j) => j.kid === nextKid);
      expect(firstNewJwt?.receivedAt).toBeGreaterThan(s2.at);
      // Nothing the old CA signed outlived it in the bundle.
      expect(Math.max(...fromOld.map((s) => s.notAfter))).toBeLessThanOrEqual(s3.at);
      expect(Math.max(...issuance.jwtKids.filter((j) => j.kid === firstKid).map((j) => j.receivedAt + 30 * S))).toBeLessThanOrEqual(s3.at);
      // Both workloads moved to the new CA while talking to each other.
      expect(pair.issuers.size).toBe(2);

      // The steps are in the audit log, in order.
      const steps = [];
      for (let i = 0; i < b.broker.audit.size; i++) {
        const [raw] = await b.broker.store.readAuditEntries(i, i + 1);
        const e = JSON.parse((raw as Buffer).toString()) as { type: string; action?: string };
        if (e.type === 'ca.rotated') steps.push(e.action);
      }
      expect(steps).toEqual(['prepare', 'activate', 'drop']);
    } finally {
      await issuance.stop();
      await watch.stop();
      await pair.stop();
      await b.close();
    }
  }, 150_000);
});

describe.skipIf(!redis.ok)('CA rotation, two replicas on one Redis', () => {
  const prefix = uniquePrefix('ca-rotation');
  afterAll(() => deletePrefix(prefix));

  it('one replica prepares, both switch to the same authority within a second, issuance never fails', async () => {
    const { config } = await rotatingConfig(24);
    const store = () => RedisStore.connect({ url: SHARED_REDIS_URL, prefix });
    const r1 = await startBroker({ config: { ...config, replicaId: 'r1' }, store });
    const r2 = await startBroker({ config: { ...config, replicaId: 'r2' }, store });
    const issuance = new Issuance([r1, r2]);
    const first = r1.broker.ca.authorityId;
    expect(r2.broker.ca.authorityId).toBe(first);
    const switchedAt = new Map<string, number>();
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        for (const [name, b] of [['r1', r1], ['r2', r2]] as const) {
          if (!switchedAt.has(name) && b.broker.ca.authorityId !== first) switchedAt.set(name, Date.now());
        }
        await sleep(20);
      }
    })();
    try {
      issuance.start();
      await waitFor('both replicas to switch', () => switchedAt.size === 2, 60 * S);
      await sleep(1000);
      watching = false;
      await watcher;
      await issuance.stop();
      expect(issuance.failures).toEqual([]);
      expect(Math.abs((switchedAt.get('r1') as number) - (switchedAt.get('r2') as number))).toBeLessThan(1000);
      expect(r1.broker.ca.authorityId).toBe(r2.broker.ca.authorityId);
      expect(r1.broker.bundle).toEqual(r2.broker.bundle);
      expect(r1.broker.bundle.spiffe_sequence).toBe(2);
      // Exactly one replica prepared and activated (the shared audit log holds each step once).
      const steps: string[] = [];
      for (let i = 0; i < r1.broker.audit.size; i++) {
        const [raw] = await r1.broker.store.readAuditEntries(i, i + 1);
        const e = JSON.parse((raw as Buffer).toString()) as { type: string; action?: string };
        if (e.type === 'ca.rotated') steps.push(e.action ?? '');
      }
      expect(steps).toEqual(['prepare', 'activate']);
      for (const s of issuance.x509) expect(s.notAfter).toBeGreaterThanOrEqual(Math.floor((s.requestedAt + 5 * S) / S) * S - S);
    } finally {
      watching = false;
      await watcher;
      await issuance.stop();
      await r1.close();
      await r2.close();
    }
  }, 120_000);
});

describe('Redis for the CA rotation replica test', () => {
  redisRequiredUnderCi(redis);
});
