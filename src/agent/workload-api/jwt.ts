/**
 * ValidateJWTSVID's check, by the JWT-SVID standard: an explicit allow-list of algorithms, a `kid`
 * present in the bundle of the subject's own trust domain, a valid workload SPIFFE ID in `sub`, the
 * audience, and `exp` (required) checked now. Any failure is a JwtSvidInvalid naming the rule.
 */
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify, type JWK, type JWTPayload } from 'jose';
import { parseSpiffeId } from '../../spiffe/id.js';
import type { JwtBundle } from './identity.js';

export const JWT_ALGORITHMS = ['ES256', 'ES384', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'] as const;
export const MAX_JWT_BYTES = 16 * 1024;
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

export class JwtSvidInvalid extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'JwtSvidInvalid';
  }
}

export interface ValidatedJwtSvid {
  readonly spiffeId: string;
  readonly claims: JWTPayload;
}

export async function validateJwtSvid(
  token: string,
  audience: string,
  bundles: ReadonlyMap<string, JwtBundle>,
  now: Date = new Date(),
): Promise<ValidatedJwtSvid> {
  if (token.length > MAX_JWT_BYTES || !COMPACT_JWS.test(token)) throw new JwtSvidInvalid('the token is not a JWS in compact serialisation');
  let alg: unknown;
  let kid: unknown;
  let sub: unknown;
  try {
    ({ alg, kid } = decodeProtectedHeader(token));
    ({ sub } = decodeJwt(token));
  } catch {
    throw new JwtSvidInvalid('the token header or payload is not valid JSON');
  }
  if (typeof alg !== 'string' || !(JWT_ALGORITHMS as readonly string[]).includes(alg)) {
    throw new JwtSvidInvalid(`algorithm ${JSON.stringify(alg)} is not allowed for JWT-SVIDs`);
  }
  if (typeof kid !== 'string' || kid === '') throw new JwtSvidInvalid('the token has no key ID (kid)');
  if (typeof sub !== 'string') throw new JwtSvidInvalid('the token has no subject (sub)');
  let trustDomain: string;
  try {
    const id = parseSpiffeId(sub);
    if (id.path === '') throw new Error('a trust-domain ID');
    trustDomain = `spiffe://${id.trustDomain}`;
  } catch {
    throw new JwtSvidInvalid('the subject (sub) is not a workload SPIFFE ID');
  }
  const bundle = bundles.get(trustDomain);
  if (bundle === undefined) throw new JwtSvidInvalid(`no JWT bundle for trust domain ${trustDomain}`);
  if (!bundle.keys.some((k) => k.kid === kid)) throw new JwtSvidInvalid(`key ${JSON.stringify(kid)} is not in the bundle of ${trustDomain}`);
  try {
    const { payload } = await jwtVerify(token, createLocalJWKSet({ keys: bundle.keys as JWK[] }), {
      algorithms: [...JWT_ALGORITHMS],
      audience,
      requiredClaims: ['sub', 'aud', 'exp'],
      currentDate: now,
    });
    if (payload.sub !== sub) throw new JwtSvidInvalid('the subject changed under verification');
    return { spiffeId: sub, claims: payload };
  } catch (err) {
    if (err instanceof JwtSvidInvalid) throw err;
    const code = (err as { code?: unknown }).code;
    const reason =
      code === 'ERR_JWT_EXPIRED'
        ? 'the token has expired'
        : code === 'ERR_JWT_CLAIM_VALIDATION_FAILED'
          ? `claim check failed: ${(err as Error).message}`
          : code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED'
            ? 'the signature does not verify'
            : `the token does not verify: ${(err as Error).message}`;
    throw new JwtSvidInvalid(reason);
  }
}
