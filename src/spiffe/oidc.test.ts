import { generateKeyPairSync } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { buildBundle } from './bundle.js';
import { discoveryDocument, issuerProblem, jwksMaxAgeSeconds, oidcJwks } from './oidc.js';

describe('issuerProblem', () => {
  it('accepts https origins in their one canonical spelling', () => {
    for (const ok of ['https://oidc.example.org', 'https://oidc.example.org:8443', 'https://127.0.0.1:9443', 'https://[::1]:9443', 'https://xn--bcher-kva.example']) {
      expect(issuerProblem(ok), ok).toBeUndefined();
    }
  });

  it.each([
    ['http://oidc.example.org', /https/],
    ['oidc.example.org', /https/],
    ['', /https/],
    ['https://oidc.example.org/', /trailing slash.*write https:\/\/oidc\.example\.org\)/],
    ['https://oidc.example.org/tessera', /path is not allowed/],
    ['https://oidc.example.org?x=1', /query or fragment/],
    ['https://oidc.example.org#x', /query or fragment/],
    ['https://oidc.example.org?', /query or fragment/],
    ['https://user:pw@oidc.example.org', /credentials/],
    ['https://OIDC.example.org', /canonical form \(write https:\/\/oidc\.example\.org\)/],
    ['https://oidc.example.org:443', /canonical form/],
    ['https://bücher.example', /canonical form \(write https:\/\/xn--bcher-kva\.example\)/],
    [' https://oidc.example.org', /canonical form/],
  ])('refuses %j', (value, why) => {
    expect(issuerProblem(value)).toMatch(why);
  });

  it('accepts a string only if it is the https origin the URL parser gives back (property)', () => {
    // Query and fragment are appended by hand: fast-check's own generators for them are slow.
    const url = fc.tuple(fc.webUrl(), fc.constantFrom('', '/', '?', '#', '?a=b', '#f', '/p'), fc.boolean()).map(([u, tail, https]) => `${https ? u.replace(/^http:/, 'https:') : u}${tail}`);
    let accepted = 0;
    fc.assert(
      fc.property(fc.oneof(url, fc.string(), fc.string().map((s) => `https://${s}`)), (value) => {
        if (issuerProblem(value) !== undefined) return;
        const u = new URL(value);
        if (u.protocol !== 'https:' || u.origin !== value) throw new Error(`accepted ${JSON.stringify(value)}`);
        accepted++;
      }),
      { numRuns: 500 },
    );
    expect(accepted).toBeGreaterThan(0);
  });

  it('accepts the origin of every https URL (property)', () => {
    fc.assert(
      fc.property(fc.webUrl(), (value) => {
        const origin = new URL(value.replace(/^http:/, 'https:')).origin;
        expect(issuerProblem(origin)).toBeUndefined();
        expect(issuerProblem(`${origin}/`)).toMatch(/trailing slash/);
      }),
      { numRuns: 200 },
    );
  });
});

describe('OIDC JWKS and discovery document', () => {
  const jwk = (): { kid: string; jwk: ReturnType<ReturnType<typeof generateKeyPairSync>['publicKey']['export']> } => ({
    kid: Math.random().toString(36).slice(2),
    jwk: generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' }),
  });

  it('holds every JWT-SVID key of the bundle with kid, alg ES256 and use sig, and no X.509 root', () => {
    const [a, b] = [jwk(), jwk()];
    const bundle = buildBundle({ rootCertsDer: [], jwtKeys: [a, b], sequence: 3, refreshHintSeconds: 300 });
    const withRoot = { ...bundle, keys: [{ kty: 'EC', crv: 'P-256', x: 'x', y: 'y', use: 'x509-svid' as const, x5c: ['AAAA'] }, ...bundle.keys] };
    const jwks = oidcJwks(withRoot);
    expect(jwks.keys).toEqual([
      { kty: 'EC', crv: 'P-256', x: a.jwk.x, y: a.jwk.y, kid: a.kid, alg: 'ES256', use: 'sig' },
      { kty: 'EC', crv: 'P-256', x: b.jwk.x, y: b.jwk.y, kid: b.kid, alg: 'ES256', use: 'sig' },
    ]);
    const doc = discoveryDocument('https://oidc.example.org', jwks);
    expect(doc).toEqual({
      issuer: 'https://oidc.example.org',
      jwks_uri: 'https://oidc.example.org/.well-known/jwks.json',
      response_types_supported: ['id_token'],
      subject_types_supported: ['public'],
      id_token_signing_alg_values_supported: ['ES256'],
      claims_supported: ['aud', 'exp', 'iat', 'iss', 'jti', 'sub'],
    });
  });

  it('refuses to publish a key whose algorithm it cannot name', () => {
    const bundle = { keys: [{ kty: 'OKP', crv: 'Ed25519', x: 'x', kid: 'k', use: 'jwt-svid' as const }], spiffe_sequence: 1, spiffe_refresh_hint: 300 };
    expect(() => oidcJwks(bundle)).toThrow(/no JWS algorithm/);
  });

  it('caches for at most half the lead a rotated-in key is published with', () => {
    expect(jwksMaxAgeSeconds(300, undefined)).toBe(300);
    expect(jwksMaxAgeSeconds(300, 7 * 86_400)).toBe(300);
    // caTtl 30 s: published at 15 s, signing at 25 s: a cache of 5 s has it in time.
    expect(jwksMaxAgeSeconds(300, 30)).toBe(5);
  });
});
