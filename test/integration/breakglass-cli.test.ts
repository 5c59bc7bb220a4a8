/**
 * The runbook's commands, for real (dist/cli/main.js): `break-glass init` writes 0600 keys once and
 * prints the config snippet the broker then runs with; `request` + `cosign` make a two-person request;
 * `use` redeems it against a live broker and writes admin.pem/admin.key that work on the admin API.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWebhookReceiver, type WebhookReceiver } from '../helpers/admin.js';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';

const CLI = path.resolve('dist/cli/main.js');
let dir: string;
let hook: WebhookReceiver;
let b: TestBroker | undefined;

/** Runs the CLI without blocking: the broker under test lives in this process and must keep answering. */
function cli(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: dir, env: { ...process.env, TESSERA_CONFIG: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ status: code ?? -1, stdout, stderr });
    });
  });
}
const mode = (f: string): number => statSync(f).mode & 0o777;

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
  dir = mkdtempSync(path.join(tmpdir(), 'tessera-bg-cli-'));
  hook = await startWebhookReceiver();
});
afterAll(async () => {
  await b?.close();
  await hook?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('tessera break-glass', () => {
  it('init → config → request → cosign → use → admin API, then the replay is refused', async () => {
    const init = await cli(['break-glass', 'init', '--out', 'keys', '--count', '2']);
    expect(init.status, init.stderr).toBe(0);
    for (const f of ['keys/bg-1.key', 'keys/bg-2.key']) expect(mode(path.join(dir, f))).toBe(0o600);
    expect(init.stderr).toContain('offline');
    // Keys are written once: a second init into the same folder fails and changes nothing.
    const before = readFileSync(path.join(dir, 'keys/bg-1.key'), 'utf8');
    const again = await cli(['break-glass', 'init', '--out', 'keys', '--count', '2']);
    expect(again.status).not.toBe(0);
    expect(readFileSync(path.join(dir, 'keys/bg-1.key'), 'utf8')).toBe(before);

    // The printed snippet is the broker's config (plus the alert the broker insists on).
    const snippet = parse(init.stdout) as { breakGlass: { requiredSignatures: number; keys: unknown[] } };
    expect(snippet.breakGlass.requiredSignatures).toBe(2);
    expect(snippet.breakGlass.keys).toHaveLength(2);
    const { material } = await devMaterial();
    b = await startBroker({
      config: {
        breakGlass: snippet.breakGlass,
        audit: {
          signingKeyFile: material.auditKeyFile,
          alerts: { webhookUrl: hook.url, allowInsecureHttp: true, rules: [{ name: 'bg', kind: 'break-glass', muteSeconds: 0 }] },
        },
      },
    });
    const bundle = material.bundleFile;

    const req = await cli([
      'break-glass', 'request', '--key', 'keys/bg-1.key', '--reason', 'CA outage, freeze issuance', '--ticket', 'INC-42',
      '--grant', 'operator', '--ttl', '15m', '--trust-domain', 'example.org', '--out', 'request.json',
    ]);
    expect(req.status, req.stderr).toBe(0);
    expect(mode(path.join(dir, 'request.json'))).toBe(0o600);
    expect(req.stderr).toContain('INC-42');

    // One signature under the two-person rule: refused, exit 1, the reason printed.
    const one = await cli(['break-glass', 'use', '--request', 'request.json', '--url', b.url, '--cacert', bundle, '--out', 'out']);
    expect(one.status).toBe(1);
    expect(one.stderr).toContain('break_glass_denied');

    const co = await cli(['break-glass', 'cosign', '--in', 'request.json', '--key', 'keys/bg-2.key']);
    expect(co.status, co.stderr).toBe(0);
    expect(co.stderr).toContain('CA outage, freeze issuance'); // the co-signer sees what they sign
    const dup = await cli(['break-glass', 'cosign', '--in', 'request.json', '--key', 'keys/bg-2.key']);
    expect(dup.status).not.toBe(0);

    const use = await cli(['break-glass', 'use', '--request', 'request.json', '--url', b.url, '--cacert', bundle, '--out', 'out']);
    expect(use.status, use.stderr).toBe(0);
    expect(use.stderr).toMatch(/audit entry: #\d+/);
    expect(mode(path.join(dir, 'out/admin.key'))).toBe(0o600);
    const cert = readFileSync(path.join(dir, 'out/admin.pem'), 'utf8');
    const key = readFileSync(path.join(dir, 'out/admin.key'), 'utf8');
    const who = await b.call<{ roles: string[]; via: string; ticket: string }>({ path: '/v1/admin/whoami', cert, key });
    expect(who.json).toMatchObject({ roles: ['operator'], via: 'break-glass', ticket: 'INC-42' });
    await hook.waitFor((a) => a.kind === 'break-glass' && (a.trigger as { type: string; reason?: string }).reason?.includes('INC-42') === true);

    const replay = await cli(['break-glass', 'use', '--request', 'request.json', '--url', b.url, '--cacert', bundle, '--out', 'out2']);
    expect(replay.status).toBe(1);
    expect(replay.stderr).toContain('break_glass_replayed');

    // Both keys in one command; a --out that already holds a key is refused before the request is spent.
    const both = await cli([
      'break-glass', 'request', '--key', 'keys/bg-1.key', '--key', 'keys/bg-2.key', '--reason', 'second look', '--ticket', 'INC-42',
      '--grant', 'auditor', '--trust-domain', 'example.org', '--out', 'request2.json',
    ]);
    expect(both.status, both.stderr).toBe(0);
    const busy = await cli(['break-glass', 'use', '--request', 'request2.json', '--url', b.url, '--cacert', bundle, '--out', 'out']);
    expect(busy.status).toBe(2);
    expect(busy.stderr).toContain('already exists');
    const fresh = await cli(['break-glass', 'use', '--request', 'request2.json', '--url', b.url, '--cacert', bundle, '--out', 'out3']);
    expect(fresh.status, fresh.stderr).toBe(0);
    expect(fresh.stderr).toContain('Break-glass granted: auditor');
  }, 120_000);

  it('usage mistakes exit 2 with a message; a non-Ed25519 key is refused', async () => {
    // Independent command lines: run side by side (each is a node process that mostly waits to start).
    const [noKey, badGrant, badTtl, wrongKey, unknown] = await Promise.all([
      cli(['break-glass', 'request', '--reason', 'x', '--ticket', 'INC-1', '--grant', 'operator', '--trust-domain', 'example.org']),
      cli(['break-glass', 'request', '--key', 'keys/bg-1.key', '--reason', 'x', '--ticket', 'INC-1', '--grant', 'root', '--trust-domain', 'example.org']),
      cli(['break-glass', 'request', '--key', 'keys/bg-1.key', '--reason', 'x', '--ticket', 'INC-1', '--grant', 'operator', '--ttl', 'forever', '--trust-domain', 'example.org']),
      cli(['break-glass', 'request', '--key', path.join(dir, 'out/admin.key'), '--reason', 'x', '--ticket', 'INC-1', '--grant', 'operator', '--trust-domain', 'example.org']),
      cli(['break-glass', 'frobnicate']),
    ]);
    expect(noKey.status).toBe(2);
    expect(noKey.stderr).toContain('--key');
    expect(badGrant.status).toBe(2);
    expect(badTtl.status).toBe(2);
    expect(wrongKey.status).toBe(2);
    expect(wrongKey.stderr).toContain('not an Ed25519');
    expect(unknown.status).toBe(2);
  }, 60_000);
});
