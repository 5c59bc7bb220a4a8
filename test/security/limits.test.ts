/**
 * Rate limits against live brokers: unauthenticated attempts per client address and requests per
 * SPIFFE ID answer 429 rate_limited with Retry-After once over the limit; the first refusal of a window
 * is audited (with the caller when known, never the address) and the rest are only counted; the
 * counters live in the Store, so two replicas on one Redis share them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmbeddedStore } from '../../src/store/embedded.js';
import { RedisStore } from '../../src/store/redis.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { TestClock } from '../helpers/clock.js';
import { deletePrefix, redisRequiredUnderCi, SHARED_REDIS_URL, sharedRedis, uniquePrefix } from '../helpers/redis.js';
import { entries, expectError } from './helpers.js';

const redis = await sharedRedis();

const WEB = 'spiffe://example.org/ns/shop/sa/web';
const x509 = { keyType: 'ec-p256' };

async function metric(b: TestBroker, series: string): Promise<number> {
  const line = (await b.broker.metrics.text()).split('\n').find((l) => l.startsWith(`${series} `));
  return Number(line?.split(' ')[1]);
}

function expectRateLimited(res: Awaited<ReturnType<TestBroker['call']>>, windowSeconds: number): void {
  expectError(res, 429, 'rate_limited');
  const retryAfter = Number(res.headers['retry-after']);
  expect(Number.isInteger(retryAfter), String(res.headers['retry-after'])).toBe(true);
  expect(retryAfter).toBeGreaterThanOrEqual(1);
  expect(retryAfter).toBeLessThanOrEqual(windowSeconds);
}

describe('per source: failed attestations', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await startBroker({ config: { limits: { windowSeconds: 60, attemptsPerSource: 5, issuancesPerIdentity: 100 } } });
  });
  afterAll(async () => {
    await b?.close();
  });

  it('counts bad tokens, then refuses failed attempts with 429 + Retry-After, auditing the first refusal only', async () => {
    const start = b.broker.audit.size;
    // An SVID obtained before the flood: a caller that attests is counted per identity, not per source.
    const svid = await b.call<{ svid: string; privateKey: string }>({ path: '/v1/svid/x509', token: await b.token(), body: x509 });
    expect(svid.status).toBe(200);
    for (let i = 0; i < 5; i++) expectError(await b.call({ path: '/v1/svid/x509', token: 'a.b.c', body: x509 }), 401, 'invalid_token');
    for (let i = 0; i < 5; i++) expectRateLimited(await b.call({ path: '/v1/svid/jwt', token: 'a.b.c', body: { audience: ['payments'] } }), 60);
    // No credential at all is a failed attempt as well.
    expectRateLimited(await b.call({ path: '/v1/svid/x509', body: x509 }), 60);
    // The SVID holder is not locked out by its neighbours' flood.
    const renewed = await b.call({ path: '/v1/svid/x509', body: x509, cert: svid.json.svid, key: svid.json.privateKey });
    expect(renewed.status, renewed.text).toBe(200);

    const log = await entries(b, start);
    const limited = log.filter((e) => e.code === 'rate_limited');
    expect(limited).toHaveLength(1);
    expect(limited[0]).toMatchObject({ type: 'denial', decision: 'deny', actor: null });
    expect(JSON.stringify(log)).not.toContain('127.0.0.1');
    expect(log.filter((e) => e.code === 'invalid_token')).toHaveLength(5);
    expect(await metric(b, 'tessera_rate_limited_total{scope="source"}')).toBe(6);
  });

  // Regression (issue 12.7): the source limit ran before verification, so a junk-token flood from a
  // node's address locked out every valid workload on that node until the window reset.
  it('a valid token from a flooded address is still served: only failures count against the source', async () => {
    for (let i = 0; i < 8; i++) {
      const res = await b.call({ path: '/v1/svid/jwt', token: 'x.y.z', body: { audience: ['payments'] } });
      expect([401, 429]).toContain(res.status);
    }
    expectRateLimited(await b.call({ path: '/v1/svid/jwt', token: 'x.y.z', body: { audience: ['payments'] } }), 60);
    const token = await b.token({ serviceAccount: 'api' });
    for (let i = 0; i < 3; i++) {
      const res = await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['inventory'] } });
      expect(res.status, res.text).toBe(200);
    }
    expect((await b.call({ path: '/v1/svid/x509', token, body: x509 })).status).toBe(200);
    // The junk goes on being refused.
    expectRateLimited(await b.call({ path: '/v1/svid/jwt', token: 'x.y.z', body: { audience: ['payments'] } }), 60);
  });
});

describe('per identity', () => {
  let b: TestBroker;
  const windowClock = TestClock.frozen();
  beforeAll(async () => {
    b = await startBroker({
      // The store's counters run on a frozen clock: the burst shares one window however slow the machine, and
      // the test steps past it instead of sleeping.
      store: (dir) => EmbeddedStore.open(dir, { clock: windowClock }),
      config: { limits: { windowSeconds: 1, attemptsPerSource: 1000, issuancesPerIdentity: 3 } },
    });
  });
  afterAll(async () => {
    await b?.close();
  });

  it('lets an identity issue up to the limit, refuses the rest naming the caller, and resets with the window', async () => {
    // The embedded store opens a key's window at its first hit, so the burst below shares one window.
    const start = b.broker.audit.size;
    const token = await b.token();
    const results = [];
    for (let i = 0; i < 5; i++) results.push(await b.call({ path: i % 2 ? '/v1/svid/jwt' : '/v1/svid/x509', token, body: i % 2 ? { audience: ['payments'] } : x509 }));
    expect(results.map((r) => r.status)).toEqual([200, 200, 200, 429, 429]);
    expectRateLimited(results[3] as (typeof results)[number], 1);
    // Another identity has its own counter.
    expect((await b.call({ path: '/v1/svid/x509', token: await b.token({ serviceAccount: 'api' }), body: x509 })).status).toBe(200);
    const limited = (await entries(b, start)).filter((e) => e.code === 'rate_limited');
    expect(limited).toHaveLength(1);
    expect(limited[0]).toMatchObject({ actor: WEB, namespace: 'shop', serviceAccount: 'web', decision: 'deny' });
    expect(await metric(b, 'tessera_rate_limited_total{scope="identity"}')).toBe(2);
    windowClock.advance(1_100);
    expect((await b.call({ path: '/v1/svid/x509', token, body: x509 })).status).toBe(200);
  });
});

describe('switched off', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await startBroker({ config: { limits: { enabled: false, attemptsPerSource: 1, issuancesPerIdentity: 1 } } });
  });
  afterAll(async () => {
    await b?.close();
  });

  it('limits.enabled: false never answers 429', async () => {
    const token = await b.token();
    for (let i = 0; i < 5; i++) {
      expect((await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } })).status).toBe(200);
      expect((await b.call({ path: '/v1/svid/jwt', token: 'a.b.c', body: { audience: ['payments'] } })).status).toBe(401);
    }
  });
});

redisRequiredUnderCi(redis);

describe.skipIf(!redis.ok)('shared by replicas through Redis', () => {
  const prefix = uniquePrefix('limits');
  const replicas: TestBroker[] = [];
  beforeAll(async () => {
    for (let i = 0; i < 2; i++) {
      replicas.push(
        await startBroker({
          config: { limits: { windowSeconds: 60, attemptsPerSource: 6, issuancesPerIdentity: 3 } },
          store: () => RedisStore.connect({ url: SHARED_REDIS_URL, prefix }),
        }),
      );
    }
  });
  afterAll(async () => {
    for (const r of replicas) await r.close();
    await deletePrefix(prefix);
  });

  it('one counter for both replicas, per source and per identity', async () => {
    const [a, b] = replicas as [TestBroker, TestBroker];
    const token = await a.token();
    const jwt = { audience: ['payments'] };
    // Identity: 3 in total across both replicas.
    const statuses = [];
    for (const r of [a, b, a, b]) statuses.push((await r.call({ path: '/v1/svid/jwt', token, body: jwt })).status);
    expect(statuses).toEqual([200, 200, 200, 429]);
    // Source: the token attempts that attested are not counted; six failures (three per replica) reach the limit.
    for (const r of [a, b, a, b, a, b]) expect((await r.call({ path: '/v1/svid/jwt', token: 'a.b.c', body: jwt })).status).toBe(401);
    expectRateLimited(await a.call({ path: '/v1/svid/jwt', token: 'a.b.c', body: { audience: ['payments'] } }), 60);
    expectRateLimited(await b.call({ path: '/v1/svid/jwt', token: 'a.b.c', body: { audience: ['payments'] } }), 60);
  });
});
