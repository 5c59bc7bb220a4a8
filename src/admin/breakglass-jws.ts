/**
 * The break-glass request: a JWS in General JSON serialization (RFC 7515 §7.2.1), one signature per
 * break-glass key, so M-of-N is M signatures over the same payload. Ed25519 only ("EdDSA"), the key id
 * is the RFC 7638 thumbprint of the public key (nothing to keep in sync), no unprotected headers.
 *
 * This file is shared by the CLI (make keys, sign, co-sign) and the broker (verify). Verification
 * checks each signature on its own (jose's generalVerify stops at the first good one) and counts
 * distinct configured keys; any signature that does not verify, or by an unknown key, fails the request.
 */
import { createHash, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { FlattenedSign, flattenedVerify } from 'jose';
import type { BreakGlassKeyConfig } from '../config/config.js';
import { BrokerError, badRequest } from '../errors.js';
import { isRecord } from '../is-record.js';

/** `typ` of every signature's protected header. */
export const BREAK_GLASS_TYP = 'tessera-break-glass+jws';
/** A request must have been signed (iat) at most this long ago. */
export const MAX_REQUEST_AGE_SECONDS = 300;
/** And its exp may be at most this far after its iat. */
export const MAX_REQUEST_VALIDITY_SECONDS = 300;
/** Clock skew tolerated for an iat in the future. */
export const FUTURE_SKEW_SECONDS = 60;
/** Hard ceiling on the credential a request can get; config may set it lower. */
export const MAX_GRANT_TTL_SECONDS = 900;
export const MAX_SIGNATURES = 16;

export interface BreakGlassClaims {
  /** Format version. */
  readonly v: 1;
  /** The trust domain of the deployment the request is for. */
  readonly aud: string;
  readonly jti: string;
  /** Seconds since the epoch. */
  readonly iat: number;
  readonly exp: number;
  readonly reason: string;
  readonly ticket: string;
  /** An admin role (auditor, operator, secrets-admin) or "secret:<name>". */
  readonly grant: string;
  /** Requested credential lifetime; the broker caps it. */
  readonly ttlSeconds: number;
}

export interface GeneralJws {
  payload: string;
  signatures: { protected: string; signature: string }[];
}

const JTI = /^[A-Za-z0-9_-]{16,64}$/;
const TICKET = /^[A-Za-z0-9][A-Za-z0-9._:#/-]{0,63}$/;
const B64URL = /^[A-Za-z0-9_-]*$/;

const denied = (message: string): BrokerError => new BrokerError('break_glass_denied', message);

/** RFC 7638 thumbprint of an Ed25519 public key: the `kid` every signature names. */
export function keyIdOf(publicKey: KeyObject): string {
  const jwk = publicKey.export({ format: 'jwk' });
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') throw badRequest('break-glass keys are Ed25519 only');
  // Members in lexicographic order, no whitespace (RFC 7638 §3).
  return createHash('sha256').update(`{"crv":"Ed25519","kty":"OKP","x":"${jwk.x}"}`).digest('base64url');
}

/** A fresh break-glass key pair: the private key as PKCS#8 PEM, the public key as base64 SPKI DER (config). */
export function generateBreakGlassKey(): { privateKeyPem: string; publicKey: string; kid: string } {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  return {
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKey: publicKey.export({ type: 'spki', format: 'der' }).toString('base64'),
    kid: keyIdOf(publicKey),
  };
}

export function newJti(): string {
  return randomBytes(16).toString('base64url');
}

/** Checks the claims' shape (not freshness); a 400 names the bad field. */
export function checkClaims(value: unknown): BreakGlassClaims {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw badRequest('break-glass payload must be a JSON object');
  const o = value as Record<string, unknown>;
  const allowed = ['v', 'aud', 'jti', 'iat', 'exp', 'reason', 'ticket', 'grant', 'ttlSeconds'];
  for (const k of Object.keys(o)) if (!allowed.includes(k)) throw badRequest(`break-glass payload: unknown claim "${k}"`);
  const int = (k: string): number => {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw badRequest(`break-glass payload: "${k}" must be a non-negative integer`);
    return v;
  };
  const str = (k: string, max: number): string => {
    const v = o[k];
    if (typeof v !== 'string' || v.length === 0 || v.length > max || /\p{Cc}/u.test(v)) {
      throw badRequest(`break-glass payload: "${k}" must be 1-${max} printable characters`);
    }
    return v;
  };
  if (o.v !== 1) throw badRequest('break-glass payload: unsupported version (v must be 1)');
  const jti = str('jti', 64);
  if (!JTI.test(jti)) throw badRequest('break-glass payload: "jti" must be 16-64 of A-Z a-z 0-9 _ -');
  const ticket = str('ticket', 64);
  if (!TICKET.test(ticket)) throw badRequest('break-glass payload: "ticket" must be 1-64 of A-Z a-z 0-9 . _ : # / - (e.g. INC-123)');
  const ttlSeconds = int('ttlSeconds');
  if (ttlSeconds < 60 || ttlSeconds > 86_400) throw badRequest('break-glass payload: "ttlSeconds" must be between 60 and 86400');
  return {
    v: 1,
    aud: str('aud', 255),
    jti,
    iat: int('iat'),
    exp: int('exp'),
    reason: str('reason', 500),
    ticket,
    grant: str('grant', 300),
    ttlSeconds,
  };
}

function payloadBytes(claims: BreakGlassClaims): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(claims));
}

async function signOne(payload: Uint8Array, key: KeyObject): Promise<{ payload: string; protected: string; signature: string }> {
  if (key.asymmetricKeyType !== 'ed25519' || key.type !== 'private') throw badRequest('a break-glass signing key must be an Ed25519 private key');
  const kid = keyIdOf(createPublicKey(key));
  const jws = await new FlattenedSign(payload).setProtectedHeader({ alg: 'EdDSA', kid, typ: BREAK_GLASS_TYP }).sign(key);
  if (jws.protected === undefined) throw new BrokerError('internal', 'jose produced no protected header');
  return { payload: jws.payload, protected: jws.protected, signature: jws.signature };
}

/** Signs `claims` with every key (one signature each). */
export async function signBreakGlassRequest(claims: BreakGlassClaims, keys: readonly KeyObject[]): Promise<GeneralJws> {
  checkClaims(claims);
  if (keys.length === 0) throw badRequest('at least one break-glass key is needed');
  const payload = payloadBytes(claims);
  const sigs = await Promise.all(keys.map((k) => signOne(payload, k)));
  return { payload: sigs[0]?.payload ?? '', signatures: sigs.map((s) => ({ protected: s.protected, signature: s.signature })) };
}

/** Adds one more signature (the second person of a two-person rule) over the same payload bytes. */
export async function cosignBreakGlassRequest(jws: GeneralJws, key: KeyObject): Promise<GeneralJws> {
  const payload = Buffer.from(jws.payload, 'base64url');
  const sig = await signOne(payload, key);
  if (sig.payload !== jws.payload) throw badRequest('the request payload is not canonical base64url; it cannot be co-signed');
  const kid = (JSON.parse(Buffer.from(sig.protected, 'base64url').toString('utf8')) as { kid: string }).kid;
  for (const s of jws.signatures) {
    if (headerOf(s.protected).kid === kid) throw badRequest('this key has already signed the request');
  }
  return { payload: jws.payload, signatures: [...jws.signatures, { protected: sig.protected, signature: sig.signature }] };
}

function headerOf(protectedB64: string): Record<string, unknown> {
  if (!B64URL.test(protectedB64)) throw badRequest('break-glass request: a protected header is not base64url');
  try {
    const h = JSON.parse(Buffer.from(protectedB64, 'base64url').toString('utf8')) as unknown;
    if (isRecord(h)) return h;
  } catch {
    // fall through
  }
  throw badRequest('break-glass request: a protected header is not a JSON object');
}

/** Parses the General JWS shape strictly (no unprotected headers, bounded sizes). */
export function parseGeneralJws(value: unknown): GeneralJws {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw badRequest('break-glass request must be a General JSON JWS object');
  const o = value as Record<string, unknown>;
  for (const k of Object.keys(o)) if (k !== 'payload' && k !== 'signatures') throw badRequest(`break-glass request: unexpected member "${k}"`);
  if (typeof o.payload !== 'string' || o.payload.length === 0 || o.payload.length > 8192 || !B64URL.test(o.payload)) {
    throw badRequest('break-glass request: payload must be base64url (at most 8192 characters)');
  }
  if (!Array.isArray(o.signatures) || o.signatures.length === 0 || o.signatures.length > MAX_SIGNATURES) {
    throw badRequest(`break-glass request: signatures must be a list of 1-${MAX_SIGNATURES}`);
  }
  const signatures = o.signatures.map((s: unknown) => {
    if (typeof s !== 'object' || s === null || Array.isArray(s)) throw badRequest('break-glass request: each signature must be an object');
    const so = s as Record<string, unknown>;
    for (const k of Object.keys(so)) {
      if (k !== 'protected' && k !== 'signature') throw badRequest(`break-glass request: signature member "${k}" is not allowed (no unprotected headers)`);
    }
    if (typeof so.protected !== 'string' || so.protected.length > 2048 || typeof so.signature !== 'string' || so.signature.length > 512 || !B64URL.test(so.signature)) {
      throw badRequest('break-glass request: each signature needs base64url "protected" and "signature"');
    }
    return { protected: so.protected, signature: so.signature };
  });
  return { payload: o.payload, signatures };
}

/** The claims of a request without verifying it (the co-signer reads what they are about to sign). */
export function unverifiedClaims(jws: GeneralJws): BreakGlassClaims {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(jws.payload, 'base64url').toString('utf8'));
  } catch {
    throw badRequest('break-glass request: payload is not JSON');
  }
  return checkClaims(parsed);
}

export interface BreakGlassKey {
  /** Config id (bg-1), shown in audit entries. */
  readonly id: string;
  /** RFC 7638 thumbprint, the `kid` in signatures. */
  readonly kid: string;
  readonly key: KeyObject;
}

export function loadBreakGlassKeys(keys: readonly BreakGlassKeyConfig[]): BreakGlassKey[] {
  return keys.map((k) => {
    const key = createPublicKey({ key: Buffer.from(k.publicKey, 'base64'), format: 'der', type: 'spki' });
    return { id: k.id, kid: keyIdOf(key), key };
  });
}

export interface VerifiedBreakGlass {
  readonly claims: BreakGlassClaims;
  /** Config ids of the distinct keys whose signatures verified, sorted. */
  readonly keyIds: readonly string[];
}

export interface VerifyOptions {
  readonly keys: readonly BreakGlassKey[];
  readonly requiredSignatures: number;
  readonly trustDomain: string;
  readonly allowedGrants: readonly string[];
  /** ms since the epoch */
  readonly now: number;
}

/** Is `grant` allowed by the config list (exact, or under a "secret:<prefix>/" entry)? */
export function grantAllowed(grant: string, allowed: readonly string[]): boolean {
  // A request names one secret; "secret:<prefix>/" exists only in the allow-list.
  if (grant.endsWith('/')) return false;
  return allowed.some((a) => a === grant || (a.startsWith('secret:') && a.endsWith('/') && grant.startsWith(a) && grant.length > a.length));
}

/** One signature: its header, a configured key, and the signature itself. Returns the key's config id. */
async function verifyOne(payload: string, s: { protected: string; signature: string }, byKid: ReadonlyMap<string, BreakGlassKey>): Promise<string> {
  const h = headerOf(s.protected);
  for (const k of Object.keys(h)) {
    if (k !== 'alg' && k !== 'kid' && k !== 'typ') throw denied(`break-glass signature header "${k}" is not allowed`);
  }
  if (h.alg !== 'EdDSA' && h.alg !== 'Ed25519') throw denied('break-glass signatures must use EdDSA (Ed25519)');
  if (h.typ !== BREAK_GLASS_TYP) throw denied(`break-glass signatures must have typ "${BREAK_GLASS_TYP}"`);
  const key = typeof h.kid === 'string' ? byKid.get(h.kid) : undefined;
  if (key === undefined) throw denied('a signature is by a key that is not one of this deployment\'s break-glass keys');
  try {
    await flattenedVerify({ payload, protected: s.protected, signature: s.signature }, key.key, { algorithms: ['EdDSA', 'Ed25519'] });
  } catch {
    throw denied(`the signature of break-glass key ${key.id} does not verify`);
  }
  return key.id;
}

/**
 * Signatures first (every one must verify, by a configured key, EdDSA only), then M-of-N over distinct
 * keys, then the claims (audience, grant), then freshness. Throws break_glass_denied (401),
 * break_glass_stale (401) or bad_request (400). `partial` receives what was learnt before a failure:
 * the ids of the keys whose signatures verified (even if another signature failed), and the claims
 * once at least one configured key's signature over them verified.
 */
export async function verifyBreakGlassRequest(
  input: unknown,
  opts: VerifyOptions,
  partial: { keyIds?: string[]; claims?: BreakGlassClaims } = {},
): Promise<VerifiedBreakGlass> {
  if (opts.keys.length === 0) throw denied('break-glass is not configured on this broker (no breakGlass.keys)');
  const jws = parseGeneralJws(input);
  const byKid = new Map(opts.keys.map((k) => [k.kid, k]));
  const signers = new Set<string>();
  // Every signature is checked, even after one failed: a junk signature in front must not hide a
  // genuine deployment key (the broker audits any attempt carrying one individually, never capped).
  let failure: BrokerError | undefined;
  for (const s of jws.signatures) {
    try {
      signers.add(await verifyOne(jws.payload, s, byKid));
    } catch (err) {
      if (!(err instanceof BrokerError)) throw err;
      failure ??= err;
    }
  }
  const keyIds = [...signers].sort();
  if (keyIds.length > 0) partial.keyIds = keyIds;
  if (failure !== undefined) {
    // The payload is what these deployment keys signed: worth recording, though the request fails.
    if (keyIds.length > 0) {
      try {
        partial.claims = unverifiedClaims(jws);
      } catch {
        // not parseable: the signature failure is the answer
      }
    }
    throw failure;
  }
  const claims = unverifiedClaims(jws); // verified by now
  partial.claims = claims;
  if (keyIds.length < opts.requiredSignatures) {
    throw denied(`break-glass needs signatures from ${opts.requiredSignatures} distinct keys; this request has ${keyIds.length} (${keyIds.join(', ')})`);
  }
  if (claims.aud !== opts.trustDomain) throw denied(`the request is for "${claims.aud}", not this deployment (${opts.trustDomain})`);
  if (!grantAllowed(claims.grant, opts.allowedGrants)) throw new BrokerError('forbidden', `grant "${claims.grant}" is not in breakGlass.allowedGrants`);
  const now = Math.floor(opts.now / 1000);
  const stale = (m: string): BrokerError => new BrokerError('break_glass_stale', m);
  if (claims.iat > now + FUTURE_SKEW_SECONDS) throw stale('the request was signed in the future (check the signing machine\'s clock)');
  if (now - claims.iat > MAX_REQUEST_AGE_SECONDS) throw stale(`the request was signed ${now - claims.iat}s ago; it must be used within ${MAX_REQUEST_AGE_SECONDS}s — sign a new one`);
  if (claims.exp <= now) throw stale('the request has expired (exp); sign a new one');
  if (claims.exp <= claims.iat || claims.exp - claims.iat > MAX_REQUEST_VALIDITY_SECONDS) {
    throw stale(`exp must be after iat and at most ${MAX_REQUEST_VALIDITY_SECONDS}s after it`);
  }
  return { claims, keyIds };
}
