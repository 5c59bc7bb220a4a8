// Scale-out on Redis (issue 19, items 4–5), run from bench/run.mjs (`--only redis`, and in the full run):
//
//   - X.509 from a CSR (token) at c=1 and c=32: one broker on the embedded store and one broker on Redis,
//     both up at once and driven in alternating rounds (medians), and two broker replicas on one Redis
//     driven at the same time (c=16 each), all in this run;
//   - Redis commands per issuance: `INFO commandstats` (sum of calls) before/after each Redis run —
//     that sum includes the commands a script runs inside Redis — and the client commands (= round
//     trips on this path) from a MONITOR sample of sequential issuances (MONITOR slows Redis, so it is
//     never on during a measured run);
//   - renewal over fresh mTLS connections vs keep-alive at c=32 on the Redis broker, and the fraction of
//     fresh connections whose TLS session was resumed;
//   - the ceiling of one Redis primary for the audit append: the append script alone, driven by
//     redis-benchmark at c=32 with and without pipelining, under appendfsync always.
//
// Redis: a PRIVATE redis-server started here on a free port, `appendonly yes`, `appendfsync always`,
// in a temp dir — the durability a deployment runs with (the broker refuses volatile Redis).
import { spawn, spawnSync } from 'node:child_process';
import https from 'node:https';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { runLoad } from './load.mjs';
import { benchBrokerConfig } from './broker-config.mjs';
import { alternatingRounds } from './alternate.mjs';
import { stopChild, untilListening } from './child.mjs';
import { redisRoundTrips } from './targets.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** redis-cli against the private server; stdout as text. */
function cli(port, ...args) {
  const r = spawnSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`redis-cli ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Sum of `calls` over INFO commandstats, and the per-command counts. */
function commandStats(port) {
  const out = {};
  let total = 0;
  for (const m of cli(port, 'info', 'commandstats').matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
    if (m[1] === 'info' || m[1] === 'config' || m[1] === 'monitor') continue;
    out[m[1]] = Number(m[2]);
    total += Number(m[2]);
  }
  return { total, out };
}

async function startRedis(work) {
  if (spawnSync('sh', ['-c', 'command -v redis-server']).status !== 0) return undefined;
  const port = await freePort();
  const dir = path.join(work, `redis-${port}`);
  mkdirSync(dir, { recursive: true });
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir], { stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    if (spawnSync('redis-cli', ['-p', String(port), 'ping'], { encoding: 'utf8' }).stdout?.startsWith('PONG')) break;
    await sleep(50);
  }
  const version = /v=([\d.]+)/.exec(spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).stdout ?? '')?.[1] ?? '?';
  return { port, url: `redis://127.0.0.1:${port}`, child, version, settings: 'appendonly yes, appendfsync always (private redis-server, temp dir)' };
}

/** CPU time (µs) of one process (all threads) from /proc. */
function cpuUs(pid) {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1e6) / 100;
  } catch {
    return undefined;
  }
}

/** CPU of a process and its children (the minting threads are threads; `tessera serve` forks nothing). */
function treeCpuUs(pid) {
  let total = cpuUs(pid) ?? 0;
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || e === String(pid)) continue;
    try {
      if (readFileSync(`/proc/${e}/stat`, 'utf8').split(') ')[1].split(' ')[1] === String(pid)) total += cpuUs(e) ?? 0;
    } catch {
      // exited meanwhile
    }
  }
  return total;
}

/**
 * @param {object} o
 * @param {string} o.root          repository root (dist/cli/main.js)
 * @param {string} o.work          temp dir for configs and data
 * @param {string} o.pki           dev PKI dir
 * @param {object} o.material      dev material (ensureDevMaterial)
 * @param {string} o.ca            trust bundle PEM
 * @param {string} o.token         a service-account token for ns bench
 * @param {string} o.csrBody       the JSON body of the CSR scenario
 * @param {number} o.seconds       seconds per measured run
 * @param {boolean} o.quick
 * @param {(...a: unknown[]) => void} o.log
 */
export async function redisScaleBench(o) {
  const redis = await startRedis(o.work);
  if (redis === undefined) return { unavailable: 'redis-server is not installed' };
  const json = { 'content-type': 'application/json' };
  const bearer = { ...json, authorization: `Bearer ${o.token}` };
  const rows = [];
  const brokers = [];

  function writeConfig(name, store, replicaId) {
    const file = path.join(o.work, `redis-bench-${name}.yaml`);
    writeFileSync(
      file,
      benchBrokerConfig({ material: o.material, replicaId, store: JSON.stringify(store) }),
    );
    return file;
  }

  function startBroker(name, store, replicaId = 'bench') {
    const child = spawn(process.execPath, [path.join(o.root, 'dist/cli/main.js'), 'serve', '--config', writeConfig(name, store, replicaId)], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TESSERA_CONFIG: '', REDIS_URL: '', TESSERA_REPLICA_ID: replicaId },
    });
    brokers.push(child);
    return untilListening(child, `broker ${name}`).then(({ url }) => ({ child, url }));
  }
  const stop = stopChild;

  const csr = (url, concurrency, extra = {}) => ({
    url: `${url}/v1/svid/x509`, method: 'POST', headers: bearer, body: () => o.csrBody, keepAlive: true, tls: { ca: o.ca }, concurrency, durationMs: o.seconds * 1000, ...extra,
  });
  const warm = (url) => runLoad(csr(url, 32, { durationMs: o.quick ? 1000 : 2000 }));

  /** Load against several brokers at once (c split evenly); rps summed, latencies of the slowest. */
  async function drive(targets, concurrency, extra = {}) {
    const per = Math.max(1, Math.round(concurrency / targets.length));
    const before = targets.map((t) => treeCpuUs(t.child.pid));
    const redisBefore = cpuUs(redis.child.pid);
    const stats0 = commandStats(redis.port);
    const rs = await Promise.all(targets.map((t) => runLoad(csr(t.url, per, extra))));
    const stats1 = commandStats(redis.port);
    const redisAfter = cpuUs(redis.child.pid);
    const after = targets.map((t) => treeCpuUs(t.child.pid));
    const ok = rs.reduce((n, r) => n + r.ok, 0);
    const requests = rs.reduce((n, r) => n + r.requests, 0);
    const serverCpu = after.reduce((n, a, i) => n + (a - before[i]), 0);
    return {
      requests, ok, failed: rs.reduce((n, r) => n + r.failed, 0),
      rps: rs.reduce((n, r) => n + r.rps, 0),
      p50Ms: Math.max(...rs.map((r) => r.p50Ms)), p99Ms: Math.max(...rs.map((r) => r.p99Ms)),
      serverCpuUs: requests > 0 ? Math.round(serverCpu / requests) : null,
      clientCpuUs: Math.round(rs.reduce((n, r) => n + (r.clientCpuUs ?? 0) * r.requests, 0) / Math.max(1, requests)),
      ...(redisBefore !== undefined && redisAfter !== undefined && requests > 0 ? { redisCpuUs: Math.round((redisAfter - redisBefore) / requests) } : {}),
      // commandstats counts every command executed, those a script runs inside Redis included.
      redisCallsPerRequest: ok > 0 ? Number(((stats1.total - stats0.total) / ok).toFixed(2)) : null,
      ...(extra.countResumed ? { connections: rs.reduce((n, r) => n + r.connections, 0), resumed: rs.reduce((n, r) => n + r.resumed, 0) } : {}),
      ...(rs.find((r) => r.firstError) ? { firstError: rs.find((r) => r.firstError).firstError } : {}),
    };
  }

  /** Client commands (round trips) per sequential issuance, from MONITOR (source "lua" excluded). */
  async function roundTrips(url, n = 50) {
    const mon = spawn('redis-cli', ['-p', String(redis.port), 'monitor'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let text = '';
    mon.stdout.on('data', (d) => (text += d));
    await sleep(200);
    const stats0 = commandStats(redis.port);
    const r = await runLoad(csr(url, 1, { durationMs: 60_000, maxRequests: n }));
    const stats1 = commandStats(redis.port);
    await sleep(200);
    mon.kill();
    const lines = text.split('\n').filter((l) => /^\d+\.\d+ \[\d+ [^\]]+\] "/.test(l));
    // Left out: commands run inside scripts, the registration poll (a timer, not per issuance) and
    // this bench's own INFO.
    const client = lines.filter((l) => !/\[\d+ lua\]/.test(l) && !/registration-meta:version/.test(l) && !/\] "info"/i.test(l));
    const byCommand = {};
    for (const l of client) {
      const cmd = /\] "([^"]+)"/.exec(l)?.[1]?.toLowerCase() ?? '?';
      byCommand[cmd] = (byCommand[cmd] ?? 0) + 1;
    }
    const ok = r.ok;
    return {
      issuances: ok,
      clientCommandsPerIssuance: ok > 0 ? Number((client.length / ok).toFixed(2)) : null,
      callsPerIssuance: ok > 0 ? Number(((stats1.total - stats0.total) / ok).toFixed(2)) : null,
      byCommand,
    };
  }

  /** An SVID (and its key) for the mTLS rows, from the broker at `url`. */
  function svid(url) {
    return new Promise((resolve, reject) => {
      const req = https.request(`${url}/v1/svid/x509`, { method: 'POST', ca: o.ca, headers: bearer }, (res) => {
        let t = '';
        res.on('data', (c) => (t += c));
        res.on('end', () => {
          const j = JSON.parse(t);
          if (res.statusCode !== 200) reject(new Error(`svid: ${res.statusCode} ${t}`));
          else resolve({ ca: o.ca, cert: j.svid, key: j.privateKey });
        });
      });
      req.on('error', reject);
      req.end(JSON.stringify({ keyType: 'ec-p256' }));
    });
  }

  const out = { redis: { version: redis.version, settings: redis.settings } };
  try {
    // 1–2. The embedded store and one broker on Redis, both up at once and measured in alternating
    // rounds (median by rate): the ratio between them is a target, and rows taken minutes apart on a
    // shared machine differ by more than the code does.
    const redisStore = (prefix) => ({ embedded: { dir: path.join(o.work, 'unused') }, redis: { url: redis.url, prefix } });
    const emb = await startBroker('embedded', { embedded: { dir: path.join(o.work, 'data-redis-bench-embedded'), fsync: true } });
    const b = await startBroker('redis-one', redisStore('one'));
    {
      await warm(emb.url);
      await warm(b.url);
      out.roundTrips = await roundTrips(b.url);
      o.log('round trips per issuance (MONITOR, c=1)', out.roundTrips);
      const sides = [
        { scenario: 'x509 from CSR (token), embedded store', broker: emb, redis: false },
        { scenario: 'x509 from CSR (token), one broker on Redis', broker: b, redis: true },
      ];
      for (const c of [1, 32]) {
        const medians = await alternatingRounds(sides, o.quick ? 1 : 3, async (side, i) => {
          const r = await drive([side.broker], c);
          if (!side.redis) {
            delete r.redisCallsPerRequest;
            delete r.redisCpuUs;
          }
          o.log(side.scenario, `c=${c} round ${i + 1}`, r);
          return r;
        });
        sides.forEach((side, k) => rows.push({ scenario: side.scenario, concurrency: c, ...medians[k] }));
      }
      await stop(emb.child);
    }
    {
      const mtls = await svid(b.url);
      const mtlsRow = async (name, keepAlive) => {
        const r = await drive([b], 32, { headers: json, tls: mtls, keepAlive, countResumed: !keepAlive });
        o.log(name, 'c=32', r);
        rows.push({ scenario: name, concurrency: 32, ...r });
        return r;
      };
      await runLoad(csr(b.url, 32, { headers: json, tls: mtls, durationMs: 1000 }));
      const ka = await mtlsRow('x509 renewal, mTLS keep-alive, one broker on Redis', true);
      const fresh = await mtlsRow('x509 renewal, mTLS fresh conns, one broker on Redis', false);
      out.freshOverKeepAlive = ka.rps > 0 ? Number((fresh.rps / ka.rps).toFixed(2)) : null;
      await stop(b.child);
    }
    // 3. Two replicas on one Redis, driven at the same time.
    {
      const a = await startBroker('redis-a', redisStore('two'), 'bench-a');
      const b = await startBroker('redis-b', redisStore('two'), 'bench-b');
      await Promise.all([warm(a.url), warm(b.url)]);
      for (const c of [2, 32]) {
        const r = await drive([a, b], c);
        o.log('two replicas on one Redis: x509 from CSR', `c=${c}`, r);
        rows.push({ scenario: 'x509 from CSR (token), two replicas on one Redis (load split)', concurrency: c, ...r });
      }
      await Promise.all([stop(a.child), stop(b.child)]);
    }
    // 4. The ceiling of one Redis primary for the audit append (the append script, ~560-byte entry).
    out.appendCeiling = appendCeiling(redis.port, o);
    o.log('Redis audit-append ceiling', out.appendCeiling);
  } finally {
    for (const c of brokers) await stop(c).catch(() => {});
    await stopChild(redis.child);
  }
  const at = (scenario, c) => rows.find((r) => r.scenario === scenario && r.concurrency === c);
  const emb = at('x509 from CSR (token), embedded store', 32);
  const one = at('x509 from CSR (token), one broker on Redis', 32);
  const two = at('x509 from CSR (token), two replicas on one Redis (load split)', 32);
  const emb1 = at('x509 from CSR (token), embedded store', 1);
  const one1 = at('x509 from CSR (token), one broker on Redis', 1);
  out.ratios = {
    oneRedisOverEmbeddedC32: emb && one ? Number((one.rps / emb.rps).toFixed(2)) : null,
    oneRedisOverEmbeddedC1: emb1 && one1 ? Number((one1.rps / emb1.rps).toFixed(2)) : null,
    twoReplicasOverOneC32: one && two ? Number((two.rps / one.rps).toFixed(2)) : null,
  };
  out.rows = rows;
  return out;
}

/**
 * redis-benchmark running the audit-append script's two commands as Redis runs them (LLEN + RPUSH in
 * one EVAL) at c=32, unpipelined (one append per round trip, as one broker's group of requests) and
 * pipelined 16 deep — against a scratch key, deleted afterwards.
 */
function appendCeiling(port, o) {
  const entry = 'x'.repeat(560);
  const script = "local n = redis.call('LLEN', KEYS[1]) if n < tonumber(ARGV[1]) then return redis.error_reply('lost') end return redis.call('RPUSH', KEYS[1], ARGV[2])";
  const n = o.quick ? 5000 : 20000;
  const run = (pipeline) => {
    const r = spawnSync('redis-benchmark', ['-p', String(port), '-c', '32', '-n', String(n), '-P', String(pipeline), '-q', 'EVAL', script, '1', '{ceiling}:audit', '0', entry], { encoding: 'utf8' });
    const m = /([\d.]+) requests per second/.exec(r.stdout ?? '');
    return m ? Math.round(Number(m[1])) : null;
  };
  const unpipelined = run(1);
  const pipelined16 = run(16);
  cli(port, 'del', '{ceiling}:audit');
  const fsyncs = /aof_delayed_fsync:(\d+)/.exec(cli(port, 'info', 'persistence'))?.[1];
  return { appendsPerSecond: unpipelined, appendsPerSecondPipelined16: pipelined16, entryBytes: entry.length, aofDelayedFsync: fsyncs === undefined ? null : Number(fsyncs) };
}

/** Markdown for the rows and the numbers the targets are judged by. */
export function printRedisScale(r) {
  if (r.unavailable) {
    console.log(`\nRedis scale-out: ${r.unavailable}`);
    return;
  }
  const v = (x) => (x === undefined || x === null ? '' : String(x));
  console.log(`\nRedis ${r.redis.version}: ${r.redis.settings}\n`);
  console.log('| scenario | conc. | req/s | p50 ms | p99 ms | failed | server CPU µs/req | Redis CPU µs/req | Redis calls/req (commandstats) | resumed |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const x of r.rows) {
    console.log(`| ${x.scenario} | ${x.concurrency} | ${x.rps.toLocaleString('en')} | ${x.p50Ms} | ${x.p99Ms} | ${x.failed} | ${v(x.serverCpuUs)} | ${v(x.redisCpuUs)} | ${v(x.redisCallsPerRequest)} | ${x.resumed === undefined ? '' : `${x.resumed}/${x.connections}`} |`);
  }
  const t = r.roundTrips;
  if (t) {
    const split = redisRoundTrips(t);
    console.log(
      `\nRedis per X.509 issuance (MONITOR, ${t.issuances} sequential issuances): ${split?.perIssuance ?? 'n/a'} client commands = round trips every issuance sent (target ≤ 3), ` +
        `and ${split?.occasional ?? 'n/a'} occasional ones in all (background checkpoint rounds, one-off reads); ${t.callsPerIssuance} commandstats calls per issuance (incl. those run inside scripts); by command: ${JSON.stringify(t.byCommand)}`,
    );
  }
  const byRound = (scenario) => r.rows.filter((x) => x.scenario === scenario && x.rpsByRound).map((x) => `c=${x.concurrency} ${x.rpsByRound.join(', ')}`).join('; ');
  console.log(`One broker on Redis / embedded: ${v(r.ratios.oneRedisOverEmbeddedC32)} at c=32 (target ≥ 0.8), ${v(r.ratios.oneRedisOverEmbeddedC1)} at c=1; two replicas / one: ${v(r.ratios.twoReplicasOverOneC32)} at c=32.`);
  console.log(`  (embedded and Redis alternating, medians; req/s by round — embedded: ${byRound('x509 from CSR (token), embedded store')}; Redis: ${byRound('x509 from CSR (token), one broker on Redis')})`);
  console.log(`Fresh mTLS connections / keep-alive at c=32 (Redis broker): ${v(r.freshOverKeepAlive)} (target ≥ 0.8).`);
  const c = r.appendCeiling;
  if (c) console.log(`One Redis primary, audit-append script alone (appendfsync always, c=32, ${c.entryBytes}-byte entry): ${v(c.appendsPerSecond)}/s unpipelined, ${v(c.appendsPerSecondPipelined16)}/s pipelined ×16.`);
}
