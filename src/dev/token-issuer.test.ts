import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { calculateJwkThumbprint, decodeJwt, decodeProtectedHeader, type JWK } from 'jose';
import { ServiceAccountTokenAttestor } from '../attest/k8s-token.js';
import { BrokerError } from '../errors.js';
import { DEV_AUDIENCE, DEV_ISSUER, ensureDevIssuer, mintDevToken } from './token-issuer.js';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('ensureDevIssuer', () => {
  it('writes a 0600 PKCS#8 RSA key and a public JWKS whose kid is the RFC 7638 thumbprint', async () => {
    const files = await ensureDevIssuer(path.join(dir, 'nested', 'dev'));
    expect(path.basename(files.keyFile)).toBe('dev-issuer.key');
    expect(path.basename(files.jwksFile)).toBe('dev-issuer.jwks.json');
    expect(fs.statSync(files.keyFile).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(files.keyFile, 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);

    const jwks = JSON.parse(fs.readFileSync(files.jwksFile, 'utf8')) as { keys: JWK[] };
    expect(jwks.keys).toHaveLength(1);
    const [key] = jwks.keys;
    expect(key).toMatchObject({ kty: 'RSA', kid: files.kid, alg: 'RS256', use: 'sig' });
    expect(key).not.toHaveProperty('d');
    expect(key).not.toHaveProperty('p');
    expect(Buffer.from(key?.n ?? '', 'base64url').length * 8).toBe(2048);
    expect(await calculateJwkThumbprint({ kty: 'RSA', n: key?.n ?? '', e: key?.e ?? '' })).toBe(files.kid);
  });

  it('creates only if missing: a second call keeps the same key', async () => {
    const first = await ensureDevIssuer(dir);
    const pem = fs.readFileSync(first.keyFile, 'utf8');
    const second = await ensureDevIssuer(dir);
    expect(second).toEqual(first);
    expect(fs.readFileSync(second.keyFile, 'utf8')).toBe(pem);
  });

  it('concurrent calls agree on one key', async () => {
    const results = await Promise.all([ensureDevIssuer(dir), ensureDevIssuer(dir), ensureDevIssuer(dir)]);
    expect(new Set(results.map((r) => r.kid)).size).toBe(1);
    const jwks = JSON.parse(fs.readFileSync(results[0]?.jwksFile ?? '', 'utf8')) as { keys: JWK[] };
    expect(jwks.keys[0]?.kid).toBe(results[0]?.kid);
  });

  it('rewrites a JWKS that does not carry the key', async () => {
    const files = await ensureDevIssuer(dir);
    fs.writeFileSync(files.jwksFile, JSON.stringify({ keys: [] }));
    await ensureDevIssuer(dir);
    const jwks = JSON.parse(fs.readFileSync(files.jwksFile, 'utf8')) as { keys: JWK[] };
    expect(jwks.keys[0]?.kid).toBe(files.kid);
  });
});

describe('mintDevToken', () => {
  it('mints a token the attestor accepts from the written JWKS file', async () => {
    const { keyFile, jwksFile } = await ensureDevIssuer(dir);
    const attestor = new ServiceAccountTokenAttestor({
      trustDomain: 'example.org',
      issuers: [{ issuer: DEV_ISSUER, jwksFile, audiences: [DEV_AUDIENCE], requirePodBinding: true }],
    });
    const token = await mintDevToken({ keyFile, namespace: 'shop', serviceAccount: 'web' });
    const identity = await attestor.attest(token);
    expect(identity.spiffeId).toBe('spiffe://example.org/ns/shop/sa/web');
    expect(identity.source).toBe('k8s-sa-token');
    expect(identity.claims).toMatchObject({ namespace: 'shop', serviceAccount: 'web', issuer: DEV_ISSUER });
    expect(identity.claims.podName).toMatch(/^web-[bcdfghjklmnpqrstvwxz2456789]{5}$/);
  });

  it('has the shape of a projected service account token', async () => {
    const { keyFile, kid } = await ensureDevIssuer(dir);
    const now = 1_900_000_000_123;
    const token = await mintDevToken({ keyFile, namespace: 'shop', serviceAccount: 'web', podName: 'web-0', now, ttlSeconds: 600 });
    expect(decodeProtectedHeader(token)).toEqual({ alg: 'RS256', kid, typ: 'JWT' });
    const payload = decodeJwt(token);
    const k8s = payload['kubernetes.io'] as { namespace: string; serviceaccount: { name: string; uid: string }; pod: { name: string; uid: string } };
    expect(payload).toMatchObject({
      iss: DEV_ISSUER,
      sub: 'system:serviceaccount:shop:web',
      aud: [DEV_AUDIENCE],
      iat: 1_900_000_000,
      nbf: 1_900_000_000,
      exp: 1_900_000_600,
    });
    expect(payload.jti).toMatch(UUID);
    expect(k8s.namespace).toBe('shop');
    expect(k8s.serviceaccount.name).toBe('web');
    expect(k8s.serviceaccount.uid).toMatch(UUID);
    expect(k8s.pod).toEqual({ name: 'web-0', uid: expect.stringMatching(UUID) });
    expect(k8s.pod.uid).not.toBe(k8s.serviceaccount.uid);
  });

  it('honours audience and issuer overrides (and the attestor rejects them for the dev config)', async () => {
    const { keyFile, jwksFile } = await ensureDevIssuer(dir);
    const attestor = new ServiceAccountTokenAttestor({
      trustDomain: 'example.org',
      issuers: [{ issuer: DEV_ISSUER, jwksFile, audiences: [DEV_AUDIENCE] }],
    });
    const otherAud = await mintDevToken({ keyFile, namespace: 'shop', serviceAccount: 'web', audience: 'vault' });
    expect(decodeJwt(otherAud).aud).toEqual(['vault']);
    await expect(attestor.attest(otherAud)).rejects.toMatchObject({ status: 401, message: expect.stringMatching(/audience/) });
    const otherIss = await mintDevToken({ keyFile, namespace: 'shop', serviceAccount: 'web', issuer: 'https://other' });
    await expect(attestor.attest(otherIss)).rejects.toMatchObject({ status: 401, message: expect.stringMatching(/issuer/) });
  });

  it('a token minted with an old time is rejected as expired', async () => {
    const { keyFile, jwksFile } = await ensureDevIssuer(dir);
    const attestor = new ServiceAccountTokenAttestor({
      trustDomain: 'example.org',
      issuers: [{ issuer: DEV_ISSUER, jwksFile, audiences: [DEV_AUDIENCE] }],
    });
    const token = await mintDevToken({ keyFile, namespace: 'shop', serviceAccount: 'web', now: Date.now() - 7_200_000 });
    await expect(attestor.attest(token)).rejects.toMatchObject({ status: 401, message: expect.stringMatching(/expired/) });
  });

  it('refuses names that are not Kubernetes names and a bad ttl', async () => {
    const { keyFile } = await ensureDevIssuer(dir);
    for (const bad of [
      { namespace: 'Shop', serviceAccount: 'web' },
      { namespace: 'shop', serviceAccount: 'web/admin' },
      { namespace: 'shop', serviceAccount: 'web', podName: 'Pod 1' },
      { namespace: 'shop', serviceAccount: 'web', ttlSeconds: 0 },
      { namespace: 'shop', serviceAccount: 'web', ttlSeconds: 1.5 },
    ]) {
      await expect(mintDevToken({ keyFile, ...bad })).rejects.toBeInstanceOf(BrokerError);
    }
  });
});
