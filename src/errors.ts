/**
 * Every failure a caller can see is a BrokerError: a stable machine-readable `code`,
 * the HTTP status it maps to, and a message that never carries secret material.
 * The fastify error handler (server/errors.ts) is the only place these become responses.
 */
export type ErrorCode =
  | 'bad_request'
  | 'invalid_json'
  | 'payload_too_large'
  | 'unsupported_media_type'
  | 'invalid_csr'
  | 'weak_key'
  | 'unauthenticated'
  | 'invalid_token'
  | 'invalid_client_certificate'
  /** A valid client SVID and a valid token that name different SPIFFE IDs in one request (400). */
  | 'ambiguous_identity'
  | 'forbidden'
  | 'not_found'
  | 'method_not_allowed'
  | 'rate_limited'
  | 'store_unavailable'
  | 'audit_unavailable'
  /**
   * The store no longer holds the audit history this replica knows (entries lost or changed, e.g. Redis
   * restarted empty): nothing is issued or appended until an operator acts (docs/redis.md) (503).
   */
  | 'audit_history_lost'
  | 'issuance_frozen'
  /** A required audit device (audit.devices, required: true) is further behind than its lag bounds: nothing is issued until it catches up (503). */
  | 'audit_device_lagging'
  | 'not_ready'
  /** A secrets engine (PostgreSQL) cannot be reached or refused the operation; nothing was issued (503). */
  | 'engine_unavailable'
  /** A secrets engine refused to drop a credential for a reason retrying cannot fix (e.g. missing privileges); the lease is marked revoke_failed and operators are alerted (502). */
  | 'revoke_failed'
  /** A stored secret failed its integrity check (tampered or corrupt ciphertext); it is never served (409). */
  | 'secret_integrity_failed'
  /** A stored secret is wrapped under a key-encryption key this replica does not have (503). */
  | 'kek_unavailable'
  /** The SPIFFE ID, namespace or certificate serial was revoked by an operator (403). */
  | 'revoked'
  /** A break-glass request whose signatures, keys or M-of-N count do not hold (401). */
  | 'break_glass_denied'
  /** A break-glass request older than 5 minutes, expired, or issued in the future (401). */
  | 'break_glass_stale'
  /** A break-glass request whose jti was already used, on any replica (409). */
  | 'break_glass_replayed'
  /** The HTTP request (headers in 5 s, all of it in 10 s) did not arrive in time (408, written before routing; see server/errors.ts). */
  | 'request_timeout'
  /** The HTTP request headers are larger than the server accepts (431, written before routing). */
  | 'header_too_large'
  /** The CA cannot sign now: a minting thread died or hung (ca/minter-pool.ts), or the CA certificate is not yet valid (a clock behind it); nothing was issued (503). */
  | 'ca_unavailable'
  /** The signing CA certificate has expired and nothing replaces it: no X.509-SVID can be issued (503, audited). */
  | 'ca_expired'
  /** A CA admin action the CA state does not allow now: rotation is not configured, or no authority is prepared (409). */
  | 'ca_state_conflict'
  /** A federation relationship that already exists (or comes from the config file) (409). */
  | 'federation_conflict'
  /** A foreign bundle endpoint could not be fetched, or its bundle did not authenticate or parse; the last good bundle stays (502). */
  | 'federation_fetch_failed'
  /**
   * audit.requireWitnesses is set and no quorum of witnesses has cosigned the audit log within
   * audit.maxWitnessLagSeconds: nothing is issued until they catch up (503).
   */
  | 'witness_quorum_unavailable'
  /** A path parameter longer than the server accepts (414, raised by fastify before routing). */
  | 'uri_too_long'
  /** Several registration entries match a workload equally well and the request did not pick one by SPIFFE ID (409). */
  | 'ambiguous_registration'
  /** The Kubernetes API server (TokenReview, pod read) could not be asked; nothing is issued (503) unless jwksFallback is set. */
  | 'attestation_unavailable'
  /** `secrets rotate-root` cannot rotate this engine's admin password (its user cannot, or another rotation is running) (409). */
  | 'root_rotation_refused'
  | 'internal';

/**
 * The one table from error code to HTTP status: a code always answers with the same status, wherever
 * it is raised. server/errors.ts turns a BrokerError into `{error, message}` with this status.
 */
export const ERROR_STATUS = {
  bad_request: 400,
  invalid_json: 400,
  payload_too_large: 413,
  unsupported_media_type: 415,
  uri_too_long: 414,
  invalid_csr: 400,
  weak_key: 400,
  ambiguous_identity: 400,
  unauthenticated: 401,
  invalid_token: 401,
  invalid_client_certificate: 401,
  break_glass_denied: 401,
  break_glass_stale: 401,
  forbidden: 403,
  revoked: 403,
  not_found: 404,
  method_not_allowed: 405,
  request_timeout: 408,
  secret_integrity_failed: 409,
  break_glass_replayed: 409,
  ambiguous_registration: 409,
  rate_limited: 429,
  header_too_large: 431,
  internal: 500,
  revoke_failed: 502,
  store_unavailable: 503,
  audit_unavailable: 503,
  audit_history_lost: 503,
  issuance_frozen: 503,
  audit_device_lagging: 503,
  not_ready: 503,
  engine_unavailable: 503,
  kek_unavailable: 503,
  ca_unavailable: 503,
  ca_expired: 503,
  ca_state_conflict: 409,
  federation_conflict: 409,
  federation_fetch_failed: 502,
  attestation_unavailable: 503,
  root_rotation_refused: 409,
  witness_quorum_unavailable: 503,
} as const satisfies { readonly [C in ErrorCode]: number };

/** The codes that answer with HTTP status `S`. */
export type CodeWithStatus<S extends number> = { [C in ErrorCode]: (typeof ERROR_STATUS)[C] extends S ? C : never }[ErrorCode];

export interface BrokerErrorOptions {
  readonly cause?: unknown;
  /** Sent as `Retry-After` (seconds): rate limits say when the window resets. */
  readonly retryAfterSeconds?: number;
}

export class BrokerError extends Error {
  readonly code: ErrorCode;
  /** Always ERROR_STATUS[code]. */
  readonly status: number;
  /** Sent as `Retry-After` (seconds) when set: rate limits say when the window resets. */
  readonly retryAfterSeconds?: number;

  constructor(code: ErrorCode, message: string, options?: BrokerErrorOptions) {
    super(message, options !== undefined && 'cause' in options ? { cause: options.cause } : undefined);
    this.name = 'BrokerError';
    this.code = code;
    this.status = ERROR_STATUS[code];
    if (options?.retryAfterSeconds !== undefined) this.retryAfterSeconds = options.retryAfterSeconds;
  }
}

export const badRequest = (message: string, code: CodeWithStatus<400> = 'bad_request'): BrokerError => new BrokerError(code, message);
export const unauthenticated = (message: string, code: CodeWithStatus<401> = 'unauthenticated'): BrokerError =>
  new BrokerError(code, message);
export const forbidden = (message: string): BrokerError => new BrokerError('forbidden', message);
export const auditUnavailable = (message: string, cause?: unknown): BrokerError =>
  new BrokerError('audit_unavailable', message, { cause });
export const auditHistoryLost = (message: string, cause?: unknown): BrokerError =>
  new BrokerError('audit_history_lost', message, { cause });
export const storeUnavailable = (message: string, cause?: unknown): BrokerError =>
  new BrokerError('store_unavailable', message, { cause });

/**
 * A failed audit operation as a 503: an audit error from below (audit_unavailable, audit_history_lost)
 * passes through as it is; anything else, a store outage included, becomes `audit_unavailable` with `message`.
 */
export function asAuditUnavailable(err: unknown, message: string): BrokerError {
  if (err instanceof BrokerError && (err.code === 'audit_unavailable' || err.code === 'audit_history_lost')) return err;
  return auditUnavailable(message, err);
}

/** Fail closed around an audit write, so no caller ever hands out a credential it could not record. */
export async function auditedOrUnavailable<T>(write: () => Promise<T>, message: string): Promise<T> {
  try {
    return await write();
  } catch (err) {
    throw asAuditUnavailable(err, message);
  }
}
