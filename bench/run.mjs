#!/usr/bin/env node
// `npm run bench`: drives a live Tessera broker (a real `tessera serve` process, HTTPS keep-alive,
// durable group-commit audit appends) and, in the same run, `cfssl serve` with an equivalent P-256
// profile, and prints rates, p50/p99 and Tessera/cfssl ratios side by side. Also: the CSR scenario with
// minting on the event loop (ca.threads 0) for comparison, the CSR scenario and cfssl driven by wrk (a
// C load generator that leaves more of the machine to the servers), the per-core crypto limit of one
// issuance, and the audit log at 10^3 vs 10^7 entries (bench/log-scale.mjs: rate, restart, memory, disk).
//
// Usage: npm run bench [-- --seconds 5] [--quick] [--only workload-api|devices|peers|log-scale|hsm|redis]
//   --quick: 2 s runs, no log-scale test (building the 10^7-entry log takes minutes). See docs/performance.md.
//   --only log-scale: just the audit log at 10^3 and 10^7 entries (TESSERA_BENCH_LOG_SIZES=1000,1000000 to change).
//   --only workload-api: just the agent's Workload API rows (100 open streams: updates/s, fan-out, RSS).
//   --only devices: just the audit devices row.
//   --only peers: just the peer rows (bench/peers.mjs: cfssl over TLS with authsign, with and without
//     its PostgreSQL certdb, and Tessera with one token/CSR and with a fresh token + CSR key per request).
//   --only hsm: just the CA-key-in-SoftHSM2 rows (bench/hsm.mjs), beside the file key.
//   --only redis: just the Redis scale-out rows (bench/redis-scale.mjs; private redis-server, AOF always).
// Results: bench/results/latest.json and a table on stdout (copy it into the README).
import { spawn, spawnSync } from 'node:child_process';
import https from 'node:https';
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, webcrypto } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { runLoad } from './load.mjs';
import { workloadApiBench } from './workload-api.mjs';
import { peersBench, printPeers } from './peers.mjs';
import { issue19Targets, printTargets } from './targets.mjs';
import { alternatingRounds } from './alternate.mjs';
import { logScaleBench, printLogScale } from './log-scale.mjs';
import { hsmBench } from './hsm.mjs';
import { printRedisScale, redisScaleBench } from './redis-scale.mjs';
import { benchBrokerConfig } from './broker-config.mjs';
import { stopChild, untilListening } from './child.mjs';
import { freshCeiling, tlsFloor } from './tls-floor.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: args } = parseArgs({
  options: { seconds: { type: 'string' }, quick: { type: 'boolean' }, 'skip-scale': { type: 'boolean' }, only: { type: 'string' } },
});
const quick = args.quick === true;
const seconds = Number(args.seconds ?? (quick ? 2 : 5));
const dist = (p) => import(path.join(root, 'dist', p));

const { ensureDevMaterial } = await dist('dev/material.js');
const { mintDevToken } = await dist('dev/token-issuer.js');

const work = mkdtempSync(path.join(tmpdir(), 'tessera-bench-'));
const material = await ensureDevMaterial(path.join(work, 'pki'), 'example.org');
const pki = material.dir;
const ca = readFileSync(material.bundleFile, 'utf8');
const log = (...a) => console.error('[bench]', ...a);

function writeConfig(dataDir, auditDevices = []) {
  const file = path.join(work, `tessera-${path.basename(dataDir)}.yaml`);
  writeFileSync(
    file,
    benchBrokerConfig({
      material,
      replicaId: 'bench',
      store: `{ embedded: { dir: ${dataDir}, fsync: true } }`,
      audit: { signingKeyFile: material.auditKeyFile, devices: auditDevices },
      extra: process.env.TESSERA_BENCH_EXTRA_CONFIG ? [process.env.TESSERA_BENCH_EXTRA_CONFIG] : [],
    }),
  );
  return file;
}

/**
 * CPU time (µs, all threads) used so far by a process and its live children, from
 * /proc; undefined where there is none.
 */
function processCpuUs(pid) {
  const statOf = (p) => readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1].split(' ');
  try {
    const pids = [String(pid)];
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry) || entry === String(pid)) continue;
      try {
        if (statOf(entry)[1] === String(pid)) pids.push(entry);
      } catch {
        // exited meanwhile
      }
    }
    let ticks = 0;
    for (const p of pids) {
      const f = statOf(p);
      ticks += Number(f[11]) + Number(f[12]); // utime + stime, in clock ticks of 1/100 s
    }
    return (ticks * 1e6) / 100;
  } catch {
    return undefined;
  }
}

/**
 * Unmeasured load first: the JIT of both the server and this client warms up on the first thousands of
 * requests, and a short run would otherwise measure it.
 */
async function warmUp(opts) {
  await runLoad({ ...opts, concurrency: 32, durationMs: quick ? 1000 : 2000 });
}

/** Peak resident memory of a process so far (VmHWM: the minting threads live in the same process), MiB. */
function peakRssMiB(pid) {
  try {
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round(Number(m[1]) / 1024) : undefined;
  } catch {
    return undefined;
  }
}

/** runLoad, plus the broker's CPU per request over the run and its peak memory (for deploy/k8s resources). */
async function measured(pid, opts) {
  const before = processCpuUs(pid);
  const r = await runLoad(opts);
  const after = processCpuUs(pid);
  const rss = peakRssMiB(pid);
  return {
    ...r,
    ...(before !== undefined && after !== undefined && r.requests > 0 ? { serverCpuUs: Math.round((after - before) / r.requests) } : {}),
    ...(rss !== undefined ? { serverPeakRssMiB: rss } : {}),
  };
}

/** Starts `tessera serve`; resolves with its URL and the ms from spawn to listening. */
function startBroker(dataDir, env = {}, auditDevices = [], configFile = writeConfig(dataDir, auditDevices)) {
  const t0 = performance.now();
  const child = spawn(process.execPath, [path.join(root, 'dist/cli/main.js'), 'serve', '--config', configFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TESSERA_CONFIG: '', ...env },
  });
  return untilListening(child, 'broker').then(({ url }) => ({ child, url, startMs: Math.round(performance.now() - t0) }));
}

const stop = stopChild;

function opensslCsr() {
  const dir = mkdtempSync(path.join(work, 'csr-'));
  spawnSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', `${dir}/k.pem`]);
  spawnSync('openssl', ['req', '-new', '-key', `${dir}/k.pem`, '-subj', '/CN=bench', '-out', `${dir}/c.pem`]);
  return readFileSync(`${dir}/c.pem`, 'utf8');
}

const csrPem = opensslCsr();
const token = await mintDevToken({ keyFile: material.issuerKeyFile, namespace: 'bench', serviceAccount: 'load', ttlSeconds: 3600 });

// ---------- the per-core crypto limit of one issuance ----------
async function cryptoLimit() {
  const rsa = createPrivateKey(readFileSync(material.issuerKeyFile));
  const rsaPub = createPublicKey(rsa);
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const input = Buffer.from(token.split('.').slice(0, 2).join('.'));
  const rsaSig = sign('sha256', input, rsa);
  const tbs = Buffer.alloc(420, 1);
  const ecSig = sign('sha256', tbs, ec.privateKey);
  const time = (fn, n) => {
    for (let i = 0; i < 200; i++) fn();
    const t0 = performance.now();
    for (let i = 0; i < n; i++) fn();
    return ((performance.now() - t0) * 1000) / n;
  };
  const rs256VerifyUs = time(() => verify('sha256', input, rsaPub, rsaSig), 3000);
  const csrVerifyUs = time(() => verify('sha256', tbs, ec.publicKey, ecSig), 3000);
  const p256SignUs = time(() => sign('sha256', tbs, ec.privateKey), 5000);
  const totalUs = rs256VerifyUs + csrVerifyUs + p256SignUs;
  // Importing a CSR's P-256 key, three ways: the SPKI through OpenSSL 3's decoder, a JWK, and the raw
  // point through WebCrypto (what the minting threads do; ca/csr.ts verifyCsrPem).
  const spki = ec.publicKey.export({ type: 'spki', format: 'der' });
  const jwk = ec.publicKey.export({ format: 'jwk' });
  const raw = spki.subarray(spki.length - 65);
  const keyImportSpkiUs = time(() => createPublicKey({ key: spki, format: 'der', type: 'spki' }), 3000);
  const keyImportJwkUs = time(() => createPublicKey({ key: jwk, format: 'jwk' }), 3000);
  const rawImport = () => webcrypto.subtle.importKey('raw', raw, { name: 'ECDSA', namedCurve: 'P-256' }, true, ['verify']);
  for (let i = 0; i < 200; i++) await rawImport();
  const t0 = performance.now();
  for (let i = 0; i < 3000; i++) await rawImport();
  const keyImportRawUs = ((performance.now() - t0) * 1000) / 3000;
  return {
    rs256VerifyUs: Number(rs256VerifyUs.toFixed(1)),
    csrVerifyUs: Number(csrVerifyUs.toFixed(1)),
    p256SignUs: Number(p256SignUs.toFixed(1)),
    keyImportSpkiUs: Number(keyImportSpkiUs.toFixed(1)),
    keyImportJwkUs: Number(keyImportJwkUs.toFixed(1)),
    keyImportRawUs: Number(keyImportRawUs.toFixed(1)),
    perIssuanceUs: Number(totalUs.toFixed(1)),
    perCoreLimit: Math.round(1e6 / totalUs),
  };
}

// ---------- scenarios against Tessera ----------
const json = { 'content-type': 'application/json' };
const csrBody = JSON.stringify({ csr: csrPem });
const keygenBody = JSON.stringify({ keyType: 'ec-p256' });
const jwtBody = JSON.stringify({ audience: ['payments'] });
/** The main scenario's requests (X.509 from a CSR, token, keep-alive) against the broker at `url`. */
const csrLoad = (url) => ({
  url: `${url}/v1/svid/x509`, method: 'POST', headers: { ...json, authorization: `Bearer ${token}` }, body: () => csrBody, keepAlive: true, tls: { ca },
});

/** An SVID (with its key) from the broker at `url`, and the roots: the client credentials of the mTLS renewal rows. */
async function renewalCredentials(url) {
  const first = await runLoadOnce(url, '/v1/svid/x509', keygenBody, { authorization: `Bearer ${token}` });
  return { ca, cert: first.svid, key: first.privateKey };
}

/** The TLS floor (bench/tls-floor.mjs) with the broker's TLS material and an SVID of it as the client's. */
function tlsFloorRows(mtls) {
  return tlsFloor({ server: { certFile: path.join(pki, 'server.pem'), keyFile: path.join(pki, 'server.key'), bundleFile: material.bundleFile }, mtls, seconds, measured, log });
}

/** Tessera's fresh/keep-alive ratio for renewals at c=32 against the ceiling the bare-Node floor allows. */
function freshAgainstFloor(rows, floor) {
  const at = (name) => rows.find((r) => r.scenario === name && r.concurrency === 32);
  const kept = at(RENEWAL_KEPT);
  const fresh = at(RENEWAL_FRESH);
  if (!kept || !fresh || !floor || floor.connectionCpuUs === undefined) return undefined;
  return {
    ratio: Number((fresh.rps / kept.rps).toFixed(2)),
    connectionCpuUs: fresh.serverCpuUs - kept.serverCpuUs,
    floorConnectionCpuUs: floor.connectionCpuUs,
    ceiling: freshCeiling(kept.serverCpuUs, floor.connectionCpuUs),
  };
}

const RENEWAL_KEPT = 'x509 renewal, mTLS keep-alive';
const RENEWAL_FRESH = 'x509 renewal, mTLS fresh conns (resumed)';

/** The renewal scenarios: the caller's SVID over mTLS, on one connection and on a new one per request. */
const renewalScenarios = (mtls) => [
  [RENEWAL_KEPT, { path: '/v1/svid/x509', headers: json, body: csrBody, keepAlive: true, tls: mtls }],
  [RENEWAL_FRESH, { path: '/v1/svid/x509', headers: json, body: csrBody, keepAlive: false, tls: mtls }],
];

/** Runs each scenario at each concurrency against the broker at `url`: one row per run. */
async function runScenarios(url, pid, scenarios, concurrencies) {
  const results = [];
  for (const [name, s] of scenarios) {
    for (const concurrency of concurrencies) {
      const r = await measured(pid, {
        url: url + s.path, method: 'POST', headers: s.headers, body: () => s.body,
        concurrency, durationMs: seconds * 1000, keepAlive: s.keepAlive, tls: s.tls, countResumed: !s.keepAlive,
      });
      log(name, `c=${concurrency}`, r);
      results.push({ scenario: name, concurrency, ...r });
    }
  }
  return results;
}

async function tesseraScenarios(url, pid, mtls) {
  const bearer = { ...json, authorization: `Bearer ${token}` };
  await warmUp(csrLoad(url));
  return runScenarios(url, pid, [
    ['x509 from CSR (token)', { path: '/v1/svid/x509', headers: bearer, body: csrBody, keepAlive: true, tls: { ca } }],
    ['x509 server keygen (token)', { path: '/v1/svid/x509', headers: bearer, body: keygenBody, keepAlive: true, tls: { ca } }],
    ['JWT-SVID (token)', { path: '/v1/svid/jwt', headers: bearer, body: jwtBody, keepAlive: true, tls: { ca } }],
    ...renewalScenarios(mtls),
  ], [1, 32]);
}

/** X.509 from a CSR, driven by wrk instead of bench/load.mjs (see wrkLoad). */
async function tesseraWrk(url, serverPid) {
  const rows = [];
  for (const concurrency of [1, 32]) {
    const r = await wrkLoad({ url: `${url}/v1/svid/x509`, body: csrBody, headers: { ...json, authorization: `Bearer ${token}` }, concurrency, serverPid });
    log('wrk: x509 from CSR (token)', `c=${concurrency}`, r);
    rows.push({ scenario: 'x509 from CSR (token)', client: 'wrk', concurrency, ...r });
  }
  return rows;
}

async function runLoadOnce(url, p, body, headers) {
  const res = await fetchJson(url + p, body, headers);
  if (res.status !== 200) throw new Error(`setup request failed: ${res.status} ${JSON.stringify(res.json)}`);
  return res.json;
}

function fetchJson(u, body, headers) {
  return new Promise((resolve, reject) => {
    const req = https.request(u, { method: 'POST', ca, headers: { ...json, ...headers } }, (res) => {
      let t = '';
      res.on('data', (c) => (t += c));
      res.on('end', () => resolve({ status: res.statusCode, json: JSON.parse(t) }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

// ---------- wrk: the same requests from a C load generator ----------
// bench/load.mjs costs ~150–200 µs of CPU per HTTPS request on this machine, taken from the same two
// cores as the server under test. wrk (Debian's package; no client certificates, so token scenarios
// only) costs a fraction of that, so both servers get more of the machine. Both clients are reported.
function haveWrk() {
  if (spawnSync('sh', ['-c', 'command -v wrk']).status === 0) return true;
  spawnSync('sh', ['-c', 'apt-get install -y wrk >/dev/null 2>&1 || (apt-get update >/dev/null 2>&1 && apt-get install -y wrk >/dev/null 2>&1)']);
  return spawnSync('sh', ['-c', 'command -v wrk']).status === 0;
}

// Async on purpose: a blocked event loop would stop draining cfssl's per-request log pipe, and cfssl
// would stall writing to it.
async function wrkLoad({ url, body, headers, concurrency, serverPid }) {
  const before = serverPid === undefined ? undefined : processCpuUs(serverPid);
  const script = path.join(work, `wrk-${Math.random().toString(36).slice(2)}.lua`);
  writeFileSync(script, [
    'wrk.method = "POST"',
    `wrk.body = ${JSON.stringify(body)}`,
    ...Object.entries(headers).map(([k, v]) => `wrk.headers[${JSON.stringify(k)}] = ${JSON.stringify(v)}`),
    '',
  ].join('\n'));
  const r = await new Promise((resolve) => {
    const child = spawn('wrk', ['-t1', `-c${concurrency}`, `-d${seconds}s`, '--latency', '-s', script, url], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', (err) => resolve({ status: -1, stdout, stderr: String(err) }));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
  const out = r.stdout;
  const ms = (label) => {
    const m = new RegExp(`^\\s*${label}\\s+([\\d.]+)(us|ms|s)\\s*$`, 'm').exec(out);
    if (m === null) return NaN;
    return Number((Number(m[1]) * { us: 0.001, ms: 1, s: 1000 }[m[2]]).toFixed(2));
  };
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0);
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  const socketErrors = (/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out) ?? []).slice(1).reduce((a, b) => a + Number(b), 0);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0);
  if (r.status !== 0 || requests === 0) return { requests: 0, ok: 0, failed: 0, rps: 0, p50Ms: NaN, p99Ms: NaN, firstError: `wrk: ${(r.stderr ?? '').slice(0, 300)}` };
  const after = serverPid === undefined ? undefined : processCpuUs(serverPid);
  return {
    requests, ok: requests - non2xx, failed: non2xx + socketErrors, rps: Math.round(rps * (requests - non2xx) / requests), p50Ms: ms('50%'), p99Ms: ms('99%'),
    ...(before !== undefined && after !== undefined ? { serverCpuUs: Math.round((after - before) / requests) } : {}),
  };
}

// ---------- cfssl, same CSR, same client ----------
async function cfsslScenarios() {
  const which = spawnSync('sh', ['-c', 'command -v cfssl']);
  if (which.status !== 0) {
    const apt = spawnSync('sh', ['-c', 'apt-get install -y golang-cfssl >/dev/null 2>&1 || (apt-get update >/dev/null 2>&1 && apt-get install -y golang-cfssl >/dev/null 2>&1)']);
    if (apt.status !== 0 || spawnSync('sh', ['-c', 'command -v cfssl']).status !== 0) {
      return { unavailable: 'cfssl is not installed and Debian\'s golang-cfssl could not be installed here' };
    }
  }
  const cfg = path.join(work, 'cfssl.json');
  writeFileSync(cfg, JSON.stringify({ signing: { default: { expiry: '1h', usages: ['digital signature', 'server auth', 'client auth'] } } }));
  const port = 18888 + Math.floor(Math.random() * 1000);
  const child = spawn('cfssl', ['serve', '-address', '127.0.0.1', '-port', String(port), '-ca', `${pki}/intermediate.pem`, '-ca-key', `${pki}/intermediate.key`, '-config', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
  let errText = '';
  child.stderr.on('data', (d) => (errText += d.toString()));
  const url = `http://127.0.0.1:${port}/api/v1/cfssl/sign`;
  const body = JSON.stringify({ certificate_request: csrPem });
  for (let i = 0; i < 100; i++) {
    const probe = await runLoad({ url, method: 'POST', headers: json, body: () => body, concurrency: 1, durationMs: 1, keepAlive: false }).catch(() => undefined);
    if (probe && probe.ok > 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const version = spawnSync('cfssl', ['version']).stdout?.toString().split('\n')[0] ?? '';
  await warmUp({ url, method: 'POST', headers: json, body: () => body, keepAlive: true });
  const results = [];
  for (const concurrency of [1, 32]) {
    const r = await measured(child.pid, {
      url, method: 'POST', headers: json, body: () => body, concurrency, durationMs: seconds * 1000, keepAlive: true,
      check: (status, text) => status === 200 && text.includes('"success":true'),
    });
    log('cfssl sign', `c=${concurrency}`, r);
    results.push({ scenario: 'cfssl sign P-256 CSR (plain HTTP, no auth, no audit)', concurrency, ...r });
  }
  const wrk = [];
  if (useWrk) {
    for (const concurrency of [1, 32]) {
      const r = await wrkLoad({ url, body, headers: json, concurrency, serverPid: child.pid });
      log('wrk: cfssl sign', `c=${concurrency}`, r);
      wrk.push({ scenario: 'cfssl sign P-256 CSR (plain HTTP, no auth, no audit)', client: 'wrk', concurrency, ...r });
    }
  }
  child.kill('SIGTERM');
  if (results.every((r) => r.ok === 0)) return { unavailable: `cfssl did not sign: ${errText.slice(-500)}` };
  return { version, results, wrk };
}

// ---------- audit log scale (bench/log-scale.mjs) ----------
const logSizes = (process.env.TESSERA_BENCH_LOG_SIZES ?? '1000,10000000').split(',').map(Number);
const logScaleRun = () => logScaleBench({ dist, work, sizes: logSizes, seconds, startBroker, stop, warmUp, measured, csrLoad, log });

// ---------- the agent's Workload API ----------

/** A broker issuing 6 s SVIDs (so rotations happen during the run), the agent and 100 streams. */
async function workloadApiRows() {
  const saved = process.env.TESSERA_BENCH_EXTRA_CONFIG;
  process.env.TESSERA_BENCH_EXTRA_CONFIG = 'svid: { x509DefaultTtlSeconds: 6, x509MaxTtlSeconds: 6 }';
  const broker = await startBroker(path.join(work, 'data-wlapi'));
  if (saved === undefined) delete process.env.TESSERA_BENCH_EXTRA_CONFIG;
  else process.env.TESSERA_BENCH_EXTRA_CONFIG = saved;
  try {
    const token = await mintDevToken({ keyFile: material.issuerKeyFile, namespace: 'bench', serviceAccount: 'wlapi', ttlSeconds: 3600 });
    return await workloadApiBench({ root, work, brokerUrl: broker.url, caFile: material.bundleFile, token, durationMs: Math.max(20, seconds * 4) * 1000, log });
  } finally {
    await stop(broker.child);
  }
}

function printWorkloadApi(w) {
  console.log('\n| Workload API (agent process, Unix socket) | value |\n|---|---:|');
  console.log(`| open FetchX509SVID streams (connections) | ${w.streams} (${w.connections}) |`);
  console.log(`| rotations seen in ${w.seconds} s (6 s SVIDs) | ${w.rotations} |`);
  console.log(`| stream updates delivered per second | ${w.updatesPerSecond} |`);
  console.log(`| rotation → all ${w.streams} streams, p50 / max ms | ${w.fanOutP50Ms} / ${w.fanOutMaxMs} |`);
  console.log(`| agent RSS idle / with ${w.streams} streams (MiB) | ${w.rssIdleMiB} / ${w.rssWith100StreamsMiB} |`);
}

// ---------- audit devices: X.509 at c=32 with a file and a syslog device, as a ratio to none ----------
/**
 * A syslog receiver for the run: octet-counted frames over TCP, counted and dropped (in this process,
 * so it shares the client's cores, like a local rsyslog would).
 */
async function syslogSink() {
  const net = await import('node:net');
  let frames = 0;
  const server = net.createServer((s) => {
    let buf = Buffer.alloc(0);
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const sp = buf.indexOf(0x20);
        if (sp < 0) break;
        const len = Number(buf.toString('ascii', 0, sp));
        if (buf.length < sp + 1 + len) break;
        frames++;
        buf = buf.subarray(sp + 1 + len);
      }
    });
    s.on('error', () => {});
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { port: server.address().port, frames: () => frames, close: () => new Promise((r) => server.close(r)) };
}

async function devicesRun() {
  const sink = await syslogSink();
  const rows = [];
  try {
    const variants = [
      ['none', []],
      ['file + syslog', [
        { name: 'file', type: 'file', path: path.join(work, 'devices-audit.jsonl') },
        { name: 'syslog', type: 'syslog', address: `tcp://127.0.0.1:${sink.port}` },
      ]],
    ];
    // Both brokers up at once and measured in alternating rounds (medians): one after the other, the
    // ratio moved with the machine (0.57–0.94 for the same code).
    const brokers = [];
    try {
      for (const [label, devices] of variants) brokers.push({ label, ...(await startBroker(path.join(work, `data-devices-${brokers.length}`), {}, devices)) });
      for (const b of brokers) await warmUp(csrLoad(b.url));
      const medians = await alternatingRounds(brokers, quick ? 1 : 3, async (b, i) => {
        const r = await measured(b.child.pid, { ...csrLoad(b.url), concurrency: 32, durationMs: seconds * 1000 });
        log(`x509 from CSR (token), audit devices: ${b.label}`, `c=32 round ${i + 1}`, r);
        return r;
      });
      brokers.forEach((b, k) => rows.push({ scenario: `x509 from CSR (token), audit devices: ${b.label}`, concurrency: 32, ...medians[k] }));
    } finally {
      for (const b of brokers) await stop(b.child);
    }
  } finally {
    await sink.close();
  }
  log(`syslog frames received: ${sink.frames()}`);
  const [none, both] = rows;
  return { rows, syslogFrames: sink.frames(), ratio: Number((both.rps / none.rps).toFixed(2)) };
}

const redisScale = () => redisScaleBench({ root, work, pki, material, ca, token, csrBody, seconds, quick, log });

/** The HSM rows (bench/hsm.mjs): the CA key in SoftHSM2 vs in a file, X.509 from a CSR. */
const hsmRows = () => hsmBench({ root, work, material, writeConfig, startBroker, stop, measured, csrLoad, seconds, quick, log });
/** Measured rows as a Markdown table (the first column headed `title`). */
function scenarioTable(rows, title = 'scenario') {
  const us = (v) => (v === undefined || v === null ? '' : String(v));
  return [
    `| ${title} | conc. | req/s | p50 ms | p99 ms | failed | server CPU µs/req | client CPU µs/req |`,
    '|---|---:|---:|---:|---:|---:|---:|---:|',
    ...rows.map((r) => `| ${r.scenario} | ${r.concurrency} | ${r.rps.toLocaleString('en')} | ${r.p50Ms} | ${r.p99Ms} | ${r.failed} | ${us(r.serverCpuUs)} | ${us(r.clientCpuUs)} |`),
  ].join('\n');
}

/** The audit-devices ratio, with each side's rate in every round. */
function devicesLine(d) {
  const rounds = d.rows.map((r) => `${r.scenario.replace(/^.*: /, '')} ${r.rpsByRound.join(', ')}`).join('; ');
  return `X.509 at c=32 with a file and a syslog device attached: ${d.ratio}× the rate with none (target ≥ 0.9; alternating rounds, req/s by round: ${rounds}).`;
}

function printHsm(h) {
  if ('skipped' in h) return console.log(`\nHSM rows skipped: ${h.skipped}.`);
  console.log(`\n${scenarioTable(h.rows)}`);
  console.log(`\nX.509 at c=32 with the CA key in SoftHSM2: ${h.ratio}× the rate with the key in a file (token alone: ${h.signPerSecond.toLocaleString('en')} signatures/s over ${h.sessions} sessions).`);
}

function printTlsFloor(f) {
  console.log(`\n${scenarioTable(f.rows, 'TLS floor (bare Node HTTPS, broker TLS settings)')}`);
  console.log(`\nA resumed mTLS connection costs a bare Node server ${f.connectionCpuUs} µs of CPU before any application code; its own fresh/keep-alive ratio is ${f.ratio}× (the load generator shares the cores).`);
  if (f.tessera) {
    console.log(`Tessera renewals at c=32: fresh/keep-alive ${f.tessera.ratio}× (its connection costs ${f.tessera.connectionCpuUs} µs); the floor alone caps that ratio at ${f.tessera.ceiling}× (target 0.8).`);
  }
}

/** The peer rows (bench/peers.mjs), with this file's broker and measuring helpers. */
function peers() {
  return peersBench({ root, work, pki, material, token, csrPem, seconds, quick, log, startBroker, stop, processCpuUs });
}

if (args.only !== undefined) {
  if (!['workload-api', 'devices', 'peers', 'log-scale', 'hsm', 'redis', 'tls-floor'].includes(args.only)) throw new Error('--only takes: workload-api, devices, peers, log-scale, hsm, redis, tls-floor');
  if (args.only === 'tls-floor') {
    // Tessera's renewal rows at c=32 (keep-alive and fresh) and the floor, side by side in one run.
    const broker = await startBroker(path.join(work, 'data-tls-floor'));
    let rows;
    let mtls;
    try {
      mtls = await renewalCredentials(broker.url);
      await warmUp(csrLoad(broker.url));
      rows = await runScenarios(broker.url, broker.child.pid, renewalScenarios(mtls), [32]);
    } finally {
      await stop(broker.child);
    }
    const floor = await tlsFloorRows(mtls);
    const out = { ...floor, tesseraRows: rows, tessera: freshAgainstFloor(rows, floor) };
    mkdirSync(path.join(root, 'bench/results'), { recursive: true });
    writeFileSync(path.join(root, 'bench/results/tls-floor.json'), `${JSON.stringify({ date: new Date().toISOString(), node: process.version, cpus: cpus().length, seconds, ...out }, null, 2)}\n`);
    printTlsFloor(out);
  } else if (args.only === 'redis') {
    const r = await redisScale();
    mkdirSync(path.join(root, 'bench/results'), { recursive: true });
    writeFileSync(path.join(root, 'bench/results/redis-scale.json'), `${JSON.stringify({ date: new Date().toISOString(), node: process.version, cpus: cpus().length, secondsPerRun: seconds, ...r }, null, 2)}\n`);
    printRedisScale(r);
  } else if (args.only === 'hsm') {
    printHsm(await hsmRows());
  } else if (args.only === 'peers') {
    const p = await peers();
    mkdirSync(path.join(root, 'bench/results'), { recursive: true });
    writeFileSync(path.join(root, 'bench/results/peers.json'), `${JSON.stringify({ date: new Date().toISOString(), node: process.version, cpus: cpus().length, ...p }, null, 2)}\n`);
    printPeers(p);
  } else if (args.only === 'log-scale') {
    const s = await logScaleRun();
    mkdirSync(path.join(root, 'bench/results'), { recursive: true });
    writeFileSync(path.join(root, 'bench/results/log-scale.json'), `${JSON.stringify({ date: new Date().toISOString(), node: process.version, cpus: cpus().length, seconds, ...s }, null, 2)}\n`);
    printLogScale(s);
  } else if (args.only === 'workload-api') {
    const w = await workloadApiRows();
    mkdirSync(path.join(root, 'bench/results'), { recursive: true });
    writeFileSync(path.join(root, 'bench/results/workload-api.json'), `${JSON.stringify({ date: new Date().toISOString(), node: process.version, cpus: cpus().length, ...w }, null, 2)}\n`);
    printWorkloadApi(w);
  } else {
    const d = await devicesRun();
    console.log(scenarioTable(d.rows));
    console.log(`\n${devicesLine(d)}`);
  }
  rmSync(work, { recursive: true, force: true });
  process.exit(0);
}

// ---------- run ----------
const machine = { node: process.version, cpus: cpus().length, cpu: cpus()[0]?.model ?? '' };
log('machine', machine);
const crypto = await cryptoLimit();
log('crypto limit', crypto);

const useWrk = haveWrk();
if (!useWrk) log('wrk is not installed and Debian\'s wrk could not be installed here: the wrk rows are skipped');

const { child, url } = await startBroker(path.join(work, 'data-main'));
let tessera;
let tesseraWrkRows = [];
let renewalTls;
try {
  renewalTls = await renewalCredentials(url);
  tessera = await tesseraScenarios(url, child.pid, renewalTls);
  if (useWrk) tesseraWrkRows = await tesseraWrk(url, child.pid);
} finally {
  await stop(child);
}

// The same CSR scenario with minting on the event loop (ca.threads 0): what the minting threads buy.
const inline = await startBroker(path.join(work, 'data-inline'), { TESSERA_CA_THREADS: '0' });
try {
  await warmUp(csrLoad(inline.url));
  for (const concurrency of [1, 32]) {
    const r = await measured(inline.child.pid, { ...csrLoad(inline.url), concurrency, durationMs: seconds * 1000 });
    log('x509 from CSR (token), ca.threads 0', `c=${concurrency}`, r);
    tessera.push({ scenario: 'x509 from CSR (token), minting inline (ca.threads 0)', concurrency, ...r });
  }
} finally {
  await stop(inline.child);
}
const floor = await tlsFloorRows(renewalTls);
const cfssl = await cfsslScenarios();
const workloadApi = await workloadApiRows();
const hsm = await hsmRows();
const devices = await devicesRun();
tessera.push(...devices.rows);
const peerRows = await peers();
const redis = await redisScale();

const scale = !quick && !args['skip-scale'] ? await logScaleRun() : undefined;

const csrAt = (c) => tessera.find((r) => r.scenario === 'x509 from CSR (token)' && r.concurrency === c);
const cfsslAt = (c) => cfssl.results?.find((r) => r.concurrency === c);
const ratios = [1, 32].map((c) => ({
  concurrency: c,
  tesseraRps: csrAt(c)?.rps,
  cfsslRps: cfsslAt(c)?.rps,
  ratio: cfsslAt(c) ? Number((csrAt(c).rps / cfsslAt(c).rps).toFixed(2)) : null,
}));
const result = {
  date: new Date().toISOString(),
  secondsPerRun: seconds,
  machine,
  crypto,
  tessera,
  cfssl,
  ratios,
  wrk: useWrk
    ? {
        tessera: tesseraWrkRows,
        cfssl: cfssl.wrk ?? [],
        ratios: [1, 32].map((c) => {
          const t = tesseraWrkRows.find((r) => r.concurrency === c);
          const f = cfssl.wrk?.find((r) => r.concurrency === c);
          return { concurrency: c, tesseraRps: t?.rps, cfsslRps: f?.rps, ratio: t && f && f.rps > 0 ? Number((t.rps / f.rps).toFixed(2)) : null };
        }),
      }
    : { unavailable: 'wrk could not be installed' },
  fractionOfCryptoLimit: {
    oneCore: Number((csrAt(32).rps / crypto.perCoreLimit).toFixed(2)),
    allCores: Number((csrAt(32).rps / (crypto.perCoreLimit * machine.cpus)).toFixed(2)),
  },
  scale,
  workloadApi,
  hsm,
  auditDevices: { ratioToNone: devices.ratio, syslogFrames: devices.syslogFrames },
  peers: peerRows,
  redis,
  tlsFloor: { ...floor, tessera: freshAgainstFloor(tessera, floor) },
};
result.targets = issue19Targets(result);
mkdirSync(path.join(root, 'bench/results'), { recursive: true });
writeFileSync(path.join(root, 'bench/results/latest.json'), `${JSON.stringify(result, null, 2)}\n`);

console.log(`\nTessera benchmark — ${result.date}, Node ${machine.node}, ${machine.cpus} cores, ${seconds} s per run\n`);
console.log(scenarioTable([...tessera, ...(cfssl.results ?? [])]));
if (!cfssl.results) console.log(`\ncfssl: ${cfssl.unavailable}`);
console.log('\n| X.509 from CSR | Tessera req/s | cfssl req/s | Tessera/cfssl |\n|---:|---:|---:|---:|');
for (const r of ratios) console.log(`| c=${r.concurrency} | ${r.tesseraRps?.toLocaleString('en')} | ${r.cfsslRps?.toLocaleString('en') ?? 'n/a'} | ${r.ratio ?? 'n/a'} |`);
if (result.wrk.ratios) {
  console.log('\nDriven by wrk (C load generator, keep-alive, token scenario only):\n');
  console.log(scenarioTable([...result.wrk.tessera, ...result.wrk.cfssl]));
  console.log('\n| X.509 from CSR (wrk) | Tessera req/s | cfssl req/s | Tessera/cfssl |\n|---:|---:|---:|---:|');
  for (const r of result.wrk.ratios) console.log(`| c=${r.concurrency} | ${r.tesseraRps?.toLocaleString('en')} | ${r.cfsslRps?.toLocaleString('en') ?? 'n/a'} | ${r.ratio ?? 'n/a'} |`);
}
console.log(`\nCrypto in one issuance: RS256 verify ${crypto.rs256VerifyUs} µs + CSR verify ${crypto.csrVerifyUs} µs + P-256 sign ${crypto.p256SignUs} µs = ${crypto.perIssuanceUs} µs → ${crypto.perCoreLimit.toLocaleString('en')}/s per core.`);
console.log(`Importing the CSR's P-256 key: SPKI ${crypto.keyImportSpkiUs} µs, JWK ${crypto.keyImportJwkUs} µs, raw point via WebCrypto ${crypto.keyImportRawUs} µs (used).`);
console.log(`Tessera at c=32 is ${result.fractionOfCryptoLimit.oneCore}× one core's crypto limit (${result.fractionOfCryptoLimit.allCores} of all ${machine.cpus} cores').`);
console.log(devicesLine(devices));
printTlsFloor(result.tlsFloor);
if (scale) printLogScale(scale);
printWorkloadApi(workloadApi);
printPeers(peerRows);
printHsm(hsm);
printRedisScale(redis);
printTargets(result.targets);
rmSync(work, { recursive: true, force: true });
