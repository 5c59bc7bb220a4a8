/**
 * JWT-SVID signing (SPIFFE JWT-SVID spec): ES256 only, `sub` = SPIFFE ID, `aud`, `exp`, `iat`, `jti`,
 * `iss` when an OIDC issuer is configured (spiffe/oidc.ts), and a `kid` that is the RFC 7638 thumbprint of the signing key, published in the bundle as `use: jwt-svid`.
 */
import { createPrivateKey, randomUUID, type JsonWebKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { calculateJwkThumbprint } from 'jose';
import { BrokerError } from '../errors.js';
import { KeySigner, signatureAlgorithmOf, type Signer } from './signer.js';

export interface JwtSvid {
  readonly token: string;
  readonly jti: string;
  readonly issuedAt: number;
  readonly expiresAt: number;
}

export class JwtSvidSigner {
  private constructor(
    private readonly signer: Signer,
    readonly kid: string,
    readonly publicJwk: JsonWebKey,
  ) {}

  static async create(signer: Signer): Promise<JwtSvidSigner> {
    if (signer.algorithm !== 'ES256') throw new BrokerError('internal', 'the JWT-SVID signing key must be an EC P-256 key');
    const { crv, x, y } = signer.publicKey.export({ format: 'jwk' });
    if (crv === undefined || x === undefined || y === undefined) throw new BrokerError('internal', 'the JWT-SVID public key has no EC coordinates');
    const kid = await calculateJwkThumbprint({ kty: 'EC', crv, x, y }, 'sha256');
    return new JwtSvidSigner(signer, kid, { kty: 'EC', crv, x, y });
  }

  static async fromPem(pem: string): Promise<JwtSvidSigner> {
    const key = createPrivateKey(pem);
    if (signatureAlgorithmOf(key) !== 'ES256') throw new BrokerError('internal', 'the JWT-SVID signing key must be an EC P-256 key');
    return JwtSvidSigner.create(new KeySigner(key));
  }

  static async fromFile(file: string): Promise<JwtSvidSigner> {
    return JwtSvidSigner.fromPem(readFileSync(file, 'utf8'));
  }

  /**
   * `now` and `ttlMs` in ms; JWT times are whole seconds, so exp is rounded down (never longer than granted).
   * `issuer` (config jwt.issuer, the OIDC discovery issuer) becomes `iss`; without it there is none.
   */
  async sign(req: { spiffeId: string; audiences: readonly string[]; ttlMs: number; now: number; issuer?: string | undefined }): Promise<JwtSvid> {
    const iat = Math.floor(req.now / 1000);
    const exp = Math.floor((req.now + req.ttlMs) / 1000);
    const jti = randomUUID();
    // A compact JWS built here and signed by the Signer (a local key: node:crypto, ~27 µs): jose's
    // SignJWT produces the same bytes but signs through WebCrypto at several times the CPU cost.
    const header = b64url(JSON.stringify({ alg: 'ES256', kid: this.kid, typ: 'JWT' }));
    const claims = { sub: req.spiffeId, aud: [...req.audiences], iat, exp, jti };
    const payload = b64url(JSON.stringify(req.issuer !== undefined ? { iss: req.issuer, ...claims } : claims));
    const input = `${header}.${payload}`;
    const signature = joseEcdsaSignature(await this.signer.sign(Buffer.from(input, 'latin1')));
    const token = `${input}.${signature.toString('base64url')}`;
    return { token, jti, issuedAt: iat * 1000, expiresAt: exp * 1000 };
  }
}

const b64url = (json: string): string => Buffer.from(json, 'utf8').toString('base64url');

/**
 * JWS carries an ES256 signature as r ‖ s, 32 bytes each (RFC 7518 §3.4); a Signer gives DER,
 * SEQUENCE { INTEGER r, INTEGER s } with one-byte lengths. Read by hand: the generic DER reader
 * costs a tenth of the signature itself on this per-token path.
 */
function joseEcdsaSignature(der: Buffer): Buffer {
  const out = Buffer.alloc(64);
  let at = 2;
  for (const end of [32, 64]) {
    const len = der[at + 1] ?? 0;
    if (der[0] !== 0x30 || der[1] !== der.length - 2 || der[at] !== 0x02 || len < 1 || len > 33) {
      throw new BrokerError('internal', 'the JWT-SVID signer returned a malformed ECDSA signature');
    }
    const int = der.subarray(at + 2, at + 2 + len);
    (len === 33 ? int.subarray(1) : int).copy(out, end - Math.min(len, 32));
    at += 2 + len;
  }
  if (at !== der.length) throw new BrokerError('internal', 'the JWT-SVID signer returned a malformed ECDSA signature');
  return out;
}
