/**
 * Hostile service-account tokens against a live broker: every one is refused with 401 invalid_token,
 * leaves a denial entry in the audit log (found by the request id the broker echoes), and nothing is
 * issued. A token too large for the HTTP header limit never reaches the broker's routes: it gets a
 * clean 431 JSON answer from the HTTP layer (and a metric), not a reset.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEV_ISSUER } from '../../src/dev/token-issuer.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { allowCount, craftJws, denialOf, expectError, type Signer } from './helpers.js';

let b: TestBroker;
let issuerKey: KeyObject;
let kid: string;
let issuedBefore: number;

beforeAll(async () => {
  b = await startBroker();
  issuerKey = createPrivateKey(readFileSync(b.material.issuerKeyFile, 'utf8'));
  const jwks = JSON.parse(readFileSync(b.material.issuerJwksFile, 'utf8')) as { keys: { kid: string }[] };
  kid = (jwks.keys[0] as { kid: string }).kid;
  issuedBefore = await allowCount(b);
});
afterAll(async () => {
  await b?.close();
});

const now = (): number => Math.floor(Date.now() / 1000);

function claims(over: Record<string, unknown> = {}): Record<string, unknown> {
  const t = now();
  return {
    iss: DEV_ISSUER,
    sub: 'system:serviceaccount:shop:web',
    aud: ['tessera'],
    iat: t,
    nbf: t,
    exp: t + 600,
    jti: randomUUID(),
    'kubernetes.io': {
      namespace: 'shop',
      serviceaccount: { name: 'web', uid: randomUUID() },
      pod: { name: 'web-7d9f8', uid: randomUUID() },
    },
    ...over,
  };
}

const without = (key: string): Record<string, unknown> => {
  const c = claims();
  delete c[key];
  return c;
};

const rs = (): Signer => ({ alg: 'RS256', key: issuerKey });
const header = (over: Record<string, unknown> = {}): Record<string, unknown> => ({ alg: 'RS256', kid, typ: 'JWT', ...over });

async function refuse(token: string, route: 'x509' | 'jwt'): Promise<void> {
  const body = route === 'x509' ? { keyType: 'ec-p256' } : { audience: ['payments'] };
  const res = await b.call({ path: `/v1/svid/${route}`, body, headers: { authorization: `Bearer ${token}` } });
  expectError(res, 401, 'invalid_token');
  const denial = await denialOf(b, res);
  expect(denial).toMatchObject({ code: 'invalid_token', actor: null, subject: null });
  // The token itself never enters the log.
  expect(JSON.stringify(denial)).not.toContain(token.split('.')[2] || token.slice(-40));
}

describe('the crafting is sound', () => {
  it('a well-formed token made by hand is accepted (so every refusal below is the mutation’s doing)', async () => {
    const res = await b.call({ path: '/v1/svid/jwt', token: craftJws(header(), claims(), rs()), body: { audience: ['payments'] } });
    expect(res.status, res.text).toBe(200);
    issuedBefore += 1;
  });
});

describe('hostile tokens → 401 invalid_token, a denial entry, nothing issued', () => {
  const ecAttacker = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const rsaAttacker = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;

  const cases: [string, () => string][] = [
    ['alg none, empty signature', () => craftJws(header({ alg: 'none' }), claims(), { alg: 'none' })],
    ['alg none, with a signature', () => `${craftJws(header({ alg: 'none' }), claims(), { alg: 'none' })}AAAA`],
    ['alg "None" (case games)', () => craftJws(header({ alg: 'None' }), claims(), rs())],
    [
      'HS256 keyed with the issuer’s public key (PEM)',
      () => craftJws(header({ alg: 'HS256' }), claims(), { alg: 'HS256', secret: Buffer.from(createPublicKey(issuerKey).export({ type: 'spki', format: 'pem' }) as string) }),
    ],
    [
      'HS256 keyed with the issuer’s public JWK JSON',
      () => craftJws(header({ alg: 'HS256' }), claims(), { alg: 'HS256', secret: Buffer.from(readFileSync(b.material.issuerJwksFile)) }),
    ],
    ['ES256 header with the RSA key’s kid, signed by an attacker EC key', () => craftJws(header({ alg: 'ES256' }), claims(), { alg: 'ES256', key: ecAttacker })],
    ['RS256 header, ES256 signature bytes', () => craftJws(header(), claims(), { alg: 'ES256', key: ecAttacker })],
    ['PS256 (not on the allow-list) with the issuer key', () => craftJws(header({ alg: 'PS256' }), claims(), rs())],
    ['RS256 by an attacker key under the issuer’s kid', () => craftJws(header(), claims(), { alg: 'RS256', key: rsaAttacker })],
    ['unknown kid', () => craftJws(header({ kid: 'no-such-key' }), claims(), rs())],
    ['jku header (validly signed)', () => craftJws(header({ jku: 'https://evil.example/jwks.json' }), claims(), rs())],
    ['x5u header (validly signed)', () => craftJws(header({ x5u: 'https://evil.example/cert.pem' }), claims(), rs())],
    [
      'embedded jwk header (validly signed)',
      () => craftJws(header({ jwk: createPublicKey(rsaAttacker).export({ format: 'jwk' }) }), claims(), { alg: 'RS256', key: rsaAttacker }),
    ],
    ['x5c header (validly signed)', () => craftJws(header({ x5c: ['MIIB'] }), claims(), rs())],
    ['crit header (validly signed)', () => craftJws(header({ crit: ['exp'] }), claims(), rs())],
    ['expired', () => craftJws(header(), claims({ iat: now() - 7200, nbf: now() - 7200, exp: now() - 3600 }), rs())],
    ['not yet valid (nbf an hour ahead)', () => craftJws(header(), claims({ nbf: now() + 3600, exp: now() + 7200 }), rs())],
    ['issued in the future', () => craftJws(header(), claims({ iat: now() + 3600, nbf: undefined, exp: now() + 7200 }), rs())],
    ['wrong iss', () => craftJws(header(), claims({ iss: 'https://evil.example' }), rs())],
    ['iss differs only in a trailing slash', () => craftJws(header(), claims({ iss: `${DEV_ISSUER}/` }), rs())],
    ['wrong aud', () => craftJws(header(), claims({ aud: ['vault'] }), rs())],
    ['missing aud', () => craftJws(header(), without('aud'), rs())],
    ['missing exp', () => craftJws(header(), without('exp'), rs())],
    ['missing iat', () => craftJws(header(), without('iat'), rs())],
    ['missing kubernetes.io', () => craftJws(header(), without('kubernetes.io'), rs())],
    ['sub does not match the service account', () => craftJws(header(), claims({ sub: 'system:serviceaccount:kube-system:admin' }), rs())],
    ['namespace that is not a DNS label', () => craftJws(header(), claims({ sub: 'system:serviceaccount:../x:web', 'kubernetes.io': { namespace: '../x', serviceaccount: { name: 'web' } } }), rs())],
    ['exp as a string', () => craftJws(header(), claims({ exp: String(now() + 600) }), rs())],
    ['over-long lifetime (two days)', () => craftJws(header(), claims({ exp: now() + 2 * 86_400 }), rs())],
    ['garbage base64 in every part', () => 'eyJ!!!.e30$$$.sig***'],
    ['three parts that are not base64 JSON', () => 'abc.def.ghi'],
    ['header that is a JSON array', () => `${Buffer.from('[1]').toString('base64url')}.e30.AAAA`],
    ['a length of 1 mod 4', () => 'aaaaa.bbbbb.ccccc'],
    ['two parts only', () => craftJws(header(), claims(), rs()).split('.').slice(0, 2).join('.')],
    ['JSON serialization instead of compact', () => Buffer.from(JSON.stringify({ payload: 'e30', signatures: [] })).toString('base64url')],
    ['15 KB of base64url, just inside the header limit', () => `${'A'.repeat(5_000)}.${'B'.repeat(5_000)}.${'C'.repeat(5_000)}`],
  ];

  it.each(cases)('%s', async (_name, make) => {
    const token = make();
    await refuse(token, 'x509');
    await refuse(token, 'jwt');
  });

  it('an Authorization header that is not a Bearer token', async () => {
    for (const value of ['Basic dXNlcjpwYXNz', 'Bearer', 'Bearer  two  spaces', `bearer ${craftJws(header(), claims(), rs())}`, 'Bearer a.b.c d']) {
      const res = await b.call({ path: '/v1/svid/x509', body: { keyType: 'ec-p256' }, headers: { authorization: value } });
      expectError(res, 401, 'invalid_token');
      await denialOf(b, res);
    }
  });

  it('a 1 MB token is answered 431 in JSON by the HTTP layer, never a reset, and nothing is issued', async () => {
    const huge = `${'A'.repeat(350_000)}.${'B'.repeat(350_000)}.${'C'.repeat(350_000)}`;
    for (let i = 0; i < 3; i++) {
      const res = await b.call({ path: '/v1/svid/x509', body: { keyType: 'ec-p256' }, headers: { authorization: `Bearer ${huge}` } });
      expectError(res, 431, 'header_too_large');
    }
    // The broker is unharmed.
    expect((await b.call({ path: '/healthz' })).status).toBe(200);
  });

  it('issued nothing to any of them', async () => {
    expect(await allowCount(b)).toBe(issuedBefore);
  });
});
