import { X509Certificate, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { openssl } from '../../test/helpers/openssl.js';
import { issuerFromPem, mintCa, mintLeaf } from '../ca/x509.js';
import { allowList, parsePemCertificates, spiffeIdOf, splitPem, verifySvid } from './x509.js';

const HOUR = 3_600_000;
const now = Date.now();
const pem = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();

interface Ca {
  cert: X509Certificate;
  certPem: string;
  keyPem: string;
}

function ca(name: string, parent?: Ca, pathLen = 1): Ca {
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const minted = mintCa(
    { commonName: name, trustDomain: 'example.org', subjectPublicKey: key.publicKey, notBefore: new Date(now - HOUR), notAfter: new Date(now + 24 * HOUR), pathLen },
    parent === undefined ? { selfSignedKey: key.privateKey } : issuerFromPem(parent.certPem, parent.keyPem),
  );
  return { cert: new X509Certificate(minted.pem), certPem: minted.pem, keyPem: pem(key.privateKey) };
}

function leaf(issuer: Ca, spiffeId: string, opts: { notBefore?: number; notAfter?: number } = {}): X509Certificate {
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const minted = mintLeaf(issuerFromPem(issuer.certPem, issuer.keyPem), {
    spiffeId,
    dnsNames: [],
    subjectPublicKey: key.publicKey,
    notBefore: new Date(opts.notBefore ?? now - 60_000),
    notAfter: new Date(opts.notAfter ?? now + HOUR),
  });
  return new X509Certificate(minted.pem);
}

let root: Ca;
let inter: Ca;
let otherRoot: Ca;
const WEB = 'spiffe://example.org/ns/shop/sa/web';

beforeAll(() => {
  root = ca('root');
  inter = ca('intermediate', root, 0);
  otherRoot = ca('other root');
});

describe('verifySvid', () => {
  it('accepts leaf → intermediate → bundle root and returns the SPIFFE ID', () => {
    const v = verifySvid({ leaf: leaf(inter, WEB), intermediates: [inter.cert], roots: [root.cert], allowed: new Set([WEB]) });
    expect(v.spiffeId).toBe(WEB);
    expect(v.serial).toMatch(/^[0-9a-f]+$/);
    expect(v.expiresAt.getTime()).toBeGreaterThan(now);
  });

  it('accepts a chain that also carries the root, and a leaf signed by a root directly', () => {
    expect(verifySvid({ leaf: leaf(inter, WEB), intermediates: [inter.cert, root.cert], roots: [root.cert] }).spiffeId).toBe(WEB);
    expect(verifySvid({ leaf: leaf(root, WEB), roots: [otherRoot.cert, root.cert] }).spiffeId).toBe(WEB);
  });

  it('refuses a chain missing its intermediate, or rooted elsewhere', () => {
    expect(() => verifySvid({ leaf: leaf(inter, WEB), roots: [root.cert] })).toThrow(/does not chain/);
    expect(() => verifySvid({ leaf: leaf(inter, WEB), intermediates: [inter.cert], roots: [otherRoot.cert] })).toThrow(/does not chain/);
  });

  it('refuses an intermediate that claims to be the issuer but did not sign', () => {
    // Same subject name as the real intermediate, different key.
    const impostor = ca('intermediate', root, 0);
    expect(() => verifySvid({ leaf: leaf(inter, WEB), intermediates: [impostor.cert], roots: [root.cert] })).toThrow(/does not chain/);
  });

  it('refuses expired and not-yet-valid leaves', () => {
    const expired = leaf(inter, WEB, { notBefore: now - 2 * HOUR, notAfter: now - HOUR });
    expect(() => verifySvid({ leaf: expired, intermediates: [inter.cert], roots: [root.cert] })).toThrow(/expired/);
    const early = leaf(inter, WEB, { notBefore: now + HOUR, notAfter: now + 2 * HOUR });
    expect(() => verifySvid({ leaf: early, intermediates: [inter.cert], roots: [root.cert] })).toThrow(/not valid yet/);
    // …judged at the time given: the same leaf is fine an hour and a half from now.
    expect(verifySvid({ leaf: early, intermediates: [inter.cert], roots: [root.cert], now: now + 1.5 * HOUR }).spiffeId).toBe(WEB);
  });

  it('refuses a CA certificate presented as a leaf', () => {
    expect(() => verifySvid({ leaf: inter.cert, roots: [root.cert] })).toThrow(/CA certificate/);
  });

  it('enforces the allow-list by exact match', () => {
    const l = leaf(inter, WEB);
    expect(() => verifySvid({ leaf: l, intermediates: [inter.cert], roots: [root.cert], allowed: new Set(['spiffe://example.org/ns/shop/sa/api']) })).toThrow(/not allowed/);
    expect(() => verifySvid({ leaf: l, intermediates: [inter.cert], roots: [root.cert], allowed: new Set([`${WEB}/x`, 'spiffe://example.org/ns/shop/sa/WEB']) })).toThrow(/not allowed/);
  });

  it('refuses a certificate with two URI SANs (made by openssl, signed by the intermediate)', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-sdk-x509-'));
    const f = (n: string, c: string): string => {
      writeFileSync(path.join(dir, n), c);
      return path.join(dir, n);
    };
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const csr = openssl(['req', '-new', '-key', f('k.pem', pem(key.privateKey)), '-subj', '/CN=x']);
    expect(csr.status, csr.stderr).toBe(0);
    const ext = f('ext.cnf', `basicConstraints=critical,CA:FALSE\nsubjectAltName=URI:${WEB},URI:spiffe://example.org/ns/shop/sa/api\n`);
    const signed = openssl(['x509', '-req', '-in', f('csr.pem', csr.stdout), '-CA', f('ca.pem', inter.certPem), '-CAkey', f('ca.key', inter.keyPem), '-days', '1', '-extfile', ext]);
    expect(signed.status, signed.stderr).toBe(0);
    const two = new X509Certificate(signed.stdout);
    expect(() => verifySvid({ leaf: two, intermediates: [inter.cert], roots: [root.cert] })).toThrow(/exactly one URI SAN/);
  });
});

describe('helpers', () => {
  it('spiffeIdOf refuses a trust-domain ID', () => {
    expect(() => spiffeIdOf(root.cert)).toThrow(/trust-domain ID/);
  });

  it('splitPem and parsePemCertificates read concatenated PEM and refuse garbage', () => {
    expect(splitPem(`junk\n${inter.certPem}\n${root.certPem}`)).toHaveLength(2);
    expect(parsePemCertificates(inter.certPem + root.certPem, 'x')).toHaveLength(2);
    expect(() => parsePemCertificates('nothing here', 'the bundle')).toThrow(/no PEM certificate/);
    expect(() => parsePemCertificates('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n', 'x')).toThrow(/does not parse/);
  });

  it('allowList validates every ID', () => {
    expect(allowList([WEB], 'x').has(WEB)).toBe(true);
    expect(() => allowList([], 'x')).toThrow(/at least one/);
    expect(() => allowList(['https://example.org/x'], 'x')).toThrow(/not a valid SPIFFE ID/);
  });
});
