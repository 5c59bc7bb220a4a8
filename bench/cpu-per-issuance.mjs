#!/usr/bin/env node
// CPU per issuance at a fixed request count (not a fixed time): starts a real `tessera serve` on fresh
// dev material, sends N X.509-from-CSR and N JWT-SVID requests at concurrency C (HTTPS keep-alive,
// token), and prints the broker's CPU per request (all threads, from /proc) for each kind, in
// alternating rounds. CPU time is far less sensitive to other load on the machine than wall time.
//
// Usage: npm run build && node bench/cpu-per-issuance.mjs [--requests 4000] [--rounds 3] [--concurrency 32]
//   [--fresh]  a fresh token + CSR key per X.509 request (pre-generated), so no per-token/CSR cache helps
//   [--prof DIR]  run the broker under `node --cpu-prof --cpu-prof-dir DIR`
//   [--mtls]  instead: X.509 renewal over mTLS (the caller's SVID, a fresh CSR key per request), keep-alive
//             against a fresh connection per request (TLS sessions cached by the client), alternating, with
//             the share of fresh connections that resumed a session
import { spawn } from 'node:child_process';
import https from 'node:https';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { benchBrokerConfig } from './broker-config.mjs';
import { stopChild, untilListening } from './child.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => import(path.join(root, 'dist', p));

/** utime + stime (µs) of every thread of `pid`, in all and by thread name (comm). */
function threadCpu(pid) {
  const byName = {};
  let total = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const name = t === String(pid) ? 'event loop' : stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(') ') + 2).split(' ');
      const us = ((Number(f[11]) + Number(f[12])) * 1e6) / 100;
      byName[name] = (byName[name] ?? 0) + us;
      byName[`${name} sys`] = (byName[`${name} sys`] ?? 0) + (Number(f[12]) * 1e6) / 100;
      const cs = /voluntary_ctxt_switches:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8'));
      byName[`${name} wakeups/1000`] = (byName[`${name} wakeups/1000`] ?? 0) + Number(cs?.[1] ?? 0) * 1000;
      total += us;
    } catch {
      // thread gone
    }
  }
  return { total, byName };
}

/** CPU µs per request between two threadCpu readings, in all and by thread name. */
function perRequest(before, after, n) {
  const byName = {};
  for (const [k, v] of Object.entries(after.byName)) byName[k] = Math.round((v - (before.byName[k] ?? 0)) / n);
  return { total: (after.total - before.total) / n, byName };
}

/** Sends `n` requests, `concurrency` at a time; `body(i)`/`headers(i)` per request. Throws on a non-200. */
async function fixedCount({ url, n, concurrency, body, headers, ca, tls = {}, keepAlive = true, conns }) {
  const agent = new https.Agent({ keepAlive, maxSockets: concurrency, ca, maxCachedSessions: 1000, ...tls });
  let next = 0;
  const one = (i) =>
    new Promise((resolve, reject) => {
      const b = body(i);
      const req = https.request(url, { method: 'POST', agent, headers: { 'content-type': 'application/json', ...headers(i), 'content-length': Buffer.byteLength(b) } }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`${res.statusCode} ${Buffer.concat(chunks).toString().slice(0, 300)}`))));
      });
      req.on('error', reject);
      if (conns !== undefined) {
        req.on('socket', (sock) => {
          if (sock.counted) return;
          sock.counted = true;
          sock.once('secureConnect', () => {
            conns.opened++;
            if (sock.isSessionReused()) conns.resumed++;
          });
        });
      }
      req.end(b);
    });
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < n) await one(next++);
  }));
  agent.destroy();
}

export async function cpuPerIssuance({ requests = 4000, rounds = 3, concurrency = 32, fresh = false, mtls = false, profDir } = {}) {
  const { ensureDevMaterial } = await dist('dev/material.js');
  const { mintDevToken } = await dist('dev/token-issuer.js');
  const work = mkdtempSync(path.join(tmpdir(), 'tessera-cpu-'));
  try {
    const m = await ensureDevMaterial(path.join(work, 'pki'), 'example.org');
    const ca = readFileSync(m.bundleFile, 'utf8');
    const cfg = path.join(work, 'tessera.yaml');
    writeFileSync(cfg, benchBrokerConfig({ material: m, replicaId: 'bench', store: `{ embedded: { dir: ${work}/data, fsync: true } }` }));
    const nodeArgs = profDir ? ['--cpu-prof', '--cpu-prof-dir', profDir] : [];
    const child = spawn(process.execPath, [...nodeArgs, path.join(root, 'dist/cli/main.js'), 'serve', '--config', cfg], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TESSERA_CONFIG: '' } });
    const { url } = await untilListening(child, 'broker');
    const tokenFor = (i) => mintDevToken({ keyFile: m.issuerKeyFile, namespace: 'bench', serviceAccount: `load${i}`, ttlSeconds: 3600 });
    const csrOf = async () => {
      const { mintCaCsr } = await dist('ca/x509.js');
      // Any P-256 CSR will do for an X.509-SVID; the CA-CSR builder is at hand and makes one.
      return mintCaCsr({ commonName: 'bench', trustDomain: 'example.org' }, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
    };
    const token = await tokenFor(0);
    const csr = await csrOf();
    let tokens = [];
    let csrs = [];
    const x509 = async () => {
      const t0 = threadCpu(child.pid);
      await fixedCount({
        url: `${url}/v1/svid/x509`, n: requests, concurrency, ca,
        body: (i) => JSON.stringify({ csr: fresh ? csrs[i] : csr }),
        headers: (i) => ({ authorization: `Bearer ${fresh ? tokens[i] : token}` }),
      });
      return perRequest(t0, threadCpu(child.pid), requests);
    };
    const jwt = async () => {
      const t0 = threadCpu(child.pid);
      const b = JSON.stringify({ audience: ['payments'] });
      await fixedCount({ url: `${url}/v1/svid/jwt`, n: requests, concurrency, ca, body: () => b, headers: () => ({ authorization: `Bearer ${token}` }) });
      return perRequest(t0, threadCpu(child.pid), requests);
    };
    // mTLS renewal: the caller's current SVID authenticates it; a fresh CSR key per request.
    const renewal = async (keepAlive) => {
      const conns = { opened: 0, resumed: 0 };
      const t0 = threadCpu(child.pid);
      await fixedCount({
        url: `${url}/v1/svid/x509`, n: requests, concurrency, ca, tls: mtlsCreds, keepAlive, conns,
        // Without "connection: close" Node's Agent hands a finished socket to a queued request even with
        // keepAlive off, so most "fresh" requests would ride an open connection.
        body: (i) => JSON.stringify({ csr: csrs[i] }), headers: () => (keepAlive ? {} : { connection: 'close' }),
      });
      return { ...perRequest(t0, threadCpu(child.pid), requests), ...conns };
    };
    let mtlsCreds;
    const prepare = async () => {
      if (!fresh && !mtls) return;
      tokens = await Promise.all(Array.from({ length: requests }, (_, i) => tokenFor(i)));
      csrs = [];
      for (let i = 0; i < requests; i++) csrs.push(await csrOf());
    };
    await prepare();
    if (mtls) {
      const first = await new Promise((resolve, reject) => {
        const req = https.request(`${url}/v1/svid/x509`, { method: 'POST', ca, headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` } }, (res) => {
          let t = '';
          res.on('data', (c) => (t += c));
          res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(t)) : reject(new Error(`${res.statusCode} ${t.slice(0, 300)}`))));
        });
        req.on('error', reject);
        req.end(JSON.stringify({ keyType: 'ec-p256' }));
      });
      mtlsCreds = { cert: first.svid, key: first.privateKey };
      await renewal(true); // warm-up (JIT)
      await renewal(false);
      const rows = { keepAlive: [], fresh: [] };
      for (let r = 0; r < rounds; r++) {
        await prepare();
        const k = await renewal(true);
        const f = await renewal(false);
        rows.keepAlive.push(Math.round(k.total));
        rows.fresh.push(Math.round(f.total));
        console.error(`[cpu] round ${r + 1}: mTLS keep-alive ${rows.keepAlive.at(-1)} µs ${JSON.stringify(k.byName)}; fresh ${rows.fresh.at(-1)} µs, ${f.resumed}/${f.opened} connections resumed ${JSON.stringify(f.byName)}`);
      }
      await stopChild(child);
      const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
      return { requests, rounds, concurrency, mtls, keepAliveCpuUs: median(rows.keepAlive), freshCpuUs: median(rows.fresh), keepAliveRounds: rows.keepAlive, freshRounds: rows.fresh };
    }
    await x509(); // warm-up (JIT)
    await jwt();
    const rows = { x509: [], jwt: [] };
    for (let r = 0; r < rounds; r++) {
      await prepare();
      const x = await x509();
      const j = await jwt();
      rows.x509.push(Math.round(x.total));
      rows.jwt.push(Math.round(j.total));
      console.error(`[cpu] round ${r + 1}: x509 ${rows.x509.at(-1)} µs ${JSON.stringify(x.byName)}; jwt ${rows.jwt.at(-1)} µs ${JSON.stringify(j.byName)}`);
    }
    await stopChild(child);
    const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
    return { requests, rounds, concurrency, fresh, x509CpuUs: median(rows.x509), jwtCpuUs: median(rows.jwt), x509Rounds: rows.x509, jwtRounds: rows.jwt };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values: a } = parseArgs({ options: { requests: { type: 'string' }, rounds: { type: 'string' }, concurrency: { type: 'string' }, fresh: { type: 'boolean' }, mtls: { type: 'boolean' }, prof: { type: 'string' } } });
  const r = await cpuPerIssuance({
    requests: Number(a.requests ?? 4000), rounds: Number(a.rounds ?? 3), concurrency: Number(a.concurrency ?? 32), fresh: a.fresh === true, mtls: a.mtls === true,
    ...(a.prof ? { profDir: a.prof } : {}),
  });
  console.log(JSON.stringify(r));
}
