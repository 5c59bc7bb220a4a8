/**
 * Refusals are audited like grants: a 4xx on a route with `config.refusal` is recorded in the audit
 * log before the error goes back, in this one place (the app's error handler calls it). Refusals
 * before authentication started (a malformed request) are nobody's and are not recorded.
 */
import type { FastifyRequest } from 'fastify';
import type { Identity } from '../attest/identity.js';
import { BrokerError, type ErrorCode } from '../errors.js';
import { isRepeatedRateLimit, RateLimitedError } from './limits.js';

/** 503s that refuse a caller for a reason an auditor must see (not an outage of the log itself). */
const AUDITED_UNAVAILABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['ca_expired', 'witness_quorum_unavailable']);

/** Records one refusal of a route; the route knows which log entry it is. */
export type RefusalRecorder = (err: BrokerError, request: FastifyRequest) => Promise<void>;

declare module 'fastify' {
  interface FastifyContextConfig {
    refusal?: RefusalRecorder;
  }
}

/** The workload a refusal is recorded against: the attested one, or the one its rate limit refused. */
export function refusedIdentity(request: FastifyRequest, err: BrokerError): Identity | undefined {
  return request.caller?.identity ?? (err instanceof RateLimitedError ? err.identity : undefined);
}

/** A path parameter of the refused request (a recorder may run before the parameters were validated). */
export function routeParam(request: FastifyRequest, name: string): string {
  return (request.params as Record<string, string | undefined>)[name] ?? '';
}

/**
 * Records `err` if it refuses a caller of an audited route; returns the error to answer with: `err`,
 * or the failure to record it (fail closed: an unrecorded refusal is a 503, like an unrecorded grant).
 */
export async function auditRefusal(err: unknown, request: FastifyRequest): Promise<unknown> {
  const record = request.routeOptions.config?.refusal;
  if (record === undefined || request.caller === undefined) return err;
  // A flood of 429s (server/limits.ts) leaves one entry per key and window, not one per request.
  if (!(err instanceof BrokerError) || isRepeatedRateLimit(err)) return err;
  if ((err.status < 400 || err.status >= 500) && !AUDITED_UNAVAILABLE.has(err.code)) return err;
  try {
    await record(err, request);
    return err;
  } catch (recordingFailure) {
    return recordingFailure;
  }
}
