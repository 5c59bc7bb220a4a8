// The floor under the fresh-connection target (issue 19: renewal over fresh mTLS connections ≥ 0.8× the
// keep-alive rate): the same load (bench/load.mjs, the same client certificate, c=32) against a bare
// Node HTTPS server with the broker's TLS settings (bench/tls-floor-server.mjs), once over keep-alive and
// once with a new, resumed TLS connection per request. The difference in server CPU per request is what
// a resumed mTLS connection costs in Node 20 and OpenSSL 3.0 before any application code runs. With it,
// the best fresh/keep-alive ratio a CPU-bound server can reach is keepAliveCpu / (keepAliveCpu + that).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stopChild, untilListening } from './child.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

/**
 * @param {object} d
 * @param {{ certFile: string, keyFile: string, bundleFile: string }} d.server   TLS material of the broker
 * @param {{ ca: string, cert: string, key: string }} d.mtls                    the client's SVID and roots
 * @param {number} d.seconds
 * @param {(pid: number, opts: object) => Promise<object>} d.measured          run.mjs: load + server CPU
 * @param {(...a: unknown[]) => void} d.log
 */
export async function tlsFloor(d) {
  const child = spawn(process.execPath, [path.join(here, 'tls-floor-server.mjs'), d.server.certFile, d.server.keyFile, d.server.bundleFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  const { url } = await untilListening(child, 'TLS floor server');
  const body = JSON.stringify({ csr: 'x'.repeat(560) }); // about the size of the renewal's body
  const load = (keepAlive, durationMs) => ({
    url: `${url}/v1/svid/x509`, method: 'POST', headers: { 'content-type': 'application/json' }, body: () => body,
    concurrency: 32, durationMs, keepAlive, tls: d.mtls, countResumed: !keepAlive,
  });
  try {
    await d.measured(child.pid, load(true, 1000));
    await d.measured(child.pid, load(false, 1000));
    const rows = [];
    for (const keepAlive of [true, false]) {
      const r = await d.measured(child.pid, load(keepAlive, d.seconds * 1000));
      const scenario = `bare Node HTTPS, no application work, mTLS ${keepAlive ? 'keep-alive' : 'fresh conns (resumed)'}`;
      d.log(scenario, r);
      rows.push({ scenario, concurrency: 32, ...r });
    }
    const [kept, fresh] = rows;
    return { rows, connectionCpuUs: fresh.serverCpuUs - kept.serverCpuUs, ratio: Number((fresh.rps / kept.rps).toFixed(2)) };
  } finally {
    await stopChild(child);
  }
}

/** The best fresh/keep-alive ratio reachable when a connection costs `connectionCpuUs` on top of a request's `keepAliveCpuUs`. */
export function freshCeiling(keepAliveCpuUs, connectionCpuUs) {
  return Number((keepAliveCpuUs / (keepAliveCpuUs + connectionCpuUs)).toFixed(2));
}
