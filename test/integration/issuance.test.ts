/**
 * The issuance path end to end over real TLS: token → X.509-SVID (CSR and server key), mTLS renewal,
 * JWT-SVID, bundle, health, refusals, and the audit log holding every grant and denial.
 */
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { opensslKeyAndCsr, opensslText, opensslVerify } from '../helpers/openssl.js';

interface X509Body {
  spiffeId: string;
  serial: string;
  certificates: string[];
  svid: string;
  privateKey?: string;
  expiresAt: string;
  bundle: string;
  audit: { index: number; treeSize: number; rootHash: string; leafHash: string; inclusionProof: string[] };
}

let b: TestBroker;
beforeAll(async () => {
  b = await startBroker();
});
afterAll(async () => {
  await b?.close();
});

async function auditEntries(): Promise<Record<string, unknown>[]> {
  const raw = await b.broker.audit.entries(0, b.broker.audit.size);
  return raw.map((e) => JSON.parse(e.toString('utf8')) as Record<string, unknown>);
}

describe('X.509-SVID from a CSR with a service-account token', () => {
  it('issues a chain that openssl verifies against the bundle, with only what the broker decided', async () => {
    const { csrPem, keyPem } = opensslKeyAndCsr('ec-p256');
    const res = await b.call<X509Body>({ path: '/v1/svid/x509', token: await b.token(), body: { csr: csrPem } });
    expect(res.status).toBe(200);
    const body = res.json;
    expect(body.spiffeId).toBe('spiffe://example.org/ns/shop/sa/web');
    expect(body.certificates).toHaveLength(2);
    expect(body.svid).toBe(body.certificates.join(''));
    expect(body.bundle).toBe(b.ca);
    expect(opensslVerify(b.ca, body.certificates, 'sslclient').ok).toBe(true);
    expect(opensslVerify(b.ca, body.certificates, 'sslserver').ok).toBe(true);

    const leaf = new X509Certificate(body.certificates[0] as string);
    expect(leaf.ca).toBe(false);
    expect(leaf.subjectAltName).toBe('URI:spiffe://example.org/ns/shop/sa/web, DNS:web.shop.svc');
    expect(leaf.serialNumber.toLowerCase()).toBe(body.serial);
    expect(leaf.publicKey.export({ type: 'spki', format: 'der' })).toEqual(
      createPublicKey(keyPem).export({ type: 'spki', format: 'der' }),
    );
    const text = opensslText(body.certificates[0] as string);
    expect(text).not.toContain('evil');
    expect(text).toMatch(/CA:FALSE/);
    expect(text).toMatch(/TLS Web Server Authentication, TLS Web Client Authentication/);
    const ttl = Date.parse(body.expiresAt) - Date.now();
    expect(ttl).toBeGreaterThan(3500_000);
    expect(ttl).toBeLessThanOrEqual(3600_000);

    // The receipt points at an entry that names this certificate, and the entry is in the log.
    const entries = await auditEntries();
    const entry = entries[body.audit.index];
    expect(entry).toMatchObject({ type: 'x509-svid.issued', decision: 'allow', serial: body.serial, subject: body.spiffeId, namespace: 'shop', serviceAccount: 'web' });
    expect(body.audit.treeSize).toBeGreaterThan(body.audit.index);
    expect(Buffer.from(body.audit.rootHash, 'base64')).toHaveLength(32);
  });

  it.each(['ec-p384', 'rsa-2048', 'ed25519'] as const)('accepts a %s key', async (spec) => {
    const { csrPem } = opensslKeyAndCsr(spec);
    const res = await b.call<X509Body>({ path: '/v1/svid/x509', token: await b.token(), body: { csr: csrPem } });
    expect(res.status).toBe(200);
    expect(opensslVerify(b.ca, res.json.certificates).ok).toBe(true);
  });
});

describe('server-made key', () => {
  it('returns a PKCS#8 key that matches the certificate', async () => {
    const res = await b.call<X509Body>({ path: '/v1/svid/x509', token: await b.token(), body: { keyType: 'ec-p256' } });
    expect(res.status).toBe(200);
    const { privateKey, certificates } = res.json;
    expect(privateKey).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    const key = createPrivateKey(privateKey as string);
    expect(key.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(new X509Certificate(certificates[0] as string).checkPrivateKey(key)).toBe(true);
    const entries = await auditEntries();
    expect(JSON.stringify(entries[res.json.audit.index])).not.toContain('PRIVATE KEY');
  });
});

describe('mTLS renewal and workload-to-workload mTLS', () => {
  async function svid(namespace = 'shop', serviceAccount = 'web'): Promise<X509Body> {
    const res = await b.call<X509Body>({
      path: '/v1/svid/x509',
      token: await b.token({ namespace, serviceAccount }),
      body: { keyType: 'ec-p256' },
    });
    expect(res.status).toBe(200);
    return res.json;
  }

  it('renews with the SVID as client certificate and no token', async () => {
    const first = await svid();
    const res = await b.call<X509Body>({
      path: '/v1/svid/x509',
      body: { keyType: 'ec-p256' },
      cert: first.svid,
      key: first.privateKey,
    });
    expect(res.status).toBe(200);
    expect(res.json.spiffeId).toBe(first.spiffeId);
    expect(res.json.serial).not.toBe(first.serial);
    const entry = (await auditEntries())[res.json.audit.index];
    expect(entry).toMatchObject({ source: 'mtls', actor: first.spiffeId, subject: first.spiffeId });
  });

  it('refuses a client certificate from another CA with 401 and records the denial', async () => {
    // A self-signed "SVID" for the same SPIFFE ID, from a CA the broker does not trust.
    const { generateKeyPairSync } = await import('node:crypto');
    const { mintCa, mintLeaf } = await import('../../src/ca/x509.js');
    const rogueKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const now = Date.now();
    const rogueCa = mintCa(
      { commonName: 'rogue', trustDomain: 'example.org', subjectPublicKey: rogueKey.publicKey, notBefore: new Date(now - 60_000), notAfter: new Date(now + 86_400_000), pathLen: 0 },
      { selfSignedKey: rogueKey.privateKey },
    );
    const { issuerFromPem } = await import('../../src/ca/x509.js');
    const issuer = issuerFromPem(rogueCa.pem, rogueKey.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
    const leafKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const leaf = mintLeaf(issuer, {
      spiffeId: 'spiffe://example.org/ns/shop/sa/web', dnsNames: [], subjectPublicKey: leafKey.publicKey,
      notBefore: new Date(now - 60_000), notAfter: new Date(now + 3_600_000),
    });
    const before = b.broker.audit.size;
    const res = await b.call({
      path: '/v1/svid/x509',
      body: { keyType: 'ec-p256' },
      cert: leaf.pem + rogueCa.pem,
      key: leafKey.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    });
    expect(res.status).toBe(401);
    expect(res.json).toMatchObject({ error: 'invalid_client_certificate' });
    const entries = await auditEntries();
    expect(entries.slice(before).some((e) => e.type === 'denial' && e.code === 'invalid_client_certificate')).toBe(true);
  });

  it('two workloads talk mutual TLS with their SVIDs and read each other’s SPIFFE ID', async () => {
    const server = await svid('shop', 'web');
    const client = await svid('payments', 'api');
    const spiffeOf = (cert: X509Certificate | undefined): string | undefined =>
      cert?.subjectAltName?.split(', ').find((s) => s.startsWith('URI:'))?.slice(4);

    const seenByServer = new Promise<string | undefined>((resolve) => {
      const srv = tls.createServer(
        { cert: server.svid, key: server.privateKey, ca: server.bundle, requestCert: true, rejectUnauthorized: true },
        (socket) => {
          resolve(spiffeOf(socket.getPeerX509Certificate()));
          socket.end('hello');
          srv.close();
        },
      );
      srv.listen(0, '127.0.0.1', () => {
        const port = (srv.address() as { port: number }).port;
        const conn = tls.connect({
          port, host: '127.0.0.1', cert: client.svid, key: client.privateKey, ca: client.bundle,
          // SVIDs are verified by SPIFFE ID, not hostname.
          checkServerIdentity: (_host, cert) =>
            cert.subjectaltname?.includes('URI:spiffe://example.org/ns/shop/sa/web') ? undefined : new Error('wrong server SPIFFE ID'),
        });
        conn.on('secureConnect', () => {
          expect(spiffeOf(conn.getPeerX509Certificate())).toBe('spiffe://example.org/ns/shop/sa/web');
        });
        conn.on('data', () => conn.end());
        conn.on('error', () => undefined);
      });
    });
    expect(await seenByServer).toBe('spiffe://example.org/ns/payments/sa/api');
  });
});

describe('JWT-SVID', () => {
  it('issues an ES256 token for an allowed audience that verifies against the bundle', async () => {
    const res = await b.call<{ token: string; spiffeId: string; jti: string; expiresAt: string; audit: { index: number } }>({
      path: '/v1/svid/jwt',
      token: await b.token(),
      body: { audience: ['payments'] },
    });
    expect(res.status).toBe(200);
    const bundle = await b.call<{ keys: { use: string }[] }>({ path: '/v1/bundle' });
    // SPIFFE marks bundle keys `use: jwt-svid`; JOSE libraries only accept `sig`, so relying parties map it.
    const jwtKeys = bundle.json.keys.filter((k) => k.use === 'jwt-svid').map((k) => ({ ...k, use: 'sig' }));
    const jwks = createLocalJWKSet({ keys: jwtKeys });
    const { payload, protectedHeader } = await jwtVerify(res.json.token, jwks, { algorithms: ['ES256'], audience: 'payments' });
    expect(protectedHeader.alg).toBe('ES256');
    expect(payload.sub).toBe('spiffe://example.org/ns/shop/sa/web');
    expect(payload.jti).toBe(res.json.jti);
    expect(typeof payload.iat).toBe('number');
    expect((payload.exp as number) * 1000).toBe(Date.parse(res.json.expiresAt));
    const entry = (await auditEntries())[res.json.audit.index];
    expect(entry).toMatchObject({ type: 'jwt-svid.issued', jti: res.json.jti, audience: ['payments'] });
    expect(JSON.stringify(entry)).not.toContain(res.json.token);
  });

  it('refuses an audience that policy does not grant (403) and records the denial', async () => {
    const before = b.broker.audit.size;
    const res = await b.call({ path: '/v1/svid/jwt', token: await b.token(), body: { audience: ['payments', 'bank'] } });
    expect(res.status).toBe(403);
    expect(res.json).toMatchObject({ error: 'forbidden' });
    const entries = await auditEntries();
    expect(entries.slice(before)).toEqual([expect.objectContaining({ type: 'denial', decision: 'deny', code: 'forbidden', actor: 'spiffe://example.org/ns/shop/sa/web' })]);
  });
});

describe('bundle and health', () => {
  it('serves the SPIFFE bundle as JWKS and PEM', async () => {
    const res = await b.call<{ keys: Record<string, unknown>[]; spiffe_sequence: number; spiffe_refresh_hint: number }>({ path: '/v1/bundle' });
    expect(res.status).toBe(200);
    const x509 = res.json.keys.filter((k) => k.use === 'x509-svid');
    const jwt = res.json.keys.filter((k) => k.use === 'jwt-svid');
    expect(x509).toHaveLength(1);
    expect(jwt).toHaveLength(1);
    expect(jwt[0]?.kid).toBe(b.broker.jwt.kid);
    const root = new X509Certificate(Buffer.from((x509[0]?.x5c as string[])[0] as string, 'base64'));
    expect(root.toString()).toBe(new X509Certificate(b.ca).toString());
    expect(res.json.spiffe_sequence).toBeGreaterThanOrEqual(1);
    expect(res.json.spiffe_refresh_hint).toBeGreaterThan(0);
    const pem = await b.call({ path: '/v1/bundle.pem' });
    expect(pem.text).toBe(b.ca);
  });

  it('answers /healthz and /readyz', async () => {
    expect((await b.call({ path: '/healthz' })).json).toEqual({ status: 'ok' });
    const ready = await b.call({ path: '/readyz' });
    expect(ready.status).toBe(200);
    expect(ready.json).toMatchObject({ status: 'ready', checks: { store: 'ok', audit: 'ok', ca: 'ok' } });
  });
});
