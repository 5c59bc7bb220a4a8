/**
 * The signing CA's own validity: past its notAfter an X.509 request is refused with 503 ca_expired (a
 * clear message, audited as a refusal), never a 500; before its notBefore (a clock behind the CA) 503
 * ca_unavailable naming the clock. Regression: both were 500 `internal`. The clock is injected.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';
import { TestClock } from '../helpers/clock.js';
import { until } from '../helpers/until.js';
import { denialOf, entries, expectError } from '../security/helpers.js';

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

describe('the signing CA expiry seen coming (issue 17)', () => {
  const DAY_MS = 86_400_000;
  const soon = new TestClock();
  let s: TestBroker;
  let notAfter: number;
  let webhook: http.Server;
  const posted: Array<Record<string, unknown>> = [];
  const warnings: string[] = [];
  const onWarning = (w: Error & { code?: string }): void => {
    if (w.code?.startsWith('TESSERA_CA_') === true) warnings.push(`${w.code}: ${w.message}`);
  };

  beforeAll(async () => {
    webhook = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString('utf8')));
      req.on('end', () => {
        posted.push(JSON.parse(body) as Record<string, unknown>);
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => webhook.listen(0, '127.0.0.1', r));
    const { port } = webhook.address() as AddressInfo;
    const { dir } = await devMaterial();
    notAfter = Date.parse(new X509Certificate(readFileSync(path.join(dir, 'intermediate.pem'))).validTo);
    // The broker starts with five days left on its signing CA.
    soon.set(notAfter - 5 * DAY_MS);
    process.on('warning', onWarning);
    s = await startBroker({ clock: soon, alerts: { webhookUrl: `http://127.0.0.1:${port}/hook`, allowInsecureHttp: true } });
  });
  afterAll(async () => {
    process.off('warning', onWarning);
    await s?.close();
    await new Promise((r) => webhook?.close(r));
  });

  it('warns at startup (log line, audited alert, webhook), reports expiring on /readyz and the metric per authority', async () => {
    await until('startup warning and webhook', async () => (warnings.length >= 1 && posted.length >= 1 ? true : undefined), 10_000);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('TESSERA_CA_EXPIRING');
    expect(warnings[0]).toContain(new Date(notAfter).toISOString());
    expect(posted[0]).toMatchObject({ kind: 'ca-expiring', rule: 'ca-expiring' });
    const alerts = (await entries(s)).filter((e) => e.type === 'alert' && e.code === 'ca-expiring');
    expect(alerts).toHaveLength(1);
    expect(alerts[0]?.reason).toMatch(/in (5d 0h|4d 23h)/);

    const ready = await s.call<{ status: string; checks: Record<string, string> }>({ path: '/readyz' });
    expect(ready.status, ready.text).toBe(200);
    expect(ready.json.checks.ca).toMatch(/^expiring: .*expires at .* \(in (5d 0h|4d 23h)\)/);

    const metrics = await s.broker.metrics.text();
    const expirySeconds = Number(/tessera_ca_expiry_seconds\{authority="([0-9a-f]+)"\} (-?\d+)/.exec(metrics)?.[2]);
    expect(metrics).toContain(`tessera_ca_expiry_seconds{authority="${s.broker.ca.authorityId}"}`);
    expect(Math.abs(expirySeconds - 5 * 86_400)).toBeLessThan(600);
    expect(s.broker.ca.authorityId).toMatch(/^[0-9a-f]{40}$/);
  });

  it('warns again on entering the last day, once for the fleet (a second check is muted), then not ready once expired', async () => {
    soon.set(notAfter - 6 * 3_600_000);
    s.broker.caExpiry.check();
    s.broker.caExpiry.check();
    await until('second webhook', async () => (posted.length >= 2 ? true : undefined), 10_000);
    expect(warnings).toHaveLength(2);
    expect((await entries(s)).filter((e) => e.type === 'alert' && e.code === 'ca-expiring')).toHaveLength(2);
    expect((await s.call<{ checks: Record<string, string> }>({ path: '/readyz' })).json.checks.ca).toMatch(/in (6h 0m|5h 59m)/);

    soon.set(notAfter + 1000);
    s.broker.caExpiry.check();
    await until('expired webhook', async () => (posted.length >= 3 ? true : undefined), 10_000);
    expect(warnings[2]).toContain('TESSERA_CA_EXPIRED');
    const ready = await s.call({ path: '/readyz' });
    expectError(ready, 503, 'not_ready');
    expect(String((ready.json as { message: string }).message)).toMatch(/ca: the signing CA [0-9a-f]+ expired at/);
  });
});
