/**
 * Broker replicas as real processes (`node dist/cli/main.js serve --config …`) sharing one Redis
 * prefix and one set of temp CA material, a small load generator, and an independent check of the
 * merged audit log: every entry parses, no request appears twice, every credential a client received
 * is in the log, every receipt's inclusion proof holds against the root recomputed from the log, and
 * every stored checkpoint is a prefix of that same log (no forks).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { parseAuditEntry } from '../../src/audit/entry.js';
import { leafHash, rootFromLeaves, verifyInclusion } from '../../src/audit/merkle.js';
import { mintDevToken } from '../../src/dev/token-issuer.js';
import type { Store } from '../../src/store/store.js';
import { devMaterial, materialConfig } from './broker.js';
import { httpsCall, type HttpsResult } from './https.js';
import { SHARED_REDIS_URL } from './redis.js';

export const CLI = path.resolve('dist/cli/main.js');

export interface Replica {
  readonly id: string;
  readonly url: string;
  readonly proc: ChildProcess;
  /** Everything the process wrote (last 20 kB), for failure messages. */
  output(): string;
  stop(): Promise<number | null>;
}

export interface ReplicaSet {
  readonly dir: string;
  /** The YAML every replica runs with. */
  readonly configFile: string;
  readonly ca: string;
  readonly bundleFile: string;
  /** Verifier key of the audit checkpoints (for `tessera audit verify --key`). */
  readonly auditPubFile: string;
  readonly replicas: readonly Replica[];
  token(): Promise<string>;
  close(): Promise<void>;
}

/** Writes the YAML every replica reads: the same CA, issuer, policy and Redis prefix. */
async function writeConfig(dir: string, redisUrl: string, prefix: string, allowVolatile: boolean, audit: Record<string, unknown> = {}): Promise<string> {
  const { dir: pkiDir, material } = await devMaterial();
  const file = path.join(dir, 'tessera.yaml');
  const base = materialConfig(pkiDir, material);
  writeFileSync(
    file,
    stringify({
      ...base,
      audit: { ...base.audit, ...audit },
      listen: { host: '127.0.0.1', port: 0 },
      logLevel: 'warn',
      registration: [{ selector: { namespace: 'shop', serviceAccount: 'web' }, dnsNames: ['web.shop.svc'], jwtAudiences: ['payments'] }],
      store: { embedded: { dir: path.join(dir, 'unused-data') }, redis: { url: redisUrl, prefix, allowVolatile } },
    }),
  );
  return file;
}

function spawnReplica(config: string, id: string): Promise<Replica> {
  const proc = spawn(process.execPath, [CLI, 'serve', '--config', config], {
    // REDIS_URL from the environment would override the file: clear it.
    env: { ...process.env, TESSERA_PORT: '0', TESSERA_REPLICA_ID: id, TESSERA_LOG_LEVEL: 'warn', REDIS_URL: '', TESSERA_CONFIG: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const append = (d: Buffer): void => {
    out = (out + d.toString()).slice(-20_000);
  };
  proc.stdout?.on('data', append);
  proc.stderr?.on('data', append);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`replica ${id} did not start within 30 s:\n${out}`)), 30_000);
    const onData = (): void => {
      const m = /listening on (https:\/\/[\d.]+:\d+)/.exec(out);
      if (!m) return;
      clearTimeout(timer);
      proc.stdout?.off('data', onData);
      resolve({
        id,
        url: m[1] as string,
        proc,
        output: () => out,
        stop: async () => {
          if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
          const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
          proc.kill('SIGTERM');
          const killer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
          const code = await exited;
          clearTimeout(killer);
          return code;
        },
      });
    };
    proc.stdout?.on('data', onData);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`replica ${id} exited ${code} before listening:\n${out}`));
    });
  });
}

/**
 * Starts `count` replicas on one Redis prefix (`audit`: extra audit settings, e.g. devices). Needs dist/
 * (npm test builds it first). `allowVolatile` (store.redis.allowVolatile) defaults to true on the shared
 * Redis, which runs without persistence here and in CI; a private redis-server with AOF passes the
 * broker's persistence check for real.
 */
export async function startReplicas(
  count: number,
  redisUrl: string,
  prefix: string,
  opts: { allowVolatile?: boolean; audit?: Record<string, unknown> } = {},
): Promise<ReplicaSet> {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-replicas-'));
  const config = await writeConfig(dir, redisUrl, prefix, opts.allowVolatile ?? redisUrl === SHARED_REDIS_URL, opts.audit);
  const { material } = await devMaterial();
  const replicas: Replica[] = [];
  try {
    for (let i = 0; i < count; i++) replicas.push(await spawnReplica(config, `replica-${String.fromCharCode(97 + i)}`));
  } catch (err) {
    await Promise.all(replicas.map((r) => r.stop()));
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    dir,
    configFile: config,
    ca: readFileSync(material.bundleFile, 'utf8'),
    bundleFile: material.bundleFile,
    auditPubFile: material.auditPubFile,
    replicas,
    token: () => mintDevToken({ keyFile: material.issuerKeyFile, namespace: 'shop', serviceAccount: 'web' }),
    close: async () => {
      await Promise.all(replicas.map((r) => r.stop()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface Receipt {
  index: number;
  treeSize: number;
  rootHash: string;
  leafHash: string;
  inclusionProof: string[];
  checkpoint?: string;
}

export interface Issued {
  readonly replica: string;
  readonly kind: 'x509' | 'jwt';
  /** Certificate serial (x509) or jti (jwt). */
  readonly id: string;
  readonly audit: Receipt;
}

export interface Attempt {
  readonly replica: string;
  readonly startedAt: number;
  readonly ms: number;
  readonly status: number;
  readonly error?: string;
}

/** One issuance call: x509 (server-generated P-256 key) or JWT, as a client would make it. */
export async function issueOnce(
  set: ReplicaSet,
  r: Replica,
  kind: 'x509' | 'jwt',
  token: string,
  agent: https.Agent,
): Promise<{ attempt: Attempt; issued?: Issued }> {
  const startedAt = Date.now();
  let res: HttpsResult<Record<string, unknown>>;
  try {
    res = await httpsCall(r.url, set.ca, {
      path: kind === 'x509' ? '/v1/svid/x509' : '/v1/svid/jwt',
      body: kind === 'x509' ? { keyType: 'ec-p256' } : { audience: ['payments'] },
      token,
      agent,
    });
  } catch (err) {
    return { attempt: { replica: r.id, startedAt, ms: Date.now() - startedAt, status: 0, error: (err as Error).message } };
  }
  const attempt: Attempt = {
    replica: r.id,
    startedAt,
    ms: Date.now() - startedAt,
    status: res.status,
    ...(res.status !== 200 ? { error: String(res.json?.error ?? res.text.slice(0, 200)) } : {}),
  };
  if (res.status !== 200) return { attempt };
  const id = String(kind === 'x509' ? res.json.serial : res.json.jti);
  return { attempt, issued: { replica: r.id, kind, id, audit: res.json.audit as Receipt } };
}

export interface LogReport {
  readonly size: number;
  readonly root: Buffer;
  readonly replicasSeen: ReadonlySet<string>;
  readonly checkpoints: number;
}

/**
 * Reads the whole log through `store` and checks it against what clients received. Throws with a
 * precise message on the first problem.
 */
export async function verifyMergedLog(store: Store, issued: readonly Issued[]): Promise<LogReport> {
  const size = await store.auditSize();
  const entries = await store.readAuditEntries(0, size);
  if (entries.length !== size) throw new Error(`read ${entries.length} entries, size is ${size}`);
  const leaves = entries.map((e) => leafHash(e));
  const requestIds = new Set<string>();
  const serials = new Map<string, number>();
  const replicasSeen = new Set<string>();
  entries.forEach((bytes, i) => {
    const e = parseAuditEntry(bytes);
    if (requestIds.has(e.requestId)) throw new Error(`entry ${i}: request ${e.requestId} appears twice`);
    requestIds.add(e.requestId);
    replicasSeen.add(e.replica);
    const id = e.type === 'x509-svid.issued' ? e.serial : e.type === 'jwt-svid.issued' ? e.jti : undefined;
    if (id !== undefined && e.decision === 'allow') {
      if (serials.has(id)) throw new Error(`entry ${i}: credential ${id} already logged at ${serials.get(id)}`);
      serials.set(id, i);
    }
  });
  // Roots of every prefix a receipt or checkpoint mentions, recomputed from the log itself.
  const roots = new Map<number, Buffer>();
  const rootAt = (n: number): Buffer => {
    let r = roots.get(n);
    if (!r) roots.set(n, (r = rootFromLeaves(leaves.slice(0, n))));
    return r;
  };
  for (const c of issued) {
    const at = serials.get(c.id);
    if (at === undefined) throw new Error(`${c.kind} ${c.id} from ${c.replica} was handed out but is not in the log`);
    const a = c.audit;
    if (a.index !== at) throw new Error(`${c.id}: receipt says index ${a.index}, log has it at ${at}`);
    if (a.treeSize > size) throw new Error(`${c.id}: receipt tree size ${a.treeSize} exceeds the log (${size})`);
    if (!leaves[at]?.equals(Buffer.from(a.leafHash, 'base64'))) throw new Error(`${c.id}: leaf hash differs`);
    const root = rootAt(a.treeSize);
    if (!root.equals(Buffer.from(a.rootHash, 'base64'))) throw new Error(`${c.id}: receipt root differs from the log's root at ${a.treeSize}`);
    const proof = a.inclusionProof.map((p) => Buffer.from(p, 'base64'));
    if (!verifyInclusion(leaves[at], at, a.treeSize, proof, root)) throw new Error(`${c.id}: inclusion proof does not verify`);
  }
  // C2SP checkpoint body: origin, size, base64 root hash, blank line, signatures.
  const checkpoints = await store.listCheckpoints();
  let last = 0;
  for (const note of checkpoints) {
    const [, sizeLine, rootLine] = note.split('\n');
    const n = Number(sizeLine);
    if (!Number.isSafeInteger(n) || n > size) throw new Error(`checkpoint of size ${sizeLine} is not a prefix of the log (${size})`);
    if (!rootAt(n).equals(Buffer.from(rootLine ?? '', 'base64'))) throw new Error(`checkpoint at size ${n} has a root the log does not have: a fork`);
    if (n < last) throw new Error(`checkpoints shrink: ${n} after ${last}`);
    last = n;
  }
  return { size, root: rootAt(size), replicasSeen, checkpoints: checkpoints.length };
}
