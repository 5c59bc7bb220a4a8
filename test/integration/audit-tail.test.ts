/** `tessera audit tail` against a live broker: in process for the one-shot forms, as a child process for --follow. */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canonicalJson } from '../../src/audit/entry.js';
import { leafHash } from '../../src/audit/merkle.js';
import { auditCommand } from '../../src/cli/audit.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { until } from '../helpers/until.js';

const CLI = path.resolve('dist/cli/main.js');
let b: TestBroker;
let tls: string[];

async function tail(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await auditCommand(['tail', ...args], { stdout: (t) => out.push(t), stderr: (t) => err.push(t), now: () => Date.now() });
  return { code, stdout: out.join(''), stderr: err.join('') };
}

const parse = (stdout: string): { index: number; leafHash: string; entry: { actor: string | null; subject: string | null } }[] =>
  stdout.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { index: number; leafHash: string; entry: { actor: string | null; subject: string | null } });

async function issue(n: number, serviceAccount = 'web'): Promise<void> {
  const token = await b.token({ serviceAccount });
  for (let i = 0; i < n; i++) expect((await b.call({ path: '/v1/svid/jwt', token, body: { audience: [serviceAccount === 'web' ? 'payments' : 'inventory'] } })).status).toBe(200);
}

beforeAll(async () => {
  b = await startBroker();
  tls = ['--log', b.url, '--cacert', b.material.bundleFile, '--admin-cert', b.material.adminCertFile, '--admin-key', b.material.adminKeyFile];
  await issue(15);
  await issue(3, 'cart');
}, 60_000);
afterAll(async () => {
  await b?.close();
});

describe('tessera audit tail', () => {
  it('prints the last 10 entries by default, and every entry from --from, in order, each verifying against its leaf hash', async () => {
    const size = await b.broker.store.auditSize();
    const last = await tail(tls);
    expect(last.code).toBe(0);
    expect(parse(last.stdout).map((r) => r.index)).toEqual(Array.from({ length: 10 }, (_, i) => size - 10 + i));
    // Reading entries is recorded (an admin entry per read): the log grew by that one.
    expect(await b.broker.store.auditSize()).toBe(size + 1);
    const all = await tail([...tls, '--from', '0']);
    const recs = parse(all.stdout);
    expect(recs.map((r) => r.index)).toEqual(Array.from({ length: size + 1 }, (_, i) => i));
    for (const r of recs) expect(leafHash(canonicalJson(r.entry)).toString('base64')).toBe(r.leafHash);
    // Resuming from the last index + 1: exactly what came after (the record of the previous read).
    expect(parse((await tail([...tls, '--from', String(size + 1)])).stdout).map((r) => r.index)).toEqual([size + 1]);
  });

  it('--spiffe-id keeps the entries about that identity', async () => {
    const id = 'spiffe://example.org/ns/shop/sa/cart';
    const recs = parse((await tail([...tls, '--from', '0', '--spiffe-id', id])).stdout);
    expect(recs).toHaveLength(3);
    for (const r of recs) expect([r.entry.actor, r.entry.subject]).toContain(id);
  });

  it('refuses bad usage with a message naming the flag (exit 2 from the CLI)', async () => {
    await expect(tail(['--log', b.url])).rejects.toThrow(/needs --admin-cert and --admin-key/);
    await expect(tail([...tls, '--from', '-1'])).rejects.toThrow(/--from/);
    await expect(tail([...tls, '--from', 'x'])).rejects.toThrow(/--from must be an integer/);
    await expect(tail([...tls, '--spiffe-id', 'web'])).rejects.toThrow(/expected spiffe:\/\//);
    await expect(tail(['--log', 'http://127.0.0.1:1', '--admin-cert', 'a', '--admin-key', 'b'])).rejects.toThrow(/https:\/\//);
  });

  it('--follow streams new entries as they are appended, and stops cleanly on SIGTERM', async () => {
    const size = await b.broker.store.auditSize();
    const child = spawn(process.execPath, [CLI, 'audit', 'tail', ...tls, '--from', String(size), '--follow', '--interval-ms', '100'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      await issue(4);
      await until('followed', async () => (parse(out).length >= 4 ? true : undefined), 20_000);
      await issue(2);
      await until('followed more', async () => (parse(out).length >= 7 ? true : undefined), 20_000);
      // In order, no gap; the tail's own reads are entries too (type admin), but they do not feed on themselves.
      const idx = parse(out).map((r) => r.index);
      expect(idx).toEqual(Array.from({ length: idx.length }, (_, i) => size + i));
      const settled = (await b.broker.store.auditSize());
      await new Promise((r) => setTimeout(r, 1000));
      expect(await b.broker.store.auditSize()).toBeLessThanOrEqual(settled + 1);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited, err).toBe(0);
  }, 60_000);
});
