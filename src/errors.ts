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
  | 'forbidden'
  | 'not_found'
  | 'method_not_allowed'
  | 'rate_limited'
  | 'store_unavailable'
  | 'audit_unavailable'
  | 'issuance_frozen'
  | 'not_ready'
  | 'internal';

export class BrokerError extends Error {
  readonly code: ErrorCode;
  readonly status: number;

  constructor(code: ErrorCode, status: number, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BrokerError';
    this.code = code;
    this.status = status;
  }
}

export const badRequest = (message: string, code: ErrorCode = 'bad_request'): BrokerError =>
  new BrokerError(code, 400, message);
export const unauthenticated = (message: string, code: ErrorCode = 'unauthenticated'): BrokerError =>
  new BrokerError(code, 401, message);
export const forbidden = (message: string): BrokerError => new BrokerError('forbidden', 403, message);
export const auditUnavailable = (message: string, cause?: unknown): BrokerError =>
  new BrokerError('audit_unavailable', 503, message, { cause });
export const storeUnavailable = (message: string, cause?: unknown): BrokerError =>
  new BrokerError('store_unavailable', 503, message, { cause });
