import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { discoveryUrl, MAX_DISCOVERY_BYTES, parseDiscoveryDocument } from './discovery.js';
import { JwksKeySource } from './jwks.js';

const ISSUER = 'https://kubernetes.default.svc.cluster.local';
const bytes = (value: unknown): Uint8Array => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value));

describe('discoveryUrl', () => {
  it('appends the well-known path, dropping a trailing slash', () => {
    expect(discoveryUrl(ISSUER).href).toBe(`${ISSUER}/.well-known/openid-configuration`);
    expect(discoveryUrl('https://issuer.example/tenant/').href).toBe('https://issuer.example/tenant/.well-known/openid-configuration');
  });

  it('refuses http and credentials', () => {
    expect(() => discoveryUrl('http://issuer.example')).toThrow(/https/);
    expect(() => discoveryUrl('https://u:p@issuer.example')).toThrow(/credentials/);
  });
});

describe('parseDiscoveryDocument', () => {
  it('returns the https jwks_uri of a document for the configured issuer', () => {
    const doc = { issuer: ISSUER, jwks_uri: 'https://10.0.0.1:6443/openid/v1/jwks#x', response_types_supported: ['id_token'] };
    expect(parseDiscoveryDocument(bytes(doc), ISSUER).href).toBe('https://10.0.0.1:6443/openid/v1/jwks');
  });

  it('refuses a document of another issuer, even one that differs by a slash or case', () => {
    for (const issuer of [`${ISSUER}/`, ISSUER.toUpperCase(), 'https://evil.example', '']) {
      expect(() => parseDiscoveryDocument(bytes({ issuer, jwks_uri: 'https://a.example/jwks' }), ISSUER)).toThrow(/names issuer/);
    }
    expect(() => parseDiscoveryDocument(bytes({ jwks_uri: 'https://a.example/jwks' }), ISSUER)).toThrow(/no "issuer"/);
    expect(() => parseDiscoveryDocument(bytes({ issuer: [ISSUER], jwks_uri: 'https://a.example/jwks' }), ISSUER)).toThrow(/no "issuer"/);
  });

  it('refuses a jwks_uri that is missing, not a URL, not https, or carries credentials', () => {
    const cases: [unknown, RegExp][] = [
      [undefined, /no "jwks_uri"/],
      ['', /no "jwks_uri"/],
      [42, /no "jwks_uri"/],
      ['not a url', /not a URL/],
      ['http://a.example/jwks', /not https/],
      ['file:///etc/passwd', /not https/],
      ['https://user:pw@a.example/jwks', /credentials/],
      [`https://a.example/${'x'.repeat(3000)}`, /too long/],
    ];
    for (const [jwks_uri, error] of cases) {
      expect(() => parseDiscoveryDocument(bytes({ issuer: ISSUER, jwks_uri }), ISSUER)).toThrow(error);
    }
  });

  it('refuses an oversized document, invalid UTF-8 and non-objects', () => {
    const big = bytes({ issuer: ISSUER, jwks_uri: 'https://a.example/jwks', pad: 'x'.repeat(MAX_DISCOVERY_BYTES) });
    expect(() => parseDiscoveryDocument(big, ISSUER)).toThrow(/larger than/);
    expect(() => parseDiscoveryDocument(Uint8Array.from([0x7b, 0xff, 0x7d]), ISSUER)).toThrow(/not UTF-8 JSON/);
    for (const doc of ['null', '[]', '"x"', '1', '{']) expect(() => parseDiscoveryDocument(bytes(doc), ISSUER)).toThrow(/not/);
  });

  it('never throws anything but an Error, and accepts only the configured issuer with an https jwks_uri (fuzz)', () => {
    const value = fc.oneof(fc.constant(ISSUER), fc.constant('https://a.example/jwks'), fc.constant('http://a.example/jwks'), fc.jsonValue());
    const doc = fc.oneof(
      fc.jsonValue(),
      fc.record({ issuer: value, jwks_uri: value }, { requiredKeys: [] }),
      fc.dictionary(fc.oneof(fc.constant('__proto__'), fc.constant('issuer'), fc.constant('jwks_uri'), fc.string()), value),
    );
    const input = fc.oneof(
      doc.map((d) => bytes(JSON.stringify(d) ?? 'null')),
      fc.uint8Array({ maxLength: 512 }),
      fc.string().map((s) => bytes(s)),
    );
    fc.assert(
      fc.property(input, (body) => {
        let result: URL;
        try {
          result = parseDiscoveryDocument(body, ISSUER);
        } catch (err) {
          expect(err).toBeInstanceOf(Error);
          return;
        }
        const parsed = JSON.parse(Buffer.from(body).toString('utf8')) as { issuer: unknown; jwks_uri: unknown };
        expect(parsed.issuer).toBe(ISSUER);
        expect(result.protocol).toBe('https:');
        expect(result.username + result.password).toBe('');
      }),
      { numRuns: 2000 },
    );
  });
});

describe('JwksKeySource with discovery', () => {
  it('takes exactly one key source and a readable caFile', () => {
    expect(() => new JwksKeySource({ issuer: ISSUER, discovery: true, jwksUrl: 'https://a.example/jwks' })).toThrow(/exactly one of jwksFile, jwksUrl and discovery/);
    expect(() => new JwksKeySource({ issuer: ISSUER, discovery: true, caFile: '/nonexistent/ca.pem' })).toThrow(/caFile \/nonexistent\/ca.pem could not be read/);
    expect(() => new JwksKeySource({ issuer: ISSUER, discovery: false })).toThrow(/exactly one/);
  });

  it('fails closed with a clear 401 while no JWKS was ever fetched (an issuer that cannot be reached)', async () => {
    const source = new JwksKeySource({ issuer: 'https://127.0.0.1:1', discovery: true, fetchTimeoutMs: 2000 });
    await expect(source.getKey('ES256', 'k1')).rejects.toMatchObject({ code: 'invalid_token', message: expect.stringMatching(/discovery has not succeeded yet/) });
    expect(source.lastError).toMatch(/127\.0\.0\.1:1/);
  });
});
