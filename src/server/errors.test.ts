import { describe, expect, it } from 'vitest';
import { BrokerError, ERROR_STATUS, type ErrorCode } from '../errors.js';
import { toErrorResponse } from './errors.js';

describe('toErrorResponse', () => {
  it('maps BrokerErrors to their status and code', () => {
    expect(toErrorResponse(new BrokerError('forbidden', 'no'))).toEqual({ status: 403, body: { error: 'forbidden', message: 'no' }, unexpected: false });
  });
  it('maps fastify body errors to stable codes', () => {
    expect(toErrorResponse(Object.assign(new Error('x'), { code: 'FST_ERR_CTP_BODY_TOO_LARGE', statusCode: 413 })).status).toBe(413);
    expect(toErrorResponse(Object.assign(new Error('x'), { code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE', statusCode: 415 })).body.error).toBe('unsupported_media_type');
    expect(toErrorResponse(Object.assign(new Error('body/x must be string'), { validation: [], statusCode: 400 })).body.error).toBe('bad_request');
  });
  it('hides unexpected errors behind a generic 500', () => {
    const r = toErrorResponse(new Error('secret detail from deep inside'));
    expect(r.status).toBe(500);
    expect(r.unexpected).toBe(true);
    expect(r.body.message).not.toContain('secret');
  });
  it('gives every code exactly one status, from the one table', () => {
    for (const [code, status] of Object.entries(ERROR_STATUS) as [ErrorCode, number][]) {
      const err = new BrokerError(code, 'm');
      expect(err.status, code).toBe(status);
      expect(toErrorResponse(err).status, code).toBe(status);
    }
  });
  it('an overlong path parameter is 414 uri_too_long (bad_request is always 400)', () => {
    const r = toErrorResponse(Object.assign(new Error('x'), { code: 'FST_ERR_MAX_PARAM_LENGTH', statusCode: 414 }));
    expect(r).toMatchObject({ status: 414, body: { error: 'uri_too_long' } });
  });
});
