/**
 * Crash safety of the audit log, for real: `tessera serve` as a child process on temp dev material,
 * loaded with concurrent issuance requests, SIGKILLed mid-load, restarted on the same data dir. The
 * restarted broker continues the same tree, `tessera audit verify` accepts the log (over HTTPS and
 * from an export), and every credential any client received a 200 for is in the log at the index its
 * receipt named.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { leafHash, verifyInclusion } from '../../src/audit/merkle.js';
import { openCheckpoint, parseVerifierKey } from '../../src/audit/note.js';
import { mintDevToken } from '../../src/dev/token-issuer.js';
import { httpsCall } from '../helpers/https.js';

const CLI = path.resolve('dist/cli/main.js');
let cwd: string;
let server: ChildProcess | undefined;
let ca: string;

interface Receipt {
  index: number;
  treeSize: number;
  rootHash: string;
  leafHash: string;
  inclusionProof: string[];
  checkpoint: string;
}

function start(): Promise<{ proc: ChildProcess; url: string }> {
  const proc = spawn(process.execPath, [CLI, 'serve'], {
    cwd,
    env: { ...process.env, TESSERA_CONFIG: '', TESSERA_PORT: '0', TESSERA_LOG_LEVEL: 'error' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  server = proc;
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`broker did not start: ${out}`)), 30_000);
    proc.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (https:\/\/[\d.]+:\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, url: m[1] as string });
      }
    });
    proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    proc.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`broker exited ${code ?? signal}: ${out}`));
    });
  });
}

function cli(args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', env: { ...process.env, TESSERA_CONFIG: '' }, timeout: 60_000 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(() => {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
  cwd = mkdtempSync(path.join(tmpdir(), 'tessera-crash-'));
});
afterAll(async () => {
  if (server !== undefined && server.exitCode === null && server.signalCode === null) {
    const exited = new Promise((r) => server?.once('exit', r));
    server.kill('SIGKILL');
    await exited;
  }
  if (cwd) rmSync(cwd, { recursive: true, force: true });
});

describe('audit log across a SIGKILL under load', () => {
  it('restarts on the same data, verifies, and holds every credential a client received', async () => {
    const first = await start();
    ca = readFileSync(path.join(cwd, 'certs-dev/bundle.pem'), 'utf8');
    const issuerKey = path.join(cwd, 'certs-dev/dev-issuer.key');
    const token = await mintDevToken({ keyFile: issuerKey, namespace: 'shop', serviceAccount: 'web' });
    const agent = new https.Agent({ keepAlive: true, maxSockets: 16 });
    const got: { kind: 'serial' | 'jti'; id: string; receipt: Receipt }[] = [];
    let failures = 0;
    let killed = false;
    const deadline = Date.now() + 20_000;

    // 12 clients in a loop: JWT-SVIDs, X.509-SVIDs with a server-made key, and refused requests.
    const client = async (c: number): Promise<void> => {
      for (let i = 0; !killed && Date.now() < deadline && i < 2000; i++) {
        const kind = (c + i) % 5;
        try {
          if (kind === 4) {
            await httpsCall(first.url, ca, { path: '/v1/svid/jwt', token, body: { audience: ['bank'] }, agent });
            continue;
          }
          const x509 = kind === 0;
          const res = await httpsCall<{ serial?: string; jti?: string; audit: Receipt }>(first.url, ca, {
            path: x509 ? '/v1/svid/x509' : '/v1/svid/jwt',
            token,
            body: x509 ? { keyType: 'ec-p256' } : { audience: ['payments'] },
            agent,
          });
          if (res.status === 200) got.push(x509 ? { kind: 'serial', id: res.json.serial as string, receipt: res.json.audit } : { kind: 'jti', id: res.json.jti as string, receipt: res.json.audit });
          else failures++;
        } catch {
          failures++; // connection reset by the kill
        }
      }
    };
    const clients = Array.from({ length: 12 }, (_, c) => client(c));
    // Kill mid-load: once enough credentials are out, with the clients still hammering.
    while (got.length < 300 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    const exited = new Promise((r) => first.proc.once('exit', r));
    first.proc.kill('SIGKILL');
    killed = true;
    await exited;
    await Promise.all(clients);
    agent.destroy();
    expect(got.length).toBeGreaterThanOrEqual(300);
    // The kill landed mid-load: requests in flight lost their connection.
    expect(failures).toBeGreaterThan(0);
    expect(failures).toBeLessThan(got.length);
    expect(statSync(path.join(cwd, 'certs-dev/audit-signing.key')).mode & 0o777).toBe(0o600);

    // Every receipt the clients got verifies against its own signed checkpoint.
    const key = parseVerifierKey(readFileSync(path.join(cwd, 'certs-dev/audit.pub'), 'utf8'));
    const b64 = (s: string): Buffer => Buffer.from(s, 'base64');
    for (const { receipt } of got) {
      const cp = openCheckpoint(receipt.checkpoint, key);
      expect(cp.size).toBe(receipt.treeSize);
      expect(verifyInclusion(b64(receipt.leafHash), receipt.index, receipt.treeSize, receipt.inclusionProof.map(b64), cp.rootHash)).toBe(true);
    }

    // Restart on the same data dir: the same tree continues, and it verifies over HTTPS.
    const second = await start();
    const cpNow = openCheckpoint((await httpsCall(second.url, ca, { path: '/v1/audit/checkpoint' })).text, key);
    const maxIndex = Math.max(...got.map((g) => g.receipt.index));
    expect(cpNow.size).toBeGreaterThan(maxIndex);
    const after = await httpsCall<{ audit: Receipt }>(second.url, ca, { path: '/v1/svid/jwt', token, body: { audience: ['payments'] } });
    expect(after.status, after.text).toBe(200);
    expect(after.json.audit.index).toBe(cpNow.size);
    const consistency = await httpsCall<{ fromRootHash: string }>(second.url, ca, { path: `/v1/audit/proof/consistency?from=${got[0]!.receipt.treeSize}&to=${after.json.audit.treeSize}` });
    expect(consistency.json.fromRootHash).toBe(got[0]!.receipt.rootHash);
    const live = cli(['audit', 'verify', '--log', second.url, '--key', 'certs-dev/audit.pub', '--cacert', 'certs-dev/bundle.pem']);
    expect(live.status, live.stdout + live.stderr).toBe(0);

    // Graceful stop (final checkpoint), export with the CLI, verify the export offline.
    const stopped = new Promise<number | null>((r) => second.proc.once('exit', (code) => r(code)));
    second.proc.kill('SIGTERM');
    expect(await stopped).toBe(0);
    const exp = cli(['audit', 'export', '--out', 'export']);
    expect(exp.status, exp.stderr).toBe(0);
    const v = cli(['audit', 'verify', '--log', 'export', '--key', 'certs-dev/audit.pub']);
    expect(v.status, v.stdout + v.stderr).toBe(0);
    expect(v.stdout).not.toMatch(/not covered/);

    // Every credential a client received is in the log, at the index its receipt named.
    const lines = readFileSync(path.join(cwd, 'export/entries.jsonl'), 'utf8').split('\n').slice(0, -1);
    for (const g of got) {
      const line = lines[g.receipt.index] as string;
      expect(leafHash(Buffer.from(line, 'utf8')).toString('base64')).toBe(g.receipt.leafHash);
      expect((JSON.parse(line) as Record<string, unknown>)[g.kind]).toBe(g.id);
    }
    expect(new Set(got.map((g) => g.receipt.index)).size).toBe(got.length);
  }, 120_000);
});
