/**
 * `tessera audit verify` on entries that share one checkpoint (a burst of denials, which get no
 * receipt, covered by the next issuance's checkpoint): checkpoints alone only localize a change to a
 * range, so without a reference the verifier says it is a range and why; with --reference URL it
 * compares each exported entry with the broker's public leaf hashes and names the exact index.
 */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { auditCommand } from '../../src/cli/audit.js';
import { mintAdminCert, writeClientCert } from '../helpers/admin.js';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';

let b: TestBroker;
let dir: string;
let exported: string;

async function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const code = await auditCommand(args, { stdout: (t) => stdout.push(t), stderr: (t) => stderr.push(t), now: () => Date.now() });
  return { code, stdout: stdout.join(''), stderr: stderr.join('') };
}

beforeAll(async () => {
  const { material } = await devMaterial();
  // No background checkpoints: only issuance receipts sign one, so the denials share a checkpoint.
  b = await startBroker({ config: { audit: { signingKeyFile: material.auditKeyFile, checkpointIntervalMs: 3_600_000 } } });
  const token = await b.token();
  const jwt = async (audience: string): Promise<number> => (await b.call({ path: '/v1/svid/jwt', token, body: { audience: [audience] } })).status;
  expect(await jwt('payments')).toBe(200); // entry 0, checkpoint of size 1
  for (let i = 0; i < 6; i++) expect(await jwt('bank')).toBe(403); // entries 1..6, no checkpoint
  expect(await jwt('payments')).toBe(200); // entry 7, checkpoint of size 8
  dir = mkdtempSync(path.join(tmpdir(), 'tessera-exact-'));
  const admin = writeClientCert(dir, 'dev', mintAdminCert(b.material, 'spiffe://example.org/admin/dev'));
  exported = path.join(dir, 'export');
  const r = await run(['export', '--out', exported, '--log', b.url, '--cacert', b.material.bundleFile, '--admin-cert', admin.certFile, '--admin-key', admin.keyFile]);
  expect(r.code, r.stderr).toBe(0);
  const sizes = readFileSync(path.join(exported, 'checkpoints.txt'), 'utf8').split('\n\n').map((n) => n.split('\n')).filter((l) => l.length >= 2 && /^\d+$/.test(l[1] ?? '')).map((l) => Number(l[1]));
  expect(sizes).toContain(1);
  expect(sizes).toContain(8);
  expect(sizes.filter((s) => s > 1 && s < 8)).toEqual([]);
});
afterAll(async () => {
  await b?.close();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

/** A copy of the export with entries 3 and 4 (two denials in [1, 8)) swapped. */
function swapped(): string {
  const out = path.join(dir, 'swapped');
  cpSync(exported, out, { recursive: true });
  const file = path.join(out, 'entries.jsonl');
  const l = readFileSync(file, 'utf8').split('\n');
  [l[3], l[4]] = [l[4] as string, l[3] as string];
  writeFileSync(file, l.join('\n'));
  return out;
}

describe('tessera audit verify: a change inside entries that share a checkpoint', () => {
  it('without a reference: exit 1, says it is a range and why', async () => {
    const r = await run(['verify', '--log', swapped(), '--key', b.material.auditPubFile]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/first bad entry somewhere in \[1, 8\)/);
    expect(r.stdout).toMatch(/no per-entry leaf hashes/);
  });

  it('with --reference URL: exit 1, names exactly index 3', async () => {
    const r = await run(['verify', '--log', swapped(), '--key', b.material.auditPubFile, '--reference', b.url, '--cacert', b.material.bundleFile]);
    expect(r.code, r.stdout).toBe(1);
    expect(r.stderr).toMatch(/first bad entry index 3$/m);
    expect(r.stdout).toMatch(/the first bad index is 3\b/);
    expect(r.stdout).toMatch(/checked +: every entry in the export, re-hashed, and compared with the leaf hashes of https:/);
  });

  it('the untouched export still verifies with and without a reference', async () => {
    expect((await run(['verify', '--log', exported, '--key', b.material.auditPubFile])).code).toBe(0);
    expect((await run(['verify', '--log', exported, '--key', b.material.auditPubFile, '--reference', b.url, '--cacert', b.material.bundleFile])).code).toBe(0);
  });

  it('refuses --reference that is not https, and with a broker URL as --log', async () => {
    await expect(run(['verify', '--log', exported, '--key', b.material.auditPubFile, '--reference', 'http://x'])).rejects.toThrow(/--reference URL must be https/);
    await expect(run(['verify', '--log', b.url, '--key', b.material.auditPubFile, '--reference', b.url])).rejects.toThrow(/--reference is for an export directory/);
  });
});
