/**
 * Federation on Redis: two replicas (two connections on one key prefix) agree on relationships and
 * fetched bundles through the Store; one of them fetches when a bundle is due (store lock), the other
 * follows; a relationship deleted on one is gone on the other.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { buildBundle } from '../../src/spiffe/bundle.js';
import { parseTrustBundle, type TrustBundle } from '../../src/spiffe/bundle-parse.js';
import { FederationManager } from '../../src/spiffe/federation.js';
import { RedisStore } from '../../src/store/redis.js';
import { TestClock } from '../helpers/clock.js';
import { deletePrefix, redisRequiredUnderCi, SHARED_REDIS_URL, sharedRedis, uniquePrefix } from '../helpers/redis.js';
import { jwk, rootDer } from '../helpers/trust-domain-fixtures.js';

const redis = await sharedRedis();

const own = buildBundle({ rootCertsDer: [rootDer('example.org')], jwtKeys: [{ kid: 'own', jwk: jwk() }], sequence: 1, refreshHintSeconds: 300 });
const partnerRoot = rootDer('partner.test');
const partnerBundle = (kid: string): TrustBundle =>
  parseTrustBundle(JSON.stringify(buildBundle({ rootCertsDer: [partnerRoot], jwtKeys: [{ kid, jwk: jwk() }], sequence: 1, refreshHintSeconds: 1 })), 'partner.test');

describe.skipIf(!redis.ok)('federation on Redis: replicas agree', () => {
  const prefix = uniquePrefix('federation');
  const stores: RedisStore[] = [];
  const managers: FederationManager[] = [];
  afterAll(async () => {
    for (const m of managers) await m.close();
    for (const s of stores) await s.close();
    await deletePrefix(prefix);
  });

  it('shares relationships and bundles; one replica fetches when due', async () => {
    const clock = TestClock.frozen();
    let fetches = 0;
    let kid = 'k1';
    const replica = async (owner: string): Promise<FederationManager> => {
      const store = await RedisStore.connect({ url: SHARED_REDIS_URL, prefix });
      stores.push(store);
      const m = new FederationManager({
        store, clock, trustDomain: 'example.org', configured: [], ownBundle: () => own, owner, tickMs: 3_600_000,
        fetch: async () => {
          fetches++;
          return partnerBundle(kid);
        },
      });
      managers.push(m);
      await m.start();
      return m;
    };
    const a = await replica('a');
    const b = await replica('b');
    await a.add(a.prepareAdd({ trustDomain: 'partner.test', bundleEndpointUrl: 'https://partner.test/', profile: 'https_web', minRefreshSeconds: 1 }, 'admin'));
    await a.refresh('partner.test');
    await b.tick();
    expect(b.relationship('partner.test')?.source).toBe('api');
    expect(b.bundlesFor(['partner.test'])[0]?.bundle.jwtAuthorities.map((j) => j.kid)).toEqual(['k1']);
    const before = fetches;
    kid = 'k2';
    clock.advance(1001);
    await Promise.all([a.tick(), b.tick()]);
    expect(fetches).toBe(before + 1);
    await Promise.all([a.tick(), b.tick()]);
    for (const m of [a, b]) expect(m.bundlesFor(['partner.test'])[0]?.bundle.jwtAuthorities.map((j) => j.kid)).toEqual(['k2']);
    await b.remove(b.prepareDelete('partner.test').trustDomain);
    await a.tick();
    expect(a.relationship('partner.test')).toBeUndefined();
    expect(a.bundlesFor(['partner.test'])).toEqual([]);
  });
});

describe('Redis availability for the federation suite', () => {
  redisRequiredUnderCi(redis);
});
