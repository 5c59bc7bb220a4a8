/**
 * Every bad input gets a 4xx `{error, message}` with a stable code and nothing is issued; when the
 * audit log cannot record, the broker answers 503 and issues nothing (fail closed).
 */
import { generateKeyPairSync } from 'node:crypto';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmbeddedStore } from '../../src/store/embedded.js';
import { DEV_ISSUER } from '../../src/dev/token-issuer.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { FaultyStore } from '../helpers/failing-store.js';
import { opensslKeyAndCsr } from '../helpers/openssl.js';

let b: TestBroker;
let faulty: FaultyStore | undefined;
beforeAll(async () => {
  b = await startBroker({
    store: async (dir) => {
      faulty = new FaultyStore(await EmbeddedStore.open(dir));
      return faulty;
    },
  });
});
afterAll(async () => {
  await b?.close();
});

function expectError(res: { status: number; json: unknown }, status: number, code: string): void {
  expect(res.status, JSON.stringify(res.json)).toBe(status);
  expect(res.json).toEqual({ error: code, message: expect.any(String) });
}

async function issuedCount(): Promise<number> {
  const raw = await b.broker.audit.entries(0, b.broker.audit.size);
  return raw.map((e) => JSON.parse(e.toString('utf8')) as { decision: string }).filter((e) => e.decision === 'allow').length;
}

describe('malformed requests', () => {
  it('rejects malformed JSON, empty bodies, wrong content types and oversized bodies', async () => {
    const token = await b.token();
    expectError(await b.call({ path: '/v1/svid/x509', token, rawBody: '{"csr":', headers: { 'content-type': 'application/json' } }), 400, 'invalid_json');
    expectError(await b.call({ path: '/v1/svid/x509', token, rawBody: 'csr=abc', headers: { 'content-type': 'application/x-www-form-urlencoded' } }), 415, 'unsupported_media_type');
    expectError(await b.call({ path: '/v1/svid/x509', token, rawBody: 'x'.repeat(70_000), headers: { 'content-type': 'application/json' } }), 413, 'payload_too_large');
    expectError(await b.call({ path: '/v1/svid/x509', token, body: {} }), 400, 'bad_request');
    expectError(await b.call({ path: '/v1/svid/x509', token, body: { csr: 'x', keyType: 'ec-p256' } }), 400, 'bad_request');
    expectError(await b.call({ path: '/v1/svid/x509', token, body: { keyType: 'rsa-512' } }), 400, 'bad_request');
    expectError(await b.call({ path: '/v1/svid/x509', token, body: { keyType: 'ec-p256', extra: true } }), 400, 'bad_request');
    expectError(await b.call({ path: '/v1/svid/x509', token, body: [1, 2] }), 400, 'bad_request');
    expectError(await b.call({ path: '/v1/svid/jwt', token, body: { audience: 'payments' } }), 400, 'bad_request');
    expectError(await b.call({ path: '/v1/nope' }), 404, 'not_found');
  });

  it('rejects bad PEM, a CSR with a broken signature and a weak key, recording denials', async () => {
    const token = await b.token();
    const before = b.broker.audit.size;
    expectError(await b.call({ path: '/v1/svid/x509', token, body: { csr: 'not a pem' } }), 400, 'invalid_csr');
    const { csrPem } = opensslKeyAndCsr('ec-p256');
    // Flip one base64 character inside the signature (near the end of the body).
    const lines = csrPem.trim().split('\n');
    const last = lines.length - 2;
    const line = lines[last] as string;
    const i = Math.max(0, line.length - 6);
    lines[last] = line.slice(0, i) + (line[i] === 'A' ? 'B' : 'A') + line.slice(i + 1);
    expectError(await b.call({ path: '/v1/svid/x509', token, body: { csr: `${lines.join('\n')}\n` } }), 400, 'invalid_csr');
    expectError(await b.call({ path: '/v1/svid/x509', token, body: { csr: opensslKeyAndCsr('rsa-1024').csrPem } }), 400, 'weak_key');
    const raw = await b.broker.audit.entries(before, b.broker.audit.size);
    const codes = raw.map((e) => (JSON.parse(e.toString('utf8')) as { code?: string }).code);
    expect(codes).toEqual(['invalid_csr', 'invalid_csr', 'weak_key']);
  });
});

describe('bad identities', () => {
  it('refuses missing, expired, forged and wrong-audience tokens with 401', async () => {
    const before = await issuedCount();
    expectError(await b.call({ path: '/v1/svid/x509', body: { keyType: 'ec-p256' } }), 401, 'unauthenticated');
    expectError(await b.call({ path: '/v1/svid/x509', body: { keyType: 'ec-p256' }, headers: { authorization: 'Basic abc' } }), 401, 'invalid_token');
    const expired = await b.token({ now: Date.now() - 7_200_000, ttlSeconds: 3600 });
    expectError(await b.call({ path: '/v1/svid/x509', token: expired, body: { keyType: 'ec-p256' } }), 401, 'invalid_token');
    const wrongAud = await b.token({ audience: 'vault' });
    expectError(await b.call({ path: '/v1/svid/x509', token: wrongAud, body: { keyType: 'ec-p256' } }), 401, 'invalid_token');
    const forger = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const now = Math.floor(Date.now() / 1000);
    const forged = await new SignJWT({ 'kubernetes.io': { namespace: 'shop', serviceaccount: { name: 'web', uid: 'x' } } })
      .setProtectedHeader({ alg: 'RS256', kid: 'forged' })
      .setIssuer(DEV_ISSUER).setSubject('system:serviceaccount:shop:web').setAudience('tessera')
      .setIssuedAt(now).setExpirationTime(now + 600)
      .sign(forger.privateKey);
    expectError(await b.call({ path: '/v1/svid/x509', token: forged, body: { keyType: 'ec-p256' } }), 401, 'invalid_token');
    expect(await issuedCount()).toBe(before);
  });

  it('refuses a workload that no registration entry grants (403)', async () => {
    const token = await b.token({ namespace: 'kube-system', serviceAccount: 'default' });
    expectError(await b.call({ path: '/v1/svid/x509', token, body: { keyType: 'ec-p256' } }), 403, 'forbidden');
  });
});

describe('fail closed', () => {
  it('answers 503 and issues nothing while the audit log cannot write, then recovers', async () => {
    const token = await b.token();
    const sizeBefore = b.broker.audit.size;
    (faulty as FaultyStore).failAppends = true;
    try {
      const res = await b.call({ path: '/v1/svid/x509', token, body: { keyType: 'ec-p256' } });
      expectError(res, 503, 'audit_unavailable');
      expect(res.text).not.toContain('CERTIFICATE');
      expect(res.headers['retry-after']).toBeDefined();
      expectError(await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } }), 503, 'audit_unavailable');
      expectError(await b.call({ path: '/readyz' }), 503, 'not_ready');
    } finally {
      (faulty as FaultyStore).failAppends = false;
    }
    expect(b.broker.audit.size).toBe(sizeBefore);
    const res = await b.call({ path: '/v1/svid/x509', token, body: { keyType: 'ec-p256' } });
    expect(res.status).toBe(200);
    expect((await b.call({ path: '/readyz' })).status).toBe(200);
  });
});
