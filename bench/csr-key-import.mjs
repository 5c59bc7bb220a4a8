#!/usr/bin/env node
// CPU cost of each way to import a CSR's P-256 public key and verify its signature (proof of possession),
// per operation, on distinct keys (a pool of fresh key pairs, so nothing per key is reused across
// operations the way a repeated benchmark request would). Variants run in interleaved rounds; ops/s
// medians of CPU time per operation are printed. For instruction counts run one variant under callgrind and subtract a run with
// --ops 0 (start-up and set-up):
//   valgrind --tool=callgrind node bench/csr-key-import.mjs --only spki-der --ops 2000 --rounds 1
//
// Usage: npm run build && node bench/csr-key-import.mjs [--only <variant>] [--ops 2000] [--rounds 5]
import { createPublicKey, generateKeyPairSync, KeyObject, sign, verify, webcrypto } from 'node:crypto';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { only: { type: 'string' }, ops: { type: 'string' }, rounds: { type: 'string' }, keys: { type: 'string' } } });
const ops = Number(values.ops ?? 2000);
const rounds = Number(values.rounds ?? 5);
const poolSize = Number(values.keys ?? 256);
const { subtle } = webcrypto;

const message = Buffer.alloc(300, 7); // about the size of a CertificationRequestInfo
const pool = [];
for (let i = 0; i < poolSize; i++) {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const jwk = publicKey.export({ format: 'jwk' });
  pool.push({
    spki,
    pem: publicKey.export({ type: 'spki', format: 'pem' }),
    jwk: { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y },
    raw: spki.subarray(spki.length - 65),
    sigDer: sign('sha256', message, { key: privateKey, dsaEncoding: 'der' }),
    sigP1363: sign('sha256', message, { key: privateKey, dsaEncoding: 'ieee-p1363' }),
    keyObject: publicKey,
  });
}
// Whole CSR paths from dist/: a pool of distinct P-256 CSRs and a dev CA, as the broker's minting thread has.
const { mkdtempSync, rmSync } = await import('node:fs');
const { tmpdir } = await import('node:os');
const path = await import('node:path');
const { mintCaCsr } = await import('../dist/ca/x509.js');
const { verifyCsrPem } = await import('../dist/ca/csr.js');
const { mintX509Svid } = await import('../dist/ca/minter.js');
const { generateDevPki } = await import('../dist/dev/pki.js');
const { CertificateAuthority } = await import('../dist/ca/authority.js');
const pkiDir = mkdtempSync(path.join(tmpdir(), 'tessera-csr-bench-'));
const pki = await generateDevPki(pkiDir, { trustDomain: 'example.org' });
const ca = CertificateAuthority.fromFiles({ certFile: pki.intermediateCertFile, keyFile: pki.intermediateKeyFile, rootsFile: pki.bundleFile });
const { readFileSync } = await import('node:fs');
const { createPrivateKey } = await import('node:crypto');
const caKey = createPrivateKey(readFileSync(pki.intermediateKeyFile, 'utf8'));
rmSync(pkiDir, { recursive: true, force: true });
const tbs = Buffer.alloc(420, 1); // about the size of a leaf's TBSCertificate
for (const k of pool) k.csrPem = mintCaCsr({ commonName: 'bench', trustDomain: 'example.org' }, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
const mintReq = (k) => ({ key: { csrPem: k.csrPem }, spiffeId: 'spiffe://example.org/ns/bench/sa/load', dnsNames: [], ttlMs: 3_600_000, now: Date.now() });

const ECDSA = { name: 'ECDSA', namedCurve: 'P-256' };
const ECDSA_SHA256 = { name: 'ECDSA', hash: 'SHA-256' };
const check = (ok) => {
  if (!ok) throw new Error('signature did not verify');
};
const derVerify = (key, k) => check(verify('sha256', message, { key, dsaEncoding: 'der' }, k.sigDer));

/** One operation per variant on pool entry k; async ones return a promise. */
const VARIANTS = {
  // imports alone
  'spki-der': (k) => createPublicKey({ key: k.spki, format: 'der', type: 'spki' }),
  jwk: (k) => createPublicKey({ key: k.jwk, format: 'jwk' }),
  pem: (k) => createPublicKey(k.pem),
  'subtle-raw': (k) => subtle.importKey('raw', k.raw, ECDSA, true, ['verify']),
  'subtle-spki': (k) => subtle.importKey('spki', k.spki, ECDSA, true, ['verify']),
  'subtle-jwk': (k) => subtle.importKey('jwk', k.jwk, ECDSA, true, ['verify']),
  // verify alone, with a key imported beforehand
  'verify-only': (k) => derVerify(k.keyObject, k),
  // import + verify, the whole proof of possession
  'spki-der+verify': (k) => derVerify(createPublicKey({ key: k.spki, format: 'der', type: 'spki' }), k),
  'jwk+verify': (k) => derVerify(createPublicKey({ key: k.jwk, format: 'jwk' }), k),
  'der-input-verify': (k) => check(verify('sha256', message, { key: k.spki, format: 'der', type: 'spki', dsaEncoding: 'der' }, k.sigDer)),
  'subtle-raw+verify': async (k) => derVerify(KeyObject.from(await subtle.importKey('raw', k.raw, ECDSA, true, ['verify'])), k),
  'subtle-raw+subtle-verify': async (k) => check(await subtle.verify(ECDSA_SHA256, await subtle.importKey('raw', k.raw, ECDSA, false, ['verify']), k.sigP1363, message)),
  'subtle-spki+subtle-verify': async (k) => check(await subtle.verify(ECDSA_SHA256, await subtle.importKey('spki', k.spki, ECDSA, false, ['verify']), k.sigP1363, message)),
  // the broker's own code: CSR proof of possession, and the whole minting step a minting thread runs
  'verify-csr': (k) => verifyCsrPem(k.csrPem),
  mint: (k) => mintX509Svid(ca, mintReq(k)),
  // the pieces of a mint after the CSR: the CA's signature alone, and the whole certificate from a verified key
  'ca-sign': () => sign('sha256', tbs, { key: caKey, dsaEncoding: 'der' }),
  issue: (k) => ca.issueX509Svid({ spiffeId: 'spiffe://example.org/ns/bench/sa/load', dnsNames: [], publicKey: k.keyObject, ttlMs: 3_600_000, now: Date.now() }),
};

const names = values.only === undefined ? Object.keys(VARIANTS) : values.only.split(',');
for (const n of names) if (!(n in VARIANTS)) throw new Error(`--only takes: ${Object.keys(VARIANTS).join(', ')}`);

/** CPU µs per operation (user + system, every thread of this process: GC and compiler threads count too). */
async function run(name) {
  const op = VARIANTS[name];
  const t0 = process.cpuUsage();
  for (let i = 0; i < ops; i++) {
    const r = op(pool[i % poolSize]);
    if (r instanceof Promise) await r;
  }
  const t = process.cpuUsage(t0);
  return (t.user + t.system) / ops;
}

const results = Object.fromEntries(names.map((n) => [n, []]));
for (let r = 0; r < rounds; r++) {
  for (const n of names) results[n].push(ops === 0 ? 0 : await run(n));
}
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
if (ops > 0) {
  console.log(`CPU µs per operation (median of ${rounds} interleaved rounds of ${ops}; ${poolSize} distinct keys; shared, noisy machine)`);
  for (const n of names) {
    const m = median(results[n]);
    console.log(`${n.padEnd(28)} ${m.toFixed(1).padStart(7)} µs/op  ${Math.round(1e6 / m).toString().padStart(7)} ops/s per core`);
  }
}
