/**
 * The one error type the SDK throws or emits. `code` is stable: the broker's own error code when the
 * broker answered (`forbidden`, `invalid_token`, …), or one of the client-side codes below.
 */
export type ClientErrorCode =
  /** The broker could not be reached, or the connection failed or timed out. */
  | 'unavailable'
  /** The broker answered with something that is not the documented shape. */
  | 'bad_response'
  /** A certificate did not verify against the trust bundle, or its SPIFFE ID is not allowed. */
  | 'peer_rejected'
  /** No service-account token could be read. */
  | 'no_token'
  /** The client was used before it had an SVID, or after close(). */
  | 'not_ready'
  /** A receipt's audit checkpoint does not extend the newest one seen: the log was rolled back or forked. */
  | 'audit_inconsistent'
  | 'closed';

export class TesseraError extends Error {
  /** `ClientErrorCode`, or the broker's error code when it answered with `{error, message}`. */
  readonly code: string;
  /** HTTP status when the broker answered. */
  readonly status: number | undefined;

  constructor(code: string, message: string, opts: { status?: number; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'TesseraError';
    this.code = code;
    this.status = opts.status;
  }
}
