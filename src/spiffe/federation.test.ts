import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestClock } from '../../test/helpers/clock.js';
import { CertificateAuthority } from '../ca/authority.js';
import { mintCa } from '../ca/x509.js';
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

/**
 * A foreign trust domain replaces its root, over a real https_spiffe endpoint and the real fetcher: the
 * endpoint's SVID is checked against the bundle held so far, so the new root must be published (next to
 * the old one) before the endpoint presents an SVID from it — as SPIFFE federation expects. A jump
 * straight to an SVID from an unpublished root is refused and the last good bundle stays.
 */
describe('FederationManager across a foreign root change (https_spiffe, real TLS)', () => {
  const ENDPOINT_ID = 'spiffe://partner.test/tessera/bundle-endpoint';
  interface Root { readonly pem: string; readonly der: Buffer; readonly ca: CertificateAuthority }
  const makeRoot = (): Root => {
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const now = Date.now();
    const cert = mintCa(
      { commonName: 'Partner Root', trustDomain: 'partner.test', subjectPublicKey: key.publicKey, notBefore: new Date(now - 60_000), notAfter: new Date(now + 3_600_000), pathLen: 1 },
      { selfSignedKey: key.privateKey },
    );
    const keyPem = key.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    return { pem: cert.pem, der: new X509Certificate(cert.pem).raw, ca: CertificateAuthority.fromPem({ certPem: cert.pem, keyPem, rootsPem: cert.pem }) };
  };
  const endpointCredential = (root: Root): { key: string; cert: string } => {
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const svid = root.ca.issueX509Svid({ spiffeId: ENDPOINT_ID, dnsNames: [], publicKey, ttlMs: 600_000, now: Date.now() });
    return { key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), cert: svid.chainPem.join('') };
  };
  const bundleOf = (...roots: Root[]): string => JSON.stringify(buildBundle({ rootCertsDer: roots.map((r) => r.der), jwtKeys: [], sequence: roots.length, refreshHintSeconds: 300 }));
  const rootsOf = (m: FederationManager): string[] => (m.bundlesFor(['partner.test'])[0]?.bundle.x509Authorities ?? []).map((c) => c.fingerprint256).sort();

  let dir: string;
  let store: EmbeddedStore;
  let server: https.Server;
  let serving = '';
  let manager: FederationManager;
  const r1 = makeRoot();
  const r2 = makeRoot();

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'tessera-federation-roll-'));
    store = await EmbeddedStore.open(dir, { fsync: false });
    server = https.createServer(endpointCredential(r1), (_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(serving));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    manager = new FederationManager({ store, clock: TestClock.frozen(), trustDomain: 'example.org', configured: [], ownBundle: () => own, owner: 'roll', tickMs: 3_600_000 });
    await manager.start();
    const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    await manager.add(manager.prepareAdd({ trustDomain: 'partner.test', bundleEndpointUrl: url, profile: 'https_spiffe', endpointSpiffeId: ENDPOINT_ID, bootstrapBundle: r1.pem }, 'admin'));
  });
  afterAll(async () => {
    await manager.close();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('follows the roll old → old+new → new, and refuses an SVID from a root it was never shown', async () => {
    const fp = (...roots: Root[]): string[] => roots.map((r) => new X509Certificate(r.pem).fingerprint256).sort();
    serving = bundleOf(r1);
    await manager.refresh('partner.test');
    expect(rootsOf(manager)).toEqual(fp(r1));

    // A jump: the endpoint presents an SVID of the new root before it was published. Refused; r1 stays.
    server.setSecureContext(endpointCredential(r2));
    serving = bundleOf(r2);
    await expect(manager.refresh('partner.test')).rejects.toMatchObject({ code: 'federation_fetch_failed' });
    expect(rootsOf(manager)).toEqual(fp(r1));

    // The roll done right: publish r2 beside r1 (endpoint still on r1), then switch the endpoint, then drop r1.
    server.setSecureContext(endpointCredential(r1));
    serving = bundleOf(r1, r2);
    await manager.refresh('partner.test');
    expect(rootsOf(manager)).toEqual(fp(r1, r2));
    server.setSecureContext(endpointCredential(r2));
    await manager.refresh('partner.test');
    serving = bundleOf(r2);
    await manager.refresh('partner.test');
    expect(rootsOf(manager)).toEqual(fp(r2));

    // From here an endpoint SVID of the old root is no longer trusted.
    server.setSecureContext(endpointCredential(r1));
    await expect(manager.refresh('partner.test')).rejects.toMatchObject({ code: 'federation_fetch_failed' });
    expect(rootsOf(manager)).toEqual(fp(r2));
  });
});
