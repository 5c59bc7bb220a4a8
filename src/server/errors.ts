/**
 * The one place errors become HTTP responses: `{error, message}` with a stable code.
 * BrokerErrors map to their own status; fastify's own 4xx (bad JSON, body too large, wrong content
 * type, schema validation) map to stable codes; anything else is a 500 whose details stay in the log.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { BrokerError, type ErrorCode } from '../errors.js';

export interface ErrorBody {
  readonly error: ErrorCode;
  readonly message: string;
}

const FASTIFY_CODES: Readonly<Record<string, { code: ErrorCode; status: number; message?: string }>> = {
  FST_ERR_CTP_BODY_TOO_LARGE: { code: 'payload_too_large', status: 413, message: 'request body is larger than the limit' },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: {
    code: 'unsupported_media_type',
    status: 415,
    message: 'send the body as JSON with Content-Type: application/json (curl: --json)',
  },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { code: 'bad_request', status: 400, message: 'Content-Length does not match the body' },
  FST_ERR_CTP_EMPTY_JSON_BODY: { code: 'invalid_json', status: 400, message: 'the JSON body is empty' },
  FST_ERR_CTP_INVALID_JSON_BODY: { code: 'invalid_json', status: 400, message: 'the body is not valid JSON' },
};

export function toErrorResponse(err: unknown): { status: number; body: ErrorBody; unexpected: boolean } {
  if (err instanceof BrokerError) {
    return { status: err.status, body: { error: err.code, message: err.message }, unexpected: err.status >= 500 && err.code === 'internal' };
  }
  const fe = err as Partial<FastifyError> | undefined;
  if (fe?.validation !== undefined) {
    return { status: 400, body: { error: 'bad_request', message: `invalid request: ${fe.message ?? 'schema validation failed'}` }, unexpected: false };
  }
  const known = fe?.code !== undefined ? FASTIFY_CODES[fe.code] : undefined;
  if (known !== undefined) {
    return { status: known.status, body: { error: known.code, message: known.message ?? fe?.message ?? '' }, unexpected: false };
  }
  // A SyntaxError from JSON.parse (content-type parser) is the client's fault.
  if (err instanceof SyntaxError || fe?.statusCode === 400) {
    return { status: 400, body: { error: 'invalid_json', message: 'the body is not valid JSON' }, unexpected: false };
  }
  if (typeof fe?.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return { status: fe.statusCode, body: { error: 'bad_request', message: fe.message ?? 'bad request' }, unexpected: false };
  }
  return { status: 500, body: { error: 'internal', message: 'internal error; see the broker log for the request id' }, unexpected: true };
}

export function errorHandler(err: unknown, request: FastifyRequest, reply: FastifyReply): void {
  const { status, body, unexpected } = toErrorResponse(err);
  if (unexpected) request.log.error({ err }, 'unexpected error');
  else if (status >= 500) request.log.warn({ err: { code: body.error, message: body.message } }, 'request failed closed');
  else request.log.info({ code: body.error }, 'request refused');
  if (status === 503) reply.header('retry-after', '2');
  void reply.code(status).type('application/json').send(body);
}
