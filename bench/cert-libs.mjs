#!/usr/bin/env node
// Side-by-side cost of issuing one X.509-SVID from a P-256 CSR, on one core, in one run:
//   tessera   — src/ca: strict DER reader + node:crypto verify for the CSR, small DER writer + node:crypto sign
//   peculiar  — @peculiar/x509 2.x (CSR parse + verify, certificate generation) on Node's WebCrypto
//   crypto    — node:crypto alone: verify the CSR signature + sign a TBS of the same size (the floor)
// Rounds are interleaved (A B C A B C …) and medians reported, because the machine is shared and noisy.
// Usage: npm run build && node bench/cert-libs.mjs [--seconds 1] [--rounds 5] [--json out.json]
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, webcrypto } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import 'reflect-metadata'; // @peculiar/x509 needs it before it loads
const x509 = await import("@peculiar/x509");

const { values } = parseArgs({ options: { seconds: { type: 'string' }, rounds: { type: 'string' }, json: { type: 'string' } } });
const seconds = Number(values.seconds ?? 1);
const rounds = Number(values.rounds ?? 5);

const { generateDevPki } = await import('../dist/dev/pki.js');
const { CertificateAuthority } = await import('../dist/ca/authority.js');
const { parseCsrPem } = await import('../dist/ca/csr.js');

const dir = mkdtempSync(path.join(tmpdir(), 'tessera-bench-'));
const paths = await generateDevPki(dir, { trustDomain: 'example.org' });
const ca = CertificateAuthority.fromFiles({ certFile: paths.intermediateCertFile, keyFile: paths.intermediateKeyFile, rootsFile: paths.bundleFile });

// One workload CSR, made by @peculiar/x509 (any conforming CSR would do).
x509.cryptoProvider.set(webcrypto);
const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
const workloadKeys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']);
const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=workload', keys: workloadKeys, signingAlgorithm: alg });
const csrPem = csr.toString('pem');

const { readFileSync } = await import('node:fs');
const caCert = new x509.X509Certificate(readFileSync(path.join(dir, 'intermediate.pem'), 'utf8'));
const caKeyPkcs8 = createPrivateKey(readFileSync(path.join(dir, 'intermediate.key'), 'utf8')).export({ type: 'pkcs8', format: 'der' });
const caCryptoKey = await webcrypto.subtle.importKey('pkcs8', caKeyPkcs8, alg, false, ['sign']);
const spiffeId = 'spiffe://example.org/ns/shop/sa/web';

async function tessera() {
  const parsed = parseCsrPem(csrPem);
  ca.issueX509Svid({ spiffeId, dnsNames: [], publicKey: parsed.publicKey, ttlMs: 3_600_000, now: Date.now() });
}

async function peculiar() {
  const req = new x509.Pkcs10CertificateRequest(csrPem);
  if (!(await req.verify())) throw new Error('csr');
  const now = new Date();
  await x509.X509CertificateGenerator.create({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(16))).toString('hex').replace(/^[89a-f]/, '1'),
    issuer: caCert.subject,
    subject: 'O=Tessera',
    notBefore: new Date(now.getTime() - 60_000),
    notAfter: new Date(now.getTime() + 3_600_000),
    signingAlgorithm: alg,
    publicKey: req.publicKey,
    signingKey: caCryptoKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: spiffeId }]),
      await x509.SubjectKeyIdentifierExtension.create(req.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
}

// The floor: the two signature operations every issuance needs, on buffers of the real sizes.
const floorKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const tbs = Buffer.alloc(420, 7);
const floorSig = sign('sha256', tbs, floorKey.privateKey);
const floorPub = createPublicKey(floorKey.privateKey);
async function cryptoFloor() {
  if (!verify('sha256', tbs, floorPub, floorSig)) throw new Error('verify');
  sign('sha256', tbs, floorKey.privateKey);
}

async function rate(fn) {
  const end = performance.now() + seconds * 1000;
  let n = 0;
  while (performance.now() < end) {
    await fn();
    n++;
  }
  return n / seconds;
}

const contenders = { tessera, peculiar, crypto: cryptoFloor };
for (const fn of Object.values(contenders)) for (let i = 0; i < 50; i++) await fn(); // warm-up
const samples = Object.fromEntries(Object.keys(contenders).map((k) => [k, []]));
for (let r = 0; r < rounds; r++) for (const [name, fn] of Object.entries(contenders)) samples[name].push(await rate(fn));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const result = Object.fromEntries(Object.entries(samples).map(([k, xs]) => [k, Math.round(median(xs))]));

console.log(`X.509-SVID issuance from a P-256 CSR, one core, median of ${rounds} × ${seconds}s (Node ${process.version})`);
console.log(`  tessera (DER writer + node:crypto) : ${result.tessera.toLocaleString('en')} /s`);
console.log(`  @peculiar/x509                     : ${result.peculiar.toLocaleString('en')} /s`);
console.log(`  node:crypto verify+sign only       : ${result.crypto.toLocaleString('en')} /s`);
console.log(`  tessera / peculiar = ${(result.tessera / result.peculiar).toFixed(1)}×   tessera / crypto floor = ${(result.tessera / result.crypto).toFixed(2)}`);
if (values.json) writeFileSync(values.json, `${JSON.stringify({ date: new Date().toISOString(), node: process.version, ...result }, null, 2)}\n`);
