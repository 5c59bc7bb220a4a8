/**
 * Issuer discovery and key rotation against a local HTTPS issuer (certificate from the test's throwaway
 * dev CA) that serves /.well-known/openid-configuration and a JWKS that rotates: a key added, then the
 * old one removed. Tokens by the new key are accepted without restart (on the unknown kid, and by the
 * periodic re-read with an injected clock), tokens by the removed key are refused after the re-read,
 * a wrong-issuer document, a redirect and an unknown CA are refused, and an issuer that is down keeps
 * the last good keys (and fails closed while none were ever fetched).
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTokenAttestor } from '../../src/attest/attestor.js';
import type { TokenAttestor } from '../../src/attest/attestor.js';
import type { Config } from '../../src/config/config.js';
import { writeFileSync } from 'node:fs';
import { parse, stringify } from 'yaml';
import { mintAdminCert } from '../helpers/admin.js';
import { devMaterial, startBroker } from '../helpers/broker.js';
import { TestClock } from '../helpers/clock.js';
import { sendJson } from '../helpers/json-response.js';

type Mode = 'ok' | 'down' | 'wrong-issuer' | 'redirect' | 'oversized' | 'slow';
interface SigningKey {
  readonly kid: string;
  readonly privateKey: CryptoKey;
  readonly jwk: JWK;
}

let server: https.Server;
let issuer: string;
let bundleFile: string;
let otherCaFile: string;
let mode: Mode = 'ok';
let published: SigningKey[] = [];
let discoveryRequests = 0;
let jwksRequests = 0;

async function newKey(kid: string): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, use: 'sig', alg: 'ES256' } };
}

beforeAll(async () => {
  const { dir, material } = await devMaterial();
  bundleFile = material.bundleFile;
  otherCaFile = material.adminCaCertFile;
  server = https.createServer({ cert: readFileSync(path.join(dir, 'server.pem')), key: readFileSync(path.join(dir, 'server.key')) }, (req, res) => {
    if (mode === 'down') return void req.socket.destroy();
    if (mode === 'slow') return; // never answers (closeAllConnections ends it)
    if (req.url === '/.well-known/openid-configuration') {
      discoveryRequests += 1;
      if (mode === 'redirect') return sendJson(res, 200, { issuer, jwks_uri: `${issuer}/moved` });
      if (mode === 'oversized') return sendJson(res, 200, { issuer, jwks_uri: `${issuer}/openid/v1/jwks`, pad: 'x'.repeat(100 * 1024) });
      return sendJson(res, 200, {
        issuer: mode === 'wrong-issuer' ? 'https://evil.example' : issuer,
        jwks_uri: `${issuer}/openid/v1/jwks`,
        response_types_supported: ['id_token'],
        subject_types_supported: ['public'],
        id_token_signing_alg_values_supported: ['ES256'],
      });
    }
    if (req.url === '/moved') {
      res.writeHead(302, { location: `${issuer}/openid/v1/jwks` });
      return void res.end();
    }
    if (req.url === '/openid/v1/jwks') {
      jwksRequests += 1;
      return sendJson(res, 200, { keys: published.map((k) => k.jwk) });
    }
    return sendJson(res, 404, {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  issuer = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

/** A token attestor for the local issuer; `ca` null: no caFile (the system's CAs). */
function attestor(clock: TestClock, extra: Partial<Config['issuers'][number]> = {}, ca: string | null = bundleFile): TokenAttestor {
  return createTokenAttestor(
    {
      trustDomain: 'example.org',
      issuers: [{ issuer, discovery: true, ...(ca !== null ? { caFile: ca } : {}), allowInsecureHttp: false, audiences: ['tessera'], maxLifetimeSeconds: 86_400, requirePodBinding: false, ...extra }],
    },
    clock,
  );
}

function token(key: SigningKey, clock: TestClock, iss = issuer): Promise<string> {
  const now = Math.floor(clock.now() / 1000);
  return new SignJWT({ 'kubernetes.io': { namespace: 'shop', serviceaccount: { name: 'web', uid: randomUUID() } } })
    .setProtectedHeader({ alg: 'ES256', kid: key.kid, typ: 'JWT' })
    .setIssuer(iss)
    .setSubject('system:serviceaccount:shop:web')
    .setAudience('tessera')
    .setIssuedAt(now)
    .setExpirationTime(now + 3600)
    .sign(key.privateKey);
}

async function accepted(a: TokenAttestor, key: SigningKey, clock: TestClock): Promise<void> {
  const identity = await a.attest(await token(key, clock));
  expect(identity.spiffeId).toBe('spiffe://example.org/ns/shop/sa/web');
  expect(identity.claims.issuer).toBe(issuer);
}

async function refused(a: TokenAttestor, key: SigningKey, clock: TestClock, message: RegExp): Promise<void> {
  await expect(a.attest(await token(key, clock))).rejects.toMatchObject({ code: 'invalid_token', status: 401, message: expect.stringMatching(message) });
}

describe('issuer discovery and key rotation', () => {
  it('fails closed until discovery first succeeds, then follows a rotation without restart', async () => {
    const clock = TestClock.frozen();
    const a = await newKey('key-a');
    const b = await newKey('key-b');
    published = [a];
    const att = attestor(clock);

    // No JWKS was ever fetched: refused, with a clear error.
    mode = 'down';
    await refused(att, a, clock, /discovery has not succeeded/);
    mode = 'ok';
    // Within 30 s of the failed attempt nothing is fetched again (an unreachable issuer is not hammered).
    const before = discoveryRequests;
    await refused(att, a, clock, /discovery has not succeeded/);
    expect(discoveryRequests).toBe(before);
    clock.advance(31_000);
    await accepted(att, a, clock);
    expect(discoveryRequests).toBe(before + 1);

    // Rotation, step 1: the cluster adds key B. An unknown kid re-reads at most once per 30 s…
    published = [a, b];
    await refused(att, b, clock, /key id is unknown/);
    expect(discoveryRequests).toBe(before + 1);
    clock.advance(31_000);
    // …and then the new key's tokens are accepted, with no restart.
    await accepted(att, b, clock);
    expect(discoveryRequests).toBe(before + 2);
    await accepted(att, a, clock);

    // Step 2: the old key is removed. Its tokens verify until the periodic re-read (default 5 min)…
    published = [b];
    clock.advance(60_000);
    await accepted(att, a, clock);
    clock.advance(5 * 60_000);
    // …after which they are refused, and the new key's are still accepted.
    await refused(att, a, clock, /key id is unknown/);
    await accepted(att, b, clock);

    // The issuer goes down: the last good keys stay in force across periodic re-reads.
    mode = 'down';
    const jwksBefore = jwksRequests;
    clock.advance(6 * 60_000);
    await accepted(att, b, clock);
    clock.advance(6 * 60_000);
    await accepted(att, b, clock);
    expect(jwksRequests).toBe(jwksBefore);
    await refused(att, a, clock, /key id is unknown/);

    // Back up, with a key the broker has never seen: the periodic re-read picks it up.
    mode = 'ok';
    const c = await newKey('key-c');
    published = [b, c];
    clock.advance(6 * 60_000);
    await accepted(att, b, clock);
    await accepted(att, c, clock);
  });

  it('re-reads on the configured period (jwksRefreshSeconds)', async () => {
    const clock = TestClock.frozen();
    const a = await newKey('period-a');
    const b = await newKey('period-b');
    mode = 'ok';
    published = [a, b];
    const att = attestor(clock, { jwksRefreshSeconds: 60 });
    await accepted(att, a, clock);
    published = [b];
    clock.advance(30_000);
    await accepted(att, a, clock); // still cached
    clock.advance(31_000);
    await refused(att, a, clock, /key id is unknown/);
    await accepted(att, b, clock);
  });

  it('refuses a discovery document of another issuer, and keeps the last good keys when one appears', async () => {
    const clock = TestClock.frozen();
    const a = await newKey('wrong-a');
    const b = await newKey('wrong-b');
    published = [a];

    // A fresh broker that only ever sees a wrong-issuer document has no keys at all.
    mode = 'wrong-issuer';
    const fresh = attestor(clock);
    await refused(fresh, a, clock, /discovery has not succeeded/);

    // A running one keeps its keys and does not adopt the ones the refused document leads to.
    mode = 'ok';
    const att = attestor(clock);
    await accepted(att, a, clock);
    mode = 'wrong-issuer';
    published = [a, b];
    clock.advance(6 * 60_000);
    await refused(att, b, clock, /key id is unknown/);
    await accepted(att, a, clock);
    mode = 'ok';
  });

  it('refuses an issuer whose certificate does not chain to the configured CA, and does not follow redirects or oversized documents', async () => {
    const clock = TestClock.frozen();
    const a = await newKey('tls-a');
    published = [a];
    mode = 'ok';
    await refused(attestor(clock, {}, otherCaFile), a, clock, /discovery has not succeeded/);
    // Without caFile the system's CAs are used, which do not know the test's throwaway CA.
    await refused(attestor(clock, {}, null), a, clock, /discovery has not succeeded/);
    // The same issuer with the right CA works (so the refusals above are the CA's doing).
    await accepted(attestor(clock), a, clock);

    mode = 'redirect';
    const jwksBefore = jwksRequests;
    await refused(attestor(clock), a, clock, /discovery has not succeeded/);
    expect(jwksRequests).toBe(jwksBefore);

    // A discovery document larger than 64 KiB is not read to the end, let alone followed.
    mode = 'oversized';
    await refused(attestor(clock), a, clock, /discovery has not succeeded/);
    expect(jwksRequests).toBe(jwksBefore);
    mode = 'ok';
  });

  it('gives up on an issuer that does not answer (5 s timeout) and fails closed', async () => {
    const clock = TestClock.frozen();
    const a = await newKey('slow-a');
    published = [a];
    mode = 'slow';
    try {
      await refused(attestor(clock), a, clock, /discovery has not succeeded/);
    } finally {
      mode = 'ok';
    }
  }, 30_000);

  it('a reload (POST /v1/admin/reload) adds a discovery issuer, keeps its keys, and changes its CA, with no restart', async () => {
    const b = await startBroker();
    try {
      const clock = new TestClock();
      const a = await newKey('reload-a');
      published = [a];
      mode = 'ok';
      const operator = mintAdminCert(b.material, 'spiffe://example.org/admin/dev');
      const file = path.join(b.dir, 'tessera.yaml');
      const original = parse(readFileSync(file, 'utf8')) as { issuers: unknown[] };
      const x509 = async () => b.call({ path: '/v1/svid/x509', token: await token(a, clock), body: { keyType: 'ec-p256' } });
      const reload = () => b.call<{ applied: string[]; message: string }>({ path: '/v1/admin/reload', body: {}, cert: operator.cert, key: operator.key });
      const withIssuer = (caFile: string) => stringify({ ...original, issuers: [...original.issuers, { issuer, discovery: true, caFile, audiences: ['tessera'] }] });

      expect((await x509()).status).toBe(401);
      writeFileSync(file, withIssuer(bundleFile));
      const added = await reload();
      expect([added.status, added.json.applied]).toEqual([200, ['issuers']]);
      const issued = await x509();
      expect(issued.status, issued.text).toBe(200);

      // The issuer is down during a reload that leaves it as it was: its last good keys are kept.
      mode = 'down';
      writeFileSync(file, stringify({ ...(parse(withIssuer(bundleFile)) as object), logLevel: 'error' }));
      expect((await reload()).json.applied).toEqual(['logLevel']);
      const kept = await x509();
      expect(kept.status, kept.text).toBe(200);
      mode = 'ok';

      // A caFile that cannot be read: the reload is refused and the running issuers kept.
      writeFileSync(file, withIssuer(path.join(b.dir, 'missing-ca.pem')));
      const refusedReload = await reload();
      expect(refusedReload.status).toBe(400);
      expect((await x509()).status).toBe(200);

      // A CA that does not sign the issuer's certificate: in force after the reload, so discovery fails closed.
      writeFileSync(file, withIssuer(otherCaFile));
      expect((await reload()).status).toBe(200);
      const denied = await b.call<{ error: string; message: string }>({ path: '/v1/svid/x509', token: await token(a, clock), body: { keyType: 'ec-p256' } });
      expect([denied.status, denied.json.error, denied.json.message]).toEqual([401, 'invalid_token', expect.stringMatching(/discovery has not succeeded/)]);
    } finally {
      await b.close();
    }
  });
});
