#!/usr/bin/env node
// A/B of two builds of Tessera (e.g. an old commit in a detached worktree against HEAD) under the same
// load: X.509 from one P-256 CSR (or, --scenario jwt, a JWT-SVID) with one token, HTTPS keep-alive, driven by wrk -t1. Both brokers run
// at once, each from its own checkout's dist/ with its own dev material and token (made by that
// checkout's own dev code, so older key layouts still work), and the rounds alternate A,B,A,B,... after
// a warm-up of each, so machine noise falls on both. Reports per-round and median req/s and the broker's
// CPU per request (all its threads, from /proc).
//
// Usage: node bench/ab.mjs --a /work/bisect-<hash> --b /work/wt-bisect [--rounds 3] [--seconds 5]
//          [--concurrency 32] [--warmup 3] [--a-extra 'yaml line'] [--b-extra 'yaml line'] [--json out.json]
//          [--profile DIR] [--perf-stat] [--scenario x509|jwt] [--a-env K=V] [--b-env K=V]
// --a-env/--b-env: extra environment for that side's broker (a runtime knob, e.g. LD_PRELOAD=...).
// --a-store/--b-store: that side's `store:` (YAML flow), instead of an embedded store with fsync, e.g.
//   "{ redis: { url: 'redis://127.0.0.1:6379', prefix: ab1 } }" (the same build on two stores).
// --perf-stat: per request, the broker's system calls, positioned reads and writes, and context
// switches over each round (perf stat software/tracepoint events; exact counts, unlike wall time).
// Each checkout must already be built (npx tsc -p tsconfig.build.json) and have node_modules.
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { benchBrokerConfig } from './broker-config.mjs';
import { stopChild, untilListening } from './child.mjs';

const { values: args } = parseArgs({
  options: {
    a: { type: 'string' },
    b: { type: 'string' },
    rounds: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '32' },
    warmup: { type: 'string', default: '3' },
    'a-extra': { type: 'string', multiple: true, default: [] },
    'b-extra': { type: 'string', multiple: true, default: [] },
    'a-env': { type: 'string', multiple: true, default: [] },
    'a-store': { type: 'string' },
    'b-store': { type: 'string' },
    'b-env': { type: 'string', multiple: true, default: [] },
    json: { type: 'string' },
    profile: { type: 'string' },
    'perf-stat': { type: 'boolean' },
    scenario: { type: 'string', default: 'x509' },
  },
});
if (!args.a || !args.b) throw new Error('--a and --b: the two checkouts to compare');
const rounds = Number(args.rounds);
const seconds = Number(args.seconds);
const concurrency = Number(args.concurrency);
const warmupSeconds = Number(args.warmup);
const log = (...a) => console.error('[ab]', ...a);
const work = mkdtempSync(path.join(tmpdir(), 'tessera-ab-'));

function opensslCsr() {
  const dir = mkdtempSync(path.join(work, 'csr-'));
  spawnSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', `${dir}/k.pem`]);
  spawnSync('openssl', ['req', '-new', '-key', `${dir}/k.pem`, '-subj', '/CN=bench', '-out', `${dir}/c.pem`]);
  return readFileSync(`${dir}/c.pem`, 'utf8');
}
// x509: an X.509-SVID from one P-256 CSR; jwt: a JWT-SVID for the bench entry's audience.
const SCENARIOS = {
  x509: () => ({ path: '/v1/svid/x509', body: JSON.stringify({ csr: opensslCsr() }) }),
  jwt: () => ({ path: '/v1/svid/jwt', body: JSON.stringify({ audience: ['payments'] }) }),
};
if (!(args.scenario in SCENARIOS)) throw new Error(`--scenario: one of ${Object.keys(SCENARIOS).join(', ')}`);
const scenario = SCENARIOS[args.scenario]();

/**
 * CPU time (µs) a process has used so far in user and kernel mode (all threads), and its main thread's
 * (the event loop: the bottleneck at c=32 when it is busier than the minting thread), from /proc.
 */
function processCpuUs(pid) {
  const ticks = (file) => readFileSync(file, 'utf8').split(') ')[1].split(' ');
  const all = ticks(`/proc/${pid}/stat`);
  const main = ticks(`/proc/${pid}/task/${pid}/stat`);
  return {
    user: (Number(all[11]) * 1e6) / 100,
    system: (Number(all[12]) * 1e6) / 100,
    main: ((Number(main[11]) + Number(main[12])) * 1e6) / 100,
  };
}

/** Dev material, token and config for one checkout, made by that checkout's own code. */
async function prepare(label, checkout, extra, envPairs, store) {
  const env = Object.fromEntries(envPairs.map((kv) => {
    const at = kv.indexOf('=');
    if (at < 1) throw new Error(`--${label.toLowerCase()}-env: KEY=VALUE, got ${kv}`);
    return [kv.slice(0, at), kv.slice(at + 1)];
  }));
  const dist = (p) => import(path.join(checkout, 'dist', p));
  const { ensureDevMaterial } = await dist('dev/material.js');
  const { mintDevToken } = await dist('dev/token-issuer.js');
  const material = await ensureDevMaterial(path.join(work, `pki-${label}`), 'example.org');
  const token = await mintDevToken({ keyFile: material.issuerKeyFile, namespace: 'bench', serviceAccount: 'load', ttlSeconds: 3600 });
  const dataDir = path.join(work, `data-${label}`);
  mkdirSync(dataDir);
  const configFile = path.join(work, `tessera-${label}.yaml`);
  writeFileSync(
    configFile,
    benchBrokerConfig({ material, replicaId: `ab-${label}`, store: store ?? `{ embedded: { dir: ${dataDir}, fsync: true } }`, extra }),
  );
  return { label, checkout, token, configFile, env };
}

function startBroker(side) {
  // --profile DIR: a V8 CPU profile per broker thread (written when the broker exits) under DIR/<label>.
  const profile = args.profile ? ['--cpu-prof', '--cpu-prof-dir', path.join(args.profile, side.label)] : [];
  const child = spawn(process.execPath, [...profile, path.join(side.checkout, 'dist/cli/main.js'), 'serve', '--config', side.configFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TESSERA_CONFIG: '', ...side.env },
  });
  return untilListening(child, `broker ${side.label}`).then(({ url, output }) => ({ ...side, child, url, output }));
}

/** One wrk run against a broker: req/s, p50 and the broker's CPU per request over the run. */
async function wrkRound(broker, runSeconds) {
  const script = path.join(work, `wrk-${broker.label}.lua`);
  writeFileSync(script, [
    'wrk.method = "POST"',
    `wrk.body = ${JSON.stringify(scenario.body)}`,
    'wrk.headers["content-type"] = "application/json"',
    `wrk.headers["authorization"] = ${JSON.stringify(`Bearer ${broker.token}`)}`,
    // Any non-200 answer is counted, so a broken side cannot look fast.
    'done = function(summary, latency, requests) io.write(string.format("NON200 %d\\n", summary.errors.status)) end',
    '',
  ].join('\n'));
  const perf = args['perf-stat'] ? startPerfStat(broker.child.pid) : undefined;
  const cpu0 = processCpuUs(broker.child.pid);
  const out = await new Promise((resolve) => {
    const child = spawn('wrk', ['-t1', `-c${concurrency}`, `-d${runSeconds}s`, '--latency', '-s', script, `${broker.url}${scenario.path}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (d) => (text += d));
    child.stderr.on('data', (d) => (text += d));
    child.on('exit', () => resolve(text));
  });
  const cpu1 = processCpuUs(broker.child.pid);
  const counts = perf === undefined ? undefined : await perf.stop();
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN);
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? NaN);
  const non200 = Number(/NON200 (\d+)/.exec(out)?.[1] ?? NaN);
  const p50 = /50%\s+([\d.]+)(us|ms|s)/.exec(out);
  const p50Ms = p50 ? Number(p50[1]) * ({ us: 0.001, ms: 1, s: 1000 }[p50[2]]) : NaN;
  if (!(non200 === 0) || !(requests > 0)) throw new Error(`broker ${broker.label}: wrk saw failures or nothing:\n${out}\nthe broker's last output:\n${broker.output().slice(-3000)}`);
  const perReq = (us) => Math.round(us / requests);
  return {
    rps: Math.round(rps),
    p50Ms: Number(p50Ms.toFixed(2)),
    serverCpuUsPerReq: perReq(cpu1.user - cpu0.user + cpu1.system - cpu0.system),
    serverSysUsPerReq: perReq(cpu1.system - cpu0.system),
    serverMainThreadUsPerReq: perReq(cpu1.main - cpu0.main),
    requests,
    ...(counts === undefined ? {} : { perRequest: Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, Number((v / requests).toFixed(2))])) }),
  };
}

const PERF_EVENTS = ['raw_syscalls:sys_enter', 'syscalls:sys_enter_pread64', 'syscalls:sys_enter_pwrite64', 'context-switches'];

/** `perf stat` attached to the broker (all its threads) until stop(): event → count. */
function startPerfStat(pid) {
  const child = spawn('perf', ['stat', '-x', ',', '-e', PERF_EVENTS.join(','), '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let text = '';
  child.stderr.on('data', (d) => (text += d));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  return {
    async stop() {
      child.kill('SIGINT');
      await exited;
      const counts = {};
      for (const line of text.split('\n')) {
        const [value, , event] = line.split(',');
        const name = PERF_EVENTS.find((e) => e === event);
        if (name !== undefined && /^\d+$/.test(value ?? '')) counts[name.replace(/^.*:(sys_enter_)?/, '')] = Number(value);
      }
      return counts;
    },
  };
}

const median = (xs) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const sides = [await prepare('A', path.resolve(args.a), args['a-extra'], args['a-env'], args['a-store']), await prepare('B', path.resolve(args.b), args['b-extra'], args['b-env'], args['b-store'])];
const brokers = [];
try {
  for (const s of sides) brokers.push(await startBroker(s));
  for (const b of brokers) log(`warm-up ${b.label}`, await wrkRound(b, warmupSeconds));
  const results = { A: [], B: [] };
  for (let i = 0; i < rounds; i++) {
    // Alternate which side goes first, so neither always follows the other's warm caches.
    const order = i % 2 === 0 ? brokers : [...brokers].reverse();
    for (const b of order) {
      const r = await wrkRound(b, seconds);
      results[b.label].push(r);
      log(`round ${i + 1} ${b.label}`, r);
    }
  }
  const summary = Object.fromEntries(
    Object.entries(results).map(([k, rs]) => [k, {
      checkout: sides.find((s) => s.label === k).checkout,
      medianRps: median(rs.map((r) => r.rps)),
      medianP50Ms: median(rs.map((r) => r.p50Ms)),
      medianServerCpuUsPerReq: median(rs.map((r) => r.serverCpuUsPerReq)),
      medianServerSysUsPerReq: median(rs.map((r) => r.serverSysUsPerReq)),
      medianServerMainThreadUsPerReq: median(rs.map((r) => r.serverMainThreadUsPerReq)),
      ...(rs[0]?.perRequest === undefined ? {} : { medianPerRequest: Object.fromEntries(Object.keys(rs[0].perRequest).map((k) => [k, median(rs.map((r) => r.perRequest[k]))])) }),
      rounds: rs,
    }]),
  );
  const ratio = Number((summary.B.medianRps / summary.A.medianRps).toFixed(3));
  const cpuRatio = Number((summary.B.medianServerCpuUsPerReq / summary.A.medianServerCpuUsPerReq).toFixed(3));
  const report = { date: new Date().toISOString(), concurrency, seconds, rounds, ...summary, ratioBtoA: ratio, cpuPerReqRatioBtoA: cpuRatio };
  if (args.json) writeFileSync(args.json, `${JSON.stringify(report, null, 2)}\n`);
  for (const k of ['A', 'B']) {
    const s = summary[k];
    console.log(`${k} ${s.checkout}: median ${s.medianRps} req/s, p50 ${s.medianP50Ms} ms, server CPU ${s.medianServerCpuUsPerReq} µs/req (kernel ${s.medianServerSysUsPerReq}, event loop ${s.medianServerMainThreadUsPerReq})  [${s.rounds.map((r) => r.rps).join(', ')}]`);
    if (s.medianPerRequest) console.log(`  per request: ${Object.entries(s.medianPerRequest).map(([e, v]) => `${e} ${v}`).join(', ')}`);
  }
  console.log(`B/A req/s ${ratio}, B/A CPU per request ${cpuRatio} (c=${concurrency}, ${rounds} × ${seconds} s alternating)`);
} finally {
  for (const b of brokers) await stopChild(b.child);
  rmSync(work, { recursive: true, force: true });
}
