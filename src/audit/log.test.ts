import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BrokerError, storeUnavailable } from '../errors.js';
import { EmbeddedStore } from '../store/embedded.js';
import type { Store } from '../store/store.js';
import { type AuditEntry, canonicalJson } from './entry.js';
import { type AuditReceipt, AuditLog } from './log.js';
import { leafHash, rootFromLeaves, verifyConsistency, verifyInclusion } from './merkle.js';

/**
 * An in-memory store shared by several AuditLogs, standing in for Redis: one total order, indexes
 * assigned at append time, and each append resolving after a random delay so other replicas'
 * entries land in between.
 */
class SharedMemoryStore implements Store {
  readonly kind = 'redis' as const;
  readonly log: Buffer[] = [];
  reads = 0;
  failAppends = false;
  failReads = false;
  /** Lie about the index (a broken store): the log must refuse to issue a receipt. */
  indexSkew = 0;
  readonly #reconnectListeners: Array<() => void> = [];

  onReconnect(listener: () => void): void {
    this.#reconnectListeners.push(listener);
  }
  /** The connection came back (the server behind it may have restarted). */
  reconnect(): void {
    for (const l of this.#reconnectListeners) l();
  }

  async appendAuditEntries(entries: readonly Buffer[]): Promise<number> {
    if (this.failAppends) throw storeUnavailable('redis down');
    const first = this.log.length;
    this.log.push(...entries.map((e) => Buffer.from(e)));
    await new Promise((r) => setTimeout(r, Math.random() * 3));
    return first + this.indexSkew;
  }
  async auditSize(): Promise<number> {
    return this.log.length;
  }
  async readAuditEntries(start: number, end: number): Promise<Buffer[]> {
    if (this.failReads) throw storeUnavailable('redis down');
    this.reads++;
    await new Promise((r) => setTimeout(r, 1));
    return this.log.slice(start, end);
  }
  async appendAuditEntriesUnless(entries: readonly Buffer[]): Promise<{ index: number }> {
    return { index: await this.appendAuditEntries(entries) };
  }
  async appendCheckpoint(): Promise<void> {}
  async appendCheckpointIfNewer(): Promise<string | undefined> {
    return undefined;
  }
  async listCheckpoints(): Promise<string[]> {
    return [];
  }
  async consumeOnce(): Promise<boolean> {
    return true;
  }
  async auditCursor(): Promise<number> {
    return 0;
  }
  async advanceAuditCursor(_device: string, position: number): Promise<number> {
    return position;
  }
  // Not used by AuditLog; present to satisfy the Store interface.
  async kvPut(): Promise<void> {}
  async kvGet(): Promise<string | undefined> {
    return undefined;
  }
  async kvGetMany(refs: readonly unknown[]): Promise<undefined[]> {
    return refs.map(() => undefined);
  }
  async kvDelete(): Promise<boolean> {
    return false;
  }
  async kvList(): Promise<{ key: string; value: string }[]> {
    return [];
  }
  async hit(): Promise<{ count: number; resetInMs: number }> {
    return { count: 1, resetInMs: 0 };
  }
  async tryLock(): Promise<boolean> {
    return true;
  }
  async unlock(): Promise<void> {}
  async checkWritable(): Promise<void> {
    if (this.failAppends) throw storeUnavailable('redis down');
  }
  async close(): Promise<void> {}
}

const mk = (i: number, replica = 'r1'): AuditEntry => ({
  ts: 1_700_000_000_000 + i,
  type: i % 2 ? 'denial' : 'jwt-svid.issued',
  decision: i % 2 ? 'deny' : 'allow',
  actor: `spiffe://example.org/ns/default/sa/w${i}`,
  subject: i % 2 ? null : `spiffe://example.org/ns/default/sa/w${i}`,
  ...(i % 2 ? { code: 'forbidden' } : { audience: ['aud'], jti: `jti-${i}` }),
  requestId: `req-${i}`,
  replica,
});

const b64 = (s: string): Buffer => Buffer.from(s, 'base64');

function checkReceipt(r: AuditReceipt, entry: AuditEntry, all: readonly Buffer[]): void {
  const leaf = leafHash(canonicalJson(entry));
  expect(r.leafHash).toBe(leaf.toString('base64'));
  expect(all[r.index]).toEqual(canonicalJson(entry));
  expect(r.treeSize).toBeGreaterThan(r.index);
  // The receipt's root is the real root of the log prefix it names.
  expect(b64(r.rootHash)).toEqual(rootFromLeaves(all.slice(0, r.treeSize).map(leafHash)));
  expect(verifyInclusion(leaf, r.index, r.treeSize, r.inclusionProof.map(b64), b64(r.rootHash))).toBe(true);
}

describe('AuditLog', () => {
  it('returns receipts whose proofs verify against the real root', async () => {
    const store = new SharedMemoryStore();
    const log = await AuditLog.open(store);
    for (let i = 0; i < 20; i++) {
      const r = await log.append(mk(i));
      expect(r.index).toBe(i);
      expect(r.treeSize).toBe(i + 1);
      checkReceipt(r, mk(i), store.log);
    }
    expect(store.reads).toBe(0); // own entries need no read-back
  });

  it('gives every concurrent append a correct receipt', async () => {
    const store = new SharedMemoryStore();
    const log = await AuditLog.open(store);
    const entries = Array.from({ length: 200 }, (_, i) => mk(i));
    const receipts = await Promise.all(entries.map((e) => log.append(e)));
    expect(new Set(receipts.map((r) => r.index)).size).toBe(200);
    receipts.forEach((r, i) => checkReceipt(r, entries[i] as AuditEntry, store.log));
    expect(log.size).toBe(200);
  });

  it('replicas sharing one store catch up on each other and all receipts verify', async () => {
    const store = new SharedMemoryStore();
    const [a, b, c] = await Promise.all([AuditLog.open(store), AuditLog.open(store), AuditLog.open(store)]);
    const logs = [a, b, c] as AuditLog[];
    const jobs: Promise<[AuditReceipt, AuditEntry]>[] = [];
    for (let i = 0; i < 150; i++) {
      const e = mk(i, `r${i % 3}`);
      jobs.push((logs[i % 3] as AuditLog).append(e).then((r) => [r, e]));
    }
    const done = await Promise.all(jobs);
    for (const [r, e] of done) checkReceipt(r, e, store.log);
    expect(new Set(done.map(([r]) => r.index)).size).toBe(150);
    expect(store.reads).toBeGreaterThan(0); // other replicas' entries were read
    // After a refresh all three trees agree with the store.
    const want = rootFromLeaves(store.log.map(leafHash));
    for (const l of logs) {
      expect(await l.refresh()).toBe(150);
      expect(l.root()).toEqual(want);
    }
    // Consistency between any two historical sizes is provable.
    const p = a.consistencyProof(37, 150);
    expect(verifyConsistency(37, 150, a.root(37), a.root(150), p)).toBe(true);
  });

  it('open() rebuilds the tree from the store', async () => {
    const store = new SharedMemoryStore();
    for (let i = 0; i < 40_000; i++) store.log.push(canonicalJson(mk(i)));
    const log = await AuditLog.open(store);
    expect(log.size).toBe(40_000);
    expect(log.root()).toEqual(rootFromLeaves(store.log.map(leafHash)));
    expect(store.reads).toBe(3); // batched reads, not one per entry
    const r = await log.append(mk(40_000));
    expect(r.index).toBe(40_000);
    checkReceipt(r, mk(40_000), store.log);
  });

  it('rejects with audit_unavailable (503) when the store rejects, and the tree is unchanged', async () => {
    const store = new SharedMemoryStore();
    const log = await AuditLog.open(store);
    await log.append(mk(0));
    store.failAppends = true;
    const err = await log.append(mk(1)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BrokerError);
    expect((err as BrokerError).code).toBe('audit_unavailable');
    expect((err as BrokerError).status).toBe(503);
    expect(log.size).toBe(1);
    await expect(log.checkWritable()).rejects.toMatchObject({ code: 'audit_unavailable', status: 503 });
  });

  it('rejects when the catch-up read fails, and recovers afterwards', async () => {
    const store = new SharedMemoryStore();
    const log = await AuditLog.open(store);
    store.log.push(canonicalJson(mk(100))); // another replica's entry we have not seen
    store.failReads = true;
    await expect(log.append(mk(0))).rejects.toMatchObject({ code: 'audit_unavailable', status: 503 });
    store.failReads = false;
    const r = await log.append(mk(1));
    expect(r.index).toBe(2);
    checkReceipt(r, mk(1), store.log);
  });

  it('refuses to issue a receipt when the store reports an index holding other bytes', async () => {
    const store = new SharedMemoryStore();
    const log = await AuditLog.open(store);
    await log.append(mk(0));
    await log.append(mk(1));
    store.indexSkew = -1;
    // Index 1 holds another entry in our tree: the store's history is not ours; stop appending.
    await expect(log.append(mk(2))).rejects.toMatchObject({ code: 'audit_history_lost', status: 503 });
    store.indexSkew = 0;
    await expect(log.append(mk(3))).rejects.toMatchObject({ code: 'audit_history_lost' });
    expect(store.log).toHaveLength(3);
  });

  describe('lost history (the store restarted without its data)', () => {
    async function logWith(n: number): Promise<{ store: SharedMemoryStore; log: AuditLog; lost: BrokerError[] }> {
      const store = new SharedMemoryStore();
      const log = await AuditLog.open(store);
      const lost: BrokerError[] = [];
      log.onHistoryLost((e) => lost.push(e));
      for (let i = 0; i < n; i++) await log.append(mk(i));
      return { store, log, lost };
    }

    it('after a reconnect to an emptied store: refuses every append with audit_history_lost and pushes nothing', async () => {
      const { store, log, lost } = await logWith(5);
      store.log.length = 0;
      store.reconnect();
      for (let i = 0; i < 10; i++) await expect(log.append(mk(10 + i))).rejects.toMatchObject({ code: 'audit_history_lost', status: 503 });
      expect(store.log).toHaveLength(0);
      await expect(log.checkWritable()).rejects.toMatchObject({ code: 'audit_history_lost', message: expect.stringMatching(/audit history lost: .*fewer than the 5/) });
      await expect(log.refresh()).rejects.toMatchObject({ code: 'audit_history_lost' });
      expect(lost).toHaveLength(1); // told once
      expect(log.historyLost?.code).toBe('audit_history_lost');
    });

    it('stays closed when the store is refilled to the old size by others (different root)', async () => {
      const { store, log } = await logWith(5);
      store.log.length = 0;
      for (let i = 0; i < 7; i++) store.log.push(canonicalJson(mk(100 + i, 'r2')));
      store.reconnect();
      await expect(log.append(mk(5))).rejects.toMatchObject({ code: 'audit_history_lost' });
      expect(store.log).toHaveLength(7);
    });

    it('after a reconnect to a store that kept its entries (and grew): appends continue', async () => {
      const { store, log, lost } = await logWith(5);
      store.log.push(canonicalJson(mk(50, 'r2'))); // another replica appended meanwhile
      store.reconnect();
      const r = await log.append(mk(5));
      expect(r.index).toBe(6);
      checkReceipt(r, mk(5), store.log);
      expect(lost).toHaveLength(0);
    });

    it('a check that cannot read the store is retried, not latched', async () => {
      const { store, log } = await logWith(3);
      store.failReads = true;
      store.reconnect();
      await expect(log.append(mk(3))).rejects.toMatchObject({ code: 'audit_unavailable' });
      expect(store.log).toHaveLength(3);
      store.failReads = false;
      expect((await log.append(mk(3))).index).toBe(3);
    });

    it('a store that shrank is caught by refresh (background checkpoint tick) without a reconnect event', async () => {
      const { store, log, lost } = await logWith(4);
      store.log.length = 2;
      await expect(log.refresh()).rejects.toMatchObject({ code: 'audit_history_lost' });
      await expect(log.append(mk(9))).rejects.toMatchObject({ code: 'audit_history_lost' });
      expect(store.log).toHaveLength(2);
      expect(lost).toHaveLength(1);
    });
  });

  it('refuses entries that cannot be canonically encoded before touching the store', async () => {
    const store = new SharedMemoryStore();
    const log = await AuditLog.open(store);
    await expect(log.append({ ...mk(0), ttlMs: 1.5 })).rejects.toMatchObject({ code: 'internal', status: 500 });
    expect(store.log).toHaveLength(0);
  });

  it('proof accessors validate sizes', async () => {
    const store = new SharedMemoryStore();
    const log = await AuditLog.open(store);
    await log.append(mk(0));
    expect(() => log.inclusionProof(0, 2)).toThrow(BrokerError);
    expect(() => log.consistencyProof(2, 1)).toThrow(BrokerError);
    expect(() => log.root(5)).toThrow(BrokerError);
    expect(log.leafHash(0)).toEqual(leafHash(canonicalJson(mk(0))));
  });

  it('tells the expected tree of a lone append (sole writer, appends one at a time) before the write answers, and that is the tree it makes', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'tessera-log-'));
    try {
      const store = await EmbeddedStore.open(dir, { fsync: false });
      const log = await AuditLog.open(store);
      const told: { size: number; root: Buffer; whileWriting: boolean }[] = [];
      const expected = (size: number, root: Buffer): void => {
        told.push({ size, root, whileWriting: log.size === size - 1 });
      };
      await log.append(mk(0), undefined, expected); // no lone predecessor yet
      expect(told).toEqual([]);
      for (let i = 1; i <= 3; i++) {
        const r = await log.append(mk(i), undefined, expected);
        expect(told.at(-1)).toEqual({ size: i + 1, root: b64(r.rootHash), whileWriting: true });
      }
      // Under concurrency: nothing for the appends that overlap (at most the first, which started alone).
      const before = told.length;
      await Promise.all(Array.from({ length: 10 }, (_, i) => log.append(mk(10 + i), undefined, expected)));
      expect(told.length - before).toBeLessThanOrEqual(1);
      // A listener's failure does not fail the append.
      await log.append(mk(30), undefined, () => {
        throw new Error('listener bug');
      });
      await log.append(mk(31), undefined, () => {
        throw new Error('listener bug');
      });
      expect(log.size).toBe(16);
      await store.close();
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  it('predicts nothing on a shared store, where another replica may append first', async () => {
    const store = new SharedMemoryStore();
    const log = await AuditLog.open(store);
    let told = 0;
    for (let i = 0; i < 5; i++) await log.append(mk(i), undefined, () => told++);
    expect(told).toBe(0);
  });

  it('works end to end on the embedded store, concurrently', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'tessera-log-'));
    try {
      const store = await EmbeddedStore.open(dir);
      const log = await AuditLog.open(store);
      const entries = Array.from({ length: 100 }, (_, i) => mk(i));
      const receipts = await Promise.all(entries.map((e) => log.append(e)));
      const all = await log.entries(0, log.size);
      receipts.forEach((r, i) => checkReceipt(r, entries[i] as AuditEntry, all));
      expect(store.stats.auditFlushes).toBeLessThan(10);
      await store.close();
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});
