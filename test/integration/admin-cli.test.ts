/** `tessera admin cert` (dist/cli/main.js): a certificate from the admin CA that the admin API accepts. */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBroker, type TestBroker } from '../helpers/broker.js';

const CLI = path.resolve('dist/cli/main.js');
let dir: string;
let b: TestBroker;

function cli(args: string[]): Promise<{ status: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: dir, env: { ...process.env, TESSERA_CONFIG: '' }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ status: code ?? -1, stderr });
    });
  });
}

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
  dir = mkdtempSync(path.join(tmpdir(), 'tessera-admin-cli-'));
  b = await startBroker();
});
afterAll(async () => {
  await b?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('tessera admin cert', () => {
  it('mints a certificate the admin API accepts for a configured principal, and refuses bad input', async () => {
    const m = b.material;
    const ok = await cli(['admin', 'cert', '--id', 'spiffe://example.org/admin/dev', '--out', 'me', '--ttl', '1h', '--ca-cert', m.adminCaCertFile, '--ca-key', m.adminCaKeyFile]);
    expect(ok.status, ok.stderr).toBe(0);
    expect(statSync(path.join(dir, 'me/dev.key')).mode & 0o777).toBe(0o600);
    const cert = readFileSync(path.join(dir, 'me/dev.pem'), 'utf8');
    const key = readFileSync(path.join(dir, 'me/dev.key'), 'utf8');
    const who = await b.call<{ spiffeId: string; roles: string[] }>({ path: '/v1/admin/whoami', cert, key });
    expect(who.json).toMatchObject({ spiffeId: 'spiffe://example.org/admin/dev', roles: ['auditor', 'operator', 'secrets-admin'] });

    expect((await cli(['admin', 'cert', '--id', 'spiffe://example.org/admin/break-glass/x', '--out', 'x', '--ca-cert', m.adminCaCertFile, '--ca-key', m.adminCaKeyFile])).status).toBe(2);
    expect((await cli(['admin', 'cert', '--id', 'not-an-id', '--out', 'x'])).status).toBe(2);
    expect((await cli(['admin', 'cert', '--id', 'spiffe://example.org/admin/a', '--out', 'x', '--ttl', '1y', '--ca-cert', m.adminCaCertFile, '--ca-key', m.adminCaKeyFile])).status).toBe(2);
  });
});
