import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { FlattenedSign } from 'jose';
import { describe, expect, it } from 'vitest';
import { BrokerError } from '../errors.js';
import {
  type BreakGlassClaims,
  checkClaims,
  cosignBreakGlassRequest,
  generateBreakGlassKey,
  grantAllowed,
  keyIdOf,
  loadBreakGlassKeys,
  newJti,
  parseGeneralJws,
  signBreakGlassRequest,
  verifyBreakGlassRequest,
} from './breakglass-jws.js';

const made = [generateBreakGlassKey(), generateBreakGlassKey(), generateBreakGlassKey()];
const [p1, p2, p3] = made.map((k) => createPrivateKey(k.privateKeyPem)) as [KeyObject, KeyObject, KeyObject];
const keys = loadBreakGlassKeys(made.slice(0, 2).map((k, i) => ({ id: `bg-${i + 1}`, publicKey: k.publicKey })));
const NOW = 1_800_000_000_000;

function claims(over: Partial<BreakGlassClaims> = {}): BreakGlassClaims {
  const iat = Math.floor(NOW / 1000);
  return { v: 1, aud: 'example.org', jti: newJti(), iat, exp: iat + 300, reason: 'outage', ticket: 'INC-1', grant: 'operator', ttlSeconds: 900, ...over };
}

const opts = (over: Partial<Parameters<typeof verifyBreakGlassRequest>[1]> = {}) => ({
  keys,
  requiredSignatures: 1,
  trustDomain: 'example.org',
  allowedGrants: ['operator', 'auditor', 'secret:db/'],
  now: NOW,
  ...over,
});

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    if (err instanceof BrokerError) return err.code;
    throw err;
  }
}

describe('break-glass JWS', () => {
  it('kid is the RFC 7638 thumbprint (RFC 8037 A.3 vector)', () => {
    // RFC 8037 Appendix A.3: the thumbprint of the A.2 public key.
    const pub = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: '11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo' }, format: 'jwk' });
    expect(keyIdOf(pub)).toBe('kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k');
  });

  it('verifies one signature by a configured key, and names the key', async () => {
    const v = await verifyBreakGlassRequest(await signBreakGlassRequest(claims(), [p1]), opts());
    expect(v.keyIds).toEqual(['bg-1']);
    expect(v.claims.grant).toBe('operator');
  });

  it('M of N counts distinct configured keys; every signature must verify', async () => {
    const c = claims();
    expect(await code(verifyBreakGlassRequest(await signBreakGlassRequest(c, [p1]), opts({ requiredSignatures: 2 })))).toBe('break_glass_denied');
    const both = await signBreakGlassRequest(c, [p1, p2]);
    expect((await verifyBreakGlassRequest(both, opts({ requiredSignatures: 2 }))).keyIds).toEqual(['bg-1', 'bg-2']);
    const cosigned = await cosignBreakGlassRequest(await signBreakGlassRequest(c, [p2]), p1);
    expect((await verifyBreakGlassRequest(cosigned, opts({ requiredSignatures: 2 }))).keyIds).toEqual(['bg-1', 'bg-2']);
    const dup = { ...both, signatures: [both.signatures[0], both.signatures[0]] };
    expect(await code(verifyBreakGlassRequest(dup, opts({ requiredSignatures: 2 })))).toBe('break_glass_denied');
    const withStranger = await signBreakGlassRequest(c, [p1, p2, p3]);
    expect(await code(verifyBreakGlassRequest(withStranger, opts({ requiredSignatures: 2 })))).toBe('break_glass_denied');
    const flipped = { ...both, signatures: [both.signatures[0], { ...both.signatures[1], signature: both.signatures[0]?.signature ?? '' }] };
    expect(await code(verifyBreakGlassRequest(flipped, opts()))).toBe('break_glass_denied');
  });

  it('a bad signature in front does not hide a genuine one: partial names the verified keys and the claims', async () => {
    const c = claims();
    const partial: Parameters<typeof verifyBreakGlassRequest>[2] = {};
    // p3 is not configured; its signature comes first, p1's (configured) second.
    expect(await code(verifyBreakGlassRequest(await signBreakGlassRequest(c, [p3, p1]), opts(), partial))).toBe('break_glass_denied');
    expect(partial).toMatchObject({ keyIds: ['bg-1'], claims: { jti: c.jti, ticket: 'INC-1' } });
    const junk: Parameters<typeof verifyBreakGlassRequest>[2] = {};
    expect(await code(verifyBreakGlassRequest(await signBreakGlassRequest(c, [p3]), opts(), junk))).toBe('break_glass_denied');
    expect(junk).toEqual({});
  });

  it('refuses other algorithms, extra header parameters and a missing typ', async () => {
    const payload = new TextEncoder().encode(JSON.stringify(claims()));
    const kid = keys[0]?.kid as string;
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const cases = [
      await new FlattenedSign(payload).setProtectedHeader({ alg: 'ES256', kid, typ: 'tessera-break-glass+jws' }).sign(ec),
      await new FlattenedSign(payload).setProtectedHeader({ alg: 'EdDSA', kid, typ: 'tessera-break-glass+jws', jku: 'https://x' }).sign(p1),
      await new FlattenedSign(payload).setProtectedHeader({ alg: 'EdDSA', kid }).sign(p1),
      await new FlattenedSign(payload).setProtectedHeader({ alg: 'EdDSA', typ: 'tessera-break-glass+jws' }).sign(p1),
    ];
    for (const f of cases) {
      const jws = { payload: f.payload, signatures: [{ protected: f.protected as string, signature: f.signature }] };
      expect(await code(verifyBreakGlassRequest(jws, opts()))).toBe('break_glass_denied');
    }
  });

  it('freshness: ≤ 5 minutes old, not from the future (60 s skew), not expired, exp ≤ iat + 300', async () => {
    const s = Math.floor(NOW / 1000);
    const cases: [Partial<BreakGlassClaims>, string][] = [
      [{ iat: s - 299, exp: s + 1 }, 'ok'],
      [{ iat: s - 301, exp: s - 1 }, 'break_glass_stale'],
      [{ iat: s - 301, exp: s + 1 }, 'break_glass_stale'],
      [{ iat: s + 60, exp: s + 100 }, 'ok'],
      [{ iat: s + 61, exp: s + 100 }, 'break_glass_stale'],
      [{ iat: s - 10, exp: s }, 'break_glass_stale'],
      [{ iat: s, exp: s + 301 }, 'break_glass_stale'],
    ];
    for (const [over, want] of cases) {
      expect(await code(verifyBreakGlassRequest(await signBreakGlassRequest(claims(over), [p1]), opts())), JSON.stringify(over)).toBe(want);
    }
  });

  it('audience and grant allow-list', async () => {
    expect(await code(verifyBreakGlassRequest(await signBreakGlassRequest(claims({ aud: 'other.org' }), [p1]), opts()))).toBe('break_glass_denied');
    expect(await code(verifyBreakGlassRequest(await signBreakGlassRequest(claims({ grant: 'secrets-admin' }), [p1]), opts()))).toBe('forbidden');
    expect(grantAllowed('secret:db/root', ['secret:db/'])).toBe(true);
    expect(grantAllowed('secret:db/', ['secret:db/'])).toBe(false);
    expect(grantAllowed('secret:dbx/root', ['secret:db/'])).toBe(false);
    expect(grantAllowed('secret:db/root', ['secret:db/root'])).toBe(true);
  });

  it('no configured keys: always refused', async () => {
    expect(await code(verifyBreakGlassRequest(await signBreakGlassRequest(claims(), [p1]), opts({ keys: [] })))).toBe('break_glass_denied');
  });

  it('claims and shapes are checked strictly', () => {
    expect(() => checkClaims({ ...claims(), extra: 1 })).toThrow(/unknown claim/);
    expect(() => checkClaims({ ...claims(), jti: 'short' })).toThrow(/jti/);
    expect(() => checkClaims({ ...claims(), ticket: 'INC 1' })).toThrow(/ticket/);
    expect(() => checkClaims({ ...claims(), reason: 'a\nb' })).toThrow(/reason/);
    expect(() => checkClaims({ ...claims(), ttlSeconds: 30 })).toThrow(/ttlSeconds/);
    expect(() => checkClaims({ ...claims(), iat: 1.5 })).toThrow(/iat/);
    expect(() => parseGeneralJws({ payload: 'a', signatures: [{ protected: 'a', signature: 'b', header: {} }] })).toThrow(/unprotected/);
    expect(() => parseGeneralJws({ payload: 'a', signatures: [] })).toThrow(/signatures/);
    expect(() => parseGeneralJws({ payload: 'a+b', signatures: [{ protected: 'a', signature: 'b' }] })).toThrow(/payload/);
    expect(() => parseGeneralJws([])).toThrow();
  });

  it('co-signing twice with the same key is refused', async () => {
    const one = await signBreakGlassRequest(claims(), [p1]);
    await expect(cosignBreakGlassRequest(one, p1)).rejects.toThrow(/already signed/);
  });
});
