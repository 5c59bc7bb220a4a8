import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BrokerError, storeUnavailable } from '../errors.js';
import { EmbeddedStore } from '../store/embedded.js';
import type { Store } from '../store/store.js';
import { BrokerMetrics, TESSERA_VERSION } from './metrics.js';
import { startMetricsServer } from './server.js';
import { instrumentStore } from './store.js';

/** The value of one sample line (`name{labels} value`) in a Prometheus text exposition. */
function sample(text: string, series: string): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return undefined;
}

function get(url: string, method = 'GET'): Promise<{ status: number; type: string | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .request(url, { method }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'], body }));
      })
      .on('error', reject)
      .end();
  });
}

describe('BrokerMetrics', () => {
  it('exposes issuance counts and latency by type and decision, from zero', async () => {
    const m = new BrokerMetrics({ clock: { now: () => 0 }, caNotAfterMs: 1000, caAuthority: 'ab12' });
    let text = await m.text();
    expect(sample(text, 'tessera_issuance_requests_total{type="x509-svid",decision="allow"}')).toBe(0);
    expect(sample(text, 'tessera_issuance_duration_seconds_count{type="jwt-svid",decision="deny"}')).toBe(0);
    m.issuance('x509-svid').allow.record(3);
    m.issuance('x509-svid').allow.record(30);
    m.issuance('jwt-svid').error.record(1);
    text = await m.text();
    expect(sample(text, 'tessera_issuance_requests_total{type="x509-svid",decision="allow"}')).toBe(2);
    expect(sample(text, 'tessera_issuance_requests_total{type="x509-svid",decision="deny"}')).toBe(0);
    expect(sample(text, 'tessera_issuance_requests_total{type="jwt-svid",decision="error"}')).toBe(1);
    expect(sample(text, 'tessera_issuance_duration_seconds_sum{type="x509-svid",decision="allow"}')).toBeCloseTo(0.033, 6);
    // 3 ms lands in the 5 ms bucket, 30 ms does not.
    expect(sample(text, 'tessera_issuance_duration_seconds_bucket{le="0.005",type="x509-svid",decision="allow"}')).toBe(1);
    expect(sample(text, 'tessera_issuance_duration_seconds_bucket{le="0.05",type="x509-svid",decision="allow"}')).toBe(2);
  });

  it('names the build: tessera_build_info is 1 with the package.json version and the Node.js version', async () => {
    const { version } = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string };
    expect(TESSERA_VERSION).toBe(version);
    const text = await new BrokerMetrics({ clock: { now: () => 0 }, caNotAfterMs: 1000, caAuthority: 'ab12' }).text();
    expect(sample(text, `tessera_build_info{version="${version}",node="${process.version}"}`)).toBe(1);
    expect(text).toContain('# TYPE tessera_build_info gauge');
  });

  it('reports time to CA expiry from the broker clock, audit size, limits and client errors', async () => {
    let now = 1_000_000;
    const m = new BrokerMetrics({ clock: { now: () => now }, caNotAfterMs: 1_000_000 + 90 * 86_400_000, caAuthority: 'ab12' });
    let size = 7;
    m.watchAuditSize(() => size);
    m.rateLimited('source');
    m.clientError('header_too_large');
    let text = await m.text();
    expect(sample(text, 'tessera_ca_expiry_seconds{authority="ab12"}')).toBe(90 * 86_400);
    expect(sample(text, 'tessera_audit_log_entries')).toBe(7);
    expect(sample(text, 'tessera_rate_limited_total{scope="source"}')).toBe(1);
    expect(sample(text, 'tessera_rate_limited_total{scope="identity"}')).toBe(0);
    expect(sample(text, 'tessera_http_client_errors_total{reason="header_too_large"}')).toBe(1);
    now += 91 * 86_400_000;
    size = 9;
    text = await m.text();
    expect(sample(text, 'tessera_ca_expiry_seconds{authority="ab12"}')).toBe(-86_400);
    expect(sample(text, 'tessera_audit_log_entries')).toBe(9);
  });

  it('counts minting-thread failures by reason and reads the jobs in flight from the pool', async () => {
    const m = new BrokerMetrics({ clock: { now: () => 0 }, caNotAfterMs: 0, caAuthority: 'ab12' });
    let text = await m.text();
    expect(sample(text, 'tessera_ca_jobs_in_flight')).toBe(0);
    expect(sample(text, 'tessera_ca_thread_failures_total{reason="exited"}')).toBe(0);
    let jobs = 5;
    m.watchMintJobs(() => jobs);
    m.mintThreadFailed('exited');
    m.mintThreadFailed('exited');
    m.mintThreadFailed('stuck');
    text = await m.text();
    expect(sample(text, 'tessera_ca_jobs_in_flight')).toBe(5);
    expect(sample(text, 'tessera_ca_thread_failures_total{reason="exited"}')).toBe(2);
    expect(sample(text, 'tessera_ca_thread_failures_total{reason="stuck"}')).toBe(1);
    jobs = 0;
    expect(sample(await m.text(), 'tessera_ca_jobs_in_flight')).toBe(0);
  });

  it('includes the standard process metrics, once per process', async () => {
    const a = await new BrokerMetrics({ clock: { now: () => 0 }, caNotAfterMs: 0, caAuthority: 'ab12' }).text();
    const b = await new BrokerMetrics({ clock: { now: () => 0 }, caNotAfterMs: 0, caAuthority: 'ab12' }).text();
    for (const text of [a, b]) {
      expect(text).toMatch(/^process_cpu_user_seconds_total /m);
      expect(text).toMatch(/^process_resident_memory_bytes /m);
      expect(text).toMatch(/^nodejs_eventloop_lag_seconds /m);
      expect(text.match(/^# TYPE process_cpu_user_seconds_total/gm)).toHaveLength(1);
    }
  });
});

describe('instrumentStore', () => {
  it('counts store failures by operation, times audit appends, and passes everything else through', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-metrics-store-'));
    const inner = await EmbeddedStore.open(dir, { fsync: false });
    const m = new BrokerMetrics({ clock: { now: () => 0 }, caNotAfterMs: 0, caAuthority: 'ab12' });
    let failAppends = false;
    // A real store whose appends can be made to fail the way a full disk would.
    const faulty = new Proxy(inner, {
      get(target, prop) {
        if (prop === 'appendAuditEntries' && failAppends) return () => Promise.reject(storeUnavailable('disk full'));
        const v: unknown = Reflect.get(target, prop, target);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    }) as Store;
    const store = instrumentStore(faulty, m);
    try {
      expect(store.kind).toBe('embedded');
      expect(await store.appendAuditEntries([Buffer.from('{"a":1}')])).toBe(0);
      expect(await store.auditSize()).toBe(1);
      failAppends = true;
      await expect(store.appendAuditEntries([Buffer.from('{"a":2}')])).rejects.toMatchObject({ code: 'store_unavailable' });
      // A caller's bad argument is a 400, not a store failure.
      await expect(store.hit('', 1000)).rejects.toBeInstanceOf(BrokerError);
      const text = await m.text();
      expect(sample(text, 'tessera_audit_append_duration_seconds_count')).toBe(1);
      expect(sample(text, 'tessera_store_errors_total{op="appendAuditEntries"}')).toBe(1);
      expect(sample(text, 'tessera_store_errors_total{op="hit"}')).toBe(0);
      // Wrappers are made once per method, not per call.
      expect(store.kvGet).toBe(store.kvGet);
    } finally {
      await inner.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('metrics listener', () => {
  it('serves GET /metrics on loopback and nothing else', async () => {
    const m = new BrokerMetrics({ clock: { now: () => 0 }, caNotAfterMs: 3_600_000, caAuthority: 'ab12' });
    const server = await startMetricsServer(m, { host: '127.0.0.1', port: 0 });
    try {
      expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      const res = await get(server.url);
      expect(res.status).toBe(200);
      expect(res.type).toContain('text/plain');
      expect(sample(res.body, 'tessera_ca_expiry_seconds{authority="ab12"}')).toBe(3600);
      expect((await get(server.url.replace('/metrics', '/'))).status).toBe(404);
      expect((await get(server.url, 'POST')).status).toBe(405);
      const head = await get(server.url, 'HEAD');
      expect(head.status).toBe(200);
      expect(head.body).toBe('');
    } finally {
      await server.close();
    }
  });
});
