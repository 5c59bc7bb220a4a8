/**
 * What the broker tells its operators, checked on a live broker with the log stream captured at trace
 * level: one structured line per request with the request id (echoed as x-request-id) and, once
 * authenticated, the caller's SPIFFE ID — never a token, a private key, a CSR or the client address.
 * And the Prometheus endpoint counts what happened.
 */
import http from 'node:http';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMetricsServer, type MetricsServer } from '../../src/metrics/server.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { opensslKeyAndCsr } from '../helpers/openssl.js';

interface LogLine {
  level: number;
  msg: string;
  reqId?: string;
  spiffeId?: string;
  statusCode?: number;
  path?: string;
  responseTime?: number;
  [k: string]: unknown;
}

let b: TestBroker;
let metrics: MetricsServer;
const captured: string[] = [];
/** Every secret the broker saw or produced during the run. */
const secrets: { what: string; value: string }[] = [];

beforeAll(async () => {
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      captured.push(chunk.toString('utf8'));
      done();
    },
  });
  b = await startBroker({ logger: { level: 'trace', stream } });
  metrics = await startMetricsServer(b.broker.metrics, { host: '127.0.0.1', port: 0 });
});
afterAll(async () => {
  await metrics?.close();
  await b?.close();
});

const lines = (): LogLine[] =>
  captured
    .join('')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as LogLine);

function scrape(): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get(metrics.url, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

const value = (text: string, series: string): number => {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  if (line === undefined) throw new Error(`no series ${series}`);
  return Number(line.slice(series.length + 1));
};

describe('a realistic session', () => {
  it('issues, refuses and renews, while the log and metrics watch', async () => {
    const before = await scrape();
    const token = await b.token();
    secrets.push({ what: 'service-account token', value: token });
    const { csrPem, keyPem } = opensslKeyAndCsr('ec-p256');
    secrets.push({ what: 'CSR', value: csrPem }, { what: 'CSR private key', value: keyPem });

    const fromCsr = await b.call({ path: '/v1/svid/x509', token, body: { csr: csrPem } });
    expect(fromCsr.status).toBe(200);
    const keygen = await b.call<{ svid: string; privateKey: string }>({ path: '/v1/svid/x509', token, body: { keyType: 'ec-p256' } });
    expect(keygen.status).toBe(200);
    secrets.push({ what: 'server-made private key', value: keygen.json.privateKey });
    const jwt = await b.call<{ token: string }>({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } });
    expect(jwt.status).toBe(200);
    secrets.push({ what: 'JWT-SVID', value: jwt.json.token });
    const renewed = await b.call({ path: '/v1/svid/x509', body: { keyType: 'ec-p256' }, cert: keygen.json.svid, key: keygen.json.privateKey });
    expect(renewed.status).toBe(200);

    // Refusals: a policy denial, a forged token, a broken CSR that carries a private key by mistake.
    const other = await b.token({ namespace: 'kube-system', serviceAccount: 'default' });
    secrets.push({ what: 'second token', value: other });
    expect((await b.call({ path: '/v1/svid/jwt', token: other, body: { audience: ['payments'] } })).status).toBe(403);
    const forged = `${token.slice(0, -10)}AAAAAAAAAA`;
    expect((await b.call({ path: '/v1/svid/x509', token: forged, body: { keyType: 'ec-p256' } })).status).toBe(401);
    expect((await b.call({ path: '/v1/svid/x509', token, body: { csr: keyPem } })).status).toBe(400);
    expect((await b.call({ path: '/v1/svid/x509', token, rawBody: `{"csr": ${JSON.stringify(csrPem)}, "privateKey": ${JSON.stringify(keyPem)}}`, headers: { 'content-type': 'application/json' } })).status).toBe(400);

    const after = await scrape();
    const delta = (series: string): number => value(after, series) - value(before, series);
    expect(delta('tessera_issuance_requests_total{type="x509-svid",decision="allow"}')).toBe(3);
    expect(delta('tessera_issuance_requests_total{type="jwt-svid",decision="allow"}')).toBe(1);
    expect(delta('tessera_issuance_requests_total{type="jwt-svid",decision="deny"}')).toBe(1);
    expect(delta('tessera_issuance_requests_total{type="x509-svid",decision="deny"}')).toBe(3);
    expect(delta('tessera_issuance_requests_total{type="x509-svid",decision="error"}')).toBe(0);
    expect(delta('tessera_issuance_duration_seconds_count{type="x509-svid",decision="allow"}')).toBe(3);
    expect(value(after, 'tessera_issuance_duration_seconds_sum{type="x509-svid",decision="allow"}')).toBeGreaterThan(0);
    // 4 grants + 3 audited denials (the schema-level 400 is refused before anyone is authenticated).
    expect(delta('tessera_audit_append_duration_seconds_count')).toBeGreaterThanOrEqual(7);
    expect(value(after, 'tessera_store_errors_total{op="appendAuditEntries"}')).toBe(0);
    expect(value(after, `tessera_ca_expiry_seconds{authority="${b.broker.ca.authorityId}"}`)).toBeGreaterThan(86_400);
    expect(value(after, 'tessera_audit_log_entries')).toBe(b.broker.audit.size);
    expect(after).toMatch(/^process_cpu_user_seconds_total /m);
    expect(after).toMatch(/^nodejs_heap_size_used_bytes /m);
  });
});

describe('the log', () => {
  it('has one line per request with its id and, once authenticated, the SPIFFE ID', async () => {
    const res = await b.call({ path: '/v1/svid/jwt', token: await b.token(), body: { audience: ['payments'] } });
    const id = res.headers['x-request-id'];
    expect(typeof id).toBe('string');
    const mine = lines().filter((l) => l.reqId === id);
    const done = mine.filter((l) => l.msg === 'request completed');
    expect(done).toHaveLength(1);
    expect(done[0]).toMatchObject({ spiffeId: 'spiffe://example.org/ns/shop/sa/web', statusCode: 200, path: '/v1/svid/jwt', method: 'POST' });
    expect(typeof done[0]?.responseTime).toBe('number');

    const unauth = await b.call({ path: '/v1/svid/jwt', body: { audience: ['payments'] } });
    const refused = lines().filter((l) => l.reqId === unauth.headers['x-request-id']);
    expect(refused.find((l) => l.msg === 'request completed')).toMatchObject({ statusCode: 401 });
    expect(refused.every((l) => l.spiffeId === undefined)).toBe(true);
  });

  it('never holds a token, a private key, a CSR or the client address', () => {
    const text = captured.join('');
    expect(text.length).toBeGreaterThan(1000);
    expect(secrets.length).toBeGreaterThanOrEqual(6);
    for (const { what, value: v } of secrets) {
      // Whole values, and the distinctive parts of each (a JWS signature, a PEM body line).
      const parts = v.includes('-----BEGIN') ? v.split('\n').filter((l) => l.length >= 40 && !l.startsWith('-----')) : [v, ...v.split('.').filter((p) => p.length >= 40)];
      for (const part of parts) expect(text.includes(part), `${what} appears in the log`).toBe(false);
    }
    expect(text).not.toMatch(/PRIVATE KEY|CERTIFICATE REQUEST|Bearer /);
    // The broker's own listen address is logged once at start; no request line holds the client's.
    const perRequest = lines().filter((l) => l.reqId !== undefined);
    expect(perRequest.length).toBeGreaterThan(10);
    expect(JSON.stringify(perRequest)).not.toContain('127.0.0.1');
    expect(text).not.toMatch(/remoteAddress|remotePort/);
  });
});
