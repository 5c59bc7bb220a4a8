import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { spawnSync } from 'node:child_process';
import { createPrivateKey, createPublicKey, generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BrokerError } from '../errors.js';
import { CLOCK_SKEW_BACKDATE_MS, CertificateAuthority } from './authority.js';
import { issuerFromPem, mintCa } from './x509.js';

const TD = 'example.org';
const DAY = 86_400_000;
const pemOf = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();
const p256 = (): { publicKey: KeyObject; privateKey: KeyObject } => generateKeyPairSync('ec', { namedCurve: 'P-256' });
const certTime = (s: string): number => new Date(s).getTime();

interface Ca {
  pem: string;
  keyPem: string;
}

function root(name: string, pathLen: number, nb: number, na: number): Ca {
  const k = p256();
  const c = mintCa({ commonName: name, trustDomain: TD, subjectPublicKey: k.publicKey, notBefore: new Date(nb), notAfter: new Date(na), pathLen }, { selfSignedKey: k.privateKey });
  return { pem: c.pem, keyPem: pemOf(k.privateKey) };
}
function sub(parent: Ca, name: string, pathLen: number, nb: number, na: number): Ca {
  const k = p256();
  const c = mintCa({ commonName: name, trustDomain: TD, subjectPublicKey: k.publicKey, notBefore: new Date(nb), notAfter: new Date(na), pathLen }, issuerFromPem(parent.pem, parent.keyPem));
  return { pem: c.pem, keyPem: pemOf(k.privateKey) };
}

function brokerError(fn: () => unknown): BrokerError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BrokerError);
    return e as BrokerError;
  }
  throw new Error('expected a BrokerError');
}

let tmp: string;
const T0 = Date.now();
let rootCa: Ca;
let interCa: Ca;
let ca: CertificateAuthority;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-authority-'));
  rootCa = root('Root', 2, T0 - DAY, T0 + 3650 * DAY);
  interCa = sub(rootCa, 'Intermediate', 0, T0 - DAY, T0 + 30 * DAY);
  ca = CertificateAuthority.fromPem({ certPem: interCa.pem, keyPem: interCa.keyPem, rootsPem: rootCa.pem });
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function opensslVerifyChain(rootsPem: string, chainPem: readonly string[]): string {
  const dir = fs.mkdtempSync(path.join(tmp, 'v-'));
  fs.writeFileSync(path.join(dir, 'roots.pem'), rootsPem);
  fs.writeFileSync(path.join(dir, 'leaf.pem'), chainPem[0]!);
  fs.writeFileSync(path.join(dir, 'untrusted.pem'), chainPem.slice(1).join(''));
  const args = ['verify', '-x509_strict', '-CAfile', 'roots.pem', ...(chainPem.length > 1 ? ['-untrusted', 'untrusted.pem'] : []), 'leaf.pem'];
  const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
  return `${r.stdout}${r.stderr}`;
}

describe('CertificateAuthority.fromPem', () => {
  it('exposes the trust bundle and signing-cert expiry', () => {
    expect(ca.rootsPem).toBe(rootCa.pem);
    expect(ca.rootCertsDer).toHaveLength(1);
    expect(ca.rootCertsDer[0]!.equals(new X509Certificate(rootCa.pem).raw)).toBe(true);
    expect(ca.signingCertNotAfter).toBe(certTime(new X509Certificate(interCa.pem).validTo));
  });

  it('builds the chain through unordered intermediates up to (not including) the root', () => {
    const r = root('Root3', 2, T0 - DAY, T0 + 3650 * DAY);
    const i1 = sub(r, 'Int1', 1, T0 - DAY, T0 + 300 * DAY);
    const i2 = sub(i1, 'Int2', 0, T0 - DAY, T0 + 30 * DAY);
    const unrelated = sub(rootCa, 'Unrelated', 0, T0 - DAY, T0 + 30 * DAY);
    const other = root('Other', 1, T0 - DAY, T0 + DAY);
    const three = CertificateAuthority.fromPem({ certPem: i2.pem, keyPem: i2.keyPem, intermediatesPem: unrelated.pem + i1.pem, rootsPem: other.pem + r.pem });
    expect(three.rootCertsDer).toHaveLength(2);
    const svid = three.issueX509Svid({ spiffeId: `spiffe://${TD}/w`, dnsNames: [], publicKey: p256().publicKey, ttlMs: 3_600_000, now: Date.now() });
    expect(svid.chainPem).toEqual([svid.certPem, i2.pem, i1.pem]);
    expect(opensslVerifyChain(three.rootsPem, svid.chainPem)).toContain('leaf.pem: OK');
    // Without the middle intermediate the chain cannot be built.
    expect(brokerError(() => CertificateAuthority.fromPem({ certPem: i2.pem, keyPem: i2.keyPem, rootsPem: r.pem })).code).toBe('internal');
  });

  it('accepts a root as the signing CA (chain is the leaf alone)', () => {
    const selfCa = CertificateAuthority.fromPem({ certPem: rootCa.pem, keyPem: rootCa.keyPem, rootsPem: rootCa.pem });
    const svid = selfCa.issueX509Svid({ spiffeId: `spiffe://${TD}/w`, dnsNames: [], publicKey: p256().publicKey, ttlMs: 60_000, now: Date.now() });
    expect(svid.chainPem).toEqual([svid.certPem]);
    expect(opensslVerifyChain(selfCa.rootsPem, svid.chainPem)).toContain('leaf.pem: OK');
  });

  it('rejects misconfiguration with internal errors', () => {
    const other = root('Other', 1, T0 - DAY, T0 + DAY);
    // Same subject name as the real root, different key: names chain, signature does not.
    const impostor = root('Root', 2, T0 - DAY, T0 + DAY);
    const leafLike = ca.issueX509Svid({ spiffeId: `spiffe://${TD}/w`, dnsNames: [], publicKey: p256().publicKey, ttlMs: 60_000, now: Date.now() });
    const cases: Array<Parameters<typeof CertificateAuthority.fromPem>[0]> = [
      { certPem: interCa.pem, keyPem: rootCa.keyPem, rootsPem: rootCa.pem }, // key mismatch
      { certPem: interCa.pem, keyPem: interCa.keyPem, rootsPem: other.pem }, // wrong root
      { certPem: interCa.pem, keyPem: interCa.keyPem, rootsPem: impostor.pem },
      { certPem: interCa.pem, keyPem: interCa.keyPem, rootsPem: '' }, // no roots
      { certPem: interCa.pem, keyPem: interCa.keyPem, rootsPem: `${rootCa.pem}${leafLike.certPem}` }, // non-CA in bundle
      { certPem: interCa.pem, keyPem: interCa.keyPem, rootsPem: `${rootCa.pem}garbage` },
      { certPem: interCa.pem + rootCa.pem, keyPem: interCa.keyPem, rootsPem: rootCa.pem }, // two signing certs
    ];
    for (const opts of cases) {
      const e = brokerError(() => CertificateAuthority.fromPem(opts));
      expect(e.code).toBe('internal');
      expect(e.status).toBe(500);
    }
  });
});

describe('CertificateAuthority.fromFiles', () => {
  it('reads PEM files and reports unreadable ones by name', () => {
    const f = (n: string, c: string): string => {
      const p = path.join(tmp, n);
      fs.writeFileSync(p, c);
      return p;
    };
    const fromFiles = CertificateAuthority.fromFiles({
      certFile: f('int.pem', interCa.pem),
      keyFile: f('int.key', interCa.keyPem),
      rootsFile: f('roots.pem', rootCa.pem),
      intermediatesFile: f('empty.pem', ''),
    });
    expect(fromFiles.rootsPem).toBe(ca.rootsPem);
    const e = brokerError(() => CertificateAuthority.fromFiles({ certFile: path.join(tmp, 'nope.pem'), keyFile: 'x', rootsFile: 'y' }));
    expect(e.code).toBe('internal');
    expect(e.message).toContain('nope.pem');
  });
});

describe('issueX509Svid', () => {
  it('issues a verifiable SVID with backdated, second-precision validity', () => {
    const now = Date.now();
    const key = p256();
    const svid = ca.issueX509Svid({ spiffeId: `spiffe://${TD}/ns/a/sa/b`, dnsNames: ['b.a.svc'], ipAddresses: ['10.0.0.1'], publicKey: key.publicKey, ttlMs: 3_600_000, now });
    expect(svid.spiffeId).toBe(`spiffe://${TD}/ns/a/sa/b`);
    expect(svid.chainPem).toEqual([svid.certPem, interCa.pem]);
    expect(svid.notBefore).toBe(Math.ceil((now - CLOCK_SKEW_BACKDATE_MS) / 1000) * 1000);
    expect(svid.notAfter).toBe(Math.floor((now + 3_600_000) / 1000) * 1000);
    const x = new X509Certificate(svid.certPem);
    expect(certTime(x.validFrom)).toBe(svid.notBefore);
    expect(certTime(x.validTo)).toBe(svid.notAfter);
    expect(x.serialNumber.toLowerCase()).toBe(svid.serialHex);
    expect(x.publicKey.equals(key.publicKey)).toBe(true);
    expect(x.subjectAltName).toBe(`URI:spiffe://${TD}/ns/a/sa/b, DNS:b.a.svc, IP Address:10.0.0.1`);
    expect(opensslVerifyChain(ca.rootsPem, svid.chainPem)).toContain('leaf.pem: OK');
  });

  it("caps notAfter at the signing certificate's notAfter", () => {
    const svid = ca.issueX509Svid({ spiffeId: `spiffe://${TD}/w`, dnsNames: [], publicKey: p256().publicKey, ttlMs: 365 * DAY, now: Date.now() });
    expect(svid.notAfter).toBe(ca.signingCertNotAfter);
    expect(certTime(new X509Certificate(svid.certPem).validTo)).toBe(ca.signingCertNotAfter);
  });

  it("never backdates before the signing certificate's notBefore", () => {
    const interNb = certTime(new X509Certificate(interCa.pem).validFrom);
    const svid = ca.issueX509Svid({ spiffeId: `spiffe://${TD}/w`, dnsNames: [], publicKey: p256().publicKey, ttlMs: 60_000, now: interNb + 5_000 });
    expect(svid.notBefore).toBe(interNb);
  });

  it('refuses bad TTLs, expired or not-yet-valid signing certs, and weak keys', () => {
    const base = { spiffeId: `spiffe://${TD}/w`, dnsNames: [] as string[], publicKey: p256().publicKey, ttlMs: 60_000, now: Date.now() };
    for (const ttlMs of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(brokerError(() => ca.issueX509Svid({ ...base, ttlMs })).code).toBe('internal');
    }
    expect(brokerError(() => ca.issueX509Svid({ ...base, now: ca.signingCertNotAfter })).code).toBe('ca_expired');
    expect(brokerError(() => ca.issueX509Svid({ ...base, now: T0 - 2 * DAY })).code).toBe('ca_unavailable');
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey;
    expect(brokerError(() => ca.issueX509Svid({ ...base, publicKey: weak })).code).toBe('weak_key');
  });

  it('property: validity always lies within [issuer notBefore, issuer notAfter] and matches the certificate', () => {
    const nb = certTime(new X509Certificate(interCa.pem).validFrom);
    const key = p256().publicKey;
    fc.assert(
      fc.property(fc.integer({ min: nb, max: ca.signingCertNotAfter - 2_000 }), fc.integer({ min: 2_000, max: 400 * DAY }), (now, ttlMs) => {
        const svid = ca.issueX509Svid({ spiffeId: `spiffe://${TD}/p`, dnsNames: [], publicKey: key, ttlMs, now });
        expect(svid.notBefore % 1000).toBe(0);
        expect(svid.notAfter % 1000).toBe(0);
        expect(svid.notBefore).toBeGreaterThanOrEqual(nb);
        expect(svid.notBefore).toBeGreaterThanOrEqual(now - CLOCK_SKEW_BACKDATE_MS);
        expect(svid.notBefore).toBeLessThanOrEqual(now);
        expect(svid.notAfter).toBeLessThanOrEqual(ca.signingCertNotAfter);
        expect(svid.notAfter).toBeLessThanOrEqual(now + ttlMs);
        expect(svid.notAfter).toBeGreaterThan(now - 1000);
        const x = new X509Certificate(svid.certPem);
        expect(certTime(x.validFrom)).toBe(svid.notBefore);
        expect(certTime(x.validTo)).toBe(svid.notAfter);
      }),
      { numRuns: 300 },
    );
  });
});

describe('generateServerKey', () => {
  it('returns a P-256 key pair with a PKCS#8 private key', async () => {
    const { publicKey, privateKeyPem } = await ca.generateServerKey('ec-p256');
    expect(privateKeyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    const priv = createPrivateKey(privateKeyPem);
    expect(priv.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(createPublicKey(priv).equals(publicKey)).toBe(true);
    await expect(ca.generateServerKey('rsa' as 'ec-p256')).rejects.toBeInstanceOf(BrokerError);
  });
});
