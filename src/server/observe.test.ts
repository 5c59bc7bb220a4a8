import { describe, expect, it } from 'vitest';
import { issuanceTypeOf } from './observe.js';

describe('issuanceTypeOf', () => {
  it('maps every issuing route to its credential type, and nothing else', () => {
    expect(issuanceTypeOf('POST', '/v1/svid/x509')).toBe('x509-svid');
    expect(issuanceTypeOf('POST', '/v1/svid/jwt')).toBe('jwt-svid');
    expect(issuanceTypeOf('GET', '/v1/secrets/*')).toBe('secret');
    expect(issuanceTypeOf('POST', '/v1/secrets/postgres/:role/creds')).toBe('db-credentials');
    for (const kind of ['mysql', 'redis', 'rabbitmq']) expect(issuanceTypeOf('POST', `/v1/secrets/${kind}/:role/creds`)).toBe('db-credentials');
    expect(issuanceTypeOf('POST', '/v1/admin/break-glass')).toBe('break-glass');
    for (const [method, url] of [
      ['GET', '/v1/svid/x509'],
      ['HEAD', '/v1/secrets/*'],
      ['GET', '/v1/bundle'],
      ['GET', '/healthz'],
      ['POST', '/v1/leases/:leaseId/renew'],
      ['GET', '/v1/admin/break-glass/events'],
      ['POST', '/v1/admin/revoke'],
    ] as const) {
      expect(issuanceTypeOf(method, url), `${method} ${url}`).toBeUndefined();
    }
  });
});
