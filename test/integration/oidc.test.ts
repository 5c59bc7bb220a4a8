/**
 * OIDC discovery for JWT-SVIDs (docs/oidc.md), checked by a relying party built on jose alone and given
 * only the issuer URL (and the CA that signs the test broker's TLS certificate): it reads
 * <issuer>/.well-known/openid-configuration, checks its issuer, and verifies JWT-SVIDs against the
 * `jwks_uri` it names with createRemoteJWKSet. Real TLS, a real broker, the public listener beside it;
 * then a rotating broker whose next key reaches the relying party before the first token it signs.
 */
import { execFile } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { createRemoteJWKSet, customFetch, jwtVerify, SignJWT, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issuerFromPem, mintCa } from '../../src/ca/x509.js';
import { ConfigError } from '../../src/config/load.js';
import { oidcOptions } from '../../src/server/app.js';
import { readOidcPublicTls, startOidcPublicServer, type OidcPublicServer } from '../../src/server/oidc-public.js';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';
import { freePort } from '../helpers/broker-process.js';
import { httpsCall } from '../helpers/https.js';
import { openssl } from '../helpers/openssl.js';
import { cleanRotationTemps, rotatingConfig } from '../helpers/rotation.js';

const WEB = 'spiffe://example.org/ns/shop/sa/web';

/** fetch for jose over node:https, trusting `ca` (the test PKI) instead of the system roots. */
function fetchTrusting(ca: string): (url: string, init: { method?: string; headers?: Record<string, string> | Headers; signal?: AbortSignal | null }) => Promise<Response> {
  return (url, init) =>
    new Promise((resolve, reject) => {
      const headers = init.headers instanceof Headers ? Object.fromEntries(init.headers.entries()) : (init.headers ?? {});
      const req = https.request(url, { method: init.method ?? 'GET', headers, ca, family: 4, agent: false, ...(init.signal ? { signal: init.signal } : {}) }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const out = new Headers();
          for (const [k, v] of Object.entries(res.headers)) if (typeof v === 'string') out.set(k, v);
          resolve(new Response(Buffer.concat(chunks), { status: res.statusCode ?? 0, headers: out }));
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
}

interface RelyingParty {
  readonly document: Record<string, unknown>;
  readonly jwks: JWTVerifyGetKey;
  verify(token: string, audience?: string): Promise<JWTPayload>;
}

/** An OIDC relying party that knows the issuer URL and nothing else of the broker. */
async function relyingParty(issuer: string, ca: string): Promise<RelyingParty> {
  const fetch = fetchTrusting(ca);
  const res = await fetch(`${issuer}/.well-known/openid-configuration`, { headers: { accept: 'application/json' } });
  if (res.status !== 200) throw new Error(`discovery answered ${res.status}`);
  const document = (await res.json()) as Record<string, unknown>;
  // OpenID Connect Discovery 1.0 §4.3: the issuer in the document must be the one asked for.
  if (document.issuer !== issuer) throw new Error(`discovery names issuer ${String(document.issuer)}, not ${issuer}`);
  const jwksUri = document.jwks_uri;
  if (typeof jwksUri !== 'string' || !jwksUri.startsWith('https://')) throw new Error('no https jwks_uri');
  // After a fetch jose fetches again on an unknown kid only once the cooldown is over (30 s by default);
  // 10 min here, so what a cache holds is decided by the test and not by how slow the machine is.
  const jwks = createRemoteJWKSet(new URL(jwksUri), { [customFetch]: fetch, cooldownDuration: 600_000 });
  return {
    document,
    jwks,
    verify: async (token, audience = 'payments') =>
      (await jwtVerify(token, jwks, { issuer, audience, algorithms: ['ES256', 'RS256'], requiredClaims: ['sub', 'exp', 'iat'] })).payload,
  };
}

/** Whether the server asks for a client certificate in the TLS handshake (openssl s_client, asynchronously). */
function asksForClientCertificate(port: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const child = execFile('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'localhost'], { timeout: 10_000 }, (err, stdout) => {
      if (err !== null && stdout === '') return reject(new Error(`openssl s_client failed: ${err.message}`));
      if (/Acceptable client certificate CA names/.test(stdout)) return resolve(true);
      if (/No client certificate CA names sent/.test(stdout)) return resolve(false);
      reject(new Error(`s_client said neither:\n${stdout}`));
    });
    child.stdin?.end('Q\n');
  });
}

const jwtSvid = async (b: TestBroker, audience = 'payments'): Promise<string> => {
  const r = await b.call<{ token: string }>({ path: '/v1/svid/jwt', token: await b.token(), body: { audience: [audience] } });
  expect(r.status, JSON.stringify(r.json)).toBe(200);
  return r.json.token;
};

const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
const kidsOf = (jwks: unknown): string[] => ((jwks as { keys: { kid: string }[] }).keys.map((k) => k.kid)).sort();

afterAll(cleanRotationTemps);

describe('a broker with jwt.issuer and the public OIDC listener', () => {
  let b: TestBroker;
  let pub: OidcPublicServer;
  let issuer: string;
  let publicPort: number;
  let rp: RelyingParty;
  let tlsFiles: { certFile: string; keyFile: string };

  beforeAll(async () => {
    publicPort = await freePort();
    issuer = `https://localhost:${publicPort}`;
    b = await startBroker({ config: { jwt: { issuer }, oidc: { enabled: true, public: { host: '127.0.0.1', port: publicPort } } } });
    pub = await startOidcPublicServer({ host: '127.0.0.1', port: publicPort }, b.broker.tls, oidcOptions(b.broker));
    tlsFiles = b.broker.config.tls;
    rp = await relyingParty(issuer, b.ca);
  });
  afterAll(async () => {
    await pub?.close();
    await b?.close();
  });

  it('a relying party that knows only the issuer URL validates a JWT-SVID', async () => {
    const token = await jwtSvid(b);
    const claims = await rp.verify(token);
    expect(claims).toMatchObject({ iss: issuer, sub: WEB, aud: ['payments'] });
    expect(rp.document).toEqual({
      issuer,
      jwks_uri: `${issuer}/.well-known/jwks.json`,
      response_types_supported: ['id_token'],
      subject_types_supported: ['public'],
      id_token_signing_alg_values_supported: ['ES256'],
      claims_supported: ['aud', 'exp', 'iat', 'iss', 'jti', 'sub'],
    });
  });

  it('serves the same document and JWKS on the broker listener: the bundle\'s JWT keys with kid, alg and use sig', async () => {
    for (const path of ['/.well-known/openid-configuration', '/.well-known/jwks.json']) {
      const main = await b.call({ path });
      const publicOne = await httpsCall(`https://127.0.0.1:${publicPort}`, b.ca, { path });
      expect(main.status).toBe(200);
      expect(main.headers['content-type']).toMatch(/^application\/json/);
      expect(main.headers['cache-control']).toBe('public, max-age=300');
      expect(publicOne.text).toBe(main.text);
      expect(publicOne.headers['cache-control']).toBe(main.headers['cache-control']);
    }
    const jwks = (await b.call<{ keys: Record<string, string>[] }>({ path: '/.well-known/jwks.json' })).json;
    const bundleKids = b.broker.bundle.keys.filter((k) => k.use === 'jwt-svid').map((k) => k.kid);
    expect(kidsOf(jwks)).toEqual([...bundleKids].sort());
    for (const k of jwks.keys) expect(k).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' });
    for (const k of jwks.keys) expect(k).not.toHaveProperty('d');
  });

  it('rejects a token with another iss, alg none, an unknown kid, a key outside the JWKS, or HS256 over the public key', async () => {
    const ok = await jwtSvid(b);
    const [header] = ok.split('.') as [string];
    const { kid } = JSON.parse(Buffer.from(header, 'base64url').toString()) as { kid: string };
    const now = Math.floor(Date.now() / 1000);
    const claims = { sub: WEB, aud: ['payments'], iat: now, exp: now + 60, iss: issuer };
    const stranger: KeyObject = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;

    // Signed by the broker's own key, for another issuer.
    const otherIss = (await b.broker.jwt.sign({ spiffeId: WEB, audiences: ['payments'], ttlMs: 60_000, now: Date.now(), issuer: 'https://evil.example' })).token;
    await expect(rp.verify(otherIss)).rejects.toMatchObject({ code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'iss' });
    // And without any iss (a broker without jwt.issuer): not this issuer's token either.
    const noIss = (await b.broker.jwt.sign({ spiffeId: WEB, audiences: ['payments'], ttlMs: 60_000, now: Date.now() })).token;
    await expect(rp.verify(noIss)).rejects.toMatchObject({ code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'iss' });
    // The right audience only.
    await expect(rp.verify(ok, 'inventory')).rejects.toMatchObject({ code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'aud' });

    const none = `${b64({ alg: 'none', kid, typ: 'JWT' })}.${b64(claims)}.`;
    await expect(rp.verify(none)).rejects.toMatchObject({ code: 'ERR_JOSE_ALG_NOT_ALLOWED' });

    const unknownKid = await new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: 'not-in-the-jwks' }).sign(stranger);
    await expect(rp.verify(unknownKid)).rejects.toMatchObject({ code: 'ERR_JWKS_NO_MATCHING_KEY' });

    const forged = await new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid }).sign(stranger);
    await expect(rp.verify(forged)).rejects.toMatchObject({ code: 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' });

    const jwk = (await b.call<{ keys: Record<string, string>[] }>({ path: '/.well-known/jwks.json' })).json.keys[0];
    const hs = await new SignJWT(claims).setProtectedHeader({ alg: 'HS256', kid }).sign(Buffer.from(JSON.stringify(jwk)));
    await expect(rp.verify(hs)).rejects.toMatchObject({ code: 'ERR_JOSE_ALG_NOT_ALLOWED' });
    // The genuine one still passes: the refusals above are about the tokens, not the relying party.
    await expect(rp.verify(ok)).resolves.toMatchObject({ sub: WEB });
  });

  it('the public listener serves the two documents and nothing else (404), and takes no body', async () => {
    const base = `https://127.0.0.1:${publicPort}`;
    for (const path of ['/', '/v1/bundle', '/v1/bundle.pem', '/healthz', '/readyz', '/metrics', '/v1/admin/whoami', '/.well-known/', '/.well-known/jwks.json/x', '/.well-known/openid-configuration/../../v1/bundle', '/keys']) {
      const r = await httpsCall(base, b.ca, { path });
      expect(r.status, path).toBe(404);
      expect(r.json, path).toMatchObject({ error: 'not_found' });
    }
    const svid = await httpsCall(base, b.ca, { path: '/v1/svid/jwt', token: await b.token(), body: { audience: ['payments'] } });
    expect(svid.status).toBe(404);
    expect(svid.text).not.toContain('token');
    const post = await httpsCall(base, b.ca, { method: 'POST', path: '/.well-known/jwks.json', body: { x: 1 } });
    expect(post.status).toBe(404);
    // The main listener has those routes: the 404s above are the public listener's doing.
    expect((await b.call({ path: '/v1/bundle' })).status).toBe(200);
  });

  it('the public listener never asks for a client certificate; the broker listener does', async () => {
    expect(await asksForClientCertificate(publicPort)).toBe(false);
    expect(await asksForClientCertificate(Number(new URL(b.url).port))).toBe(true);
  });

  it('refuses an unusable public listener setup with a clear start error', async () => {
    const listen = { host: '127.0.0.1', port: 0 };
    expect(() => readOidcPublicTls({ ...listen, certFile: '/nonexistent/oidc.pem', keyFile: '/nonexistent/oidc.key' }, tlsFiles)).toThrow(ConfigError);
    expect(() => readOidcPublicTls({ ...listen, certFile: '/nonexistent/oidc.pem', keyFile: '/nonexistent/oidc.key' }, tlsFiles))
      .toThrow(/^config\.oidc\.public\.certFile: cannot read \/nonexistent\/oidc\.pem/);
    // A key of the certificate's type that is not the certificate's (the JWT-SVID key).
    expect(() => readOidcPublicTls({ ...listen, certFile: tlsFiles.certFile, keyFile: b.broker.config.ca.jwtKeyFile }, tlsFiles))
      .toThrow(/^config\.oidc\.public: cannot use its TLS certificate and key/);
    // A key of another type (RSA for an EC certificate), which OpenSSL alone would take.
    expect(() => readOidcPublicTls({ ...listen, certFile: tlsFiles.certFile, keyFile: b.material.issuerKeyFile }, tlsFiles))
      .toThrow(/^config\.oidc\.public: cannot use its TLS certificate and key: the key is not the certificate's/);
    // Without its own files: the broker's.
    expect(readOidcPublicTls(listen, tlsFiles)).toEqual({ certPem: b.broker.tls.certPem, keyPem: b.broker.tls.keyPem });
    await expect(startOidcPublicServer({ host: '127.0.0.1', port: publicPort }, b.broker.tls, oidcOptions(b.broker))).rejects.toThrow(/EADDRINUSE/);
  });
});

describe('a broker without OIDC', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await startBroker();
  });
  afterAll(async () => {
    await b?.close();
  });

  it('issues JWT-SVIDs without iss and answers discovery with 404', async () => {
    const token = await jwtSvid(b);
    expect(JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString())).not.toHaveProperty('iss');
    for (const path of ['/.well-known/openid-configuration', '/.well-known/jwks.json']) {
      const r = await b.call({ path });
      expect(r.status).toBe(404);
      expect(r.json).toEqual({ error: 'not_found', message: 'OIDC discovery is not enabled on this broker (config oidc.enabled)' });
    }
  });
});

describe('CA rotation', () => {
  let b: TestBroker;
  let issuer: string;
  beforeAll(async () => {
    const port = await freePort();
    issuer = `https://localhost:${port}`;
    // An upstream root (no rootKeyFile): the test decides when the next authority is prepared and activated.
    const { config } = await rotatingConfig(240);
    const ca = config.ca as Record<string, unknown>;
    ca.rotation = { caTtlSeconds: 300, pollIntervalMs: 200 };
    b = await startBroker({ port, config: { ...config, jwt: { issuer }, oidc: { enabled: true } } });
  });
  afterAll(async () => {
    await b?.close();
  });

  /** `tessera ca prepare`, the root signing the CSR, `tessera ca import`: the next authority is prepared. */
  async function prepareNext(): Promise<void> {
    const rotation = b.broker.rotation;
    if (rotation === undefined) throw new Error('no rotation');
    const { csrPem } = await rotation.prepareCsr();
    const pub = openssl(['req', '-pubkey', '-noout'], csrPem);
    expect(pub.status, pub.stderr).toBe(0);
    const { dir } = await devMaterial();
    const root = issuerFromPem(readFileSync(path.join(dir, 'root.pem'), 'utf8'), readFileSync(path.join(dir, 'root.key'), 'utf8'));
    const now = Date.now();
    const cert = mintCa(
      { commonName: 'Next CA', trustDomain: 'example.org', subjectPublicKey: createPublicKey(pub.stdout), notBefore: new Date(now - 1000), notAfter: new Date(now + 300_000), pathLen: 0 },
      root,
    );
    await rotation.importCertificate(cert.pem, '');
  }

  it('publishes the next key before it signs: a relying party\'s cached JWKS validates the first token of the rotated-in key', async () => {
    const before = await jwtSvid(b);
    const rp = await relyingParty(issuer, b.ca);
    await expect(rp.verify(before)).resolves.toMatchObject({ iss: issuer, sub: WEB });
    await prepareNext();
    // Prepared: two JWT keys in the bundle, and so in the JWKS (served from the broker's own listener here).
    const authorities = b.broker.rotation?.current().state.authorities ?? [];
    expect(authorities.map((a) => a.state).sort()).toEqual(['active', 'prepared']);
    const jwks = await b.call<{ keys: { kid: string }[] }>({ path: '/.well-known/jwks.json' });
    expect(kidsOf(jwks.json)).toEqual(authorities.map((a) => a.jwtKid).sort());
    // caTtlSeconds 300: cached at most 50 s, half the 100 s between a key's publication and its first token.
    expect(jwks.headers['cache-control']).toBe('public, max-age=50');
    // A relying party that fetched the JWKS now (while the key was only prepared) …
    const cached = await relyingParty(issuer, b.ca);
    await expect(cached.verify(before)).resolves.toMatchObject({ sub: WEB });
    const prepared = authorities.find((a) => a.state === 'prepared');
    await b.broker.rotation?.activateNow();
    const after = await jwtSvid(b);
    expect(JSON.parse(Buffer.from(after.split('.')[0] ?? '', 'base64url').toString())).toMatchObject({ kid: prepared?.jwtKid });
    // … validates the rotated-in key's token from its cache (no refetch within its cooldown).
    await expect(cached.verify(after)).resolves.toMatchObject({ iss: issuer, sub: WEB });
    // The first relying party fetched before the key existed: its cache misses, and within its cooldown it refuses —
    // which is what the pre-publication above spares relying parties.
    await expect(rp.verify(after)).rejects.toMatchObject({ code: 'ERR_JWKS_NO_MATCHING_KEY' });
    // A new one validates it; and the old key's token stays valid while it lives (the old key stays published).
    await expect((await relyingParty(issuer, b.ca)).verify(after)).resolves.toMatchObject({ sub: WEB });
    await expect((await relyingParty(issuer, b.ca)).verify(before)).resolves.toMatchObject({ sub: WEB });
  });
});
