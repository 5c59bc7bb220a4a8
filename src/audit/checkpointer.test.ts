import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Clock } from '../clock.js';
import { BrokerError } from '../errors.js';
import { EmbeddedStore } from '../store/embedded.js';
import { Checkpointer } from './checkpointer.js';
import type { AuditEntry } from './entry.js';
import { AuditLog } from './log.js';
import { leafHash, verifyConsistency, verifyInclusion } from './merkle.js';
import { NoteSigner, openCheckpoint, parseCheckpoint, parseNote, signCheckpoint } from './note.js';

const dirs: string[] = [];
const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c().catch(() => {});
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const signer = new NoteSigner('example.org/tessera/audit', generateKeyPairSync('ed25519').privateKey);

async function setup(opts: { dir?: string; intervalMs?: number; receiptGapMs?: number; clock?: Clock } = {}) {
  const dir = opts.dir ?? mkdtempSync(path.join(os.tmpdir(), 'tessera-cp-'));
  if (opts.dir === undefined) dirs.push(dir);
  const store = await EmbeddedStore.open(dir, { fsync: false });
  const audit = await AuditLog.open(store);
  const errors: string[] = [];
  const cp = await Checkpointer.start({
    store,
    audit,
    signer,
    intervalMs: opts.intervalMs ?? 60_000,
    receiptGapMs: opts.receiptGapMs ?? 0,
    replicaId: 'test',
    ...(opts.clock !== undefined ? { clock: opts.clock } : {}),
    onError: (err, what) => errors.push(`${what}: ${(err as Error).message}`),
  });
  const close = async (): Promise<void> => {
    await cp.close();
    await store.close();
  };
  closers.push(close);
  return { dir, store, audit, cp, errors, close };
}

const entry = (i: number): AuditEntry => ({
  ts: 1_700_000_000_000 + i,
  type: 'x509-svid.issued',
  decision: 'allow',
  actor: 'spiffe://example.org/ns/shop/sa/web',
  subject: 'spiffe://example.org/ns/shop/sa/web',
  serial: i.toString(16).padStart(16, '0'),
  requestId: `req-${i}`,
  replica: 'test',
});

const b64 = (s: string): Buffer => Buffer.from(s, 'base64');

describe('Checkpointer', () => {
  it('signs the empty log at start, so there is always a checkpoint to serve', async () => {
    const { store, cp } = await setup();
    expect(cp.latest?.size).toBe(0);
    const stored = await store.listCheckpoints();
    expect(stored).toHaveLength(1);
    expect(openCheckpoint(stored[0] as string, signer.verifier).size).toBe(0);
  });

  it('gives every concurrent receipt a checkpoint that covers it, coalescing the signatures', async () => {
    const { store, audit, cp } = await setup();
    const n = 60;
    const receipts = await Promise.all(Array.from({ length: n }, async (_, i) => cp.receipt(await audit.append(entry(i)))));
    for (const r of receipts) {
      const checkpoint = openCheckpoint(r.checkpoint, signer.verifier);
      expect(checkpoint.size).toBe(r.treeSize);
      expect(checkpoint.rootHash.toString('base64')).toBe(r.rootHash);
      expect(r.treeSize).toBeGreaterThan(r.index);
      expect(verifyInclusion(b64(r.leafHash), r.index, r.treeSize, r.inclusionProof.map(b64), checkpoint.rootHash)).toBe(true);
    }
    const stored = (await store.listCheckpoints()).map((note) => openCheckpoint(note, signer.verifier));
    // One round signs for everyone who was waiting: far fewer signatures than receipts.
    expect(stored.length - 1).toBeLessThan(n / 3);
    // Stored checkpoints never shrink, and each is consistent with the one before.
    for (let i = 1; i < stored.length; i++) {
      const [a, b] = [stored[i - 1]!, stored[i]!];
      expect(b.size).toBeGreaterThanOrEqual(a.size);
      expect(verifyConsistency(a.size, b.size, a.rootHash, b.rootHash, audit.consistencyProof(a.size, b.size))).toBe(true);
    }
    expect(cp.stats.receipts).toBe(n);
  });

  it('reuses the latest checkpoint when it already covers the entry', async () => {
    const { store, audit, cp } = await setup();
    const r1 = await audit.append(entry(1));
    await audit.append(entry(2));
    await cp.signNow();
    const before = (await store.listCheckpoints()).length;
    const receipt = await cp.receipt(r1);
    expect(receipt.treeSize).toBe(2);
    expect((await store.listCheckpoints()).length).toBe(before);
  });

  it('signs in the background at most once per interval, only when the log grew', async () => {
    const { store, audit, cp } = await setup({ intervalMs: 30 });
    await new Promise((r) => setTimeout(r, 120));
    expect(await store.listCheckpoints()).toHaveLength(1); // idle: nothing new to sign
    await audit.append(entry(1));
    await audit.append(entry(2));
    for (let i = 0; i < 100 && (cp.latest?.size ?? 0) < 2; i++) await new Promise((r) => setTimeout(r, 10));
    expect(cp.latest?.size).toBe(2);
    // The two appends may land in one round or in two (if a tick falls between them on a loaded machine).
    const count = (await store.listCheckpoints()).length;
    expect(count).toBeGreaterThanOrEqual(2);
    expect(count).toBeLessThanOrEqual(3);
    await new Promise((r) => setTimeout(r, 120));
    expect(await store.listCheckpoints()).toHaveLength(count);
  });

  it('spaces receipt rounds by receiptGapMs', async () => {
    const { audit, cp } = await setup({ receiptGapMs: 80 });
    // Measured from before the first round starts: the gap runs from that round, so on a loaded machine
    // time spent between the two calls must not count against it.
    const t0 = Date.now();
    await cp.receipt(await audit.append(entry(1)));
    await cp.receipt(await audit.append(entry(2)));
    expect(Date.now() - t0).toBeGreaterThanOrEqual(80);
  });

  it('signs a final checkpoint on close, and a restart continues from it without re-signing', async () => {
    const first = await setup();
    for (let i = 0; i < 5; i++) await first.audit.append(entry(i));
    await first.close();
    const notes = await (async () => {
      const s = await EmbeddedStore.open(first.dir, { fsync: false });
      try {
        return await s.listCheckpoints();
      } finally {
        await s.close();
      }
    })();
    expect(parseCheckpoint(parseNote(notes[notes.length - 1] as string).text).size).toBe(5);
    const second = await setup({ dir: first.dir });
    expect(second.cp.latest?.size).toBe(5);
    expect(await second.store.listCheckpoints()).toHaveLength(notes.length);
    await second.cp.receipt(await second.audit.append(entry(5)));
    expect(second.cp.latest?.size).toBe(6);
  });

  it('refuses to start when the log no longer matches its last signed checkpoint', async () => {
    const first = await setup();
    for (let i = 0; i < 3; i++) await first.audit.append(entry(i));
    await first.cp.close();
    // A checkpoint over a different history (as if entries had been rewritten since it was signed).
    await first.store.appendCheckpoint((await signCheckpoint(signer, 3, leafHash(Buffer.from('another history')))).note);
    await first.store.close();
    const store = await EmbeddedStore.open(first.dir, { fsync: false });
    closers.push(() => store.close());
    const audit = await AuditLog.open(store);
    const err = await Checkpointer.start({ store, audit, signer, intervalMs: 1000, replicaId: 't' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BrokerError);
    expect((err as BrokerError).code).toBe('audit_unavailable');
    expect((err as Error).message).toMatch(/does not match its last signed checkpoint/);
  });

  it('two replicas sign without a lock: one that finds a newer stored checkpoint adopts it, and the stored sizes never shrink', async () => {
    const a = await setup();
    // Replica B: its own tree and checkpointer over the same store.
    const auditB = await AuditLog.open(a.store);
    const b = await Checkpointer.start({ store: a.store, audit: auditB, signer, intervalMs: 60_000, replicaId: 'b' });
    closers.unshift(() => b.close());
    expect((await a.cp.receipt(await a.audit.append(entry(0)))).treeSize).toBe(1);
    const mine = await a.audit.append(entry(1)); // A's tree: 2 entries
    const theirs = await auditB.append(entry(2)); // B's tree: 3 (it reads A's entries)
    expect((await b.receipt(theirs)).treeSize).toBe(3);
    // A signs size 2, the store refuses it (3 is stored) and hands back B's note: A serves that one.
    const r = await a.cp.receipt(mine);
    expect(r.treeSize).toBe(3);
    expect(a.cp.stats.adopted).toBe(1);
    expect(verifyInclusion(b64(r.leafHash), 1, 3, r.inclusionProof.map(b64), b64(r.rootHash))).toBe(true);
    expect(openCheckpoint(r.checkpoint, signer.verifier).size).toBe(3);
    const sizes = (await a.store.listCheckpoints()).map((n) => parseCheckpoint(parseNote(n).text).size);
    expect(sizes).toEqual([...sizes].sort((x, y) => x - y));
    expect(sizes.filter((n) => n === 2)).toEqual([]);
  });

  it('refuses (503) to adopt a newer stored checkpoint that does not match its tree', async () => {
    const { store, audit, cp } = await setup();
    const r = await audit.append(entry(0));
    // A "newer" checkpoint over another history, as a forked store would hold.
    await store.appendCheckpoint((await signCheckpoint(signer, 2, leafHash(Buffer.from('another history')))).note);
    const err = await cp.receipt(r).catch((e: unknown) => e);
    expect((err as BrokerError).code).toBe('audit_unavailable');
    expect((err as Error).message).toMatch(/does not match/);
  });

  it('fails closed (503) when the checkpoint cannot be stored', async () => {
    const { store, audit, cp } = await setup();
    const r = await audit.append(entry(1));
    const original = store.appendCheckpointIfNewer.bind(store);
    store.appendCheckpointIfNewer = () => Promise.reject(new Error('disk full'));
    const err = await cp.receipt(r).catch((e: unknown) => e);
    expect((err as BrokerError).status).toBe(503);
    store.appendCheckpointIfNewer = original;
    expect((await cp.receipt(r)).treeSize).toBe(1);
  });

  describe('signing early, while a lone entry is written (appendForReceipt)', () => {
    it('while appends come one at a time, each checkpoint is signed during its write and the round stores exactly that note', async () => {
      const { store, audit, cp } = await setup();
      // The first append after start has no lone predecessor: nothing is predicted.
      await cp.appendForReceipt(entry(0));
      expect(cp.stats).toMatchObject({ signedEarly: 0, signedEarlyUsed: 0 });
      const r = await cp.appendForReceipt(entry(1));
      expect(cp.stats).toMatchObject({ signedEarly: 1, signedEarlyUsed: 1 });
      // Byte for byte what the round would have signed itself.
      expect(r.checkpoint).toBe((await signCheckpoint(signer, 2, audit.root(2))).note);
      expect((await store.listCheckpoints()).at(-1)).toBe(r.checkpoint);
      expect(verifyInclusion(b64(r.leafHash), 1, 2, r.inclusionProof.map(b64), b64(r.rootHash))).toBe(true);
      expect((await cp.appendForReceipt(entry(2))).treeSize).toBe(3);
      expect(cp.stats).toMatchObject({ signedEarly: 2, signedEarlyUsed: 2 });
    });

    it('under concurrency nothing is predicted (the round would cover more), and every receipt is right', async () => {
      const { audit, cp } = await setup();
      await cp.appendForReceipt(entry(0));
      await cp.appendForReceipt(entry(1));
      const early = cp.stats.signedEarly;
      const receipts = await Promise.all(Array.from({ length: 20 }, (_, i) => cp.appendForReceipt(entry(10 + i))));
      // At most the first of the burst, which started alone after a lone one.
      expect(cp.stats.signedEarly - early).toBeLessThanOrEqual(1);
      for (const r of receipts) {
        const note = openCheckpoint(r.checkpoint, signer.verifier);
        expect(note.rootHash).toEqual(audit.root(note.size));
        expect(verifyInclusion(b64(r.leafHash), r.index, r.treeSize, r.inclusionProof.map(b64), note.rootHash)).toBe(true);
      }
      // After a burst, the next lone append is not predicted; the one after it is again.
      const afterBurst = cp.stats.signedEarly;
      await cp.appendForReceipt(entry(40));
      expect(cp.stats.signedEarly).toBe(afterBurst);
      await cp.appendForReceipt(entry(41));
      expect(cp.stats.signedEarly).toBe(afterBurst + 1);
    });

    it('a write that fails: the note signed early is never stored, and nothing is issued', async () => {
      const { store, cp } = await setup();
      await cp.appendForReceipt(entry(0));
      await cp.appendForReceipt(entry(1));
      const before = await store.listCheckpoints();
      const original = store.appendAuditEntries.bind(store);
      store.appendAuditEntries = () => Promise.reject(new Error('disk gone'));
      const err = await cp.appendForReceipt(entry(2)).catch((e: unknown) => e);
      expect((err as BrokerError).code).toBe('audit_unavailable');
      expect(cp.stats.signedEarly).toBe(2);
      store.appendAuditEntries = original;
      await cp.signNow();
      // No round stored a size-3 note for the entry that was never written; the next append is index 2.
      expect(await store.listCheckpoints()).toEqual(before);
      const next = await cp.appendForReceipt(entry(3));
      expect(next.index).toBe(2);
      expect(openCheckpoint(next.checkpoint, signer.verifier).size).toBe(3);
    });

    it('a prediction that misses (the entry lands behind another) is dropped, not stored', async () => {
      const { store, audit, cp } = await setup();
      await cp.appendForReceipt(entry(0));
      await cp.appendForReceipt(entry(1));
      // Something else is written first: our entry becomes index 3, not 2.
      const original = store.appendAuditEntries.bind(store);
      store.appendAuditEntries = async (entries) => {
        await original([Buffer.from(JSON.stringify(entry(99)))]);
        return original(entries);
      };
      const r = await cp.appendForReceipt(entry(2));
      store.appendAuditEntries = original;
      expect(r.index).toBe(3);
      expect(cp.stats).toMatchObject({ signedEarly: 2, signedEarlyUsed: 1 });
      const notes = (await store.listCheckpoints()).map((n) => openCheckpoint(n, signer.verifier));
      expect(notes.map((n) => n.size)).toEqual([0, 1, 2, 4]);
      for (const n of notes) expect(n.rootHash).toEqual(audit.root(n.size));
    });
  });

  // Regression: the wait before a receipt round was computed from the wall clock, so a clock stepped
  // back an hour (NTP) parked every receipt for an hour and each request hung until its socket timed out.
  it('a wall clock stepped backwards does not park receipts: the wait never exceeds the receipt gap', async () => {
    const clock = { offset: 0, now(): number { return Date.now() + this.offset; } };
    const { audit, cp } = await setup({ receiptGapMs: 20, clock });
    expect((await cp.receipt(await audit.append(entry(1)))).treeSize).toBe(1);
    clock.offset = -3_600_000;
    const late = cp.receipt(await audit.append(entry(2)));
    const outcome = await Promise.race([late.then((r) => r.treeSize), new Promise((r) => setTimeout(() => r('still waiting'), 3_000))]);
    expect(outcome).toBe(2);
  });
});
