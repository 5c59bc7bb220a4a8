// A lone issuance mints on the event loop, anything else on the minting threads (the real ones: the
// built dist/ca/minter-worker.js) — and either way the certificate and the refusals are the same.
import { describe, it, expect, beforeAll, afterEach } from 'vitest';
import { createHash, generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';
import { csrFor } from '../sdk/csr.js';
import { CertificateAuthority } from './authority.js';
import { IdleInlineMinter } from './idle-inline-minter.js';
import { InlineMinter, type X509MintRequest, type X509Minted } from './minter.js';
import { MinterPool } from './minter-pool.js';
import { issuerFromPem, mintCa } from './x509.js';
import { rejection } from '../../test/helpers/rejection.js';

const HOUR = 3_600_000;
let ca: CertificateAuthority;
let signingPublicKey: KeyObject;
const minters: IdleInlineMinter[] = [];

function makeCa(): { ca: CertificateAuthority; signingPublicKey: KeyObject } {
  const rootKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const now = Date.now();
  const root = mintCa(
    { commonName: 'Test Root', trustDomain: 'example.org', subjectPublicKey: rootKey.publicKey, notBefore: new Date(now - HOUR), notAfter: new Date(now + 48 * HOUR), pathLen: 1 },
    { selfSignedKey: rootKey.privateKey },
  );
  const intKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const intermediate = mintCa(
    { commonName: 'Test Signing CA', trustDomain: 'example.org', subjectPublicKey: intKey.publicKey, notBefore: new Date(now - HOUR), notAfter: new Date(now + 24 * HOUR), pathLen: 0 },
    issuerFromPem(root.pem, rootKey.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()),
  );
  return {
    ca: CertificateAuthority.fromPem({ certPem: intermediate.pem, keyPem: intKey.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), rootsPem: root.pem }),
    signingPublicKey: intKey.publicKey,
  };
}

const request = (key: X509MintRequest['key'], now = Date.now()): X509MintRequest => ({
  key,
  spiffeId: 'spiffe://example.org/ns/shop/sa/web',
  dnsNames: ['web.shop.svc'],
  ttlMs: HOUR,
  now,
});

async function start(): Promise<{ minter: IdleInlineMinter; pool: MinterPool }> {
  const pool = await MinterPool.start(ca.source, { threads: 1 });
  const minter = new IdleInlineMinter(pool, new InlineMinter(ca));
  minters.push(minter);
  return { minter, pool };
}


/** Everything but the serial (random) and the signature over it. */
function comparable(m: X509Minted): unknown {
  const { serialHex: _s, certPem, chainPem: [, ...rest], ...fields } = m;
  const cert = new X509Certificate(certPem);
  return { ...fields, rest, subject: cert.subject, san: cert.subjectAltName, validFrom: cert.validFrom, validTo: cert.validTo, keyUsage: cert.keyUsage, ca: cert.ca, issuer: cert.issuer, publicKey: cert.publicKey.export({ type: 'spki', format: 'der' }).toString('hex') };
}

beforeAll(() => {
  ({ ca, signingPublicKey } = makeCa());
});
afterEach(async () => {
  await Promise.all(minters.splice(0).map((m) => m.close()));
});

describe('IdleInlineMinter', () => {
  it('mints a lone job on the event loop: the same certificate a minting thread makes', async () => {
    const { minter, pool } = await start();
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const req = request({ csrPem: csrFor(key.privateKey, key.publicKey) });
    const inline = await minter.mint(req, { alone: true });
    expect(minter.counts).toEqual({ inline: 1, threaded: 0 });
    const threaded = await pool.mint(req);
    expect(comparable(inline)).toEqual(comparable(threaded));
    const cert = new X509Certificate(inline.certPem);
    expect(cert.verify(signingPublicKey)).toBe(true);
    expect(cert.publicKey.equals(key.publicKey)).toBe(true);
    expect(inline.keyFingerprint).toBe(`sha256:${createHash('sha256').update(key.publicKey.export({ type: 'spki', format: 'der' })).digest('hex')}`);
  });

  it('sends a job to the threads when other issuances are in flight, or when the threads are busy', async () => {
    const { minter } = await start();
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const csrPem = csrFor(key.privateKey, key.publicKey);
    await minter.mint(request({ csrPem }), { alone: false });
    await minter.mint(request({ csrPem }));
    expect(minter.counts).toEqual({ inline: 0, threaded: 2 });
    // One job with the thread: the next, even if its caller thinks it is alone, queues behind it.
    const first = minter.mint(request({ csrPem }), { alone: false });
    expect(minter.inFlight).toBe(1);
    const second = minter.mint(request({ csrPem }), { alone: true });
    await Promise.all([first, second]);
    expect(minter.counts).toEqual({ inline: 0, threaded: 4 });
    expect(minter.inFlight).toBe(0);
  });

  it('refuses a bad CSR inline exactly as a thread does (code, status, message)', async () => {
    const { minter, pool } = await start();
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    for (const csrPem of ['not a csr', csrFor(other.privateKey, key.publicKey)]) {
      const [a, b] = await Promise.all([rejection(minter.mint(request({ csrPem }), { alone: true })), rejection(pool.mint(request({ csrPem })))]);
      expect({ code: a.code, status: a.status, message: a.message }).toEqual({ code: b.code, status: b.status, message: b.message });
    }
    expect(minter.counts.inline).toBe(2);
  });

  it('mints with the new CA after setAuthority, inline and on the threads', async () => {
    const { minter } = await start();
    const next = makeCa();
    minter.setAuthority(next.ca);
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const csrPem = csrFor(key.privateKey, key.publicKey);
    for (const alone of [true, false]) {
      const m = await minter.mint(request({ csrPem }), { alone });
      expect(new X509Certificate(m.certPem).verify(next.signingPublicKey)).toBe(true);
    }
    expect(minter.counts).toEqual({ inline: 1, threaded: 1 });
  });

  it('refuses everything once closed, inline included (503 ca_unavailable)', async () => {
    const { minter } = await start();
    await minter.close();
    const err = await rejection(minter.mint(request({ generate: 'ec-p256' }), { alone: true }));
    expect(err.code).toBe('ca_unavailable');
    expect(err.status).toBe(503);
  });
});
