import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmbeddedStore } from '../store/embedded.js';
import { Checkpointer } from './checkpointer.js';
import type { AuditEntry } from './entry.js';
import { CHECKPOINTS_FILE, ENTRIES_FILE, MANIFEST_FILE, exportLog, openExport, parseCheckpointsFile } from './export.js';
import { AuditLog } from './log.js';
import { MerkleTree, leafHash } from './merkle.js';
import { NoteSigner, parseVerifierKey, signCheckpoint } from './note.js';
import { storeSource } from './source.js';
import { verifyLog } from './verify.js';

const signer = new NoteSigner('example.org/tessera/audit', generateKeyPairSync('ed25519').privateKey);
const key = parseVerifierKey(signer.verifierKey);
const N = 12;
let root: string;
let clean: string;

const entry = (i: number): AuditEntry => ({
  ts: 1_700_000_000_000 + i * 1000,
  type: i % 4 === 3 ? 'denial' : 'x509-svid.issued',
  decision: i % 4 === 3 ? 'deny' : 'allow',
  actor: `spiffe://example.org/ns/shop/sa/w${i}`,
  subject: i % 4 === 3 ? null : `spiffe://example.org/ns/shop/sa/w${i}`,
  ...(i % 4 === 3 ? { code: 'forbidden' } : { serial: `0a${i.toString(16).padStart(4, '0')}` }),
  requestId: `request-${i}`,
  replica: 'r1',
});

beforeAll(async () => {
  root = mkdtempSync(path.join(os.tmpdir(), 'tessera-verify-'));
  const store = await EmbeddedStore.open(path.join(root, 'data'), { fsync: false });
  const audit = await AuditLog.open(store);
  const cp = await Checkpointer.start({ store, audit, signer, intervalMs: 60_000, replicaId: 'r1' });
  // One receipt per entry, in sequence: one checkpoint per entry, as a quiet broker signs them.
  for (let i = 0; i < N; i++) await cp.receipt(await audit.append(entry(i)));
  await cp.close();
  clean = path.join(root, 'clean');
  await exportLog(storeSource(store), clean, { verifierKey: signer.verifierKey });
  await store.close();
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

let copies = 0;
/** A copy of the clean export with `edit` applied to one of its files. */
function tampered(file: string, edit: (text: string) => string): string {
  const dir = path.join(root, `t${copies++}`);
  cpSync(clean, dir, { recursive: true });
  const p = path.join(dir, file);
  writeFileSync(p, edit(readFileSync(p, 'utf8')));
  return dir;
}
const lines = (t: string): string[] => t.split('\n').slice(0, -1);
const unlines = (l: string[]): string => l.map((x) => `${x}\n`).join('');
const verifyDir = async (dir: string) => verifyLog(await openExport(dir), key);

describe('export format', () => {
  it('writes entries.jsonl, checkpoints.txt and manifest.json that read back exactly', async () => {
    const manifest = JSON.parse(readFileSync(path.join(clean, MANIFEST_FILE), 'utf8')) as Record<string, unknown>;
    expect(manifest).toMatchObject({ format: 'tessera-audit-export', version: 1, treeSize: N, origin: 'example.org/tessera/audit', verifierKey: signer.verifierKey });
    const src = await openExport(clean);
    const got: Buffer[] = [];
    for await (const e of src.entries(0, Number.POSITIVE_INFINITY)) got.push(e);
    expect(got).toHaveLength(N);
    const tree = new MerkleTree();
    for (const e of got) tree.append(leafHash(e));
    expect(tree.root().toString('base64')).toBe(manifest.rootHash);
    expect(JSON.parse(got[3]!.toString())).toEqual(JSON.parse(JSON.stringify(entry(3))));
    const notes = await src.checkpoints();
    expect(notes).toHaveLength(N + 1); // the empty log at start, then one per entry
    expect(notes.join('\n')).toBe(readFileSync(path.join(clean, CHECKPOINTS_FILE), 'utf8').slice(0, -1));
  });

  it('refuses to overwrite an export and reads checkpoints.txt strictly', async () => {
    await expect(exportLog((await openExport(clean)) as never, clean)).rejects.toThrow(/already holds an export/);
    expect(() => parseCheckpointsFile('o\n1\nroot\n— k sig\n')).toThrow(/empty line/);
    expect(() => parseCheckpointsFile('o\n1\nroot\n\nnot a signature\n')).toThrow(/signature lines/);
    expect(parseCheckpointsFile('')).toEqual([]);
  });
});

describe('verifyLog', () => {
  it('accepts the untouched log: every entry proven, no problems', async () => {
    const r = await verifyDir(clean);
    expect(r.problems).toEqual([]);
    expect(r).toMatchObject({ ok: true, entries: N, checkpoints: N + 1, verifiedSize: N, uncovered: 0 });
  });

  it('names the index of a changed byte', async () => {
    const dir = tampered(ENTRIES_FILE, (t) => t.replace('request-5"', 'request-X"'));
    const r = await verifyDir(dir);
    expect(r.ok).toBe(false);
    expect(r.firstBadIndex).toBe(5);
    expect(r.problems[0]?.kind).toBe('entries-mismatch');
  });

  it('names the index of an entry that no longer parses', async () => {
    const dir = tampered(ENTRIES_FILE, (t) => unlines(lines(t).map((l, i) => (i === 7 ? l.replace('{', '[') : l))));
    const r = await verifyDir(dir);
    expect(r.firstBadIndex).toBe(7);
    expect(r.problems.map((p) => p.kind)).toContain('entry-malformed');
  });

  it('names the index of a removed entry, whether or not the manifest was fixed up', async () => {
    const dir = tampered(ENTRIES_FILE, (t) => unlines(lines(t).filter((_, i) => i !== 4)));
    const r = await verifyDir(dir);
    expect(r.ok).toBe(false);
    expect(r.firstBadIndex).toBe(4);
    const hidden = tampered(ENTRIES_FILE, (t) => unlines(lines(t).filter((_, i) => i !== 4)));
    const m = path.join(hidden, MANIFEST_FILE);
    writeFileSync(m, readFileSync(m, 'utf8').replace(`"treeSize": ${N}`, `"treeSize": ${N - 1}`));
    const r2 = await verifyDir(hidden);
    expect(r2.firstBadIndex).toBe(4);
    expect(r2.problems.some((p) => /only 11 are present|do not hash/.test(p.message))).toBe(true);
  });

  it('names the first index of two reordered entries', async () => {
    const dir = tampered(ENTRIES_FILE, (t) => {
      const l = lines(t);
      [l[8], l[9]] = [l[9] as string, l[8] as string];
      return unlines(l);
    });
    const r = await verifyDir(dir);
    expect(r.firstBadIndex).toBe(8);
  });

  it('names a forged checkpoint (changed text, or signed by another key under the same name)', async () => {
    const dir = tampered(CHECKPOINTS_FILE, (t) => t.replace(/\n6\n/, '\n7\n'));
    const r = await verifyDir(dir);
    expect(r.ok).toBe(false);
    expect(r.firstBadCheckpoint).toBe(6);
    expect(r.problems[0]?.kind).toBe('checkpoint-signature');

    const impostor = new NoteSigner('example.org/tessera/audit', generateKeyPairSync('ed25519').privateKey);
    const fake = (await signCheckpoint(impostor, N, Buffer.alloc(32, 7))).note;
    const r2 = await verifyDir(tampered(CHECKPOINTS_FILE, (t) => `${t}${fake}\n`));
    expect(r2.firstBadCheckpoint).toBe(N + 1);
    expect(r2.problems[0]?.message).toMatch(/no signature from the audit key/);
  });

  it('names a correctly signed checkpoint that is inconsistent with an earlier one (a fork)', async () => {
    const fork = (await signCheckpoint(signer, 5, leafHash(Buffer.from('a different history')))).note;
    const r = await verifyDir(tampered(CHECKPOINTS_FILE, (t) => `${t}${fork}\n`));
    expect(r.ok).toBe(false);
    expect(r.firstBadCheckpoint).toBe(N + 1);
    expect(r.problems).toHaveLength(1);
    expect(r.problems[0]).toMatchObject({ kind: 'checkpoint-inconsistent', checkpoint: N + 1 });
    expect(r.problems[0]?.message).toMatch(/inconsistent with checkpoint #12 \(size 12\)/);
  });

  it('reports entries that no checkpoint covers yet without failing', async () => {
    // Drop the last three checkpoints: entries 9..11 are then read but not proven.
    const dir = tampered(CHECKPOINTS_FILE, (t) => parseCheckpointsFile(t).slice(0, N + 1 - 3).map((n) => `${n}\n`).join(''));
    const r = await verifyDir(dir);
    expect(r).toMatchObject({ ok: true, verifiedSize: N - 3, uncovered: 3 });
  });
});

describe('verifyLog: entries that share a checkpoint', () => {
  // 200 entries, signed only at sizes 107, 162 and 200 (a busy broker: many entries per checkpoint).
  const M = 200;
  let dir: string;
  let store: EmbeddedStore;
  /** The log's own leaf hashes (what GET /v1/audit/leaves serves), read from the untouched store. */
  const logLeaves = { name: 'the log', leafHashes: async function* (start: number, end: number) {
    for (const e of await store.readAuditEntries(start, end)) yield leafHash(e);
  } };

  beforeAll(async () => {
    dir = path.join(root, 'shared');
    store = await EmbeddedStore.open(path.join(dir, 'data'), { fsync: false });
    const audit = await AuditLog.open(store);
    const cp = await Checkpointer.start({ store, audit, signer, intervalMs: 3_600_000, replicaId: 'r1' });
    for (let i = 0; i < M; i++) {
      const r = await audit.append(entry(i));
      if (i === 106 || i === 161) await cp.receipt(r);
    }
    await cp.close();
    await exportLog(storeSource(store), path.join(dir, 'export'), { verifierKey: signer.verifierKey });
  });
  afterAll(async () => {
    await store.close();
  });

  const swapped = (): string => {
    const out = path.join(dir, `swap${copies++}`);
    cpSync(path.join(dir, 'export'), out, { recursive: true });
    const p = path.join(out, ENTRIES_FILE);
    const l = lines(readFileSync(p, 'utf8'));
    [l[150], l[151]] = [l[151] as string, l[150] as string];
    writeFileSync(p, unlines(l));
    return out;
  };

  it('names exactly index 150 for a swap at 150 inside [107, 162), using the log\'s leaf hashes', async () => {
    const notes = await (await openExport(path.join(dir, 'export'))).checkpoints();
    expect(notes.map((n) => Number(n.split('\n')[1]))).toEqual([0, 107, 162, 200]);
    const r = await verifyLog(await openExport(swapped()), key, { reference: logLeaves });
    expect(r.ok).toBe(false);
    expect(r.firstBadIndex).toBe(150);
    expect(r.firstBadRange).toBeUndefined();
    expect(r.problems[0]?.message).toMatch(/the first bad index is 150\b/);
  });

  it('names exactly index 150 for a changed byte at 150', async () => {
    const out = path.join(dir, `edit${copies++}`);
    cpSync(path.join(dir, 'export'), out, { recursive: true });
    const p = path.join(out, ENTRIES_FILE);
    writeFileSync(p, readFileSync(p, 'utf8').replace('"request-150"', '"request-15X"'));
    const r = await verifyLog(await openExport(out), key, { reference: logLeaves });
    expect(r.firstBadIndex).toBe(150);
  });

  it('without a reference, says it is a range and why', async () => {
    const r = await verifyLog(await openExport(swapped()), key);
    expect(r.ok).toBe(false);
    expect(r.firstBadRange).toEqual([107, 162]);
    expect(r.problems[0]?.message).toMatch(/somewhere in \[107, 162\)/);
    expect(r.problems[0]?.message).toMatch(/no per-entry leaf hashes/);
  });

  it('does not trust reference leaf hashes that do not hash to the signed root', async () => {
    const lying = { name: 'a liar', leafHashes: async function* (start: number, end: number) {
      for await (const h of logLeaves.leafHashes(start, end)) yield start++ === 120 ? Buffer.alloc(32) : h;
    } };
    const r = await verifyLog(await openExport(swapped()), key, { reference: lying });
    expect(r.firstBadRange).toEqual([107, 162]);
    expect(r.problems[0]?.message).toMatch(/a liar.*do not hash to the root of checkpoint/);
  });
});
