import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestClock } from '../../test/helpers/clock.js';
import { EmbeddedStore } from '../store/embedded.js';
import { buildBundle } from './bundle.js';
import type { FetchBundleOptions } from './bundle-fetch.js';
import { BundleError, parseTrustBundle, type TrustBundle } from './bundle-parse.js';
import { FederationManager } from './federation.js';
import { jwk, rootDer } from '../../test/helpers/trust-domain-fixtures.js';

const own = buildBundle({ rootCertsDer: [rootDer('example.org')], jwtKeys: [{ kid: 'own', jwk: jwk() }], sequence: 1, refreshHintSeconds: 300 });
const partnerRoot = rootDer('partner.test');
const partnerBundle = (kid: string, hint?: number): TrustBundle =>
  parseTrustBundle(JSON.stringify(buildBundle({ rootCertsDer: [partnerRoot], jwtKeys: [{ kid, jwk: jwk() }], sequence: 1, refreshHintSeconds: hint ?? 300 })), 'partner.test');

describe('FederationManager', () => {
  let dir: string;
  let store: EmbeddedStore;
  const clock = TestClock.frozen();
  let answer: () => Promise<TrustBundle>;
  const calls: FetchBundleOptions[] = [];
  const managers: FederationManager[] = [];
  const stale: string[] = [];
  const manager = (owner: string): FederationManager => {
    const m = new FederationManager({
      store, clock, trustDomain: 'example.org', configured: [], ownBundle: () => own, owner, tickMs: 3_600_000,
      fetch: async (o) => {
        calls.push(o);
        return answer();
      },
      onStale: (td) => stale.push(td),
    });
    managers.push(m);
    return m;
  };

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'tessera-federation-'));
    store = await EmbeddedStore.open(dir, { fsync: false });
  });
  afterAll(async () => {
    for (const m of managers) await m.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('fetches, shares the bundle with another replica through the store, refreshes at the hint within bounds, keeps the last good one', async () => {
    answer = async () => partnerBundle('k1', 5);
    const a = manager('a');
    const b = manager('b');
    await a.start();
    await b.start();
    await a.add(a.prepareAdd({ trustDomain: 'partner.test', bundleEndpointUrl: 'https://partner.test/bundle', profile: 'https_web', minRefreshSeconds: 10, maxRefreshSeconds: 60, staleAfterSeconds: 30 }, 'admin'));
    const first = await a.refresh('partner.test');
    // Hint 5 s is below minRefreshSeconds 10: the next refresh is 10 s out.
    expect(first.nextRefreshAt - first.fetchedAt).toBe(10_000);
    // The other replica follows from the store, without fetching.
    const fetches = calls.length;
    await b.tick();
    expect(b.bundlesFor(['partner.test'])[0]?.bundle.jwtAuthorities.map((j) => j.kid)).toEqual(['k1']);
    expect(calls.length).toBe(fetches);
    // Not due: no fetch. Due: one replica fetches (store lock), both see the new bundle.
    answer = async () => partnerBundle('k2', 100_000);
    clock.advance(10_001);
    await Promise.all([a.tick(), b.tick()]);
    expect(calls.length).toBe(fetches + 1);
    await a.tick();
    await b.tick();
    expect(a.bundlesFor(['partner.test'])[0]?.bundle.jwtAuthorities.map((j) => j.kid)).toEqual(['k2']);
    expect(b.bundlesFor(['partner.test'])[0]?.bundle.jwtAuthorities.map((j) => j.kid)).toEqual(['k2']);
    // A huge hint is capped at maxRefreshSeconds.
    const capped = a.bundlesFor(['partner.test'])[0];
    expect((capped?.nextRefreshAt ?? 0) - (capped?.fetchedAt ?? 0)).toBe(60_000);
    // The endpoint goes down: the last good bundle stays; past staleAfterSeconds the stale hook fires.
    answer = async () => {
      throw new BundleError('connection refused');
    };
    await expect(a.refresh('partner.test')).rejects.toMatchObject({ code: 'federation_fetch_failed' });
    expect(a.bundlesFor(['partner.test'])[0]?.bundle.jwtAuthorities.map((j) => j.kid)).toEqual(['k2']);
    clock.advance(31_000);
    await a.tick();
    expect(stale).toContain('partner.test');
    expect(a.status()[0]?.ageSeconds).toBeGreaterThanOrEqual(31);
    // Not federated: nothing delivered.
    expect(a.bundlesFor(['other.test'])).toEqual([]);
  });

  it('refuses a foreign bundle that carries a key of our own trust domain', async () => {
    const a = manager('c');
    await a.start();
    // Our own JWT key re-served under the foreign trust domain.
    const ownJwt = own.keys.find((k) => k.use === 'jwt-svid');
    answer = async () => parseTrustBundle(JSON.stringify({ keys: [{ ...ownJwt, kid: 'stolen' }] }), 'sneaky.test');
    await a.add(a.prepareAdd({ trustDomain: 'sneaky.test', bundleEndpointUrl: 'https://sneaky.test/', profile: 'https_web' }, 'admin'));
    await expect(a.refresh('sneaky.test')).rejects.toThrow(/carries a JWT key of our own trust domain/);
    expect(a.bundlesFor(['sneaky.test'])).toEqual([]);
  });

  it('checks relationships: profile rules, not our own trust domain, no duplicates; deletes', async () => {
    const a = manager('d');
    await a.start();
    expect(() => a.prepareAdd({ trustDomain: 'example.org', bundleEndpointUrl: 'https://x/', profile: 'https_web' }, 'x')).toThrow(/own trust domain/);
    expect(() => a.prepareAdd({ trustDomain: 'p.test', bundleEndpointUrl: 'https://x/', profile: 'https_spiffe', endpointSpiffeId: 'spiffe://other.test/e', bootstrapBundle: '{}' }, 'x')).toThrow(/must be in trust domain p\.test/);
    expect(() => a.prepareAdd({ trustDomain: 'p.test', bundleEndpointUrl: 'https://x/', profile: 'https_web', endpointSpiffeId: 'spiffe://p.test/e' }, 'x')).toThrow(/only used with profile https_spiffe/);
    expect(() => a.prepareAdd({ trustDomain: 'partner.test', bundleEndpointUrl: 'https://x/', profile: 'https_web' }, 'x')).toThrow(/already federated/);
    expect(() => a.prepareAdd({ trustDomain: 'p.test', bundleEndpointUrl: 'https://x/', profile: 'https_web', minRefreshSeconds: 60, maxRefreshSeconds: 10 }, 'x')).toThrow(/exceeds/);
    await a.remove(a.prepareDelete('partner.test').trustDomain);
    expect(a.relationship('partner.test')).toBeUndefined();
    expect(() => a.prepareDelete('partner.test')).toThrow(/not federated/);
  });
});
