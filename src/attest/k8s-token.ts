/**
 * Attests a workload from a Kubernetes projected service account token (a JWT signed by the
 * cluster's service account issuer). Deliberately narrow: RS256/ES256 only, no key material taken
 * from the token itself (jku, x5u, jwk, x5c), no `crit` extensions, the issuer picked by exact `iss`
 * match and its keys pinned per algorithm. Every failure is a 401 `invalid_token`.
 */
import { constants as cryptoConstants, KeyObject, verify as verifySignature } from 'node:crypto';
import { errors, type CryptoKey, type JWTPayload } from 'jose';
import { BrokerError } from '../errors.js';
import { systemClock, type Clock } from '../clock.js';
import { isRecord } from '../is-record.js';
import { validateTrustDomain, workloadSpiffeId } from '../spiffe/id.js';
import type { TokenAttestor } from './attestor.js';
import { type Identity, selectorText, type WorkloadClaims } from './identity.js';
import { DEFAULT_JWKS_REFRESH_INTERVAL_MS, JwksKeySource, type VerificationAlgorithm } from './jwks.js';

export interface TokenIssuerOptions {
  /** Exact `iss` value the tokens carry. */
  issuer: string;
  /** One of jwksFile and jwksUrl (absent and undefined mean the same). */
  jwksFile?: string | undefined;
  jwksUrl?: string | undefined;
  /** Or: find the JWKS by OpenID discovery (https only), TLS verified against caFile (default: the system's CAs). */
  discovery?: boolean | undefined;
  caFile?: string | undefined;
  /** Fetched keys (jwksUrl, discovery) older than this are re-read before use, default 300. */
  jwksRefreshSeconds?: number | undefined;
  /** Permit an http: jwksUrl (tests only). */
  allowInsecureHttp?: boolean | undefined;
  /** A token is accepted when its `aud` contains one of these. */
  audiences: readonly string[];
  /** Longest accepted `exp − iat` (or `exp − nbf`), default 86400. */
  maxLifetimeSeconds?: number;
  /** Require `kubernetes.io.pod` (name and uid): only pod-bound tokens are accepted. */
  requirePodBinding?: boolean;
  /** Minimum time between JWKS fetches, default 30000. */
  jwksRefreshIntervalMs?: number;
}

export interface ServiceAccountTokenAttestorOptions {
  trustDomain: string;
  issuers: readonly TokenIssuerOptions[];
  clock?: Clock;
  /** Tolerance on nbf, iat and exp, default 60. */
  clockSkewSeconds?: number;
  /** The attestor this one replaces (reload): fetched keys from the same place are taken over. */
  previous?: ServiceAccountTokenAttestor | undefined;
}

export const MAX_TOKEN_BYTES = 16 * 1024;
export const DEFAULT_MAX_LIFETIME_SECONDS = 86_400;
export const DEFAULT_CLOCK_SKEW_SECONDS = 60;

/** Header parameters that would make us fetch or trust key material chosen by the token. */
const FORBIDDEN_HEADERS = ['jku', 'x5u', 'jwk', 'x5c', 'crit'] as const;
/** Three non-empty base64url segments: no JSON serialization, no padding, no whitespace. */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const UID = /^[A-Za-z0-9-]{1,64}$/;
const TOKEN_ID = /^[\x21-\x7e]{1,256}$/;

/** RFC 1123 label, as Kubernetes requires of namespace names. */
export function isDnsLabel(value: string): boolean {
  return value.length <= 63 && DNS_LABEL.test(value);
}

/** RFC 1123 subdomain, as Kubernetes requires of service account and pod names. */
export function isDnsSubdomain(value: string): boolean {
  return value.length <= 253 && DNS_SUBDOMAIN.test(value);
}

const invalidToken = (message: string): BrokerError => new BrokerError('invalid_token', message);

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Decodes one unverified segment as a JSON object, for routing only (never trusted). */
function decodeSegment(segment: string, what: string): Record<string, unknown> {
  // A length of 1 mod 4 is not base64 at all; other decoders would disagree on it.
  if (segment.length % 4 === 1) throw invalidToken(`token ${what} is not valid base64url`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(strictUtf8.decode(Buffer.from(segment, 'base64url')));
  } catch {
    throw invalidToken(`token ${what} is not valid JSON`);
  }
  if (!isRecord(parsed)) throw invalidToken(`token ${what} is not a JSON object`);
  return parsed;
}

interface IssuerState {
  readonly issuer: string;
  readonly audiences: string[];
  readonly maxLifetimeSeconds: number;
  readonly requirePodBinding: boolean;
  readonly keys: JwksKeySource;
}

export class ServiceAccountTokenAttestor implements TokenAttestor {
  readonly trustDomain: string;
  private readonly issuers = new Map<string, IssuerState>();
  private readonly clock: Clock;
  private readonly skew: number;

  constructor(opts: ServiceAccountTokenAttestorOptions) {
    this.trustDomain = validateTrustDomain(opts.trustDomain);
    this.clock = opts.clock ?? systemClock;
    this.skew = opts.clockSkewSeconds ?? DEFAULT_CLOCK_SKEW_SECONDS;
    if (!Number.isFinite(this.skew) || this.skew < 0) throw new Error('clockSkewSeconds must be a non-negative number');

    // The issuer settings were checked when the config was loaded (config/config.ts).
    for (const cfg of opts.issuers) {
      if (this.issuers.has(cfg.issuer)) throw new Error(`token issuer ${cfg.issuer} is configured twice`);
      this.issuers.set(cfg.issuer, {
        issuer: cfg.issuer,
        audiences: [...cfg.audiences],
        maxLifetimeSeconds: cfg.maxLifetimeSeconds ?? DEFAULT_MAX_LIFETIME_SECONDS,
        requirePodBinding: cfg.requirePodBinding === true,
        keys: new JwksKeySource({
          issuer: cfg.issuer,
          jwksFile: cfg.jwksFile,
          jwksUrl: cfg.jwksUrl,
          discovery: cfg.discovery,
          caFile: cfg.caFile,
          allowInsecureHttp: cfg.allowInsecureHttp,
          refreshIntervalMs: cfg.jwksRefreshIntervalMs ?? DEFAULT_JWKS_REFRESH_INTERVAL_MS,
          ...(cfg.jwksRefreshSeconds !== undefined ? { cacheMaxAgeMs: cfg.jwksRefreshSeconds * 1000 } : {}),
          clock: this.clock,
        }),
      });
      const before = opts.previous?.issuers.get(cfg.issuer);
      if (before !== undefined) this.issuers.get(cfg.issuer)?.keys.adoptKeysFrom(before.keys);
    }
  }

  /** Verifies a service account token; resolves an Identity or rejects with a 401 BrokerError. */
  async attest(token: string): Promise<Identity> {
    try {
      return await this.verify(token);
    } catch (err) {
      throw toInvalidToken(err);
    }
  }

  private async verify(token: string): Promise<Identity> {
    if (typeof token !== 'string' || token.length === 0) throw invalidToken('token must be a non-empty string');
    // UTF-16 length never exceeds UTF-8 length, and the format check below admits only ASCII.
    if (token.length > MAX_TOKEN_BYTES) throw invalidToken(`token is larger than ${MAX_TOKEN_BYTES} bytes`);
    if (!COMPACT_JWS.test(token)) throw invalidToken('token is not a compact JWS (three base64url parts)');
    const [headerPart = '', payloadPart = '', signaturePart = ''] = token.split('.');

    const header = decodeSegment(headerPart, 'header');
    for (const name of FORBIDDEN_HEADERS) {
      if (Object.hasOwn(header, name)) throw invalidToken(`token header "${name}" is not accepted`);
    }
    const alg = header.alg;
    if (alg !== 'RS256' && alg !== 'ES256') throw invalidToken('token algorithm is not allowed (RS256 or ES256 only)');

    // Routing only: the issuer's keys decide; jose checks `iss` again on the verified payload.
    const unverified = decodeSegment(payloadPart, 'payload');
    if (typeof unverified.iss !== 'string') throw invalidToken('token has no issuer');
    const cfg = this.issuers.get(unverified.iss);
    if (!cfg) throw invalidToken('token issuer is not trusted');

    const nowMs = this.clock.now();
    // The issuer's key for this alg + kid (alg allow-list, kid checks, key type), as jose's resolver got it.
    const key = await cfg.keys.resolve(header);
    // node:crypto verifies synchronously in ~23 µs; jose's WebCrypto path costs ~115 µs of CPU per token
    // (an async job and its promise plumbing) — the largest item in an issuance's profile.
    if (!verifyJws(alg satisfies VerificationAlgorithm, key, `${headerPart}.${payloadPart}`, signaturePart)) {
      throw invalidToken('token signature is invalid');
    }
    // The payload bytes are the signed ones: `unverified` is now verified.
    const payload = checkRegisteredClaims(unverified, cfg, Math.floor(nowMs / 1000), this.skew);
    return this.identityFrom(payload, cfg, nowMs / 1000);
  }

  private identityFrom(payload: JWTPayload, cfg: IssuerState, now: number): Identity {
    const { exp, iat, nbf } = payload;
    if (typeof exp !== 'number' || !Number.isFinite(exp)) throw invalidToken('token "exp" claim is not a number');
    if (typeof iat !== 'number' || !Number.isFinite(iat)) throw invalidToken('token "iat" claim is not a number');
    if (nbf !== undefined && (typeof nbf !== 'number' || !Number.isFinite(nbf))) {
      throw invalidToken('token "nbf" claim is not a number');
    }
    if (iat > now + this.skew) throw invalidToken('token is issued in the future');
    const start = nbf === undefined ? iat : Math.min(iat, nbf);
    if (exp <= start) throw invalidToken('token expires before it becomes valid');
    if (exp - start > cfg.maxLifetimeSeconds) throw invalidToken('token lifetime exceeds the maximum accepted');

    const k8s = payload['kubernetes.io'];
    if (!isRecord(k8s)) throw invalidToken('token has no "kubernetes.io" claim');
    const namespace = k8s.namespace;
    const sa = k8s.serviceaccount;
    if (typeof namespace !== 'string') throw invalidToken('token has no Kubernetes namespace');
    if (!isRecord(sa) || typeof sa.name !== 'string') throw invalidToken('token has no Kubernetes service account name');
    const serviceAccount = sa.name;
    if (!isDnsLabel(namespace)) throw invalidToken('token namespace is not a valid Kubernetes namespace name');
    if (!isDnsSubdomain(serviceAccount)) {
      throw invalidToken('token service account is not a valid Kubernetes service account name');
    }
    if (payload.sub !== `system:serviceaccount:${namespace}:${serviceAccount}`) {
      throw invalidToken('token subject does not match its Kubernetes service account');
    }
    const serviceAccountUid = optionalUid(sa.uid, 'service account uid');

    let podName: string | undefined;
    let podUid: string | undefined;
    const pod = k8s.pod;
    if (pod !== undefined) {
      if (!isRecord(pod) || typeof pod.name !== 'string' || typeof pod.uid !== 'string') {
        throw invalidToken('token pod binding must have a name and a uid');
      }
      if (!isDnsSubdomain(pod.name)) throw invalidToken('token pod name is not a valid Kubernetes pod name');
      podName = pod.name;
      podUid = optionalUid(pod.uid, 'pod uid');
    } else if (cfg.requirePodBinding) {
      throw invalidToken('token is not bound to a pod');
    }

    let tokenId: string | undefined;
    if (payload.jti !== undefined) {
      if (typeof payload.jti !== 'string' || !TOKEN_ID.test(payload.jti)) throw invalidToken('token "jti" claim is malformed');
      tokenId = payload.jti;
    }

    const claims: WorkloadClaims = {
      namespace,
      serviceAccount,
      ...(serviceAccountUid !== undefined && { serviceAccountUid }),
      ...(podName !== undefined && { podName }),
      ...(podUid !== undefined && { podUid }),
      issuer: cfg.issuer,
      ...(tokenId !== undefined && { tokenId }),
      credentialExpiresAt: exp * 1000,
    };
    return {
      spiffeId: workloadSpiffeId(this.trustDomain, namespace, serviceAccount),
      trustDomain: this.trustDomain,
      source: 'k8s-sa-token',
      claims,
      // What the signed token proves; pod labels, annotations, node and images need the pod itself.
      selectors: [
        selectorText('ns', namespace),
        selectorText('sa', serviceAccount),
        ...(podName !== undefined ? [selectorText('pod-name', podName)] : []),
        ...(podUid !== undefined ? [selectorText('pod-uid', podUid)] : []),
      ],
    };
  }
}

/** KeyObjects of the issuers' imported keys (a JWKS refresh imports new CryptoKeys; old ones are collected). */
const keyObjects = new WeakMap<CryptoKey, KeyObject>();

/** Verifies a compact JWS signature with the issuer's key: RS256 (PKCS#1 v1.5) or ES256 (P-256, r‖s). */
function verifyJws(alg: VerificationAlgorithm, cryptoKey: CryptoKey, signingInput: string, signaturePart: string): boolean {
  let key = keyObjects.get(cryptoKey);
  if (key === undefined) {
    key = KeyObject.from(cryptoKey);
    keyObjects.set(cryptoKey, key);
  }
  // The key source matched alg to the key's type; check again rather than let a mismatch verify anything.
  const ok = alg === 'RS256' ? key.asymmetricKeyType === 'rsa' : key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
  if (!ok) throw invalidToken("token algorithm does not match the type of the issuer's key");
  // Base64url of length 1 mod 4 is not decodable (the format check already limited the alphabet).
  if (signaturePart.length % 4 === 1) throw invalidToken('token is not a well-formed JWS');
  const signature = Buffer.from(signaturePart, 'base64url');
  const data = Buffer.from(signingInput, 'latin1'); // ASCII only (COMPACT_JWS)
  try {
    return alg === 'RS256'
      ? verifySignature('sha256', data, { key, padding: cryptoConstants.RSA_PKCS1_PADDING }, signature)
      : signature.length === 64 && verifySignature('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, signature);
  } catch {
    return false;
  }
}

/**
 * The registered-claim checks jose's jwtVerify made with { issuer, audience, requiredClaims: [exp, iat],
 * clockTolerance }: same order, same outcomes (and messages, through toInvalidToken's jose error mapping).
 */
function checkRegisteredClaims(payload: Record<string, unknown>, cfg: IssuerState, now: number, skew: number): JWTPayload {
  for (const claim of ['iss', 'aud', 'iat', 'exp']) {
    if (!Object.hasOwn(payload, claim)) throw new errors.JWTClaimValidationFailed(`missing required "${claim}" claim`, payload, claim, 'missing');
  }
  if (payload.iss !== cfg.issuer) throw new errors.JWTClaimValidationFailed('unexpected "iss" claim value', payload, 'iss', 'check_failed');
  const aud = payload.aud;
  const audienceOk = typeof aud === 'string' ? cfg.audiences.includes(aud) : Array.isArray(aud) && cfg.audiences.some((a) => aud.includes(a));
  if (!audienceOk) throw new errors.JWTClaimValidationFailed('unexpected "aud" claim value', payload, 'aud', 'check_failed');
  const numeric = (claim: 'iat' | 'nbf' | 'exp'): number | undefined => {
    const v = payload[claim];
    if (v === undefined && claim === 'nbf') return undefined;
    if (typeof v !== 'number') throw new errors.JWTClaimValidationFailed(`"${claim}" claim must be a number`, payload, claim, 'invalid');
    return v;
  };
  numeric('iat');
  const nbf = numeric('nbf');
  if (nbf !== undefined && nbf > now + skew) throw new errors.JWTClaimValidationFailed('"nbf" claim timestamp check failed', payload, 'nbf', 'check_failed');
  const exp = numeric('exp') as number;
  if (exp <= now - skew) throw new errors.JWTExpired('"exp" claim timestamp check failed', payload, 'exp', 'check_failed');
  return payload;
}

function optionalUid(value: unknown, what: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !UID.test(value)) throw invalidToken(`token ${what} is malformed`);
  return value;
}

/** Maps anything thrown while verifying to one 401 with a message that says what was wrong. */
function toInvalidToken(err: unknown): BrokerError {
  if (err instanceof BrokerError) {
    return err.code === 'invalid_token' && err.status === 401 ? err : invalidToken(err.message);
  }
  if (err instanceof errors.JWTExpired) return invalidToken('token has expired');
  if (err instanceof errors.JWTClaimValidationFailed) return invalidToken(claimMessage(err.claim, err.reason));
  if (err instanceof errors.JWSSignatureVerificationFailed) return invalidToken('token signature is invalid');
  if (err instanceof errors.JOSEAlgNotAllowed) return invalidToken('token algorithm is not allowed');
  if (err instanceof errors.JWKSNoMatchingKey) return invalidToken('token key id is unknown');
  if (err instanceof errors.JWKSMultipleMatchingKeys) return invalidToken('token key id matches several keys');
  if (err instanceof errors.JWTInvalid) return invalidToken('token claims are not a JSON object');
  if (err instanceof errors.JWSInvalid) return invalidToken('token is not a well-formed JWS');
  return invalidToken('token could not be verified');
}

function claimMessage(claim: string, reason: string): string {
  if (reason === 'missing') return `token is missing the "${claim}" claim`;
  if (reason === 'invalid') return `token "${claim}" claim has the wrong type`;
  switch (claim) {
    case 'nbf':
      return 'token is not yet valid';
    case 'aud':
      return 'token audience is not accepted';
    case 'iss':
      return 'token issuer does not match';
    default:
      return `token "${claim}" claim is not accepted`;
  }
}
