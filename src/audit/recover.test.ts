import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EmbeddedStore } from '../store/embedded.js';
import { Checkpointer } from './checkpointer.js';
import { type AuditEntry, parseAuditEntry } from './entry.js';
import { exportLog, openExport } from './export.js';
import { AuditLog } from './log.js';
import { NoteSigner, parseVerifierKey } from './note.js';
import { recoverLog } from './recover.js';
import { storeSource } from './source.js';
import { verifyLog } from './verify.js';

const dirs: string[] = [];
const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c().catch(() => {});
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
const tmp = (): string => {
  const d = mkdtempSync(path.join(os.tmpdir(), 'tessera-recover-'));
  dirs.push(d);
  return d;
};

const signer = new NoteSigner('example.org/tessera/audit', generateKeyPairSync('ed25519').privateKey);
const key = parseVerifierKey(signer.verifierKey);
const mk = (i: number): AuditEntry => ({ ts: 1_700_000_000_000 + i, type: 'denial', decision: 'deny', actor: null, subject: null, code: 'forbidden', requestId: `req-${i}`, replica: 'r1' });

/** A log of `n` entries with checkpoints, exported; returns the export directory. */
async function exported(n: number, unsignedTail = 0): Promise<string> {
  const store = await EmbeddedStore.open(tmp(), { fsync: false });
  const audit = await AuditLog.open(store);
  const cp = await Checkpointer.start({ store, audit, signer, intervalMs: 60_000, replicaId: 'test' });
  for (let i = 0; i < n; i++) {
    const r = await audit.append(mk(i));
    if (i % 7 === 0) await cp.receipt(r);
  }
  await cp.close(); // signs the final checkpoint
  for (let i = 0; i < unsignedTail; i++) await audit.append(mk(n + i)); // no checkpoint covers these
  const out = path.join(tmp(), 'export');
  await exportLog(storeSource(store), out); // closes the store
  return out;
}

async function emptyStore(): Promise<EmbeddedStore> {
  const s = await EmbeddedStore.open(tmp(), { fsync: false });
  closers.push(() => s.close());
  return s;
}

describe('recoverLog (tessera audit recover)', () => {
  it('re-seeds an empty store with the verified entries and checkpoints, plus one entry recording the recovery', async () => {
    const dir = await exported(30, 3);
    const store = await emptyStore();
    const src = await openExport(dir);
    const r = await recoverLog(src, key, store, { from: dir, now: () => 1_800_000_000_000 });
    expect(r).toMatchObject({ restored: 30, skipped: 3, recordIndex: 30 });
    expect(await store.auditSize()).toBe(31);
    const record = parseAuditEntry((await store.readAuditEntries(30, 31))[0] as Buffer);
    expect(record).toMatchObject({ type: 'admin', action: 'audit-recover', replica: 'tessera-audit-recover' });
    // The recovered store verifies against the signed checkpoints (the record is not signed yet).
    const v = await verifyLog(storeSource(store), key);
    expect(v).toMatchObject({ ok: true, verifiedSize: 30, uncovered: 1 });
    // A broker starting on it accepts it and signs a checkpoint covering the record.
    const audit = await AuditLog.open(store);
    const cp = await Checkpointer.start({ store, audit, signer, intervalMs: 60_000, replicaId: 'after' });
    expect(cp.latest?.size).toBe(31);
    await cp.close();
  });

  it('refuses a store that is not empty, and writes nothing to it', async () => {
    const dir = await exported(10);
    const store = await emptyStore();
    await store.appendAuditEntries([Buffer.from('{"someone":"else"}')]);
    await expect(recoverLog(await openExport(dir), key, store, { from: dir, now: Date.now })).rejects.toMatchObject({
      message: expect.stringMatching(/store is not empty \(1 audit entries/),
    });
    expect(await store.auditSize()).toBe(1);
    expect(await store.listCheckpoints()).toEqual([]);
  });

  it('refuses an export that does not verify (tampered entry, or another key), and writes nothing', async () => {
    const dir = await exported(10);
    const file = path.join(dir, 'entries.jsonl');
    writeFileSync(file, readFileSync(file, 'utf8').replace('req-3', 'req-X'));
    const store = await emptyStore();
    await expect(recoverLog(await openExport(dir), key, store, { from: dir, now: Date.now })).rejects.toMatchObject({
      message: expect.stringMatching(/does not verify, nothing restored/),
    });
    const other = parseVerifierKey(new NoteSigner('example.org/tessera/audit', generateKeyPairSync('ed25519').privateKey).verifierKey);
    const clean = await exported(5);
    await expect(recoverLog(await openExport(clean), other, store, { from: clean, now: Date.now })).rejects.toMatchObject({ name: 'RecoverError' });
    expect(await store.auditSize()).toBe(0);
  });
});
