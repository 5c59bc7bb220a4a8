import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { mintCa } from '../ca/x509.js';
import { BundleError, MAX_BUNDLE_BYTES, parseTrustBundle, trustBundleJson } from './bundle-parse.js';

function ca(trustDomain: string): { der: Buffer; key: KeyObject } {
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const now = Date.now();
  const cert = mintCa(
    { commonName: 'Test Root', trustDomain, subjectPublicKey: key.publicKey, notBefore: new Date(now - 60_000), notAfter: new Date(now + 3_600_000), pathLen: 1 },
    { selfSignedKey: key.privateKey },
  );
  return { der: Buffer.from(cert.pem.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64'), key: key.publicKey };
}

const partner = ca('partner.test');
const jwtKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' });
const good = {
  keys: [
    { ...partner.key.export({ format: 'jwk' }), use: 'x509-svid', x5c: [partner.der.toString('base64')] },
    { ...jwtKey, use: 'jwt-svid', kid: 'k1' },
  ],
  spiffe_sequence: 7,
  spiffe_refresh_hint: 60,
};

const refused = (doc: unknown, td = 'partner.test'): string => {
  try {
    parseTrustBundle(typeof doc === 'string' ? doc : JSON.stringify(doc), td);
  } catch (err) {
    expect(err).toBeInstanceOf(BundleError);
    return (err as Error).message;
  }
  throw new Error('accepted');
};

describe('parseTrustBundle', () => {
  it('reads x509-svid and jwt-svid keys, sequence and refresh hint, and round-trips', () => {
    const b = parseTrustBundle(JSON.stringify(good), 'partner.test');
    expect(b.x509Authorities).toHaveLength(1);
    expect(b.jwtAuthorities.map((j) => j.kid)).toEqual(['k1']);
    expect(b.sequence).toBe(7);
    expect(b.refreshHintSeconds).toBe(60);
    const again = parseTrustBundle(trustBundleJson(b), 'partner.test');
    expect(trustBundleJson(again)).toBe(trustBundleJson(b));
  });

  it('refuses a bundle whose authority names another trust domain (a bundle for example.org served as partner.test)', () => {
    expect(refused(good, 'example.org')).toMatch(/names trust domain partner\.test, not example\.org/);
  });

  it('refuses malformed documents and keys with a message naming the field', () => {
    expect(refused('not json')).toMatch(/not JSON/);
    expect(refused([])).toMatch(/not a JSON object/);
    expect(refused({ keys: {} })).toMatch(/keys: expected a list/);
    expect(refused({ keys: [] })).toMatch(/holds no x509-svid or jwt-svid key/);
    expect(refused({ ...good, spiffe_sequence: -1 })).toMatch(/spiffe_sequence/);
    expect(refused({ ...good, spiffe_refresh_hint: 1.5 })).toMatch(/spiffe_refresh_hint/);
    expect(refused({ keys: [{ ...good.keys[1], kid: undefined }] })).toMatch(/kid/);
    expect(refused({ keys: [good.keys[1], good.keys[1]] })).toMatch(/given twice/);
    expect(refused({ keys: [{ ...good.keys[1], d: 'AAAA' }] })).toMatch(/private key member "d"/);
    expect(refused({ keys: [{ ...good.keys[1], kty: 'oct' }] })).toMatch(/kty/);
    expect(refused({ keys: [{ ...good.keys[0], x5c: [] }] })).toMatch(/exactly one certificate/);
    expect(refused({ keys: [{ ...good.keys[0], x5c: ['!!'] }] })).toMatch(/not base64/);
    expect(refused({ keys: [{ ...good.keys[0], x5c: ['AAAA'] }] })).toMatch(/not a DER certificate/);
    // A key smuggled beside a certificate.
    expect(refused({ keys: [{ ...good.keys[0], x: jwtKey.x, y: jwtKey.y }] })).toMatch(/differs from the x5c certificate's key/);
    expect(refused(' '.repeat(MAX_BUNDLE_BYTES + 1))).toMatch(/larger than/);
    expect(refused({ keys: Array.from({ length: 65 }, (_, i) => ({ ...good.keys[1], kid: `k${i}` })) })).toMatch(/more than 64/);
  });

  it('skips keys with a use it does not know', () => {
    const b = parseTrustBundle(JSON.stringify({ keys: [...good.keys, { ...jwtKey, use: 'sig', kid: 'other' }] }), 'partner.test');
    expect(b.jwtAuthorities.map((j) => j.kid)).toEqual(['k1']);
  });

  it('never throws anything but BundleError, whatever the input (fuzz)', () => {
    const jsonish = fc.oneof(
      fc.string(),
      fc.json(),
      fc.record({ keys: fc.array(fc.oneof(fc.object(), fc.record({ kty: fc.constantFrom('EC', 'RSA', 'OKP', 'x'), use: fc.constantFrom('x509-svid', 'jwt-svid', 'x'), kid: fc.string(), x5c: fc.array(fc.base64String()), x: fc.string(), y: fc.string(), crv: fc.string() }, { requiredKeys: [] })), { maxLength: 5 }), spiffe_sequence: fc.anything(), spiffe_refresh_hint: fc.anything() }, { requiredKeys: [] }).map((o) => JSON.stringify(o)),
      // Mutations of a good bundle: one field replaced by anything.
      fc.tuple(fc.nat(1), fc.constantFrom('kty', 'use', 'kid', 'x5c', 'x', 'y', 'crv'), fc.anything()).map(([i, k, v]) => {
        const keys = good.keys.map((x) => ({ ...x })) as Record<string, unknown>[];
        (keys[i] as Record<string, unknown>)[k] = v;
        return JSON.stringify({ ...good, keys });
      }),
    );
    fc.assert(
      fc.property(jsonish, fc.constantFrom('partner.test', 'example.org'), (text, td) => {
        try {
          const b = parseTrustBundle(text, td);
          // Whatever is accepted holds only keys of that trust domain.
          expect(b.trustDomain).toBe(td);
        } catch (err) {
          expect(err).toBeInstanceOf(BundleError);
        }
      }),
      { numRuns: 400 },
    );
  });
});
