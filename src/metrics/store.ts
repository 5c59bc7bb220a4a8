/**
 * Counts store failures and times audit appends without touching the store implementations: a Store
 * that wraps every operation of another one.
 */
import { performance } from 'node:perf_hooks';
import { BrokerError } from '../errors.js';
import type { Store } from '../store/store.js';
import type { StoreOp } from './metrics.js';

export interface StoreObserver {
  storeError(op: string): void;
  auditAppended(elapsedMs: number): void;
}

/** A caller's bad argument (a 4xx BrokerError) is not a store failure. */
function isStoreFailure(err: unknown): boolean {
  return !(err instanceof BrokerError && err.status < 500);
}

export function instrumentStore(store: Store, observer: StoreObserver): Store {
  const counted = async <T>(op: StoreOp, run: () => Promise<T>): Promise<T> => {
    try {
      return await run();
    } catch (err) {
      if (isStoreFailure(err)) observer.storeError(op);
      throw err;
    }
  };
  return {
    get kind() {
      return store.kind;
    },
    async appendAuditEntries(entries) {
      const started = performance.now();
      const index = await counted('appendAuditEntries', () => store.appendAuditEntries(entries));
      observer.auditAppended(performance.now() - started);
      return index;
    },
    async appendAuditEntriesUnless(entries, unless) {
      const started = performance.now();
      const r = await counted('appendAuditEntries', () => store.appendAuditEntriesUnless(entries, unless));
      if ('index' in r) observer.auditAppended(performance.now() - started);
      return r;
    },
    auditSize: () => counted('auditSize', () => store.auditSize()),
    readAuditEntries: (start, end) => counted('readAuditEntries', () => store.readAuditEntries(start, end)),
    appendCheckpoint: (note) => counted('appendCheckpoint', () => store.appendCheckpoint(note)),
    appendCheckpointIfNewer: (note, size) => counted('appendCheckpoint', () => store.appendCheckpointIfNewer(note, size)),
    listCheckpoints: () => counted('listCheckpoints', () => store.listCheckpoints()),
    auditCursor: (device) => counted('auditCursor', () => store.auditCursor(device)),
    advanceAuditCursor: (device, position) => counted('advanceAuditCursor', () => store.advanceAuditCursor(device, position)),
    consumeOnce: (key, expiresAtMs) => counted('consumeOnce', () => store.consumeOnce(key, expiresAtMs)),
    kvPut: (space, key, value, expiresAtMs) => counted('kvPut', () => store.kvPut(space, key, value, expiresAtMs)),
    kvGet: (space, key) => counted('kvGet', () => store.kvGet(space, key)),
    kvGetMany: (refs) => counted('kvGet', () => store.kvGetMany(refs)),
    kvDelete: (space, key) => counted('kvDelete', () => store.kvDelete(space, key)),
    kvList: (space) => counted('kvList', () => store.kvList(space)),
    hit: (key, windowMs) => counted('hit', () => store.hit(key, windowMs)),
    tryLock: (name, owner, ttlMs) => counted('tryLock', () => store.tryLock(name, owner, ttlMs)),
    unlock: (name, owner) => counted('unlock', () => store.unlock(name, owner)),
    checkWritable: () => counted('checkWritable', () => store.checkWritable()),
    onReconnect: (listener) => store.onReconnect?.(listener),
    // The embedded store's on-disk Merkle tree (a restart without it would rehash the whole log).
    ...(store.claimAuditTree ? { claimAuditTree: () => store.claimAuditTree?.() } : {}),
    close: () => store.close(),
  };
}
