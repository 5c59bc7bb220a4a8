/**
 * The CLI as a user meets it (node dist/cli/main.js): --help for every command and group (exit 0,
 * on stdout), --version, a usage mistake (exit 2, naming the option), a failure (exit 1, naming the
 * file and the option or config field that named it).
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const CLI = path.resolve('dist/cli/main.js');
let cwd: string;

/** Async, so the test worker stays responsive while the CLI starts (about a second per run on a busy machine). */
function cli(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', env: { ...process.env, TESSERA_CONFIG: '' } }, (err, stdout, stderr) => {
      resolve({ status: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr });
    });
  });
}

beforeAll(() => {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
  cwd = mkdtempSync(path.join(tmpdir(), 'tessera-cli-help-'));
});

afterAll(() => {
  if (cwd) rmSync(cwd, { recursive: true, force: true });
});

const COMMANDS = [
  'serve', 'agent', 'dev', 'dev token', 'dev certs', 'secrets', 'secrets put', 'secrets rotate-kek',
  'audit', 'audit verify', 'audit export', 'audit search', 'audit recover', 'admin', 'admin cert',
  'break-glass', 'break-glass init', 'break-glass request', 'break-glass cosign', 'break-glass use',
];

describe('tessera --help, --version and exit codes', async () => {
  it('prints the usage of every command and group on --help, exit 0', { timeout: 180_000 }, async () => {
    for (const name of COMMANDS) {
      const r = await cli([...name.split(' '), '--help']);
      expect(r.status, `${name}: ${r.stderr}`).toBe(0);
      expect(r.stdout, name).toContain(`usage: tessera ${name}`);
    }
    // -h is the same; --help after other options still wins; `help NAME` is the same.
    expect((await cli(['break-glass', 'use', '-h'])).stdout).toContain('usage: tessera break-glass use');
    expect((await cli(['dev', 'token', '--namespace', 'shop', '--help'])).stdout).toContain('usage: tessera dev token');
    expect((await cli(['help', 'audit', 'verify'])).stdout).toContain('usage: tessera audit verify');
    const top = await cli(['--help']);
    expect(top.status).toBe(0);
    for (const name of COMMANDS) expect(top.stdout).toContain(`  ${name}`);
  });

  it('prints the package version on --version and -V', async () => {
    const { version } = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) expect(await cli([flag])).toMatchObject({ status: 0, stdout: `${version}\n` });
  });

  it('exits 2 on a usage mistake, naming the option', async () => {
    const negative = await cli(['dev', 'token', '--namespace', 'shop', '--service-account', 'web', '--ttl', '-5']);
    expect(negative.status).toBe(2);
    expect(negative.stderr).toMatch(/^tessera: --ttl -5: needs a positive whole number of seconds/);
    expect(negative.stderr).toContain('usage: tessera dev token');
    const noValue = await cli(['dev', 'token', '--namespace', 'shop', '--ttl']);
    expect(noValue.status).toBe(2);
    expect(noValue.stderr).toMatch(/^tessera: --ttl needs a value/);
    expect((await cli(['audit', 'frobnicate'])).stderr).toMatch(/unknown audit command "frobnicate" \(verify, export, search, tail, recover\)/);
    expect(await cli(['admin', 'cert', '--id', 'spiffe://example.org/admin/a', '--out', 'o', '--ca-cert', 'nope.pem', '--ca-key', 'nope.key'])).toMatchObject({
      status: 2,
      stderr: expect.stringMatching(/^tessera: --ca-cert nope.pem: cannot read it \(ENOENT\)/) as unknown,
    });
  });

  it('exits 1 on a failure; a missing key file is named by its config field', async () => {
    expect(await cli(['secrets', 'put', 'dev/x', '--from-file', 'missing.txt'])).toMatchObject({ status: 1, stderr: expect.stringMatching(/cannot read missing.txt: ENOENT/) as unknown });
    expect((await cli(['dev', 'certs'])).status).toBe(0);
    const dev = (f: string): string => path.join(cwd, 'certs-dev', f);
    const config = {
      trustDomain: 'example.org',
      listen: { host: '127.0.0.1', port: 0 },
      tls: { certFile: dev('server.pem'), keyFile: path.join(cwd, 'missing-server.key') },
      ca: { certFile: dev('intermediate.pem'), keyFile: dev('intermediate.key'), bundleFile: dev('bundle.pem'), jwtKeyFile: dev('jwt-signing.key') },
      audit: { signingKeyFile: dev('audit-signing.key') },
      issuers: [{ issuer: 'https://kubernetes.default.svc', jwksFile: dev('dev-issuer.jwks.json'), audiences: ['tessera'] }],
      store: { embedded: { dir: path.join(cwd, 'data') } },
    };
    writeFileSync(path.join(cwd, 'tessera.json'), JSON.stringify(config));
    const r = await cli(['serve', '--config', 'tessera.json']);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`tessera: tls.keyFile ${path.join(cwd, 'missing-server.key')}: cannot read it (ENOENT)\n`);
  });
});
