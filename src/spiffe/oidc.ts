/**
 * OpenID Connect discovery for JWT-SVIDs (OpenID Connect Discovery 1.0 §3 and §4; docs/oidc.md): the
 * provider metadata of an issuer of tokens with no interactive endpoints, and the JWKS of the JWT-SVID
 * keys of the trust bundle — every one of them, the prepared and old authorities' keys included, so a
 * relying party has a key before the first token it signs and keeps it until the last one has expired.
 *
 * The issuer is an origin (https://host[:port]): discovery is `<issuer>/.well-known/openid-configuration`
 * and the JWKS `<issuer>/.well-known/jwks.json`, on the broker's listener and on the public one.
 */
import { BrokerError } from '../errors.js';
import type { SpiffeBundle } from './bundle.js';

export const DISCOVERY_PATH = '/.well-known/openid-configuration';
export const JWKS_PATH = '/.well-known/jwks.json';

/** The claims a JWT-SVID carries when `jwt.issuer` is set. */
export const JWT_SVID_CLAIMS = ['aud', 'exp', 'iat', 'iss', 'jti', 'sub'] as const;

/**
 * Why `value` cannot be the issuer, or undefined. Relying parties compare `iss` with the configured
 * issuer and with the discovery document's `issuer` byte for byte, so only one spelling is accepted:
 * https, an origin without path, query, fragment or credentials, no trailing slash, lowercase host,
 * no default port — exactly what `new URL(value).origin` gives back.
 */
export function issuerProblem(value: string): string | undefined {
  if (!URL.canParse(value)) return 'expected an https:// URL (https://host or https://host:port)';
  const u = new URL(value);
  if (u.protocol !== 'https:') return 'expected an https:// URL: relying parties and cloud providers fetch discovery over https only';
  if (u.username !== '' || u.password !== '') return 'credentials in the URL are not allowed';
  if (u.search !== '' || u.hash !== '' || /[?#]/.test(value)) return 'a query or fragment is not allowed';
  if (u.pathname !== '/') return `a path is not allowed: the issuer is an origin (${u.origin}), discovery is served at ${DISCOVERY_PATH}`;
  if (value === `${u.origin}/`) return `no trailing slash: relying parties compare iss byte for byte (write ${u.origin})`;
  if (value !== u.origin) return `not in canonical form (write ${u.origin})`;
  return undefined;
}

/** A JWT-SVID public key as relying parties read it (RFC 7517): `use: sig` and its `alg`. */
export interface OidcJwk {
  readonly kty: string;
  readonly kid: string;
  readonly use: 'sig';
  readonly alg: string;
  readonly crv?: string;
  readonly x?: string;
  readonly y?: string;
  readonly n?: string;
  readonly e?: string;
}

export interface OidcJwks {
  readonly keys: readonly OidcJwk[];
}

export interface OidcDiscoveryDocument {
  readonly issuer: string;
  readonly jwks_uri: string;
  readonly response_types_supported: readonly string[];
  readonly subject_types_supported: readonly string[];
  readonly id_token_signing_alg_values_supported: readonly string[];
  readonly claims_supported: readonly string[];
}

/** The JWS algorithm of a JWT-SVID key: explicit per key type, never guessed (RFC 7518 §3.1). */
function algorithmOf(kty: string | undefined, crv: string | undefined): string {
  if (kty === 'EC' && crv === 'P-256') return 'ES256';
  if (kty === 'EC' && crv === 'P-384') return 'ES384';
  if (kty === 'RSA') return 'RS256';
  throw new BrokerError('internal', `a JWT-SVID key of type ${kty ?? '?'}${crv !== undefined ? `/${crv}` : ''} has no JWS algorithm for OIDC discovery`);
}

/** The JWKS of the bundle's JWT-SVID keys (its X.509 roots are not for OIDC relying parties). */
export function oidcJwks(bundle: SpiffeBundle): OidcJwks {
  const keys = bundle.keys
    .filter((k) => k.use === 'jwt-svid')
    .map((k): OidcJwk => {
      if (typeof k.kid !== 'string' || k.kid === '' || typeof k.kty !== 'string') throw new BrokerError('internal', 'a JWT-SVID key in the bundle has no kid or kty');
      const alg = algorithmOf(k.kty, k.crv);
      const material = k.kty === 'EC' ? { crv: k.crv, x: k.x, y: k.y } : { n: k.n, e: k.e };
      return { kty: k.kty, kid: k.kid, use: 'sig', alg, ...(material as Record<string, string>) };
    });
  return { keys };
}

export function discoveryDocument(issuer: string, jwks: OidcJwks): OidcDiscoveryDocument {
  return {
    issuer,
    jwks_uri: `${issuer}${JWKS_PATH}`,
    // A token issuer with no authorization endpoint: the tokens it issues are ID-token shaped JWTs.
    response_types_supported: ['id_token'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: [...new Set(jwks.keys.map((k) => k.alg))].sort(),
    claims_supported: [...JWT_SVID_CLAIMS],
  };
}

/**
 * How long a relying party may cache the JWKS: never longer than the bundle's refresh hint, and with
 * CA rotation (a next key is published at 1/2 of its predecessor's life and signs from 5/6, so a
 * third of the CA lifetime ahead) at most half that lead, so every cache holds a key before its first token.
 */
export function jwksMaxAgeSeconds(refreshHintSeconds: number, caTtlSeconds: number | undefined): number {
  if (caTtlSeconds === undefined) return refreshHintSeconds;
  return Math.max(0, Math.min(refreshHintSeconds, Math.floor(caTtlSeconds / 6)));
}
