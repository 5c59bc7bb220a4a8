import { generateKeyPairSync } from 'node:crypto';
import { decodeJwt, decodeProtectedHeader } from 'jose';
import { describe, expect, it } from 'vitest';
import { JwtSvidSigner } from './jwt-svid.js';

describe('JwtSvidSigner', () => {
  const pem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const req = { spiffeId: 'spiffe://example.org/ns/shop/sa/web', audiences: ['payments'], ttlMs: 60_000, now: 1_700_000_000_000 };

  it('carries iss exactly as configured, and none without an issuer', async () => {
    const signer = await JwtSvidSigner.fromPem(pem);
    const withIss = decodeJwt((await signer.sign({ ...req, issuer: 'https://oidc.example.org' })).token);
    expect(withIss).toMatchObject({ iss: 'https://oidc.example.org', sub: req.spiffeId, aud: ['payments'], iat: 1_700_000_000, exp: 1_700_000_060 });
    const without = decodeJwt((await signer.sign(req)).token);
    expect('iss' in without).toBe(false);
    expect(decodeProtectedHeader((await signer.sign(req)).token)).toEqual({ alg: 'ES256', kid: signer.kid, typ: 'JWT' });
  });
});
