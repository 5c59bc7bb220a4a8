// The Workload API rows of `npm run bench`: a real `tessera agent` process serving the SPIFFE Workload
// API on a Unix socket, fed by a real broker issuing short-lived SVIDs, with 100 FetchX509SVID streams
// open (10 connections × 10 streams). Measures the update messages delivered per second to those
// streams, how long one rotation takes to reach all 100 (from the agent's "X.509-SVID obtained" log
// line to the last stream), and the agent's resident memory before and with the streams open.
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { stopChild } from './child.mjs';

const STREAMS = 100;
const CONNECTIONS = 10;

const rssMiB = (pid) => {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round((Number(m[1]) / 1024) * 10) / 10 : undefined;
};

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? undefined : s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

/**
 * @param {object} o
 * @param {string} o.root repository root
 * @param {string} o.work scratch directory
 * @param {string} o.brokerUrl a broker whose registration grants namespace "bench" short-lived SVIDs
 * @param {string} o.caFile trust bundle file
 * @param {string} o.token a service-account token for namespace "bench"
 * @param {number} o.durationMs how long to watch rotations
 * @param {(...a: unknown[]) => void} o.log
 */
export async function workloadApiBench({ root, work, brokerUrl, caFile, token, durationMs, log }) {
  const { serviceDefinition, WORKLOAD_SERVICE } = await import(path.join(root, 'dist/agent/workload-api/protos.js'));
  const dir = path.join(work, 'wlapi');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tokenFile = path.join(dir, 'token');
  writeFileSync(tokenFile, token);
  const socket = path.join(dir, 'agent.sock');
  const agent = spawn(process.execPath, [path.join(root, 'dist/cli/main.js'), 'agent', '--broker', brokerUrl, '--bundle', caFile, '--token-file', tokenFile, '--workload-api', `unix://${socket}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  agent.stderr.on('data', (d) => (err += d.toString()));
  const logs = () => err.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  const clients = [];
  try {
    const until = Date.now() + 30_000;
    while (!logs().some((l) => l.msg === 'X.509-SVID obtained')) {
      if (Date.now() > until || agent.exitCode !== null) throw new Error(`the agent did not get an SVID: ${err.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((r) => setTimeout(r, 500));
    const rssIdle = rssMiB(agent.pid);

    const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(WORKLOAD_SERVICE), WORKLOAD_SERVICE);
    const md = new grpc.Metadata();
    md.set('workload.spiffe.io', 'true');
    /** serial → receive times on every stream */
    const received = new Map();
    let updates = 0;
    let firstSeen = 0;
    const calls = [];
    for (let c = 0; c < CONNECTIONS; c++) {
      const client = new Ctor(`unix://${socket}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1, 'bench.connection': c });
      clients.push(client);
      for (let s = 0; s < STREAMS / CONNECTIONS; s++) {
        const call = client.FetchX509SVID({}, md);
        let n = 0;
        call.on('data', (m) => {
          const at = Date.now();
          const der = m.svids[0].x509_svid;
          // The leaf's serial, read from the DER: SEQUENCE { SEQUENCE (tbs) { [0] version, INTEGER serial … } }
          const serial = serialOf(der);
          if (n++ === 0) firstSeen += 1;
          else updates += 1;
          const list = received.get(serial) ?? [];
          list.push(at);
          received.set(serial, list);
        });
        call.on('error', () => undefined);
        calls.push(call);
      }
    }
    const openUntil = Date.now() + 30_000;
    while (firstSeen < STREAMS && Date.now() < openUntil) await new Promise((r) => setTimeout(r, 50));
    if (firstSeen < STREAMS) throw new Error(`only ${firstSeen} of ${STREAMS} streams got the SVID`);
    const t0 = Date.now();
    const updates0 = updates;
    let rssMax = rssMiB(agent.pid) ?? 0;
    while (Date.now() - t0 < durationMs) {
      await new Promise((r) => setTimeout(r, 250));
      rssMax = Math.max(rssMax, rssMiB(agent.pid) ?? 0);
    }
    const elapsed = (Date.now() - t0) / 1000;
    const delivered = updates - updates0;
    // Fan-out: for each rotation seen by all streams, agent log time → last stream's receive time.
    const obtained = new Map(logs().filter((l) => l.msg === 'X.509-SVID obtained').map((l) => [l.serial, l.time]));
    const fanOut = [];
    for (const [serial, times] of received) {
      const at = obtained.get(serial);
      if (at !== undefined && times.length === STREAMS && Math.min(...times) >= t0 - 5_000) fanOut.push(Math.max(...times) - at);
    }
    const row = {
      streams: STREAMS,
      connections: CONNECTIONS,
      seconds: Number(elapsed.toFixed(1)),
      rotations: fanOut.length,
      updatesDelivered: delivered,
      updatesPerSecond: Number((delivered / elapsed).toFixed(1)),
      fanOutP50Ms: pct(fanOut, 50),
      fanOutMaxMs: fanOut.length ? Math.max(...fanOut) : undefined,
      rssIdleMiB: rssIdle,
      rssWith100StreamsMiB: rssMax,
    };
    log('workload api', row);
    for (const call of calls) call.cancel();
    return row;
  } finally {
    for (const c of clients) c.close();
    await stopChild(agent);
  }
}

/** The serial number (hex) of the first certificate in concatenated DER. */
function serialOf(der) {
  let i = 0;
  const len = () => {
    const b = der[i++];
    if (b < 0x80) return b;
    let n = 0;
    for (let k = 0; k < (b & 0x7f); k++) n = n * 256 + der[i++];
    return n;
  };
  i++; len(); // Certificate SEQUENCE
  i++; len(); // TBSCertificate SEQUENCE
  if (der[i] === 0xa0) { i++; const l = len(); i += l; } // [0] version
  i++; const l = len(); // INTEGER serial
  return der.subarray(i, i + l).toString('hex');
}
