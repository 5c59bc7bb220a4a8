// Minting threads, for real (worker_threads running the built dist/ca/minter-worker.js): the answers
// and errors equal the inline minter's, and a thread that dies or hangs fails its jobs closed (503,
// nothing issued) and is replaced.
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { BrokerError } from '../errors.js';
import { CertificateAuthority } from './authority.js';
import { csrFor } from '../sdk/csr.js';
import { InlineMinter, type X509MintRequest, type X509Minted } from './minter.js';
import { MinterPool } from './minter-pool.js';
import { issuerFromPem, mintCa } from './x509.js';
import { rejection } from '../../test/helpers/rejection.js';

const HOUR = 3_600_000;
const realWorker = pathToFileURL(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../dist/ca/minter-worker.js'));

let tmp: string;
let ca: CertificateAuthority;
let signingPublicKey: KeyObject;
const pools: MinterPool[] = [];

// The SDK's CSR builder (ECDSA with SHA-256; signed by `signer`, which fails proof of possession when it is another key).
const csrOf = (key: { publicKey: KeyObject; privateKey: KeyObject }, signer = key.privateKey): string => csrFor(signer, key.publicKey);

const request = (key: X509MintRequest['key'], spiffeId = 'spiffe://example.org/ns/shop/sa/web'): X509MintRequest => ({
  key,
  spiffeId,
  dnsNames: ['web.shop.svc'],
  ttlMs: HOUR,
  now: Date.now(),
});

async function start(
  threads: number,
  opts: { script?: URL; jobTimeoutMs?: number; onThreadFailure?: (reason: 'exited' | 'stuck') => void } = {},
): Promise<MinterPool> {
  const pool = await MinterPool.start(ca.source, { threads, ...opts });
  pools.push(pool);
  return pool;
}

/** A thread script that dies (`/crash`) or spins forever (`/hang`) on a marked job, else is the real one. */
function testScript(): URL {
  const file = path.join(tmp, 'faulty-worker.mjs');
  fs.writeFileSync(
    file,
    [
      "import { parentPort } from 'node:worker_threads';",
      'parentPort.on("message", (jobs) => {',
      '  if (jobs.some((j) => j.req.spiffeId.endsWith("/crash"))) process.exit(7);',
      '  if (jobs.some((j) => j.req.spiffeId.endsWith("/hang"))) for (;;) {}',
      '});',
      `await import(${JSON.stringify(realWorker.href)});`,
    ].join('\n'),
  );
  return pathToFileURL(file);
}


beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-minter-'));
  const rootKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const now = Date.now();
  const root = mintCa(
    { commonName: 'Test Root', trustDomain: 'example.org', subjectPublicKey: rootKey.publicKey, notBefore: new Date(now - HOUR), notAfter: new Date(now + 48 * HOUR), pathLen: 1 },
    { selfSignedKey: rootKey.privateKey },
  );
  const rootPem = root.pem;
  const rootKeyPem = rootKey.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const intKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const intermediate = mintCa(
    { commonName: 'Test Signing CA', trustDomain: 'example.org', subjectPublicKey: intKey.publicKey, notBefore: new Date(now - HOUR), notAfter: new Date(now + 24 * HOUR), pathLen: 0 },
    issuerFromPem(rootPem, rootKeyPem),
  );
  ca = CertificateAuthority.fromPem({ certPem: intermediate.pem, keyPem: intKey.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), rootsPem: rootPem });
  signingPublicKey = intKey.publicKey;
});

afterEach(async () => {
  await Promise.all(pools.splice(0).map((p) => p.close()));
});

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('MinterPool', () => {
  it('mints from a CSR what the inline minter mints, signed by the CA, for the CSR key', async () => {
    const pool = await start(2);
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const req = request({ csrPem: csrOf(key) });
    const [threaded, inline] = await Promise.all([pool.mint(req), new InlineMinter(ca).mint(req)]);
    for (const m of [threaded, inline]) {
      const cert = new X509Certificate(m.certPem);
      expect(cert.verify(signingPublicKey)).toBe(true);
      expect(cert.publicKey.equals(key.publicKey)).toBe(true);
      expect(cert.subjectAltName).toContain('URI:spiffe://example.org/ns/shop/sa/web');
      expect(m.keyFingerprint).toBe(`sha256:${createHash('sha256').update(key.publicKey.export({ type: 'spki', format: 'der' })).digest('hex')}`);
      expect(m.chainPem).toHaveLength(2);
      expect(m.privateKeyPem).toBeUndefined();
    }
    const { serialHex: _a, certPem: _b, chainPem: [, ...restA], ...a } = threaded;
    const { serialHex: _c, certPem: _d, chainPem: [, ...restB], ...b } = inline;
    expect(a).toEqual(b);
    expect(restA).toEqual(restB);
  });

  it('makes the key for keyType requests and returns its private half', async () => {
    const pool = await start(1);
    const m = await pool.mint(request({ generate: 'ec-p256' }));
    const cert = new X509Certificate(m.certPem);
    expect(cert.publicKey.equals(createPublicKey(createPrivateKey(m.privateKeyPem!)))).toBe(true);
    expect(cert.verify(signingPublicKey)).toBe(true);
  });

  it('returns the same refusals as the inline minter (code, status and message)', async () => {
    const pool = await start(1);
    const inline = new InlineMinter(ca);
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const k1 = generateKeyPairSync('ec', { namedCurve: 'secp256k1' });
    const cases: X509MintRequest[] = [
      request({ csrPem: 'not a csr' }),
      request({ csrPem: csrOf(key, other.privateKey) }),
      request({ csrPem: csrOf(k1) }),
      request({ csrPem: csrOf(key) }, 'spiffe://example.org'),
      request({ generate: 'rsa' as 'ec-p256' }),
    ];
    for (const c of cases) {
      const [a, b] = await Promise.all([rejection(pool.mint(c)), rejection(inline.mint(c))]);
      expect({ code: a.code, status: a.status, message: a.message }).toEqual({ code: b.code, status: b.status, message: b.message });
    }
    const codes = await Promise.all(cases.slice(0, 3).map(async (c) => (await rejection(pool.mint(c))).code));
    expect(codes).toEqual(['invalid_csr', 'invalid_csr', 'weak_key']);
  });

  it('spreads concurrent jobs over its threads; every one gets its own certificate', async () => {
    const pool = await start(2);
    expect(pool.threads).toBe(2);
    const keys = Array.from({ length: 8 }, () => generateKeyPairSync('ec', { namedCurve: 'P-256' }));
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => pool.mint(request({ csrPem: csrOf(keys[i % 8]!) }, `spiffe://example.org/ns/n/sa/w${i}`))));
    expect(new Set(results.map((r) => r.serialHex)).size).toBe(200);
    results.forEach((r, i) => {
      const cert = new X509Certificate(r.certPem);
      expect(cert.subjectAltName).toContain(`URI:spiffe://example.org/ns/n/sa/w${i},`);
      expect(cert.publicKey.equals(keys[i % 8]!.publicKey)).toBe(true);
    });
  });

  it('fails the jobs of a thread that dies with 503 ca_unavailable, and replaces the thread', async () => {
    const failures: string[] = [];
    const pool = await start(1, { script: testScript(), onThreadFailure: (r) => failures.push(r) });
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const err = await rejection(pool.mint(request({ csrPem: csrOf(key) }, 'spiffe://example.org/ns/a/sa/crash')));
    expect([err.code, err.status]).toEqual(['ca_unavailable', 503]);
    expect(failures).toEqual(['exited']);
    expect(pool.inFlight).toBe(0);
    // While it is being replaced, jobs are refused at once (never queued to nowhere); then served again.
    const deadline = Date.now() + 5000;
    for (;;) {
      const r: X509Minted | BrokerError = await pool.mint(request({ csrPem: csrOf(key) })).catch((e: unknown) => e as BrokerError);
      if (!(r instanceof BrokerError)) {
        expect(new X509Certificate(r.certPem).verify(signingPublicKey)).toBe(true);
        break;
      }
      expect(r.code).toBe('ca_unavailable');
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((res) => setTimeout(res, 50));
    }
  });

  it('terminates a thread stuck past the job timeout: its jobs fail with 503, a new thread serves', async () => {
    const failures: string[] = [];
    const pool = await start(1, { script: testScript(), jobTimeoutMs: 300, onThreadFailure: (r) => failures.push(r) });
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const t0 = Date.now();
    const hung = pool.mint(request({ csrPem: csrOf(key) }, 'spiffe://example.org/ns/a/sa/hang'));
    expect(pool.inFlight).toBe(1);
    const err = await rejection(hung);
    expect([err.code, err.status]).toEqual(['ca_unavailable', 503]);
    expect(failures).toEqual(['stuck']);
    expect(Date.now() - t0).toBeLessThan(3000);
    await expect.poll(async () => (await pool.mint(request({ csrPem: csrOf(key) })).catch(() => undefined))?.spiffeId, { timeout: 5000, interval: 50 }).toBe(
      'spiffe://example.org/ns/shop/sa/web',
    );
  });

  it('close() lets jobs in flight finish, then refuses new ones', async () => {
    const pool = await start(1);
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const inFlight = Array.from({ length: 20 }, () => pool.mint(request({ csrPem: csrOf(key) })));
    await pool.close();
    expect((await Promise.all(inFlight)).length).toBe(20);
    const err = await rejection(pool.mint(request({ csrPem: csrOf(key) })));
    expect([err.code, err.status]).toEqual(['ca_unavailable', 503]);
  });

  it('fails to start, clearly, when a thread cannot load', async () => {
    const bad = path.join(tmp, 'broken-worker.mjs');
    fs.writeFileSync(bad, 'throw new Error("cannot load the CA here");\n');
    await expect(MinterPool.start(ca.source, { threads: 1, script: pathToFileURL(bad) })).rejects.toThrow(/minting thread could not start: cannot load the CA here/);
    await expect(MinterPool.start(ca.source, { threads: 0 })).rejects.toThrow(RangeError);
  });
});
