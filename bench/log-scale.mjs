// The audit log at scale (issue 19 item 6): issuance rate, p50/p99, restart time, resident memory and
// disk size of a broker whose embedded store holds 10^3 vs 10^7 audit entries.
//
// The big log is built in-process through the store's own code (EmbeddedStore + AuditLog, fsync off,
// entries appended in 8 MiB batches), not through 10^7 HTTP requests: the result is exactly what a
// broker writes (audit.log records, audit.tree nodes, audit.idx offsets and the audit.snapshot taken on
// close), and `tessera serve` checks it on start like any other data directory (snapshot checksum,
// offsets, tree root against the snapshot, last entry against its leaf; docs/audit.md).
import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';

/** Resident memory of a process now (VmRSS), MiB. */
function rssMiB(pid) {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round(Number(m[1]) / 1024) : undefined;
  } catch {
    return undefined;
  }
}

function dirBytes(dir) {
  let n = 0;
  for (const f of readdirSync(dir)) n += statSync(path.join(dir, f)).size;
  return n;
}

/**
 * Writes n canonical audit entries (the issuance entry the broker writes for the bench's CSR scenario)
 * into a fresh embedded store at `dir`, with their Merkle tree, and closes it (which takes the snapshot).
 */
export async function buildLog({ dist, dir, n, log }) {
  const { EmbeddedStore } = await dist('store/embedded.js');
  const { AuditLog } = await dist('audit/log.js');
  const { canonicalJson } = await dist('audit/entry.js');
  const now = Date.now();
  // One canonical entry with markers; the varying fields are plain ASCII, so substituting them keeps it canonical.
  const template = canonicalJson({
    ts: now, type: 'x509-svid.issued', decision: 'allow', actor: 'spiffe://example.org/ns/bench/sa/load',
    subject: 'spiffe://example.org/ns/bench/sa/load', source: 'k8s-sa-token', namespace: 'bench', serviceAccount: 'load',
    podName: '@POD@', podUid: '6f1c3a52-4f0e-4b8e-9a51-2f6f0c0d9e11', serial: '@SERIAL@',
    ttlMs: 3_600_000, expiresAt: now + 3_600_000, keyFingerprint: `sha256:${'ab'.repeat(32)}`, requestId: '@REQ@', replica: 'prefill',
  }).toString('utf8');
  const parts = template.split(/@POD@|@SERIAL@|@REQ@/);
  const order = [...template.matchAll(/@POD@|@SERIAL@|@REQ@/g)].map((m) => m[0]);
  const entryAt = (j) => {
    const v = { '@POD@': `load-${j % 1000}`, '@SERIAL@': j.toString(16).padStart(32, '0'), '@REQ@': `r-${j}` };
    let s = parts[0];
    for (let k = 0; k < order.length; k++) s += v[order[k]] + parts[k + 1];
    return Buffer.from(s, 'utf8');
  };
  const sample = canonicalJson(JSON.parse(entryAt(7).toString('utf8')));
  if (!sample.equals(entryAt(7))) throw new Error('log-scale: the entry template is not canonical');

  const t0 = performance.now();
  const store = await EmbeddedStore.open(dir, { fsync: false });
  const audit = await AuditLog.open(store);
  const batch = 12_000; // ~6 MB: within the store's 8 MiB per append
  let lastLog = t0;
  for (let i = 0; i < n; i += batch) {
    const entries = [];
    for (let j = i; j < Math.min(n, i + batch); j++) entries.push(entryAt(j));
    await store.appendAuditEntries(entries);
    await audit.refresh();
    if (performance.now() - lastLog > 20_000) {
      lastLog = performance.now();
      log(`log-scale: built ${audit.size.toLocaleString('en')} of ${n.toLocaleString('en')} entries`);
    }
  }
  const root = audit.root().toString('base64');
  await store.close();
  return { buildMs: Math.round(performance.now() - t0), root };
}

/**
 * For each size: build the log, start `tessera serve` on it (restart time = spawn to listening,
 * including the snapshot check and the replay of anything after it), measure the CSR scenario at c=32,
 * read the broker's resident memory, stop it (it snapshots on close), start it once more (a restart
 * after its own run) and stop; then delete the directory.
 */
export async function logScaleBench({ dist, work, sizes, seconds, startBroker, stop, warmUp, measured, csrLoad, log }) {
  const rows = [];
  for (const n of sizes) {
    const dir = path.join(work, `data-log-${n}`);
    try {
      const built = await buildLog({ dist, dir, n, log });
      const diskBytes = dirBytes(dir);
      log(`log-scale: built ${n.toLocaleString('en')} entries in ${built.buildMs} ms, ${(diskBytes / 2 ** 20).toFixed(1)} MiB on disk`);
      const first = await startBroker(dir);
      let r;
      let rssStartMiB;
      let rssAfterMiB;
      try {
        rssStartMiB = rssMiB(first.child.pid);
        await warmUp(csrLoad(first.url));
        r = await measured(first.child.pid, { ...csrLoad(first.url), concurrency: 32, durationMs: seconds * 1000 });
        rssAfterMiB = rssMiB(first.child.pid);
      } finally {
        await stop(first.child);
      }
      const second = await startBroker(dir);
      await stop(second.child);
      const row = {
        entries: n,
        buildMs: built.buildMs,
        diskMiB: Number((diskBytes / 2 ** 20).toFixed(1)),
        restartMs: first.startMs,
        restartAfterRunMs: second.startMs,
        rssStartMiB,
        rssAfterLoadMiB: rssAfterMiB,
        ...r,
      };
      log(`log-scale ${n}`, row);
      rows.push(row);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const [small, big] = [rows[0], rows[rows.length - 1]];
  const ratio = small && big && small.rps > 0 ? Number((big.rps / small.rps).toFixed(2)) : null;
  return { rows, ratio };
}

export function printLogScale(s) {
  console.log('\n| audit entries | build s | disk MiB | restart ms (after build / after run) | RSS MiB (start / after load / peak) | req/s (CSR, c=32) | p50 ms | p99 ms |');
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of s.rows) {
    console.log(
      `| ${r.entries.toLocaleString('en')} | ${(r.buildMs / 1000).toFixed(1)} | ${r.diskMiB} | ${r.restartMs} / ${r.restartAfterRunMs} | ` +
        `${r.rssStartMiB} / ${r.rssAfterLoadMiB} / ${r.serverPeakRssMiB} | ${r.rps.toLocaleString('en')} | ${r.p50Ms} | ${r.p99Ms} |`,
    );
  }
  if (s.ratio !== null) console.log(`\nRate at ${s.rows.at(-1).entries.toLocaleString('en')} entries: ${s.ratio}× the rate at ${s.rows[0].entries.toLocaleString('en')} (target ≥ 0.9); restart target < 5000 ms.`);
}
