/**
 * Witnessed audit log, end to end with real processes: two `tessera witness` processes and `tessera serve`
 * brokers over real HTTP(S).
 *
 *   - every checkpoint gets cosigned; the cosigned note verifies with an independent, Go-note-style
 *     verifier written here (note.Open semantics: unknown keys ignored, 0x01 note and 0x04 cosignature);
 *   - an operator rolls the broker's data directory back to an older copy: the witnesses refuse the next
 *     checkpoint (they hold a larger size), the broker says so, and a client that saw the newer
 *     checkpoint detects the rollback;
 *   - a fork (a second broker with the same audit key and other entries) is refused and detected;
 *   - a witness SIGKILLed in the middle of add-checkpoint traffic restarts consistent: never below what
 *     it acknowledged, never cosigning another root for its size.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash, createPublicKey, verify } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { leafHash, MerkleTree } from '../../src/audit/merkle.js';
import { ed25519PrivateKeyFromSeed, NoteSigner, signCheckpoint } from '../../src/audit/note.js';
import { CheckpointWatch } from '../../src/sdk/checkpoints.js';
import { formatAddCheckpoint } from '../../src/witness/request.js';
import { originHash } from '../../src/witness/state.js';
import { devMaterial } from '../helpers/broker.js';
import { type BrokerProcess, CLI, spawnBroker } from '../helpers/broker-process.js';
import { httpsCall } from '../helpers/https.js';
import { until } from '../helpers/until.js';

const run = promisify(execFile);
const ORIGIN = 'example.org/tessera/audit';
const REGISTRATION = [{ selector: { namespace: 'shop', serviceAccount: 'web' }, jwtAudiences: ['payments'] }];

interface WitnessProc {
  readonly name: string;
  readonly vkey: string;
  readonly stateDir: string;
  url: string;
  proc: ChildProcess;
  out: string;
  start(): Promise<void>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const tmp = mkdtempSync(path.join(tmpdir(), 'tessera-witness-e2e-'));
const procs: ChildProcess[] = [];
const brokers: BrokerProcess[] = [];

const exited = (p: ChildProcess): Promise<void> =>
  p.exitCode !== null || p.signalCode !== null ? Promise.resolve() : new Promise((r) => p.once('exit', () => r()));

async function spawnWitness(name: string, logKeyFile: string): Promise<WitnessProc> {
  const file = name.replace(/[^A-Za-z0-9.-]/g, '_');
  const keyFile = path.join(tmp, `${file}.key`);
  const { stdout } = await run(process.execPath, [CLI, 'witness', 'keygen', '--name', name, '--out', keyFile]);
  const w: WitnessProc = {
    name,
    vkey: stdout.trim(),
    stateDir: path.join(tmp, `${file}-state`),
    url: '',
    proc: undefined as unknown as ChildProcess,
    out: '',
    start: async () => {
      w.out = '';
      const p = spawn(process.execPath, [CLI, 'witness', '--key', keyFile, '--log-key', logKeyFile, '--listen', '127.0.0.1:0', '--state', w.stateDir], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      procs.push(p);
      w.proc = p;
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`witness ${name} did not start: ${w.out}`)), 30_000);
        p.stdout?.on('data', (d: Buffer) => {
          w.out += d.toString();
          const m = /"url":"(http:\/\/127\.0\.0\.1:\d+)"/.exec(w.out);
          if (m !== null) {
            clearTimeout(timer);
            w.url = m[1] as string;
            resolve();
          }
        });
        p.stderr?.on('data', (d: Buffer) => (w.out += d.toString()));
        p.once('exit', (code) => {
          clearTimeout(timer);
          reject(new Error(`witness ${name} exited with ${code}: ${w.out}`));
        });
      });
    },
    kill: async (signal = 'SIGKILL') => {
      w.proc.kill(signal);
      await exited(w.proc);
    },
  };
  await w.start();
  return w;
}

/**
 * An independent note verifier in the manner of golang.org/x/mod/sumdb/note.Open (not src/audit): the
 * text ends at the last blank line; each signature line names a key; lines whose (name, key hash) no
 * verifier has are ignored; a known line that fails rejects the note. Type 0x01 signs the text, type
 * 0x04 (tlog-cosignature) signs "cosignature/v1\ntime <t>\n" ‖ text after an 8-byte timestamp.
 */
function goStyleOpen(note: string, vkeys: readonly string[]): { text: string; verified: string[] } {
  const split = note.lastIndexOf('\n\n');
  if (split < 0) throw new Error('malformed note');
  const text = note.slice(0, split + 1);
  const keys = vkeys.map((v) => {
    const [name, hash, b64] = v.split('+', 3) as [string, string, string];
    const raw = Buffer.from(v.slice(name.length + hash.length + 2), 'base64');
    void b64;
    const type = raw[0] as number;
    const pub = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.subarray(1).toString('base64url') }, format: 'jwk' });
    const id = createHash('sha256').update(`${name}\n`).update(raw).digest().subarray(0, 4).toString('hex');
    if (id !== hash) throw new Error(`bad vkey ${v}`);
    return { name, hash, type, pub };
  });
  const verified: string[] = [];
  for (const line of note.slice(split + 2).split('\n').filter((l) => l !== '')) {
    const m = /^\u2014 (\S+) (\S+)$/.exec(line);
    if (m === null) throw new Error(`malformed signature line ${line}`);
    const blob = Buffer.from(m[2] as string, 'base64');
    const k = keys.find((x) => x.name === m[1] && x.hash === blob.subarray(0, 4).toString('hex'));
    if (k === undefined) continue;
    const ok =
      k.type === 0x01
        ? verify(null, Buffer.from(text), k.pub, blob.subarray(4))
        : verify(null, Buffer.from(`cosignature/v1\ntime ${blob.readBigUInt64BE(4)}\n${text}`), k.pub, blob.subarray(12));
    if (!ok) throw new Error(`signature by ${k.name} does not verify`);
    verified.push(k.name);
  }
  if (verified.length === 0) throw new Error('no known signature');
  return { text, verified };
}

let logVkey: string;
let w1: WitnessProc;
let w2: WitnessProc;
let token: string;

function witnessConfig(): Record<string, unknown> {
  return {
    checkpointIntervalMs: 100,
    witnesses: [w1, w2].map((w) => ({ name: w.name, url: w.url, key: w.vkey })),
    witnessQuorum: 2,
    witnessTimeoutMs: 5000,
  };
}

async function issue(b: BrokerProcess): Promise<{ index: number; treeSize: number; checkpoint: string; rootHash: string }> {
  const r = await httpsCall<{ audit: { index: number; treeSize: number; checkpoint: string; rootHash: string } }>(b.url, b.ca, {
    path: '/v1/svid/jwt',
    token,
    body: { audience: ['payments'] },
  });
  expect(r.status, r.text).toBe(200);
  return r.json.audit;
}

const sizeOf = (note: string): number => Number(note.split('\n')[1]);

async function cosigned(b: BrokerProcess, k: number, minSize: number): Promise<string> {
  return until(
    `a checkpoint of size ≥ ${minSize} cosigned by ${k}`,
    async () => {
      const r = await httpsCall(b.url, b.ca, { path: `/v1/audit/checkpoint?cosigned=${k}` });
      return r.status === 200 && sizeOf(r.text) >= minSize ? r.text : undefined;
    },
    60_000,
    200,
  );
}

async function witnessSize(w: WitnessProc): Promise<number> {
  const r = await fetch(`${w.url}/${originHash(ORIGIN)}/checkpoint`);
  return r.status === 200 ? sizeOf(await r.text()) : 0;
}

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build`');
  const { material } = await devMaterial();
  logVkey = readFileSync(material.auditPubFile, 'utf8').trim();
  const { mintDevToken } = await import('../../src/dev/token-issuer.js');
  token = await mintDevToken({ keyFile: material.issuerKeyFile, namespace: 'shop', serviceAccount: 'web', ttlSeconds: 3600 });
  [w1, w2] = await Promise.all([spawnWitness('w1.example', material.auditPubFile), spawnWitness('w2.example', material.auditPubFile)]);
}, 120_000);

afterAll(async () => {
  for (const b of brokers) await b.close().catch(() => {});
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  await Promise.all(procs.map(exited));
  rmSync(tmp, { recursive: true, force: true });
}, 60_000);

describe('a broker with two witness processes', () => {
  let b: BrokerProcess;
  let snapshot: string;
  const watch = new CheckpointWatch();
  let newest: { size: number; note: string };

  it('gets every checkpoint cosigned by both; the note verifies Go-style with three signatures', async () => {
    b = await spawnBroker({ registration: REGISTRATION, audit: witnessConfig() });
    brokers.push(b);
    const first = await issue(b);
    const note = await cosigned(b, 2, first.index + 1).catch((err: unknown) => {
      throw new Error(`${String(err)}\nbroker: ${b.output()}\nw1: ${w1.out}\nw2: ${w2.out}`);
    });
    const opened = goStyleOpen(note, [logVkey, w1.vkey, w2.vkey]);
    expect(opened.verified.sort()).toEqual([ORIGIN, 'w1.example', 'w2.example']);
    // Unknown keys are ignored: the log key alone opens it too; a witness key alone opens it too.
    expect(goStyleOpen(note, [logVkey]).verified).toEqual([ORIGIN]);
    expect(goStyleOpen(note, [w2.vkey]).verified).toEqual(['w2.example']);
    // Each witness holds that size (or newer), with the log's signature and its own cosignature.
    for (const w of [w1, w2]) expect(await witnessSize(w)).toBeGreaterThanOrEqual(sizeOf(note));
    // A later receipt carries a cosigned checkpoint once one covers its entry.
    const again = await issue(b);
    await cosigned(b, 2, again.index + 1);
    const third = await issue(b);
    expect(third.index).toBeGreaterThan(again.index);
    // tessera audit verify checks the log and reports who cosigned (public leaf hashes, no admin cert).
    const bundle = path.join(tmp, 'verify-bundle.pem');
    writeFileSync(bundle, b.ca);
    for (const w of [w1, w2]) writeFileSync(path.join(tmp, `${w.name}.pub`), `${w.vkey}\n`);
    const { material } = await devMaterial();
    const verifyArgs = [CLI, 'audit', 'verify', '--log', b.url, '--key', material.auditPubFile, '--cacert', bundle, '--witness-key', path.join(tmp, 'w1.example.pub'), '--witness-key', path.join(tmp, 'w2.example.pub'), '--quorum', '2'];
    const verified = await run(process.execPath, verifyArgs);
    expect(verified.stdout).toMatch(/^OK: /);
    expect(verified.stdout).toMatch(/witnessed {3}: entries 0\.\.\d+ by a checkpoint cosigned by at least 2 witness/);
    expect(verified.stdout).toMatch(/cosigned {4}: size \d+ by w1\.example \(.*\), w2\.example/);
    // The client keeps the newest checkpoint it saw and checks each newer one is an extension.
    for (const r of [first, again, third]) await watch.observe(r.checkpoint, b.url, { ca: b.ca });
    expect(watch.latest?.size).toBe(third.treeSize);
  }, 180_000);

  it('a rolled-back data directory: the witnesses refuse it, the broker says so, the client detects it', async () => {
    // An old copy of the data directory, as an operator with disk access could keep.
    await b.kill();
    snapshot = path.join(tmp, 'snapshot');
    cpSync(path.join(b.dir, 'data'), snapshot, { recursive: true });
    await b.start();
    let last = await issue(b);
    for (let i = 0; i < 5; i++) last = await issue(b);
    newest = { size: last.treeSize, note: last.checkpoint };
    await watch.observe(last.checkpoint, b.url, { ca: b.ca });
    // An agent (init-container mode) sees the newest checkpoint too and keeps it in its output directory.
    const agentOut = path.join(tmp, 'agent-out');
    const bundleFile = path.join(tmp, 'bundle.pem');
    const tokenFile = path.join(tmp, 'token');
    writeFileSync(bundleFile, b.ca);
    writeFileSync(tokenFile, token);
    const agentArgs = [CLI, 'agent', '--once', '--broker', b.url, '--bundle', bundleFile, '--token-file', tokenFile, '--out', agentOut, '--deadline', '60'];
    await run(process.execPath, agentArgs);
    const agentHeld = sizeOf(readFileSync(path.join(agentOut, '.audit-checkpoint'), 'utf8'));
    expect(agentHeld).toBeGreaterThan(newest.size);
    const held = sizeOf(await cosigned(b, 2, last.index + 1));
    // Roll back: drop the newest entries and checkpoints by restoring the old copy.
    await b.kill();
    rmSync(path.join(b.dir, 'data'), { recursive: true, force: true });
    cpSync(snapshot, path.join(b.dir, 'data'), { recursive: true });
    await b.start();
    const after = await issue(b);
    expect(after.treeSize).toBeLessThan(held);
    await until('the broker reports the witnesses refusing its log', async () => (/TESSERA_AUDIT_WITNESS_CONFLICT/.test(b.output()) ? true : undefined), 60_000, 200);
    expect(b.output()).toMatch(/larger than the \d+ entries this store holds: the audit log was rolled back/);
    // The witnesses still hold the larger size: nothing smaller was cosigned.
    for (const w of [w1, w2]) expect(await witnessSize(w)).toBeGreaterThanOrEqual(held);
    const r = await httpsCall(b.url, b.ca, { path: '/v1/audit/checkpoint?cosigned=1' });
    if (r.status === 200) expect(sizeOf(r.text)).toBeLessThan(after.treeSize);
    // The client that saw size `newest.size` is shown a log that cannot prove it extends it.
    const events: string[] = [];
    watch.on('inconsistent', (e: { reason: string }) => events.push(e.reason));
    await expect(watch.observe(after.checkpoint, b.url, { ca: b.ca })).rejects.toThrow(/rolled back|not consistent|cannot prove/);
    expect(events).toHaveLength(1);
    expect(watch.latest?.size).toBe(newest.size);
    // The agent that saw the newer checkpoint exits non-zero, saying why, and keeps what it held.
    const agent = await run(process.execPath, agentArgs).then(
      () => ({ code: 0, stderr: '' }),
      (err: { code: number; stderr: string; stdout: string }) => ({ code: err.code, stderr: `${err.stdout}${err.stderr}` }),
    );
    expect(agent.code).not.toBe(0);
    expect(agent.stderr).toMatch(/rolled back or forked/);
    expect(sizeOf(readFileSync(path.join(agentOut, '.audit-checkpoint'), 'utf8'))).toBe(agentHeld);
    // audit verify with the witness's cosigned checkpoint (its monitoring endpoint) shows what was dropped.
    const fromWitness = path.join(tmp, 'witnessed.note');
    writeFileSync(fromWitness, await (await fetch(`${w1.url}/${originHash(ORIGIN)}/checkpoint`)).text());
    const bundle = path.join(tmp, 'verify-bundle.pem');
    const { material } = await devMaterial();
    const failed = await run(process.execPath, [CLI, 'audit', 'verify', '--log', b.url, '--key', material.auditPubFile, '--cacert', bundle, '--witness-key', path.join(tmp, 'w1.example.pub'), '--quorum', '1', '--cosigned', fromWitness]).then(
      () => ({ code: 0, stdout: '' }),
      (err: { code: number; stdout: string }) => ({ code: err.code, stdout: err.stdout }),
    );
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/rolled back or forked after they saw it/);
    expect(failed.stdout).toMatch(/DOES NOT MATCH THE LOG/);
  }, 240_000);

  it('a fork (another broker, same audit key, other entries) is refused by the witnesses and detected by the client', async () => {
    const fork = await spawnBroker({ registration: REGISTRATION, audit: witnessConfig() });
    brokers.push(fork);
    // Grow the fork past what the witnesses hold, so they get a proof from their size and refuse it (422).
    const held = Math.max(await witnessSize(w1), await witnessSize(w2));
    let r = await issue(fork);
    while (r.treeSize <= held + 1) r = await issue(fork);
    await until('the fork broker reports the witnesses refusing it', async () => (/TESSERA_AUDIT_WITNESS_CONFLICT/.test(fork.output()) ? true : undefined), 60_000, 200);
    expect(fork.output()).toMatch(/does not extend the checkpoint|rolled back/);
    for (const w of [w1, w2]) expect(await witnessSize(w)).toBe(held);
    const fresh = new CheckpointWatch();
    await fresh.observe(newest.note, b.url, { ca: b.ca }).catch(() => {});
    expect(fresh.latest?.size).toBe(newest.size);
    await expect(fresh.observe(r.checkpoint, fork.url, { ca: fork.ca })).rejects.toThrow(/not consistent|fork/);
  }, 240_000);
});

describe('a witness SIGKILLed during add-checkpoint', () => {
  it('restarts consistent: never below an acknowledged size, never another root for its size', async () => {
    const log = new NoteSigner('crash.example/log', ed25519PrivateKeyFromSeed(Buffer.alloc(32, 42)));
    const logKeyFile = path.join(tmp, 'crash-log.pub');
    writeFileSync(logKeyFile, `${log.verifierKey}\n`);
    const w = await spawnWitness('crash.example/w', logKeyFile);
    const tree = new MerkleTree();
    for (let i = 0; i < 400; i++) tree.append(leafHash(Buffer.from(`e${i}`)));
    const fork = new MerkleTree();
    for (let i = 0; i < 400; i++) fork.append(leafHash(Buffer.from(`f${i}`)));
    const post = async (old: number, size: number, t = tree): Promise<{ status: number; text: string }> => {
      const cp = await signCheckpoint(log, size, t.root(size));
      const proof = old === 0 || old === size ? [] : t.consistencyProof(old, size);
      const res = await fetch(`${w.url}/add-checkpoint`, { method: 'POST', body: formatAddCheckpoint(old, proof, cp.note) });
      return { status: res.status, text: await res.text() };
    };
    expect((await post(0, 1)).status).toBe(200);
    let acknowledged = 1;
    for (let round = 0; round < 3; round++) {
      // Traffic: each request extends the last acknowledged size by one; kill the witness mid-stream.
      let stop = false;
      const traffic = (async () => {
        while (!stop && acknowledged < 390) {
          const r = await post(acknowledged, acknowledged + 1).catch(() => undefined);
          if (r?.status === 200) acknowledged++;
          else if (r === undefined) return;
        }
      })();
      await new Promise((r) => setTimeout(r, 300 + Math.random() * 700));
      await w.kill('SIGKILL');
      stop = true;
      await traffic;
      await w.start();
      // The witness holds the acknowledged size, or the one a request was persisting when it died.
      const r = await post(0, 1);
      expect(r.status).toBe(409);
      const held = Number(r.text.trim());
      expect(held).toBeGreaterThanOrEqual(acknowledged);
      expect(held).toBeLessThanOrEqual(acknowledged + 1);
      acknowledged = held;
      // Another root for its size, or a forked extension, is refused; the real extension is cosigned.
      expect((await post(held, held, fork)).status).toBe(422);
      expect((await post(held, held + 1, fork)).status).toBe(422);
      expect((await post(held, held + 1)).status).toBe(200);
      acknowledged = held + 1;
    }
    expect(acknowledged).toBeGreaterThan(3);
    await w.kill('SIGTERM');
  }, 240_000);
});
