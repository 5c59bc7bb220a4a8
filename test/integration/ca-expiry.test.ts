/**
 * The signing CA's own validity: past its notAfter an X.509 request is refused with 503 ca_expired (a
 * clear message, audited as a refusal), never a 500; before its notBefore (a clock behind the CA) 503
 * ca_unavailable naming the clock. Regression: both were 500 `internal`. The clock is injected.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { TestClock } from '../helpers/clock.js';
import { denialOf, expectError } from '../security/helpers.js';

let b: TestBroker;
const clock = new TestClock();
let caNotAfter: number;
let caNotBefore: number;

beforeAll(async () => {
  b = await startBroker({ clock });
  const ca = new X509Certificate(readFileSync(path.join(b.material.dir, 'intermediate.pem')));
  caNotAfter = Date.parse(ca.validTo);
  caNotBefore = Date.parse(ca.validFrom);
});
afterAll(async () => {
  await b?.close();
});

describe('the signing CA outside its validity', () => {
  it('past its notAfter: 503 ca_expired with the expiry in the message, audited; JWT-SVIDs still issue', async () => {
      clock.set(caNotAfter + 60_000);
      try {
        const token = await b.token({ now: clock.now() });
        const res = await b.call({ path: '/v1/svid/x509', token, body: { keyType: 'ec-p256' } });
        expectError(res, 503, 'ca_expired');
        expect(String((res.json as { message: string }).message)).toContain(new Date(caNotAfter).toISOString());
        expect(await denialOf(b, res)).toMatchObject({ code: 'ca_expired', namespace: 'shop', serviceAccount: 'web' });
        const jwt = await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } });
        expect(jwt.status, jwt.text).toBe(200);
      } finally {
        clock.reset();
      }
    });

  it('before its notBefore (a clock behind the CA): 503 ca_unavailable naming the clock', async () => {
    clock.set(caNotBefore - 3_600_000);
    try {
      const res = await b.call({ path: '/v1/svid/x509', token: await b.token({ now: clock.now() }), body: { keyType: 'ec-p256' } });
      expectError(res, 503, 'ca_unavailable');
      expect(String((res.json as { message: string }).message)).toMatch(/clock/);
    } finally {
      clock.reset();
    }
  });
});
