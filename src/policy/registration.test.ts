import { describe, expect, it } from 'vitest';
import type { Identity } from '../attest/identity.js';
import type { RegistrationEntry, SvidConfig } from '../config/config.js';
import { BrokerError } from '../errors.js';
import { type PolicyEntry, RegistrationPolicy } from './registration.js';
import { parseSelectors } from './selectors.js';

const svid: SvidConfig = { x509DefaultTtlSeconds: 3600, x509MaxTtlSeconds: 7200, jwtDefaultTtlSeconds: 300, jwtMaxTtlSeconds: 900 };

const entries: RegistrationEntry[] = [
  { selector: { namespace: '*', serviceAccount: '*' }, dnsNames: [], jwtAudiences: ['everyone'], federatesWith: [] },
  { selector: { namespace: 'shop', serviceAccount: '*' }, dnsNames: [], jwtAudiences: ['inventory'], x509TtlSeconds: 1800, federatesWith: [] },
  { selector: { namespace: 'shop', serviceAccount: 'web' }, dnsNames: ['web.shop.svc'], jwtAudiences: ['payments'], x509TtlSeconds: 600, federatesWith: ['partner.test'] },
  { selector: { namespace: 'legacy', serviceAccount: 'app' }, spiffePath: '/legacy/{serviceAccount}', dnsNames: [], jwtAudiences: [], federatesWith: [] },
];

function token(namespace: string, serviceAccount: string): Identity {
  return { spiffeId: `spiffe://example.org/ns/${namespace}/sa/${serviceAccount}`, trustDomain: 'example.org', source: 'k8s-sa-token', claims: { namespace, serviceAccount } };
}
function mtls(spiffeId: string, trustDomain = 'example.org'): Identity {
  return { spiffeId, trustDomain, source: 'mtls', claims: { namespace: '', serviceAccount: '' } };
}
function expectForbidden(fn: () => unknown): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(BrokerError);
    expect((err as BrokerError).status).toBe(403);
    return;
  }
  throw new Error('expected 403');
}

describe('RegistrationPolicy', () => {
  const policy = new RegistrationPolicy('example.org', entries, svid);

  it('picks the most specific entry', () => {
    expect(policy.x509(token('shop', 'web'))).toEqual({
      spiffeId: 'spiffe://example.org/ns/shop/sa/web',
      namespace: 'shop',
      entryId: 'config-2',
      selectors: ['k8s:ns:shop', 'k8s:sa:web'],
      dnsNames: ['web.shop.svc'],
      federatesWith: ['partner.test'],
      ttlMs: 600_000,
    });
    expect(policy.x509(token('shop', 'cart')).ttlMs).toBe(1_800_000);
    expect(policy.x509(token('shop', 'cart')).federatesWith).toEqual([]);
    expect(policy.x509(token('other', 'x')).ttlMs).toBe(3_600_000);
  });

  it('caps requested TTLs by the entry and by the global maximum', () => {
    expect(policy.x509(token('shop', 'web'), 86_400).ttlMs).toBe(600_000);
    expect(policy.x509(token('shop', 'web'), 120).ttlMs).toBe(120_000);
    expect(policy.x509(token('other', 'x'), 86_400).ttlMs).toBe(7_200_000);
    expect(policy.jwt(token('other', 'x'), ['everyone'], 86_400).ttlMs).toBe(900_000);
  });

  it('grants only the audiences of the governing entry', () => {
    expect(policy.jwt(token('shop', 'web'), ['payments']).audiences).toEqual(['payments']);
    expectForbidden(() => policy.jwt(token('shop', 'web'), ['inventory']));
    expectForbidden(() => policy.jwt(token('shop', 'web'), ['payments', 'bank']));
  });

  it('denies by default', () => {
    const strict = new RegistrationPolicy('example.org', entries.slice(1), svid);
    expectForbidden(() => strict.x509(token('other', 'x')));
    expectForbidden(() => new RegistrationPolicy('example.org', [], svid).x509(token('shop', 'web')));
  });

  it('applies custom SPIFFE paths and recognises them on mTLS renewal', () => {
    expect(policy.x509(token('legacy', 'app')).spiffeId).toBe('spiffe://example.org/legacy/app');
    expect(policy.x509(mtls('spiffe://example.org/legacy/app')).spiffeId).toBe('spiffe://example.org/legacy/app');
    expect(policy.x509(mtls('spiffe://example.org/ns/shop/sa/web')).dnsNames).toEqual(['web.shop.svc']);
  });

  it('refuses renewals that today’s policy would not issue', () => {
    const strict = new RegistrationPolicy('example.org', entries.slice(1), svid);
    expectForbidden(() => strict.x509(mtls('spiffe://example.org/ns/other/sa/x')));
    expectForbidden(() => strict.x509(mtls('spiffe://example.org/legacy/other')));
    expectForbidden(() => strict.x509(mtls('spiffe://example.org/something/else')));
    expectForbidden(() => policy.x509(mtls('spiffe://evil.org/ns/shop/sa/web', 'evil.org')));
  });
});

describe('RegistrationPolicy with stored entries (selectors)', () => {
  const stored = (id: string, spiffeId: string, selectors: string[], extra: Partial<PolicyEntry> = {}): PolicyEntry => ({
    id,
    source: 'api',
    spiffeId,
    selectors: parseSelectors(selectors, true),
    dnsNames: [],
    jwtAudiences: ['payments'],
    federatesWith: [],
    ...extra,
  });
  function pod(namespace: string, serviceAccount: string, extra: string[] = []): Identity {
    return {
      ...token(namespace, serviceAccount),
      selectors: [`k8s:ns:${namespace}`, `k8s:sa:${serviceAccount}`, `k8s:pod-uid:u-1`, ...extra],
    };
  }
  function expectCode(fn: () => unknown, code: string, status: number): BrokerError {
    try {
      fn();
    } catch (err) {
      expect(err).toBeInstanceOf(BrokerError);
      expect([(err as BrokerError).code, (err as BrokerError).status]).toEqual([code, status]);
      return err as BrokerError;
    }
    throw new Error(`expected ${code}`);
  }

  it('matches when the workload has every selector, labels included', () => {
    const policy = new RegistrationPolicy('example.org', [], svid);
    policy.replaceStored([stored('e1', 'spiffe://example.org/shop/web', ['k8s:ns:shop', 'k8s:pod-label:app:web'], { dnsNames: ['web.shop.svc'] })]);
    const grant = policy.x509(pod('shop', 'web', ['k8s:pod-label:app:web', 'k8s:pod-label:tier:front']));
    expect(grant).toMatchObject({ spiffeId: 'spiffe://example.org/shop/web', entryId: 'e1', selectors: ['k8s:ns:shop', 'k8s:pod-label:app:web'], dnsNames: ['web.shop.svc'] });
    // Without the label, or in another namespace, nothing matches (default deny).
    expectForbidden(() => policy.x509(pod('shop', 'web', ['k8s:pod-label:app:cart'])));
    expectForbidden(() => policy.x509(pod('other', 'web', ['k8s:pod-label:app:web'])));
    // A token identity without attested labels proves namespace, service account and pod only.
    expectForbidden(() => policy.x509(token('shop', 'web')));
  });

  it('several matches: the most specific wins; the caller may pick by SPIFFE ID; a tie is 409', () => {
    const policy = new RegistrationPolicy('example.org', entries, svid);
    policy.replaceStored([
      stored('e1', 'spiffe://example.org/shop/web', ['k8s:ns:shop', 'k8s:sa:web', 'k8s:pod-label:app:web']),
      stored('e2', 'spiffe://example.org/shop/web-canary', ['k8s:ns:shop', 'k8s:sa:web', 'k8s:pod-label:track:canary']),
    ]);
    // One label: e1 (3 selectors) beats the config entry shop/web (2).
    expect(policy.x509(pod('shop', 'web', ['k8s:pod-label:app:web'])).spiffeId).toBe('spiffe://example.org/shop/web');
    const both = pod('shop', 'web', ['k8s:pod-label:app:web', 'k8s:pod-label:track:canary']);
    expect(policy.spiffeIds(both).sort()).toEqual([
      'spiffe://example.org/ns/shop/sa/web',
      'spiffe://example.org/shop/web',
      'spiffe://example.org/shop/web-canary',
    ]);
    const tie = expectCode(() => policy.x509(both), 'ambiguous_registration', 409);
    expect(tie.message).toMatch(/e1, e2 match/);
    expect(tie.message).toContain('spiffe://example.org/shop/web-canary');
    expect(policy.x509(both, undefined, 'spiffe://example.org/shop/web-canary')).toMatchObject({ entryId: 'e2' });
    expect(policy.jwt(both, ['payments'], undefined, 'spiffe://example.org/ns/shop/sa/web')).toMatchObject({ entryId: 'config-2' });
    expectForbidden(() => policy.x509(both, undefined, 'spiffe://example.org/somebody/else'));
  });

  it('renews an SVID of a stored entry while the entry exists; not after it is deleted', () => {
    const policy = new RegistrationPolicy('example.org', [], svid);
    policy.replaceStored([stored('e1', 'spiffe://example.org/shop/web', ['k8s:ns:shop', 'k8s:pod-label:app:web'])]);
    expect(policy.x509(mtls('spiffe://example.org/shop/web'))).toMatchObject({ entryId: 'e1', namespace: 'shop' });
    expect(policy.workload(mtls('spiffe://example.org/shop/web'))).toEqual({ spiffeId: 'spiffe://example.org/shop/web', namespace: 'shop', serviceAccount: '*' });
    policy.replaceStored([]);
    expectForbidden(() => policy.x509(mtls('spiffe://example.org/shop/web')));
  });

  it('replaceSeed swaps the config entries and keeps the stored ones', () => {
    const policy = new RegistrationPolicy('example.org', entries, svid);
    policy.replaceStored([stored('e1', 'spiffe://example.org/x', ['k8s:ns:legacy', 'k8s:sa:app', 'k8s:pod-uid:u-1'])]);
    policy.replaceSeed([]);
    expectForbidden(() => policy.x509(token('shop', 'web')));
    expect(policy.x509(pod('legacy', 'app')).spiffeId).toBe('spiffe://example.org/x');
  });
});
