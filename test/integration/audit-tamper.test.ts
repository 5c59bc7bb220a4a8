/**
 * `tessera audit export` and `tessera audit verify`, the real CLI (node dist/cli/main.js), on a log
 * made by a real broker: the untouched export verifies (exit 0), and each kind of tampering makes
 * verify exit 1 naming the first bad entry index or checkpoint.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { leafHash } from '../../src/audit/merkle.js';
import { loadNoteSigner, signCheckpoint } from '../../src/audit/note.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';

const CLI = path.resolve('dist/cli/main.js');
let b: TestBroker;
let work: string;
let exportDir: string;
let configFile: string;
const serials: string[] = [];

function cli(args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, TESSERA_CONFIG: '' }, timeout: 60_000 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
  work = mkdtempSync(path.join(tmpdir(), 'tessera-tamper-'));
  b = await startBroker();
  const token = await b.token();
  // Entries 0-7 issuances (one checkpoint each), 8-9 denials (no receipt), 10-13 issuances.
  for (let i = 0; i < 8; i++) {
    const r = await b.call<{ serial: string }>({ path: '/v1/svid/x509', token, body: { keyType: 'ec-p256' } });
    expect(r.status, r.text).toBe(200);
    serials.push(r.json.serial);
  }
  for (let i = 0; i < 2; i++) expect((await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['bank'] } })).status).toBe(403);
  for (let i = 0; i < 4; i++) expect((await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } })).status).toBe(200);
  // Stop the broker (final checkpoint) but keep its files, then export with the CLI from its config.
  await b.app.close();
  await b.broker.close();
  configFile = path.join(b.dir, 'tessera.yaml');
  exportDir = path.join(work, 'export');
  const r = cli(['audit', 'export', '--out', exportDir, '--config', configFile]);
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/exported 14 entries and \d+ checkpoints/);
});

afterAll(() => {
  if (b) rmSync(b.dir, { recursive: true, force: true });
  if (work) rmSync(work, { recursive: true, force: true });
});

let n = 0;
function tamper(file: string, edit: (text: string) => string): string {
  const dir = path.join(work, `tampered-${n++}`);
  cpSync(exportDir, dir, { recursive: true });
  const p = path.join(dir, file);
  writeFileSync(p, edit(readFileSync(p, 'utf8')));
  return dir;
}
const editLine = (i: number, f: (l: string) => string) => (t: string): string =>
  t.split('\n').map((l, k) => (k === i ? f(l) : l)).join('\n');
const verify = (dir: string) => cli(['audit', 'verify', '--log', dir, '--key', b.material.auditPubFile]);

describe('tessera audit verify (CLI)', () => {
  it('accepts the untouched export: exit 0, every entry proven', () => {
    const r = verify(exportDir);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^OK: the audit log example.org\/tessera\/audit verifies/);
    expect(r.stdout).toMatch(/proven +: entries 0\.\.13/);
    // The PEM form of the key works as well.
    const pem = path.join(work, 'audit.pem');
    writeFileSync(pem, publicPem());
    expect(cli(['audit', 'verify', '--log', exportDir, '--key', pem]).status).toBe(0);
  });

  it('a changed byte in an entry: exit 1, names that index', () => {
    const r = verify(tamper('entries.jsonl', editLine(5, (l) => l.replace('"shop"', '"shoq"'))));
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/first bad entry index 5\b/);
    expect(r.stdout).toMatch(/FAILED/);
  });

  it('a changed byte that breaks the JSON of a denial: exit 1, names that index', () => {
    const r = verify(tamper('entries.jsonl', editLine(9, (l) => l.replace(':', ';'))));
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/first bad entry index 9\b/);
  });

  it('a removed entry: exit 1, names its index', () => {
    const r = verify(tamper('entries.jsonl', (t) => t.split('\n').filter((_, k) => k !== 3).join('\n')));
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/first bad entry index 3\b/);
  });

  it('two reordered entries: exit 1, names the first of them', () => {
    const r = verify(
      tamper('entries.jsonl', (t) => {
        const l = t.split('\n');
        [l[6], l[7]] = [l[7] as string, l[6] as string];
        return l.join('\n');
      }),
    );
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/first bad entry index 6\b/);
  });

  it('a forged checkpoint (bad signature): exit 1, names the checkpoint', () => {
    const r = verify(tamper('checkpoints.txt', (t) => t.replace(/\n4\n/, '\n5\n')));
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/first bad checkpoint #4\b/);
    expect(r.stdout).toMatch(/checkpoint #4: forged/);
  });

  it('a validly signed checkpoint inconsistent with an earlier one: exit 1, names it', async () => {
    const signer = loadNoteSigner(b.material.auditKeyFile, 'example.org/tessera/audit');
    const fork = (await signCheckpoint(signer, 7, leafHash(Buffer.from('rewritten history')))).note;
    const dir = tamper('checkpoints.txt', (t) => `${t}${fork}\n`);
    const count = (readFileSync(path.join(dir, 'checkpoints.txt'), 'utf8').match(/^— /gm) ?? []).length;
    const r = verify(dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`first bad checkpoint #${count - 1}\\b`));
    expect(r.stdout).toMatch(/inconsistent with checkpoint #\d+ \(size 14\)/);
  });

  it('refuses bad usage with exit 2', () => {
    expect(cli(['audit', 'verify', '--log', exportDir]).status).toBe(2);
    expect(cli(['audit', 'verify', '--log', path.join(work, 'nope'), '--key', b.material.auditPubFile]).status).toBe(2);
    expect(cli(['audit', 'verify', '--log', exportDir, '--key', configFile]).status).toBe(2);
    expect(cli(['audit', 'frobnicate']).status).toBe(2);
  });
});

describe('tessera audit search (CLI)', () => {
  it('finds an issued certificate by serial, and denials by type', () => {
    const r = cli(['audit', 'search', '--config', configFile, '--serial', serials[2] as string]);
    expect(r.status, r.stderr).toBe(0);
    const hits = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { index: number; serial: string; subject: string });
    expect(hits).toEqual([expect.objectContaining({ index: 2, serial: serials[2], subject: 'spiffe://example.org/ns/shop/sa/web' })]);
    const denials = cli(['audit', 'search', '--log', exportDir, '--type', 'denial', '--spiffe-id', 'spiffe://example.org/ns/shop/sa/web']);
    expect(denials.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { index: number }).index)).toEqual([8, 9]);
    expect(cli(['audit', 'search', '--log', exportDir, '--type', 'nope']).status).toBe(2);
  });
});

function publicPem(): string {
  return loadNoteSigner(b.material.auditKeyFile, 'example.org/tessera/audit').publicKey.export({ type: 'spki', format: 'pem' }).toString();
}
