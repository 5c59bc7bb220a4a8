import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { spawnSync } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, webcrypto, X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import { BlockList, isIPv6 } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { BrokerError } from '../errors.js';
import { parseCsrPem } from './csr.js';
import { TAG, readDer, readInteger, readOid, readUnsignedIntegerBytes, type DerNode } from './der.js';
import { ipAddressBytes, issuerFromPem, mintCa, mintLeaf, splitPemCertificates, type IssuerMaterial } from './x509.js';

// @peculiar/x509 (tests only) needs the Reflect metadata polyfill loaded before it.
async function loadPeculiar(): Promise<typeof import('@peculiar/x509')> {
  await import('reflect-metadata');
  const x509 = await import('@peculiar/x509');
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  return x509;
}
type Peculiar = Awaited<ReturnType<typeof loadPeculiar>>;

const TD = 'example.org';
const HOUR = 3_600_000;
const pemOf = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();
const sha1 = (b: Uint8Array): string => createHash('sha1').update(b).digest('hex');
/** subjectPublicKey BIT STRING value of a key (independent of x509.ts: via our reader only). */
const keyBits = (k: KeyObject): Buffer => readDer((k.type === 'private' ? createPublicKey(k) : k).export({ type: 'spki', format: 'der' })).children[1]!.content.subarray(1);

function internalError(fn: () => unknown): BrokerError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BrokerError);
    return e as BrokerError;
  }
  throw new Error('expected a BrokerError');
}

interface Pki {
  rootKey: KeyObject;
  rootPem: string;
  root: IssuerMaterial;
  interKey: KeyObject;
  interPem: string;
  inter: IssuerMaterial;
}

function makePki(kind: 'ec-p256' | 'ec-p384' | 'ed25519' | 'rsa' = 'ec-p256', now = Date.now()): Pki {
  const gen = (): { publicKey: KeyObject; privateKey: KeyObject } =>
    kind === 'ec-p256'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : kind === 'ec-p384'
        ? generateKeyPairSync('ec', { namedCurve: 'P-384' })
        : kind === 'ed25519'
          ? generateKeyPairSync('ed25519')
          : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const rk = gen();
  const root = mintCa(
    { commonName: 'Test Root', trustDomain: TD, subjectPublicKey: rk.publicKey, notBefore: new Date(now - HOUR), notAfter: new Date(now + 1000 * 24 * HOUR), pathLen: 1 },
    { selfSignedKey: rk.privateKey },
  );
  const rootIssuer = issuerFromPem(root.pem, pemOf(rk.privateKey));
  const ik = gen();
  const inter = mintCa(
    { commonName: 'Test Intermediate', trustDomain: TD, subjectPublicKey: ik.publicKey, notBefore: new Date(now - HOUR), notAfter: new Date(now + 100 * 24 * HOUR), pathLen: 0 },
    rootIssuer,
  );
  return { rootKey: rk.privateKey, rootPem: root.pem, root: rootIssuer, interKey: ik.privateKey, interPem: inter.pem, inter: issuerFromPem(inter.pem, pemOf(ik.privateKey)) };
}

let tmp: string;
let x509: Peculiar;
let pki: Pki;

function opensslVerify(rootPem: string, interPem: string, leafPem: string, extra: string[] = []): { ok: boolean; out: string } {
  const dir = fs.mkdtempSync(path.join(tmp, 'v-'));
  fs.writeFileSync(path.join(dir, 'root.pem'), rootPem);
  fs.writeFileSync(path.join(dir, 'intermediate.pem'), interPem);
  fs.writeFileSync(path.join(dir, 'leaf.pem'), leafPem);
  const r = spawnSync('openssl', ['verify', '-x509_strict', ...extra, '-CAfile', 'root.pem', '-untrusted', 'intermediate.pem', 'leaf.pem'], { cwd: dir, encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

function opensslText(pem: string): string {
  const r = spawnSync('openssl', ['x509', '-noout', '-text'], { input: pem, encoding: 'utf8' });
  expect(r.status).toBe(0);
  return r.stdout;
}

/** Extensions of a certificate as OID -> { critical, value }, via our own reader. */
function extensionsOf(der: Buffer): Map<string, { critical: boolean; value: Buffer }> {
  const tbs = readDer(der).children[0]!;
  const extsWrapper = tbs.children.find((c) => c.tag === 0xa3)!;
  const out = new Map<string, { critical: boolean; value: Buffer }>();
  for (const e of extsWrapper.children[0]!.children) {
    const id = readOid(e.children[0]!);
    expect(out.has(id)).toBe(false); // no duplicate extensions
    out.set(id, { critical: e.children.length === 3, value: e.children[e.children.length - 1]!.content });
  }
  return out;
}

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-x509-'));
  x509 = await loadPeculiar();
  pki = makePki();
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('mintLeaf (SPIFFE X509-SVID profile)', () => {
  const spiffeId = `spiffe://${TD}/ns/prod/sa/web`;
  const dnsNames = ['web.prod.svc', '*.apps.example.org'];
  const ipAddresses = ['10.1.2.3', '2001:db8::1', '::ffff:192.0.2.1'];
  let leafKey: { publicKey: KeyObject; privateKey: KeyObject };
  let leaf: ReturnType<typeof mintLeaf>;
  let notBefore: Date;
  let notAfter: Date;

  beforeAll(() => {
    leafKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    notBefore = new Date(Date.now() - 60_000);
    notAfter = new Date(Date.now() + HOUR);
    leaf = mintLeaf(pki.inter, { spiffeId, dnsNames, ipAddresses, subjectPublicKey: leafKey.publicKey, notBefore, notAfter });
  });

  it('has every field right according to @peculiar/x509', async () => {
    const cert = new x509.X509Certificate(leaf.pem);
    const interCert = new x509.X509Certificate(pki.interPem);

    // serial: 16-byte positive magnitude, matches serialHex
    expect(cert.serialNumber.toLowerCase().replace(/^00/, '')).toBe(leaf.serialHex);
    expect(leaf.serialHex).toMatch(/^[0-9a-f]{32}$/);
    expect(leaf.serialHex.startsWith('00')).toBe(false);

    expect(cert.issuer).toBe(interCert.subject);
    expect(Buffer.from(cert.issuerName.toArrayBuffer()).equals(pki.inter.subjectNameDer)).toBe(true);
    expect(cert.subject).toBe('O=Tessera');
    expect(cert.notBefore.getTime()).toBe(Math.floor(notBefore.getTime() / 1000) * 1000);
    expect(cert.notAfter.getTime()).toBe(Math.floor(notAfter.getTime() / 1000) * 1000);
    expect(cert.signatureAlgorithm).toMatchObject({ name: 'ECDSA', hash: { name: 'SHA-256' } });

    expect(cert.extensions).toHaveLength(6);
    const bc = cert.getExtension(x509.BasicConstraintsExtension)!;
    expect(bc.ca).toBe(false);
    expect(bc.pathLength).toBeUndefined();
    expect(bc.critical).toBe(true);
    const ku = cert.getExtension(x509.KeyUsagesExtension)!;
    expect(ku.usages).toBe(x509.KeyUsageFlags.digitalSignature);
    expect(ku.critical).toBe(true);
    const eku = cert.getExtension(x509.ExtendedKeyUsageExtension)!;
    expect([...eku.usages].sort()).toEqual([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth].sort());
    expect(eku.critical).toBe(false);
    const san = cert.getExtension(x509.SubjectAlternativeNameExtension)!;
    expect(san.critical).toBe(false);
    const names = san.names.toJSON();
    expect(names.filter((n) => n.type === 'url')).toEqual([{ type: 'url', value: spiffeId }]);
    expect(names.filter((n) => n.type === 'dns').map((n) => n.value)).toEqual(dnsNames);
    const ips = names.filter((n) => n.type === 'ip').map((n) => n.value);
    expect(ips).toHaveLength(ipAddresses.length);
    ipAddresses.forEach((ip, i) => {
      const bl = new BlockList();
      bl.addAddress(ip, isIPv6(ip) ? 'ipv6' : 'ipv4');
      expect(bl.check(ips[i]!, isIPv6(ips[i]!) ? 'ipv6' : 'ipv4')).toBe(true);
    });
    expect(names).toHaveLength(1 + dnsNames.length + ipAddresses.length);
    const ski = cert.getExtension(x509.SubjectKeyIdentifierExtension)!;
    expect(ski.keyId).toBe(sha1(keyBits(leafKey.publicKey)));
    const aki = cert.getExtension(x509.AuthorityKeyIdentifierExtension)!;
    expect(aki.keyId).toBe(interCert.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId);
    expect(aki.keyId).toBe(pki.inter.subjectKeyId.toString('hex'));
    expect(aki.certId).toBeUndefined();

    const spki = Buffer.from(cert.publicKey.rawData);
    expect(spki.equals(leafKey.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
    expect(await cert.verify({ publicKey: interCert, signatureOnly: true })).toBe(true);
    expect(await cert.verify({ publicKey: cert, signatureOnly: true })).toBe(false);
  });

  it('encodes version, serial and SAN exactly as DER requires (own reader)', () => {
    const tbs = readDer(leaf.der).children[0]!;
    const [version, serial] = tbs.children as [DerNode, DerNode];
    expect(version.tag).toBe(0xa0);
    expect(readInteger(version.children[0]!)).toBe(2n);
    expect(readInteger(serial)).toBeGreaterThan(0n);
    expect(readUnsignedIntegerBytes(serial)).toHaveLength(16);
    expect(serial.content.length).toBe((serial.content[0]! === 0 ? 17 : 16));
    const exts = extensionsOf(leaf.der);
    expect([...exts.keys()]).toEqual(['2.5.29.19', '2.5.29.15', '2.5.29.37', '2.5.29.17', '2.5.29.14', '2.5.29.35']);
    // basicConstraints with cA FALSE must be an empty SEQUENCE (DEFAULT omitted)
    expect(exts.get('2.5.29.19')!.value.toString('hex')).toBe('3000');
    expect(exts.get('2.5.29.15')!.value.toString('hex')).toBe('03020780');
    const san = readDer(exts.get('2.5.29.17')!.value);
    expect(san.children.filter((c) => c.tag === 0x86)).toHaveLength(1);
    expect(san.children.filter((c) => c.tag === 0x87).map((c) => c.content.length)).toEqual([4, 16, 16]);
  });

  it('is accepted by node:crypto X509Certificate', () => {
    const leafX = new X509Certificate(leaf.pem);
    const interX = new X509Certificate(pki.interPem);
    const rootX = new X509Certificate(pki.rootPem);
    expect(leafX.checkIssued(interX)).toBe(true);
    expect(leafX.verify(interX.publicKey)).toBe(true);
    expect(leafX.verify(rootX.publicKey)).toBe(false);
    expect(interX.checkIssued(rootX)).toBe(true);
    expect(interX.verify(rootX.publicKey)).toBe(true);
    expect(rootX.checkIssued(rootX)).toBe(true);
    expect(rootX.verify(rootX.publicKey)).toBe(true);
    expect(leafX.ca).toBe(false);
    expect(interX.ca).toBe(true);
    expect(leafX.publicKey.equals(leafKey.publicKey)).toBe(true);
    expect(leafX.checkPrivateKey(leafKey.privateKey)).toBe(true);
    expect(leafX.subjectAltName).toBe(
      `URI:${spiffeId}, DNS:web.prod.svc, DNS:*.apps.example.org, IP Address:10.1.2.3, IP Address:2001:DB8:0:0:0:0:0:1, IP Address:0:0:0:0:0:FFFF:C000:201`,
    );
    expect(leafX.keyUsage.sort()).toEqual(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    expect(leafX.serialNumber.toLowerCase()).toBe(leaf.serialHex);
    expect(leafX.checkHost('web.prod.svc')).toBe('web.prod.svc');
    expect(leafX.checkIP('10.1.2.3')).toBe('10.1.2.3');
  });

  it('passes `openssl verify -x509_strict` for the chain and as TLS server and client', () => {
    for (const purpose of [[], ['-purpose', 'sslserver'], ['-purpose', 'sslclient']]) {
      const r = opensslVerify(pki.rootPem, pki.interPem, leaf.pem, purpose);
      expect(r.out).toContain('leaf.pem: OK');
      expect(r.ok).toBe(true);
    }
    // Without the intermediate, or against another root, verification must fail.
    expect(opensslVerify(pki.rootPem, makePki().interPem, leaf.pem).ok).toBe(false);
    expect(opensslVerify(makePki().rootPem, pki.interPem, leaf.pem).ok).toBe(false);
    const text = opensslText(leaf.pem);
    expect(text).toContain('Version: 3 (0x2)');
    expect(text).toMatch(/X509v3 Basic Constraints: critical\s+CA:FALSE/);
    expect(text).toMatch(/X509v3 Key Usage: critical\s+Digital Signature\n/);
    expect(text).toMatch(/TLS Web Server Authentication, TLS Web Client Authentication/);
    expect(text).toContain(`URI:${spiffeId}`);
  });

  it('adds keyEncipherment for an RSA subject key and verifies in openssl', async () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const r = mintLeaf(pki.inter, { spiffeId, dnsNames: [], subjectPublicKey: rsa.publicKey, notBefore, notAfter });
    const ku = new x509.X509Certificate(r.pem).getExtension(x509.KeyUsagesExtension)!;
    expect(ku.usages).toBe(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment);
    expect(ku.critical).toBe(true);
    expect(extensionsOf(r.der).get('2.5.29.15')!.value.toString('hex')).toBe('030205a0');
    expect(opensslVerify(pki.rootPem, pki.interPem, r.pem).ok).toBe(true);
    // Without DNS/IP names the SAN holds the URI alone.
    expect(new X509Certificate(r.pem).subjectAltName).toBe(`URI:${spiffeId}`);
  });

  it('certifies Ed25519 and P-384 subject keys', () => {
    for (const k of [generateKeyPairSync('ed25519'), generateKeyPairSync('ec', { namedCurve: 'P-384' })]) {
      const r = mintLeaf(pki.inter, { spiffeId, dnsNames: ['a.b'], subjectPublicKey: k.publicKey, notBefore, notAfter });
      expect(new X509Certificate(r.pem).publicKey.equals(k.publicKey)).toBe(true);
      expect(opensslVerify(pki.rootPem, pki.interPem, r.pem).ok).toBe(true);
    }
  });

  it.each(['ec-p384', 'ed25519', 'rsa'] as const)('works with a %s issuer hierarchy', (kind) => {
    const p = makePki(kind);
    const r = mintLeaf(p.inter, { spiffeId, dnsNames: ['x.y'], subjectPublicKey: leafKey.publicKey, notBefore, notAfter });
    const leafX = new X509Certificate(r.pem);
    expect(leafX.verify(new X509Certificate(p.interPem).publicKey)).toBe(true);
    const v = opensslVerify(p.rootPem, p.interPem, r.pem);
    expect(v.out).toContain('leaf.pem: OK');
    const sigAlg = readOid(readDer(r.der).children[1]!.children[0]!);
    expect(sigAlg).toBe({ 'ec-p384': '1.2.840.10045.4.3.3', ed25519: '1.3.101.112', rsa: '1.2.840.113549.1.1.11' }[kind]);
  });

  it('copies the SPKI of a CSR key byte-exactly and refuses compressed EC points', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'csr-'));
    const r = spawnSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384', '-nodes', '-keyout', 'k.pem', '-out', 'c.pem', '-subj', '/CN=x'], { cwd: dir });
    expect(r.status).toBe(0);
    const parsed = parseCsrPem(fs.readFileSync(path.join(dir, 'c.pem'), 'utf8'));
    const leafR = mintLeaf(pki.inter, { spiffeId, dnsNames: [], subjectPublicKey: parsed.publicKey, notBefore, notAfter });
    const certSpki = readDer(leafR.der).children[0]!.children[6]!.raw;
    expect(certSpki.equals(parsed.spki)).toBe(true);
    expect(new X509Certificate(leafR.pem).checkPrivateKey(createPrivateKey(fs.readFileSync(path.join(dir, 'k.pem'))))).toBe(true);

    const spki = leafKey.publicKey.export({ type: 'spki', format: 'der' });
    const point = spki.subarray(spki.length - 65);
    const compressed = Buffer.concat([
      Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'),
      Buffer.from([0x02 | (point[64]! & 1)]),
      point.subarray(1, 33),
    ]);
    const compressedKey = createPublicKey({ key: compressed, format: 'der', type: 'spki' });
    expect(compressedKey.equals(leafKey.publicKey)).toBe(true);
    const e = internalError(() => mintLeaf(pki.inter, { spiffeId, dnsNames: [], subjectPublicKey: compressedKey, notBefore, notAfter }));
    expect([e.code, e.message]).toEqual(['internal', 'EC subject key must be an uncompressed point']);
  });

  it('uses the given serial and rejects invalid ones', () => {
    const base = { spiffeId, dnsNames: [], subjectPublicKey: leafKey.publicKey, notBefore, notAfter };
    const r = mintLeaf(pki.inter, { ...base, serial: Buffer.from('00ff01', 'hex') });
    expect(r.serialHex).toBe('ff01');
    expect(new X509Certificate(r.pem).serialNumber).toBe('FF01');
    for (const serial of [Buffer.alloc(0), Buffer.from([0]), Buffer.alloc(21, 1)]) {
      expect(internalError(() => mintLeaf(pki.inter, { ...base, serial })).code).toBe('internal');
    }
  });

  it('draws distinct random serials', () => {
    const base = { spiffeId, dnsNames: [], subjectPublicKey: leafKey.publicKey, notBefore, notAfter };
    const serials = new Set(Array.from({ length: 300 }, () => mintLeaf(pki.inter, base).serialHex));
    expect(serials.size).toBe(300);
    for (const s of serials) expect(s).toMatch(/^(?!00)[0-9a-f]{32}$/);
  });

  it('writes GeneralizedTime for dates from 2050', () => {
    const far = mintCa(
      { commonName: 'Far', trustDomain: TD, subjectPublicKey: pki.rootKey, notBefore: new Date(Date.UTC(2049, 11, 31, 23, 59, 59)), notAfter: new Date(Date.UTC(2050, 0, 1)), pathLen: 0 },
      { selfSignedKey: pki.rootKey },
    );
    const validity = readDer(far.der).children[0]!.children[4]!;
    expect(validity.children.map((c) => c.tag)).toEqual([TAG.UTC_TIME, TAG.GENERALIZED_TIME]);
    const c = new x509.X509Certificate(far.pem);
    expect(c.notBefore.toISOString()).toBe('2049-12-31T23:59:59.000Z');
    expect(c.notAfter.toISOString()).toBe('2050-01-01T00:00:00.000Z');
    expect(new X509Certificate(far.pem).validTo).toBe('Jan  1 00:00:00 2050 GMT');
  });

  it('rejects invalid profiles with BrokerError', () => {
    const base = { spiffeId, dnsNames: [] as string[], subjectPublicKey: leafKey.publicKey, notBefore, notAfter };
    const bad: Array<[Partial<typeof base> & { ipAddresses?: string[] }, string]> = [
      [{ spiffeId: `spiffe://${TD}` }, 'internal'],
      [{ spiffeId: 'https://example.org/x' }, 'internal'],
      [{ spiffeId: `spiffe://${TD}/a/../b` }, 'internal'],
      [{ dnsNames: ['bad name'] }, 'internal'],
      [{ dnsNames: ['-x.example'] }, 'internal'],
      [{ dnsNames: ['*.com'] }, 'internal'],
      [{ dnsNames: ['a.*.com'] }, 'internal'],
      [{ dnsNames: ['exämple.org'] }, 'internal'],
      [{ dnsNames: ['a'.repeat(64) + '.org'] }, 'internal'],
      [{ ipAddresses: ['256.1.1.1'] }, 'internal'],
      [{ ipAddresses: ['fe80::1%eth0'] }, 'internal'],
      [{ ipAddresses: ['localhost'] }, 'internal'],
      [{ notAfter: new Date(notBefore.getTime() - 1000) }, 'internal'],
      [{ notBefore: new Date(Number.NaN) }, 'internal'],
      [{ dnsNames: Array.from({ length: 101 }, (_, i) => `h${i}.example`) }, 'internal'],
      [{ subjectPublicKey: generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey }, 'weak_key'],
      [{ subjectPublicKey: generateKeyPairSync('ec', { namedCurve: 'P-521' }).publicKey }, 'weak_key'],
    ];
    for (const [override, code] of bad) {
      expect(internalError(() => mintLeaf(pki.inter, { ...base, ...override })).code).toBe(code);
    }
  });
});

describe('mintCa', () => {
  it('mints a self-signed root with the SPIFFE signing-certificate profile', async () => {
    const cert = new x509.X509Certificate(pki.rootPem);
    expect(cert.subject).toBe('O=Tessera, CN=Test Root');
    expect(cert.issuer).toBe(cert.subject);
    const bc = cert.getExtension(x509.BasicConstraintsExtension)!;
    expect([bc.ca, bc.pathLength, bc.critical]).toEqual([true, 1, true]);
    const ku = cert.getExtension(x509.KeyUsagesExtension)!;
    expect([ku.usages, ku.critical]).toEqual([x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true]);
    expect(cert.getExtension(x509.SubjectAlternativeNameExtension)!.names.toJSON()).toEqual([{ type: 'url', value: `spiffe://${TD}` }]);
    expect(cert.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId).toBe(sha1(keyBits(pki.rootKey)));
    expect(cert.getExtension(x509.AuthorityKeyIdentifierExtension)).toBeNull();
    expect(cert.getExtension(x509.ExtendedKeyUsageExtension)).toBeNull();
    expect(await cert.isSelfSigned()).toBe(true);
    expect(pki.root.subjectKeyId.toString('hex')).toBe(sha1(keyBits(pki.rootKey)));
  });

  it('mints an intermediate with pathLen 0 and AKI = root SKI', async () => {
    const cert = new x509.X509Certificate(pki.interPem);
    expect(cert.subject).toBe('O=Tessera, CN=Test Intermediate');
    expect(cert.issuer).toBe('O=Tessera, CN=Test Root');
    expect(cert.getExtension(x509.BasicConstraintsExtension)!.pathLength).toBe(0);
    expect(cert.getExtension(x509.AuthorityKeyIdentifierExtension)!.keyId).toBe(pki.root.subjectKeyId.toString('hex'));
    expect(await cert.verify({ publicKey: new x509.X509Certificate(pki.rootPem), signatureOnly: true })).toBe(true);
    const text = opensslText(pki.interPem);
    expect(text).toMatch(/CA:TRUE, pathlen:0/);
    expect(text).toMatch(/Certificate Sign, CRL Sign/);
  });

  it('clamps an intermediate into the issuer validity and checks inputs', () => {
    const k = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const long = mintCa(
      { commonName: 'Long', trustDomain: TD, subjectPublicKey: k.publicKey, notBefore: new Date(0), notAfter: new Date(Date.UTC(2200, 0, 1)), pathLen: 0 },
      pki.root,
    );
    const c = new X509Certificate(long.pem);
    expect(new Date(c.validTo).getTime()).toBe(pki.root.notAfter.getTime());
    expect(new Date(c.validFrom).getTime()).toBe(pki.root.notBefore.getTime());
    const base = { commonName: 'X', trustDomain: TD, subjectPublicKey: k.publicKey, notBefore: new Date(), notAfter: new Date(Date.now() + HOUR), pathLen: 0 };
    expect(internalError(() => mintCa({ ...base, commonName: '' }, pki.root)).code).toBe('internal');
    expect(internalError(() => mintCa({ ...base, commonName: 'x'.repeat(65) }, pki.root)).code).toBe('internal');
    expect(internalError(() => mintCa({ ...base, trustDomain: 'Bad TD' }, pki.root)).code).toBe('internal');
    expect(internalError(() => mintCa({ ...base, pathLen: -1 }, pki.root)).code).toBe('internal');
    expect(internalError(() => mintCa(base, { selfSignedKey: pki.rootKey })).code).toBe('internal'); // key mismatch
    expect(internalError(() => mintCa(base, { selfSignedKey: k.publicKey })).code).toBe('internal'); // not private
  });
});

describe('issuerFromPem', () => {
  it('loads material matching the certificate', () => {
    expect(pki.inter.certPem).toBe(pki.interPem);
    expect(pki.inter.notAfter.getTime()).toBe(new Date(new X509Certificate(pki.interPem).validTo).getTime());
    const parsedSubject = new x509.X509Certificate(pki.interPem).subjectName.toArrayBuffer();
    expect(Buffer.from(parsedSubject).equals(pki.inter.subjectNameDer)).toBe(true);
  });

  it('accepts an openssl-made CA and SEC1 key, computing the SKI when absent', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'ossl-'));
    const r = spawnSync(
      'openssl',
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=Ossl CA',
        '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign', '-addext', 'subjectKeyIdentifier=none', '-addext', 'authorityKeyIdentifier=none'],
      { cwd: dir, encoding: 'utf8' },
    );
    expect(r.stderr).not.toMatch(/error/i);
    const ecKey = spawnSync('openssl', ['ec', '-in', 'ca.key'], { cwd: dir, encoding: 'utf8' }).stdout; // SEC1 "EC PRIVATE KEY"
    expect(ecKey).toContain('BEGIN EC PRIVATE KEY');
    const certPem = fs.readFileSync(path.join(dir, 'ca.pem'), 'utf8');
    expect(opensslText(certPem)).not.toContain('Subject Key Identifier');
    const issuer = issuerFromPem(certPem, ecKey);
    const key = new X509Certificate(certPem).publicKey;
    expect(issuer.subjectKeyId.toString('hex')).toBe(sha1(keyBits(key)));
    const leafKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const leaf = mintLeaf(issuer, { spiffeId: `spiffe://${TD}/w`, dnsNames: [], subjectPublicKey: leafKey.publicKey, notBefore: new Date(Date.now() - 1000), notAfter: new Date(Date.now() + HOUR) });
    fs.writeFileSync(path.join(dir, 'leaf.pem'), leaf.pem);
    // No -x509_strict here: it rejects this CA itself for lacking an SKI, which is the point of the test.
    const v = spawnSync('openssl', ['verify', '-CAfile', 'ca.pem', 'leaf.pem'], { cwd: dir, encoding: 'utf8' });
    expect(v.stdout + v.stderr).toContain('leaf.pem: OK');
  });

  it('rejects mismatched keys, non-CA certificates, multiple certificates and garbage', () => {
    const leafKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const leaf = mintLeaf(pki.inter, { spiffeId: `spiffe://${TD}/w`, dnsNames: [], subjectPublicKey: leafKey.publicKey, notBefore: new Date(), notAfter: new Date(Date.now() + HOUR) });
    const cases: Array<[string, string]> = [
      [pki.interPem, pemOf(pki.rootKey)],
      [leaf.pem, pemOf(leafKey.privateKey)],
      [pki.interPem + pki.rootPem, pemOf(pki.interKey)],
      ['not a pem', pemOf(pki.interKey)],
      [pki.interPem, 'not a key'],
      [pki.interPem.replace(/[A-Z]{10}/, 'AAAAAAAAAA'), pemOf(pki.interKey)],
      [`${pemOf(pki.interKey)}${pki.interPem}`, pemOf(pki.interKey)],
    ];
    for (const [c, k] of cases) {
      const e = internalError(() => issuerFromPem(c, k));
      expect(e.code).toBe('internal');
      expect(e.message).not.toContain('PRIVATE KEY');
    }
  });

  it('splitPemCertificates is strict about non-certificate content', () => {
    expect(splitPemCertificates(`\n${pki.rootPem}\n\n${pki.interPem}  `)).toHaveLength(2);
    expect(splitPemCertificates('')).toHaveLength(0);
    expect(() => splitPemCertificates(`${pki.rootPem}junk`)).toThrow(BrokerError);
  });
});

describe('ipAddressBytes', () => {
  it('converts IPv4 and IPv6 literals (including embedded IPv4)', () => {
    expect(ipAddressBytes('127.0.0.1').toString('hex')).toBe('7f000001');
    expect(ipAddressBytes('::1').toString('hex')).toBe('00000000000000000000000000000001');
    expect(ipAddressBytes('::').toString('hex')).toBe('0'.repeat(32));
    expect(ipAddressBytes('2001:db8::8a2e:370:7334').toString('hex')).toBe('20010db80000000000008a2e03707334');
    expect(ipAddressBytes('fe80::').toString('hex')).toBe('fe80' + '0'.repeat(28));
    expect(ipAddressBytes('::ffff:1.2.3.4').toString('hex')).toBe('00000000000000000000ffff01020304');
    expect(ipAddressBytes('1:2:3:4:5:6:7:8').toString('hex')).toBe('00010002000300040005000600070008');
  });
});

describe('property: minted leaves parse back identically', () => {
  const segment = fc.stringMatching(/^[A-Za-z0-9._-]{1,20}$/).filter((s) => s !== '.' && s !== '..');
  const trustDomain = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}$/);
  const label = fc.stringMatching(/^[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?$/);
  const dnsName = fc.tuple(fc.boolean(), fc.array(label, { minLength: 2, maxLength: 4 })).map(([wild, ls]) => (wild ? ['*', ...ls] : ls).join('.'));

  it('for random SPIFFE IDs, DNS names and IPs (checked by @peculiar/x509 and node:crypto)', async () => {
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey;
    const interX = new X509Certificate(pki.interPem);
    await fc.assert(
      fc.asyncProperty(
        trustDomain,
        fc.array(segment, { minLength: 1, maxLength: 5 }),
        fc.array(dnsName, { maxLength: 5 }),
        fc.array(fc.oneof(fc.ipV4(), fc.ipV6()), { maxLength: 4 }),
        fc.integer({ min: 1, max: 90 * 24 * 3600 }),
        async (td, segs, dns, ips, ttlS) => {
          const spiffeId = `spiffe://${td}/${segs.join('/')}`;
          const nb = new Date(Math.floor(Date.now() / 1000) * 1000);
          const na = new Date(nb.getTime() + ttlS * 1000);
          const r = mintLeaf(pki.inter, { spiffeId, dnsNames: dns, ipAddresses: ips, subjectPublicKey: key, notBefore: nb, notAfter: na });
          // Our strict reader accepts it: minimal lengths, no trailing bytes, valid serial/OIDs.
          const tbs = readDer(r.der).children[0]!;
          expect(readUnsignedIntegerBytes(tbs.children[1]!)).toHaveLength(16);
          const cert = new x509.X509Certificate(r.der);
          const names = cert.getExtension(x509.SubjectAlternativeNameExtension)!.names.toJSON();
          expect(names.filter((n) => n.type === 'url').map((n) => n.value)).toEqual([spiffeId]);
          expect(names.filter((n) => n.type === 'dns').map((n) => n.value)).toEqual(dns);
          const got = names.filter((n) => n.type === 'ip').map((n) => n.value);
          expect(got).toHaveLength(ips.length);
          ips.forEach((ip, i) => {
            const bl = new BlockList();
            bl.addAddress(ip, isIPv6(ip) ? 'ipv6' : 'ipv4');
            expect(bl.check(got[i]!, isIPv6(got[i]!) ? 'ipv6' : 'ipv4')).toBe(true);
          });
          expect(cert.notBefore.getTime()).toBe(nb.getTime());
          expect(cert.notAfter.getTime()).toBe(na.getTime());
          const nodeCert = new X509Certificate(r.der);
          expect(nodeCert.verify(interX.publicKey)).toBe(true);
          expect(nodeCert.subjectAltName?.startsWith(`URI:${spiffeId}`)).toBe(true);
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe('mintCaCsr and caConstraintsOf (ca prepare / ca import)', () => {
  it('writes a PKCS#10 request signed by the key, for that key, asking for a CA', async () => {
    const { mintCaCsr } = await import('./x509.js');
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = mintCaCsr({ commonName: 'Tessera Signing CA', trustDomain: 'example.org' }, key.privateKey);
    expect(pem).toMatch(/^-----BEGIN CERTIFICATE REQUEST-----\n/);
    const parsed = parseCsrPem(pem); // verifies the self-signature
    expect(parsed.publicKey.export({ type: 'spki', format: 'der' }).equals(key.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
    const der = Buffer.from(pem.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64');
    const info = readDer(der).children[0] as DerNode;
    const attrs = info.children[3] as DerNode;
    expect(attrs.tag).toBe(0xa0);
    expect(readOid(attrs.children[0]?.children[0] as DerNode)).toBe('1.2.840.113549.1.9.14');
    // Tampering breaks the signature.
    const bad = Buffer.from(der);
    bad[bad.length - 5] = (bad[bad.length - 5] ?? 0) ^ 0xff;
    expect(() => parseCsrPem(`-----BEGIN CERTIFICATE REQUEST-----\n${bad.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`)).toThrow();
  });

  it('writes the same request for a key behind an asynchronous Signer (a token key), signed by that signer', async () => {
    const { mintCaCsr, mintCaCsrWith } = await import('./x509.js');
    const { KeySigner } = await import('./signer.js');
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const local = new KeySigner(key.privateKey);
    let signed = 0;
    // Only `sign`, as a Pkcs11Signer has: no synchronous fast path to fall back on.
    const remote = { algorithm: local.algorithm, publicKey: local.publicKey, sign: async (data: Buffer) => (signed++, local.sign(data)) };
    const profile = { commonName: 'Tessera Signing CA', trustDomain: 'example.org' };
    const pem = await mintCaCsrWith(profile, remote);
    expect(signed).toBe(1);
    const parsed = parseCsrPem(pem); // verifies the self-signature
    expect(parsed.publicKey.export({ type: 'spki', format: 'der' }).equals(key.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
    const infoOf = (p: string): Buffer => {
      const node = readDer(Buffer.from(p.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64')).children[0] as DerNode;
      return Buffer.from(node.raw);
    };
    expect(infoOf(pem).equals(infoOf(mintCaCsr(profile, key.privateKey)))).toBe(true);
  });

  it('refuses keys it cannot sign with and bad names', async () => {
    const { mintCaCsr } = await import('./x509.js');
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    expect(() => mintCaCsr({ commonName: '', trustDomain: 'example.org' }, key.privateKey)).toThrow(/commonName/);
    expect(() => mintCaCsr({ commonName: 'x', trustDomain: 'Not A Domain' }, key.privateKey)).toThrow();
    expect(() => mintCaCsr({ commonName: 'x', trustDomain: 'example.org' }, key.publicKey)).toThrow(/private key/);
  });

  it('reads cA, keyCertSign and pathLen from a certificate', async () => {
    const { caConstraintsOf } = await import('./x509.js');
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const now = Date.now();
    const root = mintCa({ commonName: 'Root', trustDomain: 'example.org', subjectPublicKey: key.publicKey, notBefore: new Date(now), notAfter: new Date(now + 3_600_000), pathLen: 2 }, { selfSignedKey: key.privateKey });
    expect(caConstraintsOf(root.der)).toEqual({ ca: true, keyCertSign: true, pathLen: 2 });
    const issuer = issuerFromPem(root.pem, key.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString());
    const leaf = mintLeaf(issuer, { spiffeId: 'spiffe://example.org/w', dnsNames: [], subjectPublicKey: generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey, notBefore: new Date(now), notAfter: new Date(now + 60_000) });
    expect(caConstraintsOf(leaf.der)).toEqual({ ca: false, keyCertSign: false, pathLen: undefined });
  });
});
