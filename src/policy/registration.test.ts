import { describe, expect, it } from 'vitest';
import type { Identity } from '../attest/identity.js';
import type { RegistrationEntry, SvidConfig } from '../config/config.js';
import { BrokerError } from '../errors.js';
import { RegistrationPolicy } from './registration.js';

const svid: SvidConfig = { x509DefaultTtlSeconds: 3600, x509MaxTtlSeconds: 7200, jwtDefaultTtlSeconds: 300, jwtMaxTtlSeconds: 900 };

const entries: RegistrationEntry[] = [
  { selector: { namespace: '*', serviceAccount: '*' }, dnsNames: [], jwtAudiences: ['everyone'] },
  { selector: { namespace: 'shop', serviceAccount: '*' }, dnsNames: [], jwtAudiences: ['inventory'], x509TtlSeconds: 1800 },
  { selector: { namespace: 'shop', serviceAccount: 'web' }, dnsNames: ['web.shop.svc'], jwtAudiences: ['payments'], x509TtlSeconds: 600 },
  { selector: { namespace: 'legacy', serviceAccount: 'app' }, spiffePath: '/legacy/{serviceAccount}', dnsNames: [], jwtAudiences: [] },
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
    expect(policy.x509(token('shop', 'web'))).toEqual({ spiffeId: 'spiffe://example.org/ns/shop/sa/web', dnsNames: ['web.shop.svc'], ttlMs: 600_000 });
    expect(policy.x509(token('shop', 'cart')).ttlMs).toBe(1_800_000);
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
