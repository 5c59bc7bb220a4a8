/**
 * `tessera serve --workers 2` as a real process tree. On the embedded store it refuses to start with a
 * config error that says why. On Redis (the shared Redis, a unique prefix) a node:cluster primary forks
 * two worker brokers on one port, each its own replica on Redis: a SIGKILLed worker is replaced,
 * concurrent clients are answered by both workers, /metrics sums them, SIGTERM shuts everything down
 * cleanly (exit 0), and afterwards `tessera audit export` + `audit verify` accept the log, with every
 * credential a client received in it at the index its receipt names.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintDevToken } from '../../src/dev/token-issuer.js';
import { RedisStore } from '../../src/store/redis.js';
import { devMaterial, materialConfig } from '../helpers/broker.js';
import { httpsCall } from '../helpers/https.js';
import { SHARED_REDIS_URL, deletePrefix, redisRequiredUnderCi, sharedRedis, uniquePrefix } from '../helpers/redis.js';
import { CLI, type Issued, type Receipt, verifyMergedLog } from '../helpers/replicas.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The environment of a tessera child: the config file decides (no port, workers or Redis URL from ours). */
const childEnv = (): NodeJS.ProcessEnv =>
  Object.fromEntries(
    Object.entries({ ...process.env, TESSERA_CONFIG: '', REDIS_URL: '' }).filter(([k]) => k !== 'TESSERA_PORT' && k !== 'TESSERA_WORKERS'),
  );

function tessera(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: childEnv(), timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** PIDs of the direct children of `pid` (the cluster workers). */
function childrenOf(pid: number): number[] {
  const r = spawnSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' });
  return r.stdout
    .split('\n')
    .map((s) => Number(s.trim()))
    .filter((n) => Number.isInteger(n) && n > 0);
}

async function waitFor(what: string, cond: () => boolean, ms: number, out: () => string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${out()}`);
    await sleep(50);
  }
}

/** A config file for these tests: the temp CA material, one policy entry, no rate limits (one identity drives the load). */
async function writeConfig(dir: string, extra: Record<string, unknown>): Promise<{ file: string; ca: string; auditPub: string; issuerKeyFile: string }> {
  const { dir: pki, material } = await devMaterial();
  const file = path.join(dir, 'tessera.yaml');
  writeFileSync(
    file,
    stringify({
      ...materialConfig(pki, material),
      replicaId: 'e2e-cluster',
      listen: { host: '127.0.0.1', port: 0 },
      logLevel: 'warn',
      registration: [{ selector: { namespace: 'shop', serviceAccount: 'web' }, jwtAudiences: ['payments'] }],
      limits: { enabled: false },
      ...extra,
    }),
  );
  return { file, ca: readFileSync(material.bundleFile, 'utf8'), auditPub: material.auditPubFile, issuerKeyFile: material.issuerKeyFile };
}

beforeAll(() => {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
});

describe('tessera serve --workers 2 on the embedded store', () => {
  it('refuses to start: a config error naming the workers setting and store.redis, no stack trace, nothing opened', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-cluster-embedded-'));
    const dataDir = path.join(dir, 'data');
    try {
      const flag = await writeConfig(dir, { store: { embedded: { dir: dataDir } } });
      const byFlag = tessera(['serve', '--config', flag.file, '--workers', '2']);
      expect(byFlag.status, byFlag.stderr).toBe(1);
      expect(byFlag.stderr).toMatch(/^tessera: --workers 2: more than one worker needs the Redis store \(store\.redis\)/);
      expect(byFlag.stderr).not.toMatch(/^\s+at /m);
      expect(byFlag.stdout).not.toMatch(/listening on/);

      // The same refusal when the config file asks for workers.
      const byFile = await writeConfig(dir, { store: { embedded: { dir: dataDir } }, workers: 2 });
      const fromFile = tessera(['serve', '--config', byFile.file]);
      expect(fromFile.status, fromFile.stderr).toBe(1);
      expect(fromFile.stderr).toMatch(/^tessera: workers 2: more than one worker needs the Redis store \(store\.redis\)/);
      expect(existsSync(dataDir)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

const redis = await sharedRedis();

describe('Redis availability for the cluster e2e', () => {
  redisRequiredUnderCi(redis);
});

describe.skipIf(!redis.ok)('tessera serve --workers 2 on Redis (node:cluster)', () => {
  const prefix = uniquePrefix('cluster-e2e');
  let dir: string;
  let configFile: string;
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
    dir = mkdtempSync(path.join(tmpdir(), 'tessera-cluster-'));
    const written = await writeConfig(dir, {
      store: { embedded: { dir: path.join(dir, 'unused-data') }, redis: { url: SHARED_REDIS_URL, prefix, allowVolatile: true } },
      metrics: { enabled: true, port: 0 },
      bundleEndpoint: { spiffe: { host: '127.0.0.1', port: 0 } },
    });
    ({ file: configFile, ca, auditPub } = written);
    token = await mintDevToken({ keyFile: written.issuerKeyFile, namespace: 'shop', serviceAccount: 'web', ttlSeconds: 3600 });
    primary = spawn(process.execPath, [CLI, 'serve', '--config', configFile, '--workers', '2'], { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
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
    await deletePrefix(prefix);
  });

  it('prints one banner that names the workers; the primary has two worker processes', () => {
    expect(out.match(/listening on/g)?.length).toBe(1);
    expect(out).toMatch(/workers {6}: 2 processes \(node:cluster, replica IDs e2e-cluster-w1\.\.w2\)/);
    expect(childrenOf(primary.pid as number)).toHaveLength(2);
  });

  it('serves the https_spiffe bundle endpoint from the workers, named in the banner', async () => {
    const named = /bundle endpoint \(https_spiffe\): (https:\/\/127\.0\.0\.1:\d+\/) as (\S+)/.exec(out);
    expect(named?.[2], out).toBe('spiffe://example.org/tessera/bundle-endpoint');
    const endpoint = named?.[1] ?? '';
    // Fresh connections (the primary hands them to the workers in turn); the endpoint is authenticated by
    // its SPIFFE ID, as a federated peer does (SPIFFE_Federation.md https_spiffe), not by host name.
    const get = (): Promise<{ status: number; body: string; san: string }> =>
      new Promise((resolve, reject) => {
        const req = https.get(endpoint, { ca, agent: false, checkServerIdentity: () => undefined }, (res) => {
          const san = (res.socket as import('node:tls').TLSSocket).getPeerCertificate().subjectaltname ?? '';
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body, san }));
        });
        req.on('error', reject);
      });
    for (let i = 0; i < 4; i++) {
      const r = await get();
      expect(r.status).toBe(200);
      expect(r.san).toBe('URI:spiffe://example.org/tessera/bundle-endpoint');
      expect((JSON.parse(r.body) as { keys: { use: string }[] }).keys.some((k) => k.use === 'x509-svid')).toBe(true);
    }
  });

  it('replaces a SIGKILLed worker', async () => {
    const [victim] = childrenOf(primary.pid as number);
    process.kill(victim as number, 'SIGKILL');
    await waitFor('the replacement worker', () => /is serving again/.test(out), 30_000, () => out);
    expect(out).toMatch(/worker \d \(pid \d+\) exited with signal SIGKILL; restarting it in \d+ ms/);
    const after = childrenOf(primary.pid as number);
    expect(after).toHaveLength(2);
    expect(after).not.toContain(victim);
  }, 40_000);

  it('serves from both workers, sums their metrics, shuts down cleanly, and the log verifies', async () => {
    const issued: Issued[] = [];
    const failed: number[] = [];
    // Fresh connections every few requests: the primary hands connections to the workers round-robin.
    const loop = async (n: number): Promise<void> => {
      let agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
      for (let i = 0; i < 12; i++) {
        const kind = (i + n) % 3 === 0 ? 'jwt' : 'x509';
        const res = await httpsCall<Record<string, unknown>>(url, ca, {
          path: kind === 'x509' ? '/v1/svid/x509' : '/v1/svid/jwt',
          body: kind === 'x509' ? { keyType: 'ec-p256' } : { audience: ['payments'] },
          token,
          agent,
        });
        if (res.status !== 200) failed.push(res.status);
        else issued.push({ replica: '?', kind, id: String(kind === 'x509' ? res.json.serial : res.json.jti), audit: res.json.audit as Receipt });
        if (i % 4 === 3) {
          agent.destroy();
          agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
        }
      }
      agent.destroy();
    };
    await Promise.all(Array.from({ length: 4 }, (_, n) => loop(n)));
    expect(failed).toEqual([]);
    expect(issued).toHaveLength(48);

    // The primary's /metrics sums the workers.
    const metricsUrl = /metrics {6}: (http:\/\/\S+)/.exec(out)?.[1] ?? '';
    const text = await (await fetch(metricsUrl)).text();
    const counter = (type: string): number =>
      Number(new RegExp(`^tessera_issuance_requests_total\\{type="${type}",decision="allow"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? NaN);
    const counted = counter('x509-svid') + counter('jwt-svid');
    expect(counted, text.slice(0, 500)).toBeGreaterThan(0);
    expect(counted).toBeLessThanOrEqual(issued.length);
    expect(text).toMatch(/^process_cpu_user_seconds_total /m);

    // SIGTERM: workers finish, sign a final checkpoint, the primary exits 0.
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
    const store = await RedisStore.connect({ url: SHARED_REDIS_URL, prefix });
    try {
      const report = await verifyMergedLog(store, issued);
      // Both workers answered.
      const served = new Set(issued.map((i) => i.id));
      const byReplica = new Set<string>();
      for (const line of readFileSync(path.join(exportDir, 'entries.jsonl'), 'utf8').trim().split('\n')) {
        const e = JSON.parse(line) as Record<string, unknown>;
        if (served.has(String(e.serial ?? e.jti ?? ''))) byReplica.add(String(e.replica));
      }
      expect([...byReplica].sort()).toEqual(['e2e-cluster-w1', 'e2e-cluster-w2']);
      // The final checkpoint covers the whole log.
      const last = (await store.listCheckpoints()).at(-1) ?? '';
      expect(Number(last.split('\n')[1])).toBe(report.size);
    } finally {
      await store.close();
    }
  }, 120_000);
});
