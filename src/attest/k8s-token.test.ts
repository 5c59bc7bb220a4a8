import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import {
  constants,
  createHmac,
  generateKeyPairSync,
  sign as cryptoSign,
  type KeyObject,
} from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { BrokerError } from '../errors.js';
import {
  MAX_TOKEN_BYTES,
  ServiceAccountTokenAttestor,
  type TokenIssuerOptions,
} from './k8s-token.js';

// ---------------------------------------------------------------------------------------------
// Fixtures: keys, JWKS files, a controllable clock and a raw token builder that can produce the
// malformed and hostile tokens a normal JWT library refuses to create.
// ---------------------------------------------------------------------------------------------

const ISS = 'https://oidc.cluster-a.example.com';
const ISS_EC = 'https://oidc.cluster-b.example.com';
const AUD = 'tessera';
const TD = 'example.org';
const T0 = 1_900_000_000_000; // fixed "now" in ms

let nowMs = T0;
const clock = { now: (): number => nowMs };
const nowS = (): number => Math.floor(nowMs / 1000);

interface KeyPair {
  kid: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
  jwk: Record<string, unknown>;
}

function rsaKey(kid: string): KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { kid, privateKey, publicKey, jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' } };
}

function ecKey(kid: string): KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { kid, privateKey, publicKey, jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' } };
}

type Signer = (input: Buffer) => Buffer;
const rs256 = (k: KeyPair): Signer => (input) => cryptoSign('sha256', input, k.privateKey);
const es256 = (k: KeyPair): Signer => (input) =>
  cryptoSign('sha256', input, { key: k.privateKey, dsaEncoding: 'ieee-p1363' });
const ps256 = (k: KeyPair): Signer => (input) =>
  cryptoSign('sha256', input, { key: k.privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
const hs256 = (secret: Buffer | string): Signer => (input) => createHmac('sha256', secret).update(input).digest();

const b64 = (value: string | Buffer): string => Buffer.from(value).toString('base64url');

function rawToken(header: Record<string, unknown>, payload: Record<string, unknown> | string, signer: Signer): string {
  const input = `${b64(JSON.stringify(header))}.${b64(typeof payload === 'string' ? payload : JSON.stringify(payload))}`;
  return `${input}.${b64(signer(Buffer.from(input)))}`;
}

/** A valid projected-token claim set; `undefined` overrides remove a claim (JSON drops them). */
function claims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const iat = nowS();
  return {
    iss: ISS,
    sub: 'system:serviceaccount:shop:web',
    aud: [AUD],
    iat,
    nbf: iat,
    exp: iat + 3600,
    jti: 'c1a7f1de-58c6-4bd4-b1a8-8e0a3d0d2f0b',
    'kubernetes.io': {
      namespace: 'shop',
      serviceaccount: { name: 'web', uid: '4f9a1b1e-0f6e-4c57-9d0e-3b5b0a1e2c3d' },
      pod: { name: 'web-7d9f8', uid: '8b2d6c0a-1b9e-4f3a-8c7d-6e5f4a3b2c1d' },
    },
    ...overrides,
  };
}

function k8s(ns: unknown, sa: unknown, pod?: unknown): Record<string, unknown> {
  return { 'kubernetes.io': { namespace: ns, serviceaccount: { name: sa }, ...(pod !== undefined && { pod }) } };
}

let dir: string;
let rsa1: KeyPair;
let rsa2: KeyPair;
let ec1: KeyPair;
let rsaJwksFile: string;
let ecJwksFile: string;
let mixedJwksFile: string;

function writeJwks(name: string, keys: KeyPair[]): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, JSON.stringify({ keys: keys.map((k) => k.jwk) }));
  return file;
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-'));
  rsa1 = rsaKey('rsa-1');
  rsa2 = rsaKey('rsa-2');
  ec1 = ecKey('ec-1');
  rsaJwksFile = writeJwks('rsa.jwks.json', [rsa1]);
  ecJwksFile = writeJwks('ec.jwks.json', [ec1]);
  mixedJwksFile = writeJwks('mixed.jwks.json', [rsa1, ec1]);
});

afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  nowMs = T0;
});

function attestor(issuer: Partial<TokenIssuerOptions> = {}, extra: TokenIssuerOptions[] = []): ServiceAccountTokenAttestor {
  return new ServiceAccountTokenAttestor({
    trustDomain: TD,
    clock,
    issuers: [{ issuer: ISS, jwksFile: rsaJwksFile, audiences: [AUD], ...issuer }, ...extra],
  });
}

const good = (overrides: Record<string, unknown> = {}, key: KeyPair = rsa1): string =>
  rawToken({ alg: 'RS256', kid: key.kid }, claims(overrides), rs256(key));

/** Asserts the one failure shape: a 401 invalid_token whose message matches and never echoes the token. */
async function expectInvalid(att: ServiceAccountTokenAttestor, token: string, message: RegExp): Promise<BrokerError> {
  const err: unknown = await att.attest(token).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'attest() should have rejected').toBeInstanceOf(BrokerError);
  const be = err as BrokerError;
  expect(be.code).toBe('invalid_token');
  expect(be.status).toBe(401);
  expect(be.message).toMatch(message);
  for (const part of token.split('.')) {
    if (part.length > 8) expect(be.message).not.toContain(part);
  }
  return be;
}

// ---------------------------------------------------------------------------------------------
// A tiny JWKS server that counts requests.
// ---------------------------------------------------------------------------------------------

interface JwksServer {
  url: string;
  hits: () => number;
  setKeys: (keys: KeyPair[]) => void;
  close: () => Promise<void>;
}

async function jwksServer(initial: KeyPair[]): Promise<JwksServer> {
  let keys = initial;
  let hits = 0;
  const server = http.createServer((_req, res) => {
    hits += 1;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ keys: keys.map((k) => k.jwk) }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/openid/v1/jwks`,
    hits: () => hits,
    setKeys: (k) => {
      keys = k;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

// ---------------------------------------------------------------------------------------------

describe('ServiceAccountTokenAttestor: accepted tokens', () => {
  it('attests an RS256 projected token to the workload SPIFFE ID with its claims', async () => {
    const identity = await attestor().attest(good());
    expect(identity).toEqual({
      spiffeId: 'spiffe://example.org/ns/shop/sa/web',
      trustDomain: TD,
      source: 'k8s-sa-token',
      claims: {
        namespace: 'shop',
        serviceAccount: 'web',
        serviceAccountUid: '4f9a1b1e-0f6e-4c57-9d0e-3b5b0a1e2c3d',
        podName: 'web-7d9f8',
        podUid: '8b2d6c0a-1b9e-4f3a-8c7d-6e5f4a3b2c1d',
        issuer: ISS,
        tokenId: 'c1a7f1de-58c6-4bd4-b1a8-8e0a3d0d2f0b',
        credentialExpiresAt: (nowS() + 3600) * 1000,
      },
      selectors: ['k8s:ns:shop', 'k8s:sa:web', 'k8s:pod-name:web-7d9f8', 'k8s:pod-uid:8b2d6c0a-1b9e-4f3a-8c7d-6e5f4a3b2c1d'],
    });
  });

  it('attests an ES256 token from an EC P-256 issuer', async () => {
    const att = attestor({ issuer: ISS_EC, jwksFile: ecJwksFile });
    const token = rawToken({ alg: 'ES256', kid: 'ec-1' }, claims({ iss: ISS_EC }), es256(ec1));
    const identity = await att.attest(token);
    expect(identity.spiffeId).toBe('spiffe://example.org/ns/shop/sa/web');
    expect(identity.claims.issuer).toBe(ISS_EC);
  });

  it('routes by exact iss among several issuers and rejects a key of the other issuer', async () => {
    const att = attestor({}, [{ issuer: ISS_EC, jwksFile: ecJwksFile, audiences: ['other'] }]);
    await expect(att.attest(good())).resolves.toMatchObject({ claims: { issuer: ISS } });
    const ecToken = rawToken({ alg: 'ES256', kid: 'ec-1' }, claims({ iss: ISS_EC, aud: ['other'] }), es256(ec1));
    await expect(att.attest(ecToken)).resolves.toMatchObject({ claims: { issuer: ISS_EC } });
    // Signed with issuer B's key, claiming issuer A: A's JWKS does not hold that key.
    await expectInvalid(att, rawToken({ alg: 'ES256', kid: 'ec-1' }, claims(), es256(ec1)), /key id is unknown/);
    // Audience of issuer B is not accepted for issuer A.
    await expectInvalid(att, good({ aud: ['other'] }), /audience/);
  });

  it('accepts aud as a string, and an aud list containing one configured audience', async () => {
    await expect(attestor().attest(good({ aud: AUD }))).resolves.toBeDefined();
    await expect(attestor().attest(good({ aud: ['https://kubernetes.default.svc', AUD] }))).resolves.toBeDefined();
    const att = attestor({ audiences: ['first', 'second'] });
    await expect(att.attest(good({ aud: ['second'] }))).resolves.toBeDefined();
  });

  it('omits pod claims when the token is not pod-bound, and omits tokenId without jti', async () => {
    const token = good({ ...k8s('shop', 'web'), jti: undefined });
    const identity = await attestor().attest(token);
    expect(identity.claims).not.toHaveProperty('podName');
    expect(identity.claims).not.toHaveProperty('podUid');
    expect(identity.claims).not.toHaveProperty('tokenId');
    expect(identity.claims).not.toHaveProperty('serviceAccountUid');
    expect(identity.selectors).toEqual(['k8s:ns:shop', 'k8s:sa:web']);
  });

  it('accepts a token without kid when the issuer has exactly one key of that type', async () => {
    const token = rawToken({ alg: 'RS256' }, claims(), rs256(rsa1));
    await expect(attestor().attest(token)).resolves.toBeDefined();
  });

  it('accepts a service account name that is a DNS subdomain (dots)', async () => {
    const token = good({ sub: 'system:serviceaccount:shop:web.frontend', ...k8s('shop', 'web.frontend') });
    await expect(attestor().attest(token)).resolves.toMatchObject({
      spiffeId: 'spiffe://example.org/ns/shop/sa/web.frontend',
    });
  });
});

describe('ServiceAccountTokenAttestor: algorithms and keys', () => {
  it('rejects alg none, with an empty and with a non-empty signature', async () => {
    const att = attestor();
    const unsigned = `${b64(JSON.stringify({ alg: 'none' }))}.${b64(JSON.stringify(claims()))}.`;
    await expectInvalid(att, unsigned, /compact JWS/);
    await expectInvalid(att, `${unsigned}AAAA`, /algorithm is not allowed/);
    await expectInvalid(att, rawToken({ alg: 'None', kid: 'rsa-1' }, claims(), rs256(rsa1)), /algorithm is not allowed/);
  });

  it('rejects HS256 signed with the issuer public key bytes (key confusion)', async () => {
    const att = attestor();
    const pem = rsa1.publicKey.export({ format: 'pem', type: 'spki' });
    const der = rsa1.publicKey.export({ format: 'der', type: 'spki' });
    for (const secret of [pem, der, JSON.stringify(rsa1.jwk)]) {
      await expectInvalid(att, rawToken({ alg: 'HS256', kid: 'rsa-1' }, claims(), hs256(secret)), /algorithm is not allowed/);
    }
  });

  it('rejects other asymmetric algorithms, even with a valid signature (PS256)', async () => {
    await expectInvalid(attestor(), rawToken({ alg: 'PS256', kid: 'rsa-1' }, claims(), ps256(rsa1)), /algorithm is not allowed/);
    await expectInvalid(attestor(), rawToken({ alg: 'RS512', kid: 'rsa-1' }, claims(), rs256(rsa1)), /algorithm is not allowed/);
  });

  it('rejects an ES256 signature under an RS256 header, and vice versa', async () => {
    const att = attestor({ jwksFile: mixedJwksFile });
    // kid points at the EC key but the header claims RS256: the EC key is never used for RS256.
    await expectInvalid(att, rawToken({ alg: 'RS256', kid: 'ec-1' }, claims(), es256(ec1)), /does not match the type/);
    // kid points at the RSA key, header RS256, signature is ES256: the signature fails.
    await expectInvalid(att, rawToken({ alg: 'RS256', kid: 'rsa-1' }, claims(), es256(ec1)), /signature is invalid/);
    // RSA signature under an ES256 header with the RSA kid.
    await expectInvalid(att, rawToken({ alg: 'ES256', kid: 'rsa-1' }, claims(), rs256(rsa1)), /does not match the type/);
    // RSA signature under an ES256 header with the EC kid.
    await expectInvalid(att, rawToken({ alg: 'ES256', kid: 'ec-1' }, claims(), rs256(rsa1)), /signature is invalid/);
    // Without kid, selection is by type: the RSA token is checked against the EC key and fails.
    await expectInvalid(att, rawToken({ alg: 'ES256' }, claims(), rs256(rsa1)), /signature is invalid/);
  });

  it('rejects a signature by a key that is not in the JWKS, even under a known kid', async () => {
    await expectInvalid(attestor(), rawToken({ alg: 'RS256', kid: 'rsa-1' }, claims(), rs256(rsa2)), /signature is invalid/);
  });

  it('rejects an unknown kid with a file JWKS', async () => {
    await expectInvalid(attestor(), good({}, rsa2), /key id is unknown/);
  });

  it('rejects a non-string kid', async () => {
    await expectInvalid(attestor(), rawToken({ alg: 'RS256', kid: 42 }, claims(), rs256(rsa1)), /key id is malformed/);
  });

  for (const name of ['jku', 'x5u', 'jwk', 'x5c', 'crit'] as const) {
    it(`rejects a "${name}" header outright and never contacts it`, async () => {
      // The attacker's key set, served where jku/x5u point.
      const evil = await jwksServer([rsa2]);
      try {
        const value: Record<string, unknown> = {
          jku: evil.url,
          x5u: evil.url,
          jwk: rsa2.jwk,
          x5c: ['MIIB'],
          crit: ['exp'],
        };
        const token = rawToken({ alg: 'RS256', kid: 'rsa-2', [name]: value[name] }, claims(), rs256(rsa2));
        await expectInvalid(attestor(), token, new RegExp(`header "${name}" is not accepted`));
        // Even with the legitimate key: the header alone is enough to refuse.
        const legit = rawToken({ alg: 'RS256', kid: 'rsa-1', [name]: value[name] }, claims(), rs256(rsa1));
        await expectInvalid(attestor(), legit, new RegExp(`header "${name}" is not accepted`));
        expect(evil.hits()).toBe(0);
      } finally {
        await evil.close();
      }
    });
  }
});

describe('ServiceAccountTokenAttestor: URL JWKS', () => {
  let server: JwksServer;
  beforeEach(async () => {
    server = await jwksServer([rsa1]);
    return () => server.close();
  });

  const urlAttestor = (): ServiceAccountTokenAttestor =>
    attestor({ jwksFile: undefined, jwksUrl: server.url, allowInsecureHttp: true });

  it('fetches once and caches', async () => {
    const att = urlAttestor();
    await att.attest(good());
    await att.attest(good());
    await att.attest(good());
    expect(server.hits()).toBe(1);
  });

  it('refetches once on an unknown kid, then rejects; a second unknown kid within 30 s does not refetch', async () => {
    const att = urlAttestor();
    await att.attest(good());
    expect(server.hits()).toBe(1);

    nowMs += 31_000;
    await expectInvalid(att, good({}, rsa2), /key id is unknown/);
    expect(server.hits()).toBe(2);

    nowMs += 10_000;
    await expectInvalid(att, good({}, rsaKey('rsa-3')), /key id is unknown/);
    await expectInvalid(att, good({}, rsa2), /key id is unknown/);
    expect(server.hits()).toBe(2);

    // Once the interval has passed, an unknown kid may refetch again.
    nowMs += 21_000;
    await expectInvalid(att, good({}, rsa2), /key id is unknown/);
    expect(server.hits()).toBe(3);
  });

  it('does not refetch right after the initial fetch (the interval counts from any fetch)', async () => {
    const att = urlAttestor();
    await expectInvalid(att, good({}, rsa2), /key id is unknown/);
    await expectInvalid(att, good({}, rsa2), /key id is unknown/);
    expect(server.hits()).toBe(1);
  });

  it('picks up a rotated-in key on an unknown kid', async () => {
    const att = urlAttestor();
    await att.attest(good());
    server.setKeys([rsa1, rsa2]);
    nowMs += 31_000;
    await expect(att.attest(good({}, rsa2))).resolves.toMatchObject({ spiffeId: 'spiffe://example.org/ns/shop/sa/web' });
    await expect(att.attest(good({}, rsa1))).resolves.toBeDefined();
    expect(server.hits()).toBe(2);
  });

  it('honours a shorter configured refresh interval', async () => {
    const att = attestor({ jwksFile: undefined, jwksUrl: server.url, allowInsecureHttp: true, jwksRefreshIntervalMs: 1_000 });
    await att.attest(good());
    server.setKeys([rsa1, rsa2]);
    nowMs += 1_000;
    await expect(att.attest(good({}, rsa2))).resolves.toBeDefined();
    expect(server.hits()).toBe(2);
  });

  it('shares one in-flight fetch between concurrent attestations', async () => {
    const att = urlAttestor();
    const results = await Promise.all(Array.from({ length: 20 }, () => att.attest(good())));
    expect(results).toHaveLength(20);
    expect(server.hits()).toBe(1);
  });

  it('rejects tokens with a 401 when the JWKS endpoint is down', async () => {
    await server.close();
    const att = urlAttestor();
    await expectInvalid(att, good(), /signing keys could not be fetched/);
  });

  it('refuses an http JWKS URL unless allowInsecureHttp is set', () => {
    expect(() => attestor({ jwksFile: undefined, jwksUrl: server.url })).toThrow(/https/);
  });
});

describe('ServiceAccountTokenAttestor: time claims', () => {
  it('rejects a token expired beyond the skew, accepts one expired within it', async () => {
    const att = attestor();
    const iat = nowS() - 3600;
    await expectInvalid(att, good({ iat, nbf: iat, exp: nowS() - 61 }), /expired/);
    await expect(att.attest(good({ iat, nbf: iat, exp: nowS() - 30 }))).resolves.toBeDefined();
  });

  it('uses the configured skew', async () => {
    const att = new ServiceAccountTokenAttestor({
      trustDomain: TD,
      clock,
      clockSkewSeconds: 0,
      issuers: [{ issuer: ISS, jwksFile: rsaJwksFile, audiences: [AUD] }],
    });
    const iat = nowS() - 3600;
    await expectInvalid(att, good({ iat, nbf: iat, exp: nowS() - 1 }), /expired/);
  });

  it('rejects nbf in the future beyond the skew, accepts it within', async () => {
    const att = attestor();
    await expectInvalid(att, good({ nbf: nowS() + 120 }), /not yet valid/);
    await expect(att.attest(good({ nbf: nowS() + 30 }))).resolves.toBeDefined();
  });

  it('rejects iat in the future beyond the skew', async () => {
    const iat = nowS() + 600;
    await expectInvalid(attestor(), good({ iat, nbf: undefined, exp: iat + 600 }), /issued in the future/);
  });

  it('rejects missing exp, missing iat and non-numeric exp', async () => {
    await expectInvalid(attestor(), good({ exp: undefined }), /missing the "exp" claim/);
    await expectInvalid(attestor(), good({ iat: undefined }), /missing the "iat" claim/);
    await expectInvalid(attestor(), good({ exp: String(nowS() + 60) }), /"exp" claim has the wrong type/);
  });

  it('rejects exp of 1e400 (Infinity after JSON parsing)', async () => {
    const payload = JSON.stringify(claims()).replace(/"exp":\d+/, '"exp":1e400');
    await expectInvalid(attestor(), rawToken({ alg: 'RS256', kid: 'rsa-1' }, payload, rs256(rsa1)), /"exp" claim is not a number/);
  });

  it('rejects a lifetime above the maximum, measured from iat or from an earlier nbf', async () => {
    const att = attestor();
    const iat = nowS();
    await expectInvalid(att, good({ iat, nbf: iat, exp: iat + 86_401 }), /lifetime exceeds/);
    await expect(att.attest(good({ iat, nbf: iat, exp: iat + 86_400 }))).resolves.toBeDefined();
    await expectInvalid(att, good({ iat, nbf: iat - 80_000, exp: iat + 7_000 }), /lifetime exceeds/);
    const short = attestor({ maxLifetimeSeconds: 600 });
    await expectInvalid(short, good({ iat, nbf: iat, exp: iat + 601 }), /lifetime exceeds/);
  });

  it('rejects a token that expires before it is issued', async () => {
    const iat = nowS();
    await expectInvalid(attestor(), good({ iat, nbf: undefined, exp: iat }), /expires before/);
  });
});

describe('ServiceAccountTokenAttestor: issuer, audience, subject and Kubernetes claims', () => {
  it('rejects an unknown, missing or near-miss issuer', async () => {
    await expectInvalid(attestor(), good({ iss: 'https://evil.example.com' }), /issuer is not trusted/);
    await expectInvalid(attestor(), good({ iss: `${ISS}/` }), /issuer is not trusted/);
    await expectInvalid(attestor(), good({ iss: ISS.toUpperCase() }), /issuer is not trusted/);
    await expectInvalid(attestor(), good({ iss: undefined }), /no issuer/);
    await expectInvalid(attestor(), good({ iss: [ISS] }), /no issuer/);
  });

  it('rejects a wrong or missing audience', async () => {
    await expectInvalid(attestor(), good({ aud: ['https://kubernetes.default.svc'] }), /audience is not accepted/);
    await expectInvalid(attestor(), good({ aud: [] }), /audience is not accepted/);
    await expectInvalid(attestor(), good({ aud: undefined }), /missing the "aud" claim/);
  });

  it('rejects a sub that does not match the kubernetes.io claim', async () => {
    await expectInvalid(attestor(), good({ sub: 'system:serviceaccount:shop:admin' }), /subject does not match/);
    await expectInvalid(attestor(), good({ sub: 'system:serviceaccount:kube-system:web' }), /subject does not match/);
    await expectInvalid(attestor(), good({ sub: undefined }), /subject does not match/);
  });

  it('rejects a missing or malformed kubernetes.io claim', async () => {
    await expectInvalid(attestor(), good({ 'kubernetes.io': undefined }), /no "kubernetes.io" claim/);
    await expectInvalid(attestor(), good({ 'kubernetes.io': 'shop/web' }), /no "kubernetes.io" claim/);
    await expectInvalid(attestor(), good({ 'kubernetes.io': { serviceaccount: { name: 'web' } } }), /no Kubernetes namespace/);
    await expectInvalid(attestor(), good({ 'kubernetes.io': { namespace: 'shop' } }), /no Kubernetes service account/);
    await expectInvalid(attestor(), good(k8s(['shop'], 'web')), /no Kubernetes namespace/);
    await expectInvalid(attestor(), good(k8s('shop', 7)), /no Kubernetes service account/);
  });

  it('rejects namespaces and service accounts that are not Kubernetes names', async () => {
    const badNamespaces = ['Shop', 'sh/op', '..', '.', 'a_b', 'shop.prod', '-shop', 'shop-', 'a'.repeat(64), 'shöp', ''];
    for (const ns of badNamespaces) {
      const token = good({ sub: `system:serviceaccount:${ns}:web`, ...k8s(ns, 'web') });
      await expectInvalid(attestor(), token, /namespace is not a valid/);
    }
    const badAccounts = ['web/../admin', 'Web', 'web_1', '..', 'web..x', `${'a'.repeat(250)}.abc`, ''];
    for (const sa of badAccounts) {
      const token = good({ sub: `system:serviceaccount:shop:${sa}`, ...k8s('shop', sa) });
      await expectInvalid(attestor(), token, /service account is not a valid/);
    }
  });

  it('rejects malformed pod and uid claims', async () => {
    await expectInvalid(attestor(), good(k8s('shop', 'web', { name: 'web-1' })), /pod binding/);
    await expectInvalid(attestor(), good(k8s('shop', 'web', 'web-1')), /pod binding/);
    await expectInvalid(attestor(), good(k8s('shop', 'web', { name: 'Web 1', uid: 'u-1' })), /pod name/);
    await expectInvalid(attestor(), good(k8s('shop', 'web', { name: 'web-1', uid: 'a\nb' })), /pod uid/);
    await expectInvalid(attestor(), good({ jti: 42 }), /"jti" claim is malformed/);
  });

  it('requires a pod binding when requirePodBinding is set', async () => {
    const att = attestor({ requirePodBinding: true });
    await expectInvalid(att, good(k8s('shop', 'web')), /not bound to a pod/);
    await expect(att.attest(good())).resolves.toMatchObject({ claims: { podName: 'web-7d9f8' } });
  });
});

describe('ServiceAccountTokenAttestor: malformed input', () => {
  it('rejects garbage that is not a compact JWS', async () => {
    const att = attestor();
    const cases = ['', 'a.b', 'a.b.c.d', '!!!.###.$$$', ' a.b.c', `${good()} `, `Bearer ${good()}`, 'a..c', `${good()}=`];
    for (const input of cases) await expectInvalid(att, input, /./);
  });

  it('rejects headers and payloads that are not base64url JSON objects', async () => {
    const att = attestor();
    const sig = 'c2ln';
    await expectInvalid(att, `a.${b64('{}')}.${sig}`, /header is not valid base64url/);
    await expectInvalid(att, `${b64('not json')}.${b64('{}')}.${sig}`, /header is not valid JSON/);
    await expectInvalid(att, `${b64('[1,2]')}.${b64('{}')}.${sig}`, /header is not a JSON object/);
    await expectInvalid(att, `${b64('null')}.${b64('{}')}.${sig}`, /header is not a JSON object/);
    await expectInvalid(att, `${b64(Buffer.from([0xff, 0xfe, 0x7b]))}.${b64('{}')}.${sig}`, /header is not valid JSON/);
    const hdr = b64(JSON.stringify({ alg: 'RS256', kid: 'rsa-1' }));
    await expectInvalid(att, `${hdr}.${b64('"a string"')}.${sig}`, /payload is not a JSON object/);
    await expectInvalid(att, `${hdr}.${b64('{"iss":')}.${sig}`, /payload is not valid JSON/);
  });

  it('rejects a 1 MB token quickly, before any parsing', async () => {
    const huge = `${'a'.repeat(512 * 1024)}.${'b'.repeat(512 * 1024)}.c`;
    const started = performance.now();
    await expectInvalid(attestor(), huge, /larger than 16384 bytes/);
    // The size message is what proves the check comes before parsing; the time bound is loose on purpose
    // (a loaded machine), there only to catch something pathological such as a regex over the megabyte.
    expect(performance.now() - started).toBeLessThan(1_000);
    await expectInvalid(attestor(), good({ pad: 'x'.repeat(MAX_TOKEN_BYTES) }), /larger than/);
  });

  it('rejects non-string input without throwing anything else', async () => {
    const att = attestor();
    for (const input of [undefined, null, 42, {}, ['a.b.c']] as unknown[]) {
      await expect(att.attest(input as string)).rejects.toMatchObject({ code: 'invalid_token', status: 401 });
    }
  });
});

describe('ServiceAccountTokenAttestor: configuration', () => {
  it('rejects broken configurations at construction', () => {
    const base = { issuer: ISS, jwksFile: rsaJwksFile, audiences: [AUD] };
    const make = (issuers: TokenIssuerOptions[], trustDomain = TD) => () =>
      new ServiceAccountTokenAttestor({ trustDomain, issuers });
    expect(make([base, base])).toThrow(/twice/);
    expect(make([{ ...base, jwksUrl: 'https://x.example/jwks' }])).toThrow(/exactly one/);
    expect(make([{ ...base, jwksFile: undefined }])).toThrow(/exactly one/);
    expect(make([{ ...base, jwksFile: path.join(dir, 'missing.json') }])).toThrow(/could not be read/);
    expect(make([{ ...base, jwksFile: undefined, jwksUrl: 'file:///etc/passwd' }])).toThrow(/https/);
    expect(make([base], 'Example.ORG')).toThrow();
  });
});

describe('ServiceAccountTokenAttestor: property tests', () => {
  const isExpectedFailure = (e: unknown): boolean =>
    e instanceof BrokerError && e.code === 'invalid_token' && e.status === 401;

  it('arbitrary strings only ever produce a 401 BrokerError', async () => {
    const att = attestor();
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.string(),
          fc.string({ unit: 'binary' }),
          fc.array(fc.base64String(), { minLength: 1, maxLength: 5 }).map((parts) => parts.join('.')),
          fc.tuple(fc.jsonValue(), fc.jsonValue(), fc.string()).map(([h, p, s]) => `${b64(JSON.stringify(h) ?? '')}.${b64(JSON.stringify(p) ?? '')}.${b64(s)}`),
        ),
        async (input) => {
          const outcome = await att.attest(input).then(
            () => 'accepted',
            (e: unknown) => (isExpectedFailure(e) ? 'rejected' : e),
          );
          expect(outcome).toBe('rejected');
        },
      ),
      { numRuns: 500 },
    );
  });

  it('arbitrary mutations of a valid token are rejected with a 401 (or are the original token)', async () => {
    const att = attestor();
    const valid = good();
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ';
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant('replace' as const), at: fc.nat(), ch: fc.constantFrom(...alphabet) }),
      fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), ch: fc.constantFrom(...alphabet) }),
      fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 40 }) }),
      fc.record({ kind: fc.constant('swap' as const), a: fc.nat(2), b: fc.nat(2) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(mutation, { minLength: 1, maxLength: 4 }), async (mutations) => {
        let token = valid;
        for (const m of mutations) {
          if (m.kind === 'swap') {
            const parts = token.split('.');
            const a = parts[m.a];
            const b = parts[m.b];
            if (a !== undefined && b !== undefined) {
              parts[m.a] = b;
              parts[m.b] = a;
            }
            token = parts.join('.');
          } else {
            const at = m.at % (token.length + 1);
            if (m.kind === 'replace') token = token.slice(0, at) + m.ch + token.slice(at + 1);
            else if (m.kind === 'insert') token = token.slice(0, at) + m.ch + token.slice(at);
            else token = token.slice(0, at) + token.slice(at + m.len);
          }
        }
        const outcome = await att.attest(token).then(
          () => 'accepted',
          (e: unknown) => (isExpectedFailure(e) ? 'rejected' : e),
        );
        // Base64url has non-canonical encodings of the final bits: a mutation there can decode to
        // the same bytes. Anything else that still verifies would be a forgery.
        if (outcome === 'accepted') {
          const [h, p, s] = token.split('.');
          const [vh, vp, vs] = valid.split('.');
          expect(Buffer.from(h ?? '', 'base64url')).toEqual(Buffer.from(vh ?? '', 'base64url'));
          expect(Buffer.from(p ?? '', 'base64url')).toEqual(Buffer.from(vp ?? '', 'base64url'));
          expect(Buffer.from(s ?? '', 'base64url')).toEqual(Buffer.from(vs ?? '', 'base64url'));
        } else {
          expect(outcome).toBe('rejected');
        }
      }),
      { numRuns: 500 },
    );
  });

  it('validly signed tokens with arbitrary claim values yield an Identity or a 401, nothing else', async () => {
    const att = attestor({ requirePodBinding: false });
    const claimValue = fc.oneof(fc.jsonValue(), fc.constant(undefined));
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          sub: claimValue,
          aud: fc.oneof(claimValue, fc.constant([AUD]), fc.constant(AUD)),
          exp: fc.oneof(claimValue, fc.integer({ min: nowS() - 200, max: nowS() + 200_000 })),
          nbf: fc.oneof(claimValue, fc.integer({ min: nowS() - 200_000, max: nowS() + 200 })),
          iat: fc.oneof(claimValue, fc.integer({ min: nowS() - 200_000, max: nowS() + 200 })),
          jti: claimValue,
          k8s: fc.oneof(
            claimValue,
            fc.record({
              namespace: fc.oneof(claimValue, fc.constantFrom('shop', 'Shop', 'a.b', '')),
              serviceaccount: fc.oneof(claimValue, fc.record({ name: fc.oneof(claimValue, fc.constantFrom('web', '../x')), uid: claimValue })),
              pod: fc.oneof(claimValue, fc.record({ name: claimValue, uid: claimValue })),
            }),
          ),
        }),
        async (c) => {
          const token = good({ sub: c.sub, aud: c.aud, exp: c.exp, nbf: c.nbf, iat: c.iat, jti: c.jti, 'kubernetes.io': c.k8s });
          const outcome = await att.attest(token).then(
            (identity) => identity,
            (e: unknown) => (isExpectedFailure(e) ? 'rejected' : e),
          );
          if (outcome !== 'rejected') {
            expect(outcome).toMatchObject({ source: 'k8s-sa-token', trustDomain: TD });
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
