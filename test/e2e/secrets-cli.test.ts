/**
 * The secrets CLI for real, on dev defaults in an empty folder: `tessera secrets put`, then the broker
 * serves the secret to curl; `tessera secrets rotate-kek` re-wraps it under a new KEK, the old KEK is
 * destroyed, and the restarted broker still serves it. Bad usage exits non-zero with a message, and
 * the CLI refuses to write an embedded store a running broker holds.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmbeddedStore } from '../../src/store/embedded.js';
import { freePort } from '../helpers/redis.js';

const CLI = path.resolve('dist/cli/main.js');
const VALUE = 'e2e-secret-VALUE-31415\n';
let cwd: string;
const servers: ChildProcess[] = [];

function cli(args: string[], env: Record<string, string> = {}): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, TESSERA_CONFIG: '', TESSERA_PORT: '0', ...env },
    timeout: 60_000,
  });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

async function serve(port = '0'): Promise<{ url: string; proc: ChildProcess }> {
  const proc = spawn(process.execPath, [CLI, 'serve'], {
    cwd,
    env: { ...process.env, TESSERA_CONFIG: '', TESSERA_PORT: port, TESSERA_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  servers.push(proc);
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`broker did not start: ${out}`)), 30_000);
    proc.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (https:\/\/[\d.]+:\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1] as string);
      }
    });
    proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    proc.on('exit', (code) => reject(new Error(`broker exited ${code}: ${out}`)));
  });
  return { url, proc };
}

async function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  await exited;
}

function curl(url: string, token: string): { status: number; body: string } {
  const r = spawnSync('curl', ['-sS', '--cacert', path.join(cwd, 'certs-dev/bundle.pem'), '-H', `Authorization: Bearer ${token}`, '-w', '\n%{http_code}', url], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  const out = r.stdout.trimEnd();
  const nl = out.lastIndexOf('\n');
  return { status: Number(out.slice(nl + 1)), body: out.slice(0, nl) };
}

beforeAll(() => {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
  cwd = mkdtempSync(path.join(tmpdir(), 'tessera-secrets-cli-'));
  writeFileSync(path.join(cwd, 'key.txt'), VALUE, { mode: 0o600 });
});

afterAll(async () => {
  for (const p of servers) await stop(p);
  if (cwd) rmSync(cwd, { recursive: true, force: true });
});

describe('tessera secrets', () => {
  it('puts a secret encrypted into the store, printing neither value nor key', () => {
    const r = cli(['secrets', 'put', 'dev/reporting-api-key', '--from-file', 'key.txt']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/stored secret "dev\/reporting-api-key" \(23 bytes, AES-256-GCM, data key wrapped by kek-[0-9a-f]{16}\)/);
    expect(r.stdout + r.stderr).not.toContain('VALUE');
    expect(statSync(path.join(cwd, 'certs-dev/secrets.kek')).mode & 0o777).toBe(0o600);
    const kek = readFileSync(path.join(cwd, 'certs-dev/secrets.kek'), 'utf8').trim();
    expect(r.stdout).not.toContain(kek);
  });

  it('refuses bad usage with a message and a non-zero exit', () => {
    const cases: [string[], number, RegExp][] = [
      [['secrets', 'put'], 2, /needs a NAME/],
      [['secrets', 'put', 'dev/x'], 2, /--from-file/],
      [['secrets', 'put', '../etc/passwd', '--from-file', 'key.txt'], 2, /invalid secret name/],
      [['secrets', 'put', 'postgres/x', '--from-file', 'key.txt'], 2, /reserved/],
      [['secrets', 'put', 'dev/x', '--from-file', 'missing.txt'], 1, /cannot read missing.txt: ENOENT/],
      [['secrets', 'put', 'dev/x', '--from-file', 'key.txt', '--value', 'x'], 2, /Unknown option/],
      [['secrets', 'rotate-kek'], 2, /--new-kek-file/],
      [['secrets', 'frob'], 2, /unknown secrets command/],
    ];
    for (const [args, status, message] of cases) {
      const r = cli(args);
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(status);
      expect(r.stderr).toMatch(message);
    }
  });

  it('the broker serves it to curl with a service-account token', async () => {
    const { url, proc } = await serve();
    try {
      const token = cli(['dev', 'token', '--namespace', 'shop', '--service-account', 'web']).stdout.trim();
      const ok = curl(`${url}/v1/secrets/dev/reporting-api-key`, token);
      expect(ok.status, ok.body).toBe(200);
      const body = JSON.parse(ok.body) as { value: string; leaseId: string; expiresAt: string };
      expect(body.value).toBe(VALUE);
      expect(body.leaseId).toMatch(/^[0-9a-f]{32}$/);
      // Dev grants only cover dev/…
      expect(curl(`${url}/v1/secrets/prod/x`, token).status).toBe(403);
    } finally {
      await stop(proc);
    }
  });

  it('will not write the embedded store while a broker is listening on the configured port', async () => {
    const port = String(await freePort());
    const { proc } = await serve(port);
    try {
      const r = cli(['secrets', 'put', 'dev/other', '--from-file', 'key.txt'], { TESSERA_PORT: port });
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/a broker is listening .* stop the broker/);
    } finally {
      await stop(proc);
    }
  });

  it('rotates the KEK: secrets re-wrapped, the old KEK destroyed, the broker still serves them', async () => {
    const oldKek = readFileSync(path.join(cwd, 'certs-dev/secrets.kek'), 'utf8');
    const r = cli(['secrets', 'rotate-kek', '--new-kek-file', 'new.kek']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/created a new KEK in new.kek \(mode 0600\): kek-[0-9a-f]{16}/);
    expect(r.stdout).toMatch(/re-wrapped 1 secret\(s\) under kek-[0-9a-f]{16} \(0 already were\); ciphertexts unchanged/);
    expect(statSync(path.join(cwd, 'new.kek')).mode & 0o777).toBe(0o600);
    // Running it again with the same KEK finds nothing left to do.
    const again = cli(['secrets', 'rotate-kek', '--new-kek-file', 'new.kek']);
    expect(again.status, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/re-wrapped 0 secret\(s\) .* \(1 already were\)/);

    // Replace the dev KEK with the new one: the old key no longer exists anywhere.
    renameSync(path.join(cwd, 'new.kek'), path.join(cwd, 'certs-dev/secrets.kek'));
    expect(readFileSync(path.join(cwd, 'certs-dev/secrets.kek'), 'utf8')).not.toBe(oldKek);
    const { url, proc } = await serve();
    try {
      const token = cli(['dev', 'token', '--namespace', 'shop', '--service-account', 'web']).stdout.trim();
      const ok = curl(`${url}/v1/secrets/dev/reporting-api-key`, token);
      expect(ok.status, ok.body).toBe(200);
      expect((JSON.parse(ok.body) as { value: string }).value).toBe(VALUE);
    } finally {
      await stop(proc);
    }

    // Both writes are in the audit log, without the value.
    const store = await EmbeddedStore.open(path.join(cwd, 'data'));
    try {
      const entries = (await store.readAuditEntries(0, await store.auditSize())).map((e) => e.toString('utf8'));
      const parsed = entries.map((e) => JSON.parse(e) as { type: string; secret?: string; source?: string });
      expect(parsed.filter((e) => e.type === 'secret.written')).toEqual([expect.objectContaining({ secret: 'dev/reporting-api-key', source: 'cli' })]);
      expect(parsed.filter((e) => e.type === 'kek.rotated')).toHaveLength(2);
      expect(entries.join('\n')).not.toContain('VALUE');
    } finally {
      await store.close();
    }
  });
});
