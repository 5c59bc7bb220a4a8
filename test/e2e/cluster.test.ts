/**
 * `tessera serve --workers 2` as a real process tree: a node:cluster primary holding the embedded store
 * and two worker brokers on one port. Concurrent clients are answered by both workers; a worker killed
 * with SIGKILL mid-load is replaced by the primary while the other keeps serving; SIGTERM to the primary
 * shuts everything down cleanly (exit 0); afterwards `tessera audit export` + `audit verify` accept the
 * log, and every credential a client received is in it at the index its receipt names.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintDevToken } from '../../src/dev/token-issuer.js';
import { EmbeddedStore } from '../../src/store/embedded.js';
import { devMaterial, materialConfig } from '../helpers/broker.js';
import { httpsCall } from '../helpers/https.js';
import { CLI, type Issued, type Receipt, verifyMergedLog } from '../helpers/replicas.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** PIDs of the direct children of `pid` (the cluster workers). */
function childrenOf(pid: number): number[] {
  const r = spawnSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' });
  return r.stdout
    .split('\n')
    .map((s) => Number(s.trim()))
    .filter((n) => Number.isInteger(n) && n > 0);
}

function tessera(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, TESSERA_CONFIG: '' }, timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function waitFor(what: string, cond: () => boolean, ms: number, out: () => string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${out()}`);
    await sleep(50);
  }
}

/**
 * Clients time out, as real ones do: a connection the primary was handing to the worker at the instant
 * it was killed is never accepted (node:cluster round-robin keeps it; see docs/performance.md).
 */
const REQUEST_TIMEOUT_MS = 5_000;

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    }),
  ]);
}

interface Outcome {
  readonly at: number;
  readonly status: number;
  readonly issued?: Issued;
}

describe('tessera serve --workers 2 (node:cluster)', () => {
  let dir: string;
  let configFile: string;
  let dataDir: string;
  let ca: string;
  let auditPub: string;
  let token: string;
  let primary: ChildProcess;
  let out = '';
  let url = '';
  let exitCode: number | null | undefined;
  const exited = (): Promise<void> =>
    primary.exitCode !== null || primary.signalCode !== null ? Promise.resolve() : new Promise((r) => primary.once('exit', () => r()));

  beforeAll(async () => {
    if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
    const { dir: pki, material } = await devMaterial();
    dir = mkdtempSync(path.join(tmpdir(), 'tessera-cluster-'));
    dataDir = path.join(dir, 'data');
    configFile = path.join(dir, 'tessera.yaml');
    ca = readFileSync(material.bundleFile, 'utf8');
    auditPub = material.auditPubFile;
    writeFileSync(
      configFile,
      stringify({
        ...materialConfig(pki, material),
        replicaId: 'e2e-cluster',
        listen: { host: '127.0.0.1', port: 0 },
        logLevel: 'warn',
        registration: [{ selector: { namespace: 'shop', serviceAccount: 'web' }, jwtAudiences: ['payments'] }],
        store: { embedded: { dir: dataDir } },
        // One identity drives all the load here.
        limits: { enabled: false },
        metrics: { enabled: true, port: 0 },
      }),
    );
    token = await mintDevToken({ keyFile: material.issuerKeyFile, namespace: 'shop', serviceAccount: 'web', ttlSeconds: 3600 });
    primary = spawn(process.execPath, [CLI, 'serve', '--config', configFile, '--workers', '2'], {
      // The config file decides (no TESSERA_PORT / TESSERA_WORKERS from the environment).
      env: Object.fromEntries(Object.entries({ ...process.env, TESSERA_CONFIG: '' }).filter(([k]) => k !== 'TESSERA_PORT' && k !== 'TESSERA_WORKERS')),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    primary.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    primary.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    primary.once('exit', (code) => (exitCode = code));
    await waitFor('the banner', () => /listening on https:\/\/127\.0\.0\.1:\d+/.test(out) || exitCode !== undefined, 60_000, () => out);
    url = /listening on (https:\/\/127\.0\.0\.1:\d+)/.exec(out)?.[1] ?? '';
    expect(url, out).not.toBe('');
  }, 90_000);

  afterAll(async () => {
    if (primary !== undefined && primary.exitCode === null && primary.signalCode === null) {
      primary.kill('SIGKILL');
      await exited();
    }
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  it('prints one banner that names the workers; the primary has two worker processes', () => {
    expect(out.match(/listening on/g)?.length).toBe(1);
    expect(out).toMatch(/workers {6}: 2 processes \(node:cluster, replica IDs e2e-cluster-w1\.\.w2\)/);
    expect(childrenOf(primary.pid as number)).toHaveLength(2);
  });

  it('serves from both workers, survives a SIGKILLed worker, shuts down cleanly, and the log verifies', async () => {
    const outcomes: Outcome[] = [];
    let stop = false;
    // Several connections per loop turn: the primary hands connections to the workers round-robin.
    const loop = async (n: number): Promise<void> => {
      let agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
      for (let i = 0; !stop && i < 5_000; i++) {
        const kind = (i + n) % 3 === 0 ? 'jwt' : 'x509';
        try {
          const res = await withTimeout(
            httpsCall<Record<string, unknown>>(url, ca, {
              path: kind === 'x509' ? '/v1/svid/x509' : '/v1/svid/jwt',
              body: kind === 'x509' ? { keyType: 'ec-p256' } : { audience: ['payments'] },
              token,
              agent,
            }),
            REQUEST_TIMEOUT_MS,
          );
          outcomes.push({
            at: Date.now(),
            status: res.status,
            ...(res.status === 200
              ? { issued: { replica: '?', kind, id: String(kind === 'x509' ? res.json.serial : res.json.jti), audit: res.json.audit as Receipt } }
              : {}),
          });
        } catch {
          // The connection went down with its worker: a client reconnects (and lands on a live one).
          outcomes.push({ at: Date.now(), status: 0 });
          agent.destroy();
          agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
          await sleep(20);
        }
        if (i % 10 === 9) {
          // Fresh connections now and then, so both workers get a share of every client.
          agent.destroy();
          agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
        }
      }
      agent.destroy();
    };
    const loops = Promise.all(Array.from({ length: 8 }, (_, n) => loop(n)));

    await sleep(1_500);
    const workers = childrenOf(primary.pid as number);
    expect(workers).toHaveLength(2);
    const victim = workers[0] as number;
    const killedAt = Date.now();
    process.kill(victim, 'SIGKILL');
    await waitFor('the replacement worker', () => /is serving again/.test(out), 30_000, () => out);
    const replacedAt = Date.now();
    const after = childrenOf(primary.pid as number);
    expect(after).toHaveLength(2);
    expect(after).not.toContain(victim);
    await sleep(1_000);
    stop = true;
    await loops;

    expect(out).toMatch(/worker \d \(pid \d+\) exited with signal SIGKILL; restarting it in \d+ ms/);
    const ok = outcomes.filter((o) => o.status === 200);
    expect(ok.length).toBeGreaterThan(50);
    // The survivor kept answering while the victim was being replaced.
    expect(ok.filter((o) => o.at > killedAt + 100 && o.at < replacedAt).length).toBeGreaterThan(0);
    // Only the connections of the killed worker failed (no 5xx: the dead worker's locks were released).
    const bad = outcomes.filter((o) => o.status !== 200 && o.status !== 0);
    expect(bad, JSON.stringify(bad.slice(0, 3))).toEqual([]);
    expect(outcomes.filter((o) => o.status === 0).length).toBeLessThanOrEqual(16);

    // The primary's /metrics sums the workers (the killed worker's counts died with it).
    const metricsUrl = /metrics {6}: (http:\/\/\S+)/.exec(out)?.[1] ?? '';
    const text = await (await fetch(metricsUrl)).text();
    const counter = (type: string): number =>
      Number(new RegExp(`^tessera_issuance_requests_total\\{type="${type}",decision="allow"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? NaN);
    const counted = counter('x509-svid') + counter('jwt-svid');
    expect(counted, text.slice(0, 500)).toBeGreaterThan(0);
    expect(counted).toBeLessThanOrEqual(ok.length);
    expect(text).toMatch(/^process_cpu_user_seconds_total /m);

    // SIGTERM: workers finish, sign a final checkpoint, the primary closes the store and exits 0.
    primary.kill('SIGTERM');
    await exited();
    expect(exitCode, out).toBe(0);
    expect(out).toMatch(/SIGTERM: stopping 2 workers/);

    const exportDir = path.join(dir, 'export');
    const exp = tessera(['audit', 'export', '--out', exportDir, '--config', configFile]);
    expect(exp.status, exp.stderr + exp.stdout).toBe(0);
    const verify = tessera(['audit', 'verify', '--log', exportDir, '--key', auditPub]);
    expect(verify.status, verify.stderr + verify.stdout).toBe(0);

    // Every credential handed out is in the log at its receipt's index, proofs hold, checkpoints do not fork.
    const store = await EmbeddedStore.open(dataDir);
    try {
      const issued = ok.map((o) => o.issued as Issued);
      const report = await verifyMergedLog(store, issued);
      // Both workers answered (w1 twice over: before and after its restart, with the same replica ID).
      const byReplica = new Map<string, number>();
      const entries = readFileSync(path.join(exportDir, 'entries.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      const served = new Set(issued.map((i) => i.id));
      for (const e of entries) {
        const id = String(e.serial ?? e.jti ?? '');
        if (served.has(id)) byReplica.set(String(e.replica), (byReplica.get(String(e.replica)) ?? 0) + 1);
      }
      expect([...byReplica.keys()].sort()).toEqual(['e2e-cluster-w1', 'e2e-cluster-w2']);
      expect(report.replicasSeen.has('e2e-cluster-w1') && report.replicasSeen.has('e2e-cluster-w2')).toBe(true);
      // The final checkpoint covers the whole log.
      const last = (await store.listCheckpoints()).at(-1) ?? '';
      expect(Number(last.split('\n')[1])).toBe(report.size);
    } finally {
      await store.close();
    }
  }, 120_000);
});
