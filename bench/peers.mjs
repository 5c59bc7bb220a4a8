// Tessera against like-for-like peers (issue 19): cfssl over TLS with HMAC-authenticated `authsign`,
// and the same with cfssl's certificate database on the local PostgreSQL (`-db-config`: every
// certificate it signs is INSERTed and committed before it answers). Also cfssl's plain HTTP `sign`
// (no caller authentication, no record) for reference, and Tessera's X.509-from-CSR with one token and
// one CSR repeated and with a FRESH token and a FRESH CSR key for every request (pre-generated before
// the timed runs, each used once: no cache the benchmark's repetition alone benefits from can help it).
//
// Everything is driven by wrk -t1 (keep-alive; C, so the servers get most of the two cores), in
// alternating rounds (every configuration once per round, c=32 then c=1), and the medians of the
// rounds are reported. `npm run bench -- --only peers` runs just this.
import { createHmac, createPrivateKey, generateKeyPairSync, randomBytes, randomUUID, sign } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/** wrk Lua: requests read from a file (one per line: authorization TAB body), used in order from an offset. */
const WRK_SCRIPT = `
local reqs = {}
local n = 0
sent = 0
wrapped = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  local file, skip, max, reqPath, host = args[1], tonumber(args[2]), tonumber(args[3]), args[4], args[5]
  local k = 0
  for line in io.lines(file) do
    if k >= skip and n < max then
      local tab = line:find("\\t", 1, true)
      local auth = line:sub(1, tab - 1)
      local headers = { ["Host"] = host, ["Content-Type"] = "application/json" }
      if auth ~= "" then headers["Authorization"] = auth end
      n = n + 1
      reqs[n] = wrk.format("POST", reqPath, headers, line:sub(tab + 1))
    end
    k = k + 1
  end
end
function request()
  sent = sent + 1
  if sent > n then wrapped = 1 end
  return reqs[((sent - 1) % n) + 1]
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do io.write("sent ", t:get("sent"), " wrapped ", t:get("wrapped"), "\\n") end
end
`;

const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/**
 * @param {object} d
 * @param {string} d.work          scratch directory (removed by the caller)
 * @param {string} d.pki           dev material directory (intermediate CA, server TLS key)
 * @param {object} d.material      ensureDevMaterial's result
 * @param {string} d.token         one service-account token (the repeated-token rows)
 * @param {string} d.csrPem        one P-256 CSR (the repeated-CSR rows and cfssl)
 * @param {number} d.seconds       per timed run
 * @param {boolean} d.quick
 * @param {(dir: string) => Promise<{child: import('node:child_process').ChildProcess, url: string}>} d.startBroker
 * @param {(child: import('node:child_process').ChildProcess) => Promise<void>} d.stop
 * @param {(pid: number) => number | undefined} d.processCpuUs
 * @param {(...a: unknown[]) => void} d.log
 */
export async function peersBench(d) {
  const { work, material, seconds, log } = d;
  const rounds = d.quick ? 1 : 3;
  if (spawnSync('sh', ['-c', 'command -v wrk && command -v cfssl']).status !== 0) {
    return { unavailable: 'wrk and cfssl (Debian: wrk, golang-cfssl) are needed for the peer rows' };
  }
  const script = path.join(work, 'peers.lua');
  writeFileSync(script, WRK_SCRIPT);

  // ---------- request files ----------
  const line = (auth, body) => `${auth}\t${body}\n`;
  const fixedFile = (name, auth, body) => {
    const f = path.join(work, `peers-${name}.txt`);
    writeFileSync(f, line(auth, body));
    return { file: f, size: 1, cursor: 0, fresh: false };
  };
  const hmacKey = randomBytes(16);
  const cfsslRequest = Buffer.from(JSON.stringify({ certificate_request: d.csrPem }));
  // cfssl's authsign body: {token, request}, both base64 ([]byte in Go's JSON); token =
  // HMAC-SHA256(auth key, request bytes) (cfssl auth/auth.go, "standard" provider). Computed once.
  const authsignBody = JSON.stringify({ token: createHmac('sha256', hmacKey).update(cfsslRequest).digest('base64'), request: cfsslRequest.toString('base64') });

  // Fresh tokens: the dev issuer's token shape (dev/token-issuer.ts) with a new jti, pod and service
  // account UID each, signed RS256 with the issuer key; fresh P-256 keys and CSRs. Generated between
  // timed runs (never during one), before each run of the fresh row: 1.5× what the same row with one
  // token and CSR managed just before, so no request is ever sent twice (a run that still ran out
  // would be reported as wrapped).
  const freshFile = path.join(work, 'peers-fresh.txt');
  writeFileSync(freshFile, '');
  const fresh = { file: freshFile, size: 0, cursor: 0, fresh: true, generatedMs: 0 };
  const { csrFor } = await import(path.join(d.root, 'dist/sdk/csr.js'));
  const [h, p] = d.token.split('.');
  const template = JSON.parse(Buffer.from(p, 'base64url').toString());
  const issuerKey = createPrivateKey(readFileSync(material.issuerKeyFile));
  const encHeader = Buffer.from(JSON.stringify(JSON.parse(Buffer.from(h, 'base64url').toString()))).toString('base64url');
  const generate = (n) => {
    const t0 = performance.now();
    const lines = [];
    for (let i = 0; i < n; i++) {
      const k8s = template['kubernetes.io'];
      const claims = {
        ...template,
        jti: randomUUID(),
        'kubernetes.io': { ...k8s, serviceaccount: { ...k8s.serviceaccount, uid: randomUUID() }, pod: { name: `load-${(fresh.size + i).toString(36)}`, uid: randomUUID() } },
      };
      const input = `${encHeader}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
      const tok = `${input}.${sign('sha256', Buffer.from(input), issuerKey).toString('base64url')}`;
      const kp = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      lines.push(line(`Bearer ${tok}`, JSON.stringify({ csr: csrFor(kp.privateKey, kp.publicKey) })));
    }
    appendFileSync(freshFile, lines.join(''));
    fresh.size += n;
    fresh.generatedMs += performance.now() - t0;
  };
  /** Makes sure the fresh pool holds 1.5× what `rps` over `secs` would use, unused. */
  const ensureFresh = (rps, secs) => {
    const need = Math.ceil(1.5 * Math.max(rps, 200) * secs) + 200 - (fresh.size - fresh.cursor);
    if (need > 0) generate(need);
  };

  // ---------- servers ----------
  const broker = await d.startBroker(path.join(work, 'data-peers'));
  const cfssl = await startCfsslAll(d, hmacKey);
  const servers = [broker.child, ...cfssl.children];
  try {
    const host = (u) => new URL(u).host;
    const configs = [
      {
        key: 'tessera-csr', scenario: 'Tessera x509 from CSR (token, durable audit, receipt)', url: `${broker.url}/v1/svid/x509`, pid: broker.child.pid,
        req: fixedFile('tessera-csr', `Bearer ${d.token}`, JSON.stringify({ csr: d.csrPem })),
      },
      {
        key: 'tessera-fresh', scenario: 'Tessera x509 from CSR, fresh token + fresh CSR key per request', url: `${broker.url}/v1/svid/x509`, pid: broker.child.pid, req: fresh,
      },
      {
        key: 'tessera-jwt', scenario: 'Tessera JWT-SVID (token, durable audit, receipt)', url: `${broker.url}/v1/svid/jwt`, pid: broker.child.pid,
        req: fixedFile('tessera-jwt', `Bearer ${d.token}`, JSON.stringify({ audience: ['payments'] })),
      },
      {
        key: 'cfssl-plain', scenario: 'cfssl sign (plain HTTP, no auth, no record)', url: `${cfssl.plain}/api/v1/cfssl/sign`, pid: cfssl.children[0].pid,
        req: fixedFile('cfssl-plain', '', cfsslRequest.toString()),
      },
      {
        key: 'cfssl-authsign', scenario: 'cfssl authsign over TLS (HMAC, no record)', url: `${cfssl.tls}/api/v1/cfssl/authsign`, pid: cfssl.children[1].pid,
        req: fixedFile('cfssl-authsign', '', authsignBody),
      },
      ...(cfssl.db
        ? [{
            key: 'cfssl-certdb', scenario: 'cfssl authsign over TLS + certdb on PostgreSQL', url: `${cfssl.db}/api/v1/cfssl/authsign`, pid: cfssl.children[2].pid,
            req: fixedFile('cfssl-certdb', '', authsignBody),
          }]
        : []),
    ];
    // Warm-up (JIT, TLS sessions, PostgreSQL's caches); the fresh row draws from its pool here too.
    const warm = d.quick ? 1 : 2;
    let lastSameToken = 0;
    for (const c of configs) {
      if (c.req.fresh) ensureFresh(lastSameToken, warm);
      const r = await wrk(d, script, c, 32, warm, host(c.url));
      if (c.key === 'tessera-csr') lastSameToken = r.rps;
    }
    const runs = [];
    const sameToken = new Map();
    for (let round = 1; round <= rounds; round++) {
      for (const c of configs) {
        for (const concurrency of [32, 1]) {
          if (c.req.fresh) ensureFresh(sameToken.get(concurrency) ?? 2000, seconds);
          const r = await wrk(d, script, c, concurrency, seconds, host(c.url));
          if (c.key === 'tessera-csr') sameToken.set(concurrency, r.rps);
          log(`peers round ${round}: ${c.scenario} c=${concurrency}`, r);
          runs.push({ key: c.key, scenario: c.scenario, concurrency, round, ...r });
        }
      }
    }
    const rows = [];
    for (const c of configs) {
      for (const concurrency of [32, 1]) {
        const rs = runs.filter((r) => r.key === c.key && r.concurrency === concurrency);
        rows.push({
          key: c.key, scenario: c.scenario, concurrency, rounds: rs.length,
          rps: Math.round(median(rs.map((r) => r.rps))),
          p50Ms: median(rs.map((r) => r.p50Ms)),
          p99Ms: median(rs.map((r) => r.p99Ms)),
          serverCpuUs: Math.round(median(rs.map((r) => r.serverCpuUs ?? NaN))),
          failed: rs.reduce((a, r) => a + r.failed, 0),
          ...(rs.some((r) => r.wrapped) ? { wrapped: true } : {}),
          rpsByRound: rs.map((r) => r.rps),
        });
      }
    }
    const at = (key, c) => rows.find((r) => r.key === key && r.concurrency === c);
    const ratios = [];
    for (const t of ['tessera-csr', 'tessera-fresh']) {
      for (const p of ['cfssl-plain', 'cfssl-authsign', 'cfssl-certdb']) {
        for (const c of [32, 1]) {
          const a = at(t, c);
          const b = at(p, c);
          if (a && b && b.rps > 0) ratios.push({ tessera: t, peer: p, concurrency: c, ratio: Number((a.rps / b.rps).toFixed(2)) });
        }
      }
    }
    const certdbRecorded = cfssl.recorded();
    log(`peers: cfssl recorded ${certdbRecorded} certificates in PostgreSQL`);
    return { rounds, secondsPerRun: seconds, certdbRecorded, freshRequests: fresh.size, freshUsed: fresh.cursor, freshGeneratedMs: Math.round(fresh.generatedMs), rows, ratios, runs, ...(cfssl.dbUnavailable ? { certdbUnavailable: cfssl.dbUnavailable } : {}) };
  } finally {
    for (const s of servers) await d.stop(s).catch(() => {});
    cfssl.cleanup();
  }
}

/** Three `cfssl serve` processes: plain HTTP, TLS + authsign, TLS + authsign + certdb (scratch PostgreSQL database). */
async function startCfsslAll(d, hmacKey) {
  const { work, pki } = d;
  const base = { expiry: '1h', usages: ['digital signature', 'server auth', 'client auth'] };
  const plainCfg = path.join(work, 'cfssl-plain.json');
  writeFileSync(plainCfg, JSON.stringify({ signing: { default: base } }));
  const authCfg = path.join(work, 'cfssl-auth.json');
  writeFileSync(authCfg, JSON.stringify({ signing: { default: { ...base, auth_key: 'bench' } }, auth_keys: { bench: { type: 'standard', key: hmacKey.toString('hex') } } }));
  const tlsArgs = ['-tls-cert', `${pki}/server.pem`, '-tls-key', `${pki}/server.key`];
  const children = [];
  const start = async (args, scheme) => {
    const port = 19000 + Math.floor(Math.random() * 20000);
    const child = spawn('cfssl', ['serve', '-address', '127.0.0.1', '-port', String(port), '-ca', `${pki}/intermediate.pem`, '-ca-key', `${pki}/intermediate.key`, '-loglevel', '3', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr.resume(); // never let a full log pipe stall it
    children.push(child);
    const url = `${scheme}://127.0.0.1:${port}`;
    for (let i = 0; i < 100; i++) {
      const up = spawnSync('curl', ['-sk', '-o', '/dev/null', '-w', '%{http_code}', `${url}/api/v1/cfssl/info`, '-d', '{}']).stdout?.toString();
      if (up && up !== '000') return url;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`cfssl serve ${args.join(' ')} did not start`);
  };
  const db = `tessera_bench_cfssl_${process.pid}`;
  const psql = (args) => spawnSync('psql', ['-h', '127.0.0.1', '-U', 'postgres', '-v', 'ON_ERROR_STOP=1', '-q', ...args], { encoding: 'utf8' });
  let dbUnavailable;
  let dbCreated = false;
  const plain = await start(['-config', plainCfg], 'http');
  const tls = await start(['-config', authCfg, ...tlsArgs], 'https');
  let dbUrl;
  const made = psql(['-d', 'postgres', '-c', `CREATE DATABASE ${db}`]);
  if (made.status !== 0) dbUnavailable = `PostgreSQL at 127.0.0.1:5432 is not usable: ${(made.stderr || made.error?.message || '').trim()}`;
  else {
    dbCreated = true;
    // cfssl's certdb/pg/migrations/001_CreateCertificates.sql at the packaged version (Debian golang-cfssl 1.2.0+git20160825).
    const schema = psql(['-d', db, '-c', `
      CREATE TABLE certificates (
        serial_number bytea NOT NULL, authority_key_identifier bytea NOT NULL, ca_label bytea, status bytea NOT NULL,
        reason int, expiry timestamptz, revoked_at timestamptz, pem bytea NOT NULL,
        PRIMARY KEY (serial_number, authority_key_identifier));
      CREATE TABLE ocsp_responses (
        serial_number bytea NOT NULL, authority_key_identifier bytea NOT NULL, body bytea NOT NULL, expiry timestamptz,
        PRIMARY KEY (serial_number, authority_key_identifier),
        FOREIGN KEY (serial_number, authority_key_identifier) REFERENCES certificates (serial_number, authority_key_identifier));`]);
    if (schema.status !== 0) dbUnavailable = `cfssl's tables could not be created: ${schema.stderr.trim()}`;
    else {
      const dbCfg = path.join(work, 'cfssl-db.json');
      writeFileSync(dbCfg, JSON.stringify({ driver: 'postgres', data_source: `postgres://postgres@127.0.0.1:5432/${db}?sslmode=disable` }));
      dbUrl = await start(['-config', authCfg, ...tlsArgs, '-db-config', dbCfg], 'https');
    }
  }
  return {
    plain, tls, ...(dbUrl ? { db: dbUrl } : {}), children, ...(dbUnavailable ? { dbUnavailable } : {}),
    recorded: () => (dbCreated ? Number(psql(['-d', db, '-Atc', 'SELECT count(*) FROM certificates']).stdout.trim()) : 0),
    cleanup: () => {
      if (dbCreated) psql(['-d', 'postgres', '-c', `DROP DATABASE IF EXISTS ${db}`]);
    },
  };
}

/** One wrk run of a configuration; advances a fresh pool's cursor by the requests sent. */
async function wrk(d, script, c, concurrency, seconds, host) {
  const before = d.processCpuUs(c.pid);
  const max = c.req.fresh ? c.req.size - c.req.cursor : c.req.size;
  if (max <= 0) return { requests: 0, ok: 0, failed: 0, rps: 0, p50Ms: NaN, p99Ms: NaN, wrapped: true, firstError: 'fresh request pool exhausted' };
  const u = new URL(c.url);
  const r = await new Promise((resolve) => {
    const child = spawn('wrk', ['-t1', `-c${concurrency}`, `-d${seconds}s`, '--latency', '-s', script, `${u.origin}${u.pathname}`, '--', c.req.file, String(c.req.cursor), String(max), u.pathname, host], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (x) => (stdout += x));
    child.stderr.on('data', (x) => (stderr += x));
    child.on('error', (err) => resolve({ status: -1, stdout, stderr: String(err) }));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
  const after = d.processCpuUs(c.pid);
  const out = r.stdout;
  const ms = (label) => {
    const m = new RegExp(`^\\s*${label}\\s+([\\d.]+)(us|ms|s)\\s*$`, 'm').exec(out);
    return m === null ? NaN : Number((Number(m[1]) * { us: 0.001, ms: 1, s: 1000 }[m[2]]).toFixed(3));
  };
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0);
  const sent = Number(/^sent (\d+)/m.exec(out)?.[1] ?? requests);
  const wrapped = c.req.fresh && /wrapped 1/.test(out);
  if (c.req.fresh) c.req.cursor += sent;
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  const socketErrors = (/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out) ?? []).slice(1).reduce((a, b) => a + Number(b), 0);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0);
  if (r.status !== 0 || requests === 0) return { requests: 0, ok: 0, failed: 0, rps: 0, p50Ms: NaN, p99Ms: NaN, firstError: `wrk: ${(r.stderr || out).slice(0, 300)}` };
  return {
    requests, ok: requests - non2xx, failed: non2xx + socketErrors,
    rps: Math.round((rps * (requests - non2xx)) / requests), p50Ms: ms('50%'), p99Ms: ms('99%'),
    ...(before !== undefined && after !== undefined ? { serverCpuUs: Math.round((after - before) / requests) } : {}),
    ...(wrapped ? { wrapped: true } : {}),
  };
}

/** The peer tables as Markdown. */
export function printPeers(p) {
  if (p.unavailable) {
    console.log(`\npeers: ${p.unavailable}`);
    return;
  }
  const f = (v) => (Number.isFinite(v) ? String(v) : '');
  console.log(`\nPeers, driven by wrk -t1 (keep-alive), P-256 CSR; medians of ${p.rounds} alternating round(s) × ${p.secondsPerRun} s`);
  console.log('\n| configuration | conc. | req/s | p50 ms | p99 ms | server CPU µs/req | failed | req/s by round |\n|---|---:|---:|---:|---:|---:|---:|---|');
  for (const r of p.rows) {
    console.log(`| ${r.scenario}${r.wrapped ? ' (fresh pool wrapped!)' : ''} | ${r.concurrency} | ${r.rps.toLocaleString('en')} | ${f(r.p50Ms)} | ${f(r.p99Ms)} | ${f(r.serverCpuUs)} | ${r.failed} | ${r.rpsByRound.join(', ')} |`);
  }
  if (p.certdbUnavailable) console.log(`\ncfssl with certdb: ${p.certdbUnavailable}`);
  const names = { 'cfssl-plain': 'cfssl plain HTTP, no auth, no record', 'cfssl-authsign': 'cfssl TLS + authsign', 'cfssl-certdb': 'cfssl TLS + authsign + certdb (PostgreSQL)' };
  console.log('\n| Tessera/peer | peer | c=32 | c=1 |\n|---|---|---:|---:|');
  for (const t of ['tessera-csr', 'tessera-fresh']) {
    for (const peer of Object.keys(names)) {
      const r32 = p.ratios.find((r) => r.tessera === t && r.peer === peer && r.concurrency === 32);
      const r1 = p.ratios.find((r) => r.tessera === t && r.peer === peer && r.concurrency === 1);
      if (r32 || r1) console.log(`| ${t === 'tessera-fresh' ? 'X.509 from CSR, fresh token + key' : 'X.509 from CSR, one token + CSR'} | ${names[peer]} | ${r32?.ratio ?? ''} | ${r1?.ratio ?? ''} |`);
    }
  }
  console.log(`\nFresh requests: ${p.freshUsed.toLocaleString('en')} of ${p.freshRequests.toLocaleString('en')} pre-generated used, each once.`);
}
