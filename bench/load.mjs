// A small closed-loop HTTP(S) load generator: `concurrency` loops, each sending one request and
// waiting for the answer, for `durationMs`. Latencies are recorded per request (µs). It exists (rather
// than autocannon/wrk) because the mTLS scenarios need client certificates and fresh connections
// with TLS session resumption, and because cfssl and Tessera must be driven by the same client.
import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';

/**
 * @param {object} o
 * @param {string} o.url
 * @param {string} o.method
 * @param {Record<string,string>} o.headers
 * @param {() => string | Buffer} o.body          body per request (may return the same buffer)
 * @param {number} o.concurrency
 * @param {number} o.durationMs
 * @param {boolean} o.keepAlive                    false: a new TCP+TLS connection per request
 * @param {object} [o.tls]                         ca, cert, key for https
 * @param {(status:number, body:string) => boolean} [o.check]   is this answer a success?
 * @param {number} [o.maxRequests]                 stop after this many requests (before durationMs if sooner)
 * @param {boolean} [o.countResumed]               count new TLS connections and how many resumed a session
 */
export async function runLoad(o) {
  const isHttps = o.url.startsWith('https:');
  const mod = isHttps ? https : http;
  const agent = new mod.Agent({
    keepAlive: o.keepAlive,
    maxSockets: o.concurrency,
    // Fresh connections still resume TLS sessions: Node's https.Agent caches them per host. One TLS
    // context for the whole run, as a real client keeps one: given only ca/cert/key, tls.connect builds
    // a new context per connection (parsing the PEMs and the CA store), which made the client, not the
    // broker, the bottleneck of the fresh-connection rows (~3 ms of client CPU per connection).
    ...(isHttps ? { maxCachedSessions: 1000, ...o.tls, ...(o.tls ? { secureContext: tls.createSecureContext(o.tls) } : {}) } : {}),
  });
  const url = new URL(o.url);
  const latencies = [];
  let ok = 0;
  let failed = 0;
  let firstError;
  let started = 0;
  let connections = 0;
  let resumed = 0;
  const deadline = performance.now() + o.durationMs;
  const more = () => performance.now() < deadline && (o.maxRequests === undefined || started < o.maxRequests);

  const once = () =>
    new Promise((resolve) => {
      const t0 = performance.now();
      const body = o.body?.();
      const req = mod.request(
        url,
        {
          method: o.method,
          agent,
          // Without "connection: close", Node's Agent hands a finished socket to a waiting request even
          // with keepAlive off, so most "fresh" requests rode an open connection (706 connections for
          // 5,385 requests in the Redis fresh-connection row of 2026-12-06).
          headers: { ...o.headers, ...(o.keepAlive ? {} : { connection: 'close' }), ...(body ? { 'content-length': Buffer.byteLength(body) } : {}) },
        },
        (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString();
            const good = o.check ? o.check(res.statusCode ?? 0, text) : res.statusCode === 200;
            if (good) ok++;
            else {
              failed++;
              firstError ??= `${res.statusCode} ${text.slice(0, 200)}`;
            }
            latencies.push(performance.now() - t0);
            resolve();
          });
        },
      );
      if (o.countResumed) {
        req.on('socket', (s) => {
          if (typeof s.isSessionReused !== 'function' || s.__counted) return;
          s.__counted = true;
          s.once('secureConnect', () => {
            connections++;
            if (s.isSessionReused()) resumed++;
          });
        });
      }
      req.on('error', (err) => {
        failed++;
        firstError ??= String(err);
        resolve();
      });
      if (body) req.write(body);
      req.end();
    });

  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  await Promise.all(
    Array.from({ length: o.concurrency }, async () => {
      while (more()) {
        started++;
        await once();
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  agent.destroy();
  latencies.sort((a, b) => a - b);
  const q = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : NaN);
  return {
    requests: ok + failed,
    ok,
    failed,
    rps: Math.round(ok / elapsed),
    p50Ms: Number(q(0.5).toFixed(2)),
    p99Ms: Number(q(0.99).toFixed(2)),
    // CPU this client process spent per request (all its threads), taken from the same cores.
    clientCpuUs: ok + failed > 0 ? Math.round((cpu.user + cpu.system) / (ok + failed)) : null,
    ...(o.countResumed ? { connections, resumed } : {}),
    ...(firstError ? { firstError } : {}),
  };
}
