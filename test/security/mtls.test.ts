/**
 * Hostile client certificates against a live broker: every one is refused with 401
 * invalid_client_certificate, audited as a denial, and nothing is issued — also when a valid token
 * rides along (a bad certificate is never ignored).
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issuerFromPem, mintCa, mintLeaf, type IssuerMaterial } from '../../src/ca/x509.js';
import { generateDevPki } from '../../src/dev/pki.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { mintAdminCert } from '../helpers/admin.js';
import { openssl } from '../helpers/openssl.js';
import { allowCount, denialOf, expectError } from './helpers.js';

let b: TestBroker;
let ours: IssuerMaterial;
let foreign: IssuerMaterial;
let tmp: string;
let issuedBefore: number;

const WEB = 'spiffe://example.org/ns/shop/sa/web';
const HOUR = 3_600_000;
const pem = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }) as string;

beforeAll(async () => {
  b = await startBroker();
  const pki = b.material.dir;
  ours = issuerFromPem(readFileSync(path.join(pki, 'intermediate.pem'), 'utf8'), readFileSync(path.join(pki, 'intermediate.key'), 'utf8'));
  tmp = mkdtempSync(path.join(tmpdir(), 'tessera-foreign-ca-'));
  // Another CA for the very same trust domain: same names, different keys.
  const other = await generateDevPki(tmp, { trustDomain: 'example.org' });
  foreign = issuerFromPem(readFileSync(other.intermediateCertFile, 'utf8'), readFileSync(other.intermediateKeyFile, 'utf8'));
  issuedBefore = await allowCount(b);
});
afterAll(async () => {
  await b?.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

interface ClientCert {
  readonly cert: string;
  readonly key: string;
}

function leaf(issuer: IssuerMaterial, opts: { spiffeId?: string; from?: number; to?: number } = {}): ClientCert {
  const k = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const now = Date.now();
  const minted = mintLeaf(issuer, {
    spiffeId: opts.spiffeId ?? WEB,
    dnsNames: [],
    subjectPublicKey: k.publicKey,
    notBefore: new Date(opts.from ?? now - 60_000),
    notAfter: new Date(opts.to ?? now + HOUR),
  });
  return { cert: minted.pem + issuer.certPem, key: pem(k.privateKey) };
}

/** A leaf with CA:TRUE and a workload SPIFFE ID, signed by our own intermediate (openssl does what mintLeaf refuses to). */
function caLeaf(): ClientCert {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-ca-leaf-'));
  try {
    const k = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const f = (name: string): string => path.join(dir, name);
    writeFileSync(f('leaf.key'), pem(k.privateKey));
    writeFileSync(f('ca.pem'), ours.certPem);
    writeFileSync(
      f('ext.cnf'),
      `basicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature,keyCertSign\nextendedKeyUsage=clientAuth\nsubjectAltName=URI:${WEB}\n`,
    );
    const req = openssl(['req', '-new', '-key', f('leaf.key'), '-subj', '/O=Tessera', '-out', f('leaf.csr')]);
    expect(req.status, req.stderr).toBe(0);
    const sign = openssl(['x509', '-req', '-in', f('leaf.csr'), '-CA', f('ca.pem'), '-CAkey', path.join(b.material.dir, 'intermediate.key'), '-set_serial', '4242', '-days', '1', '-extfile', f('ext.cnf'), '-out', f('leaf.pem')]);
    expect(sign.status, sign.stderr).toBe(0);
    return { cert: readFileSync(f('leaf.pem'), 'utf8') + ours.certPem, key: pem(k.privateKey) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function refuse(client: ClientCert, opts: { token?: string; route?: 'x509' | 'jwt' } = {}): Promise<void> {
  const route = opts.route ?? 'x509';
  const res = await b.call({
    path: `/v1/svid/${route}`,
    body: route === 'x509' ? { keyType: 'ec-p256' } : { audience: ['payments'] },
    cert: client.cert,
    key: client.key,
    ...(opts.token !== undefined ? { token: opts.token } : {}),
  });
  expectError(res, 401, 'invalid_client_certificate');
  const denial = await denialOf(b, res);
  expect(denial).toMatchObject({ code: 'invalid_client_certificate', actor: null });
}

describe('a legitimate SVID', () => {
  it('renews over mTLS (so the refusals below are about the certificate)', async () => {
    const res = await b.call<{ svid: string; privateKey: string }>({ path: '/v1/svid/x509', token: await b.token(), body: { keyType: 'ec-p256' } });
    expect(res.status).toBe(200);
    const renewed = await b.call({ path: '/v1/svid/x509', body: { keyType: 'ec-p256' }, cert: res.json.svid, key: res.json.privateKey });
    expect(renewed.status, renewed.text).toBe(200);
    issuedBefore += 2;
  });

  it('minted here with mintLeaf under our intermediate, is accepted too', async () => {
    const good = leaf(ours);
    const res = await b.call({ path: '/v1/svid/jwt', body: { audience: ['payments'] }, cert: good.cert, key: good.key });
    expect(res.status, res.text).toBe(200);
    issuedBefore += 1;
  });
});

describe('hostile client certificates → 401, a denial entry, nothing issued', () => {
  it('a client certificate from another CA (same trust domain name)', async () => {
    await refuse(leaf(foreign));
    await refuse(leaf(foreign), { route: 'jwt' });
  });

  it('an expired SVID', async () => {
    await refuse(leaf(ours, { from: Date.now() - 2 * HOUR, to: Date.now() - HOUR }));
  });

  it('an SVID that is not valid yet', async () => {
    await refuse(leaf(ours, { from: Date.now() + HOUR, to: Date.now() + 2 * HOUR }));
  });

  it('an SVID for another trust domain, signed by our own CA', async () => {
    await refuse(leaf(ours, { spiffeId: 'spiffe://evil.org/ns/shop/sa/web' }));
    await refuse(leaf(ours, { spiffeId: 'spiffe://example.org.evil.org/ns/shop/sa/web' }));
  });

  it('a leaf with CA:TRUE and a workload SPIFFE ID, signed by our own CA', async () => {
    await refuse(caLeaf());
  });

  it('a CA certificate (trust-domain ID, no workload path) presented as a client certificate', async () => {
    const k = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const now = Date.now();
    const ca = mintCa({ commonName: 'sub', trustDomain: 'example.org', subjectPublicKey: k.publicKey, notBefore: new Date(now - 60_000), notAfter: new Date(now + HOUR), pathLen: 0 }, ours);
    await refuse({ cert: ca.pem + ours.certPem, key: pem(k.privateKey) });
  });

  it('a self-signed certificate', async () => {
    const k = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const now = Date.now();
    const self = mintCa({ commonName: 'me', trustDomain: 'example.org', subjectPublicKey: k.publicKey, notBefore: new Date(now - 60_000), notAfter: new Date(now + HOUR), pathLen: 0 }, { selfSignedKey: k.privateKey });
    await refuse({ cert: self.pem, key: pem(k.privateKey) });
  });

  it('a bad certificate is not rescued by a valid token next to it', async () => {
    const token = await b.token();
    await refuse(leaf(foreign), { token });
    await refuse(leaf(ours, { from: Date.now() - 2 * HOUR, to: Date.now() - HOUR }), { token });
  });

  it('a revoked SPIFFE ID, and a revoked certificate serial (admin API), are refused at once: 403 revoked', async () => {
    const admin = mintAdminCert(b.material, 'spiffe://example.org/admin/dev');
    const asAdmin = { cert: admin.cert, key: admin.key };
    const svid = async (serviceAccount: string): Promise<{ svid: string; privateKey: string; serial: string }> => {
      const res = await b.call<{ svid: string; privateKey: string; serial: string }>({ path: '/v1/svid/x509', token: await b.token({ serviceAccount }), body: { keyType: 'ec-p256' } });
      expect(res.status).toBe(200);
      issuedBefore += 1;
      return res.json;
    };
    const api = await svid('api');
    const cart = await svid('cart');
    const revokeId = await b.call({ path: '/v1/admin/revoke', body: { kind: 'spiffeId', value: 'spiffe://example.org/ns/shop/sa/api', reason: 'hostile-input test' }, ...asAdmin });
    expect(revokeId.status, revokeId.text).toBe(200);
    const revokeSerial = await b.call({ path: '/v1/admin/revoke', body: { kind: 'serial', value: cart.serial, reason: 'hostile-input test' }, ...asAdmin });
    expect(revokeSerial.status, revokeSerial.text).toBe(200);
    for (const s of [api, cart]) {
      for (const route of ['x509', 'jwt'] as const) {
        const res = await b.call({
          path: `/v1/svid/${route}`,
          body: route === 'x509' ? { keyType: 'ec-p256' } : { audience: ['inventory'] },
          cert: s.svid,
          key: s.privateKey,
        });
        expectError(res, 403, 'revoked');
        expect(await denialOf(b, res)).toMatchObject({ code: 'revoked' });
      }
    }
  });

  it('issued nothing', async () => {
    expect(await allowCount(b)).toBe(issuedBefore);
  });
});
