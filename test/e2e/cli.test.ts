/**
 * The newcomer's path, for real: `tessera serve` on dev defaults in an empty folder, `tessera dev token`,
 * then curl (the real binary) against the broker, exactly as the README walkthrough does.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { opensslKeyAndCsr, opensslVerify } from '../helpers/openssl.js';

const CLI = path.resolve('dist/cli/main.js');
let cwd: string;
let server: ChildProcess;
let url: string;

function cli(args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', env: { ...process.env, TESSERA_CONFIG: '' } });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
  cwd = mkdtempSync(path.join(tmpdir(), 'tessera-cli-'));
  server = spawn(process.execPath, [CLI, 'serve'], {
    cwd,
    env: { ...process.env, TESSERA_CONFIG: '', TESSERA_PORT: '0', TESSERA_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`broker did not start: ${out}`)), 30_000);
    server.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (https:\/\/[\d.]+:\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1] as string);
      }
    });
    server.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    server.on('exit', (code) => reject(new Error(`broker exited ${code}: ${out}`)));
  });
});

afterAll(async () => {
  if (server?.exitCode === null) {
    const exited = new Promise((r) => server.on('exit', r));
    server.kill('SIGTERM');
    await exited;
  }
  if (cwd) rmSync(cwd, { recursive: true, force: true });
});

function curl(args: string[]): { status: number; body: string } {
  const r = spawnSync('curl', ['-sS', '--cacert', path.join(cwd, 'certs-dev/bundle.pem'), '-w', '\n%{http_code}', ...args], { encoding: 'utf8' });
  const out = r.stdout.trimEnd();
  const nl = out.lastIndexOf('\n');
  return { status: Number(out.slice(nl + 1)), body: out.slice(0, nl) };
}

describe('tessera CLI on dev defaults', () => {
  it('generated dev material with private keys at mode 0600', () => {
    for (const f of ['root.key', 'intermediate.key', 'server.key', 'jwt-signing.key', 'dev-issuer.key']) {
      expect(statSync(path.join(cwd, 'certs-dev', f)).mode & 0o777, f).toBe(0o600);
    }
    expect(existsSync(path.join(cwd, 'data'))).toBe(true);
  });

  it('mints a Kubernetes-shaped dev token', () => {
    const r = cli(['dev', 'token', '--namespace', 'shop', '--service-account', 'web']);
    expect(r.status, r.stderr).toBe(0);
    const payload = JSON.parse(Buffer.from(r.stdout.trim().split('.')[1] as string, 'base64url').toString()) as Record<string, unknown>;
    expect(payload).toMatchObject({
      sub: 'system:serviceaccount:shop:web',
      'kubernetes.io': { namespace: 'shop', serviceaccount: { name: 'web' } },
    });
    for (const claim of ['iss', 'aud', 'exp', 'iat', 'nbf']) expect(payload[claim], claim).toBeDefined();
    expect((payload['kubernetes.io'] as { pod?: { name?: string; uid?: string } }).pod?.uid).toBeDefined();
  });

  it('issues an SVID to curl with a token and a CSR, verifiable with openssl', () => {
    const token = cli(['dev', 'token', '--namespace', 'shop', '--service-account', 'web']).stdout.trim();
    const { csrPem } = opensslKeyAndCsr('ec-p256');
    const r = curl(['-H', `Authorization: Bearer ${token}`, '--json', JSON.stringify({ csr: csrPem }), `${url}/v1/svid/x509`]);
    expect(r.status, r.body).toBe(200);
    const body = JSON.parse(r.body) as { spiffeId: string; certificates: string[]; bundle: string; audit: { index: number } };
    expect(body.spiffeId).toBe('spiffe://example.org/ns/shop/sa/web');
    expect(opensslVerify(body.bundle, body.certificates).ok).toBe(true);
    expect(body.audit.index).toBeGreaterThanOrEqual(0);
  });

  it('refuses bad CLI usage with a message and a non-zero exit', () => {
    const missing = cli(['dev', 'token', '--namespace', 'shop']);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/--service-account/);
    const bogus = cli(['frobnicate']);
    expect(bogus.status).toBe(2);
    expect(bogus.stderr).toMatch(/unknown command/);
    const badName = cli(['dev', 'token', '--namespace', 'Shop/../x', '--service-account', 'web']);
    expect(badName.status).toBe(2);
  });

  it('stops cleanly on SIGTERM', async () => {
    const exited = new Promise<number | null>((r) => server.on('exit', (code) => r(code)));
    server.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
