/**
 * The one place errors become HTTP responses: `{error, message}` with a stable code.
 * BrokerErrors map to their own status; fastify's own 4xx (bad JSON, body too large, wrong content
 * type, schema validation) map to stable codes; anything else is a 500 whose details stay in the log.
 */
import type { Socket } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { BrokerError, ERROR_STATUS, type ErrorCode } from '../errors.js';
import type { ClientErrorReason } from '../metrics/metrics.js';

export interface ErrorBody {
  readonly error: ErrorCode;
  readonly message: string;
}

/** fastify's own errors, by their code: the broker's error code (its status comes from ERROR_STATUS). */
const FASTIFY_CODES: Readonly<Record<string, { code: ErrorCode; message: string }>> = {
  FST_ERR_CTP_BODY_TOO_LARGE: { code: 'payload_too_large', message: 'request body is larger than the limit' },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: {
    code: 'unsupported_media_type',
    message: 'send the body as JSON with Content-Type: application/json (curl: --json)',
  },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { code: 'bad_request', message: 'Content-Length does not match the body' },
  FST_ERR_CTP_EMPTY_JSON_BODY: { code: 'invalid_json', message: 'the JSON body is empty' },
  FST_ERR_CTP_INVALID_JSON_BODY: { code: 'invalid_json', message: 'the body is not valid JSON' },
  // Raised before routing (app.ts frameworkErrors): a malformed percent-encoding, an overlong path parameter.
  FST_ERR_BAD_URL: { code: 'bad_request', message: 'the URL is not valid (malformed percent-encoding)' },
  FST_ERR_MAX_PARAM_LENGTH: { code: 'uri_too_long', message: 'a path parameter is longer than the server accepts' },
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
    return { status: ERROR_STATUS[known.code], body: { error: known.code, message: known.message }, unexpected: false };
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
  // Rate limits know when their window resets; a fail-closed 503 suggests a short retry.
  const retryAfter = err instanceof BrokerError && err.retryAfterSeconds !== undefined ? err.retryAfterSeconds : status === 503 ? 2 : undefined;
  if (retryAfter !== undefined) reply.header('retry-after', String(retryAfter));
  void reply.code(status).type('application/json').send(body);
}

/** After answering oversized headers, keep reading (and discarding) this long so the client sees the answer, not a reset. */
const LINGER_MS = 1_000;
const LINGER_MAX_BYTES = 2 * 1024 * 1024;
const answered = new WeakSet<Socket>();

const CLIENT_ERRORS: Readonly<Record<Exclude<ClientErrorReason, 'tls'>, { status: number; reason: string; body: ErrorBody }>> = {
  timeout: { status: 408, reason: 'Request Timeout', body: { error: 'request_timeout', message: 'the request did not arrive in time' } },
  header_too_large: {
    status: 431,
    reason: 'Request Header Fields Too Large',
    body: { error: 'header_too_large', message: 'the request headers are larger than the server accepts (16 KiB)' },
  },
  malformed: { status: 400, reason: 'Bad Request', body: { error: 'bad_request', message: 'malformed HTTP request' } },
};

/**
 * Errors the HTTP parser raises before any route runs (slow headers, oversized headers, garbage): answer
 * in the same `{error, message}` shape, then close. Oversized headers get a short lingering close: the
 * client is usually still sending, and closing a socket with unread data makes TCP send a reset that
 * can destroy our answer before the client reads it.
 */
export function clientErrorHandler(onError: (reason: ClientErrorReason) => void) {
  return function handle(this: FastifyInstance, err: NodeJS.ErrnoException, socket: Socket): void {
    if (err.code === 'ECONNRESET' || socket.destroyed || answered.has(socket)) return;
    answered.add(socket);
    const code = err.code ?? '';
    // https forwards TLS failures (handshake timeout, bad handshake) here too: there is no HTTP to answer in.
    const reason: ClientErrorReason =
      code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'timeout' : code === 'HPE_HEADER_OVERFLOW' ? 'header_too_large' : code.startsWith('HPE_') ? 'malformed' : 'tls';
    onError(reason);
    this.log.debug({ reason, code }, 'client error before routing');
    if (reason === 'tls') {
      socket.destroy();
      return;
    }
    const { status, reason: text, body } = CLIENT_ERRORS[reason];
    const json = JSON.stringify(body);
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const response = `HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(json)}\r\n\r\n${json}`;
    if (reason !== 'header_too_large') {
      socket.end(response);
      socket.destroySoon();
      return;
    }
    socket.end(response);
    let drained = 0;
    socket.on('data', (chunk: Buffer) => {
      drained += chunk.length;
      if (drained > LINGER_MAX_BYTES) socket.destroy();
    });
    socket.once('end', () => socket.destroy());
    setTimeout(() => socket.destroy(), LINGER_MS).unref();
  };
}
