/**
 * The CA key, the JWT-SVID key and the audit checkpoint key in a real SoftHSM2 token (generated there
 * by pkcs11-tool, never extractable): a broker issues with them over real TLS, and what it issued is
 * checked with tools that are not Tessera's (openssl verify; jose against the bundle; the checkpoint
 * against the public key pkcs11-tool reads). A real broker process refuses a wrong PIN and a missing
 * key label at start with one clear line. (Automatic rotation with token keys: ca-rotation-pkcs11.test.ts.)
 */
import { X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../../src/audit/note.js';
import { issuerFromPem, mintCa } from '../../src/ca/x509.js';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';
import { spawnBroker } from '../helpers/broker-process.js';
import { opensslKeyAndCsr, opensslVerify } from '../helpers/openssl.js';
import { createToken, removeTokens, softhsmMissing, softhsmRequiredUnderCi, type TestToken } from '../helpers/softhsm.js';

const missing = softhsmMissing();
softhsmRequiredUnderCi();

interface X509Body {
  certificates: string[];
  privateKey?: string;
}

/** A signing CA certificate for `publicKey` (a key in the token), signed by the dev root. */
async function caCertFor(publicKey: KeyObject, dir: string): Promise<{ certFile: string; bundleFile: string }> {
  const { dir: pki } = await devMaterial();
  const root = issuerFromPem(readFileSync(path.join(pki, 'root.pem'), 'utf8'), readFileSync(path.join(pki, 'root.key'), 'utf8'));
  const now = Date.now();
  const cert = mintCa(
    { commonName: 'Tessera HSM CA', trustDomain: 'example.org', subjectPublicKey: publicKey, notBefore: new Date(now - 60_000), notAfter: new Date(now + 86_400_000), pathLen: 0 },
    root,
  );
  const certFile = path.join(dir, 'hsm-ca.pem');
  writeFileSync(certFile, cert.pem);
  return { certFile, bundleFile: path.join(pki, 'bundle.pem') };
}

describe.skipIf(missing !== undefined)('keys in a SoftHSM2 token', () => {
  let token: TestToken;
  let b: TestBroker;
  let caKey: KeyObject;
  let jwtKey: KeyObject;
  let auditKey: KeyObject;
  let caCertFile: string;
  let bundleFile: string;
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-pkcs11-'));

  beforeAll(async () => {
    token = createToken('tessera');
    caKey = token.generate('ca', 'EC:prime256v1');
    jwtKey = token.generate('jwt', 'EC:prime256v1');
    auditKey = token.generate('audit', 'EC:edwards25519');
    ({ certFile: caCertFile, bundleFile } = await caCertFor(caKey, dir));
    b = await startBroker({
      config: {
        ca: { certFile: caCertFile, bundleFile, pkcs11: token.pkcs11('ca'), jwtPkcs11: token.pkcs11('jwt') },
        audit: { signingPkcs11: token.pkcs11('audit') },
      },
    });
  });
  afterAll(async () => {
    await b?.close();
    token?.remove();
    removeTokens();
  });

  it('issues X.509-SVIDs signed in the token that openssl verifies against the bundle (CSR, server-made key, concurrent)', async () => {
    const { csrPem } = opensslKeyAndCsr('ec-p256');
    const res = await b.call<X509Body>({ path: '/v1/svid/x509', token: await b.token(), body: { csr: csrPem } });
    expect(res.status).toBe(200);
    expect(res.json.certificates).toHaveLength(2);
    expect(res.json.certificates[1]).toBe(readFileSync(caCertFile, 'utf8'));
    expect(opensslVerify(b.ca, res.json.certificates, 'sslclient')).toMatchObject({ ok: true });
    // The leaf's signature verifies with the token key pkcs11-tool reads (not with anything Tessera computed).
    expect(new X509Certificate(res.json.certificates[0] as string).verify(caKey)).toBe(true);

    const token1 = await b.token();
    const many = await Promise.all(
      Array.from({ length: 24 }, (_, i) =>
        b.call<X509Body>({ path: '/v1/svid/x509', token: token1, body: i % 2 === 0 ? { csr: csrPem } : { keyType: 'ec-p256' } }),
      ),
    );
    for (const r of many) {
      expect(r.status).toBe(200);
      expect(opensslVerify(b.ca, r.json.certificates).ok).toBe(true);
    }
    expect(many.filter((r) => r.json.privateKey !== undefined)).toHaveLength(12);
  });

  it('issues JWT-SVIDs signed by the token key that verify against the bundle', async () => {
    const res = await b.call<{ token: string }>({ path: '/v1/svid/jwt', token: await b.token(), body: { audience: ['payments'] } });
    expect(res.status).toBe(200);
    const bundle = await b.call<{ keys: { use: string; x: string; y: string }[] }>({ path: '/v1/bundle' });
    const jwtKeys = bundle.json.keys.filter((k) => k.use === 'jwt-svid');
    const fromToken = jwtKey.export({ format: 'jwk' });
    expect(jwtKeys).toEqual([expect.objectContaining({ x: fromToken.x, y: fromToken.y })]);
    const { payload } = await jwtVerify(res.json.token, createLocalJWKSet({ keys: jwtKeys.map((k) => ({ ...k, use: 'sig' })) }), { algorithms: ['ES256'], audience: 'payments' });
    expect(payload.sub).toBe('spiffe://example.org/ns/shop/sa/web');
    // And with the token's public key itself.
    await expect(jwtVerify(res.json.token, jwtKey, { algorithms: ['ES256'] })).resolves.toBeDefined();
  });

  it('signs audit checkpoints with the token key', async () => {
    const res = await b.call({ path: '/v1/audit/checkpoint' });
    expect(res.status).toBe(200);
    const spki = auditKey.export({ type: 'spki', format: 'der' });
    const origin = 'example.org/tessera/audit';
    const cp = openCheckpoint(res.text, { name: origin, publicKey: auditKey, rawPublicKey: spki.subarray(spki.length - 32) });
    expect(cp.origin).toBe(origin);
    expect(cp.size).toBeGreaterThan(0);
  });

  it('refuses both keyFile and pkcs11 for one key', async () => {
    const { dir: pki } = await devMaterial();
    await expect(
      startBroker({ config: { ca: { certFile: caCertFile, bundleFile, keyFile: path.join(pki, 'intermediate.key'), pkcs11: token.pkcs11('ca'), jwtPkcs11: token.pkcs11('jwt') } } }),
    ).rejects.toThrow('config.ca.keyFile: set exactly one of keyFile and pkcs11');
  });

  it.each([
    ['a wrong PIN', (): Record<string, unknown> => {
      const pinFile = path.join(dir, 'wrong.pin');
      writeFileSync(pinFile, '000000\n', { mode: 0o600 });
      return { ...token.pkcs11('ca'), pinFile };
    }, /^broker exited with 1: tessera: config\.ca\.pkcs11: wrong PIN for token "tessera" \(CKR_PIN_INCORRECT; PIN from .*wrong\.pin\)\n$/],
    ['a missing key label', (): Record<string, unknown> => token.pkcs11('no-such-key'), /^broker exited with 1: tessera: config\.ca\.pkcs11: no private key labelled "no-such-key" in token "tessera"\n$/],
  ])('a broker process with %s exits at start with one line naming the cause', async (_what, ref, message) => {
    const started = spawnBroker({
      registration: [],
      config: { ca: { certFile: caCertFile, bundleFile, pkcs11: ref(), jwtPkcs11: token.pkcs11('jwt') } },
    });
    const err = (await started.then(
      () => new Error('the broker started'),
      (e: unknown) => e as Error,
    ));
    // One line, nothing else (no stack trace).
    expect(err.message).toMatch(message);
  });
});
