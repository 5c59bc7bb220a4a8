/**
 * Parses a SPIFFE bundle that came from outside (a foreign trust domain's bundle endpoint, a bootstrap
 * file, a stored copy) per SPIFFE_Trust_Domain_and_Bundle.md §4: a JWK Set whose keys carry `use`
 * `x509-svid` (exactly one certificate in `x5c`, whose key is the JWK's key) or `jwt-svid` (a `kid`),
 * with optional `spiffe_sequence` and `spiffe_refresh_hint`.
 *
 * Strict on purpose: bounded size and counts, explicit key types, no private key members, every x509
 * authority a CA certificate, and no authority that names (by its SPIFFE URI SAN) a trust domain other
 * than the one the bundle is for. Keys with a `use` this code does not know are skipped, as the standard
 * says. Every failure is a `BundleError` naming what is wrong; nothing else is thrown.
 */
import { createPublicKey, X509Certificate, type JsonWebKey, type KeyObject } from 'node:crypto';
import { parseSpiffeId, validateTrustDomain } from './id.js';

/** A bundle document larger than this is refused (before JSON parsing). */
export const MAX_BUNDLE_BYTES = 256 * 1024;
/** At most this many keys in one bundle. */
export const MAX_BUNDLE_KEYS = 64;
const MAX_KID = 256;
const KEY_TYPES = new Set(['EC', 'RSA', 'OKP']);
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];
const JWK_MEMBERS = ['kty', 'crv', 'x', 'y', 'n', 'e'] as const;

export class BundleError extends Error {
  override readonly name = 'BundleError';
}

export interface JwtAuthority {
  readonly kid: string;
  /** The public JWK (kty, crv, x, y, n, e only) plus kid and use. */
  readonly jwk: JsonWebKey & { readonly kid: string; readonly use: 'jwt-svid' };
  readonly key: KeyObject;
}

/** One trust domain's bundle, checked. */
export interface TrustBundle {
  readonly trustDomain: string;
  readonly sequence?: number;
  readonly refreshHintSeconds?: number;
  readonly x509Authorities: readonly X509Certificate[];
  readonly jwtAuthorities: readonly JwtAuthority[];
}

const fail = (message: string): never => {
  throw new BundleError(message);
};

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function publicJwkOf(k: Record<string, unknown>, where: string): JsonWebKey {
  const jwk: Record<string, string> = {};
  for (const m of JWK_MEMBERS) {
    const v = k[m];
    if (v === undefined) continue;
    if (typeof v !== 'string' || v.length === 0 || v.length > 4096) fail(`${where}.${m}: expected a non-empty string`);
    jwk[m] = v as string;
  }
  return jwk;
}

function importKey(jwk: JsonWebKey, where: string): KeyObject {
  try {
    return createPublicKey({ key: jwk, format: 'jwk' });
  } catch {
    return fail(`${where}: not a usable public key`);
  }
}

/** The trust domains named by a certificate's SPIFFE URI SANs (a non-SPIFFE or malformed URI is ignored). */
function spiffeTrustDomainsOf(cert: X509Certificate): string[] {
  const out: string[] = [];
  for (const part of (cert.subjectAltName ?? '').split(', ')) {
    if (!part.startsWith('URI:spiffe://')) continue;
    try {
      out.push(parseSpiffeId(part.slice(4)).trustDomain);
    } catch {
      out.push('(malformed)');
    }
  }
  return out;
}

function x509Authority(k: Record<string, unknown>, where: string, trustDomain: string): X509Certificate {
  const x5c = k.x5c;
  if (!Array.isArray(x5c) || x5c.length !== 1 || typeof x5c[0] !== 'string') fail(`${where}.x5c: an x509-svid key carries exactly one certificate`);
  const b64 = (x5c as string[])[0] as string;
  if (b64.length > 64 * 1024 || !/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) fail(`${where}.x5c[0]: not base64`);
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(Buffer.from(b64, 'base64'));
  } catch {
    return fail(`${where}.x5c[0]: not a DER certificate`);
  }
  if (!cert.ca) fail(`${where}.x5c[0]: not a CA certificate`);
  const named = spiffeTrustDomainsOf(cert);
  if (named.some((td) => td !== trustDomain)) fail(`${where}.x5c[0]: the certificate names trust domain ${named.find((td) => td !== trustDomain) ?? ''}, not ${trustDomain}`);
  // The JWK's own key (when given) must be the certificate's key: no key smuggled beside a certificate.
  if (k.x !== undefined || k.n !== undefined) {
    const key = importKey(publicJwkOf(k, where), where);
    if (!key.equals(cert.publicKey)) fail(`${where}: the key differs from the x5c certificate's key`);
  }
  return cert;
}

/**
 * Parses the bundle of `trustDomain` from `input` (JSON text or bytes). Throws BundleError.
 */
export function parseTrustBundle(input: string | Buffer, trustDomain: string): TrustBundle {
  try {
    validateTrustDomain(trustDomain);
  } catch {
    fail(`"${trustDomain}" is not a trust domain name`);
  }
  const size = typeof input === 'string' ? Buffer.byteLength(input) : input.length;
  if (size > MAX_BUNDLE_BYTES) fail(`the bundle is larger than ${MAX_BUNDLE_BYTES} bytes`);
  let doc: unknown;
  try {
    doc = JSON.parse(typeof input === 'string' ? input : input.toString('utf8'));
  } catch {
    return fail('the bundle is not JSON');
  }
  if (!isObject(doc)) fail('the bundle is not a JSON object');
  const d = doc as Record<string, unknown>;
  if (!Array.isArray(d.keys)) fail('keys: expected a list');
  const keys = d.keys as unknown[];
  if (keys.length > MAX_BUNDLE_KEYS) fail(`keys: more than ${MAX_BUNDLE_KEYS}`);
  let sequence: number | undefined;
  if (d.spiffe_sequence !== undefined) {
    if (!Number.isSafeInteger(d.spiffe_sequence) || (d.spiffe_sequence as number) < 0) fail('spiffe_sequence: expected a non-negative integer');
    sequence = d.spiffe_sequence as number;
  }
  let refreshHintSeconds: number | undefined;
  if (d.spiffe_refresh_hint !== undefined) {
    if (!Number.isSafeInteger(d.spiffe_refresh_hint) || (d.spiffe_refresh_hint as number) < 0) fail('spiffe_refresh_hint: expected a non-negative integer (seconds)');
    refreshHintSeconds = d.spiffe_refresh_hint as number;
  }
  const x509: X509Certificate[] = [];
  const jwt: JwtAuthority[] = [];
  keys.forEach((raw, i) => {
    const where = `keys[${i}]`;
    if (!isObject(raw)) fail(`${where}: expected a JWK object`);
    const k = raw as Record<string, unknown>;
    if (typeof k.kty !== 'string' || !KEY_TYPES.has(k.kty)) fail(`${where}.kty: expected EC, RSA or OKP`);
    for (const m of PRIVATE_MEMBERS) if (k[m] !== undefined) fail(`${where}: carries private key member "${m}"`);
    if (k.use === 'x509-svid') {
      x509.push(x509Authority(k, where, trustDomain));
    } else if (k.use === 'jwt-svid') {
      if (typeof k.kid !== 'string' || k.kid.length === 0 || k.kid.length > MAX_KID) fail(`${where}.kid: a jwt-svid key needs a kid of 1-${MAX_KID} characters`);
      const kid = k.kid as string;
      if (jwt.some((j) => j.kid === kid)) fail(`${where}.kid: "${kid}" is given twice`);
      const pub = publicJwkOf(k, where);
      const key = importKey(pub, where);
      jwt.push({ kid, jwk: { ...pub, kid, use: 'jwt-svid' }, key });
    } else if (typeof k.use !== 'string') {
      fail(`${where}.use: expected x509-svid or jwt-svid`);
    }
    // Any other `use`: ignored (SPIFFE_Trust_Domain_and_Bundle.md §4.2.2).
  });
  if (x509.length === 0 && jwt.length === 0) fail('the bundle holds no x509-svid or jwt-svid key');
  return {
    trustDomain,
    ...(sequence !== undefined ? { sequence } : {}),
    ...(refreshHintSeconds !== undefined ? { refreshHintSeconds } : {}),
    x509Authorities: x509,
    jwtAuthorities: jwt,
  };
}

/** The bundle as SPIFFE bundle JSON again (what is stored and served to workloads). */
export function trustBundleJson(b: TrustBundle): string {
  return JSON.stringify({
    keys: [
      ...b.x509Authorities.map((c) => ({ ...c.publicKey.export({ format: 'jwk' }), use: 'x509-svid', x5c: [c.raw.toString('base64')] })),
      ...b.jwtAuthorities.map((j) => j.jwk),
    ],
    ...(b.sequence !== undefined ? { spiffe_sequence: b.sequence } : {}),
    ...(b.refreshHintSeconds !== undefined ? { spiffe_refresh_hint: b.refreshHintSeconds } : {}),
  });
}

/** The X.509 authorities as PEM. */
export function trustBundlePem(b: TrustBundle): string {
  return b.x509Authorities.map((c) => c.toString()).join('');
}
