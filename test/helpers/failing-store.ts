/**
 * Fault injection for fail-closed tests: wraps a real store and can make writes fail, the way a full
 * disk or an unreachable Redis would. Everything else goes to the real store.
 *
 *   failAppends  audit appends (and checkWritable) fail with store_unavailable
 *   failWrites   every other write fails with store_unavailable: kvPut, kvDelete, consumeOnce,
 *                appendCheckpoint(IfNewer), hit, tryLock, unlock (and checkWritable). Reads still work.
 */
import { storeUnavailable } from '../../src/errors.js';
import type { KvRef, Store } from '../../src/store/store.js';

export class FaultyStore implements Store {
  failAppends = false;
  failWrites = false;
  constructor(private readonly inner: Store) {}
  get kind(): Store['kind'] {
    return this.inner.kind;
  }
  appendAuditEntries(entries: readonly Buffer[]): Promise<number> {
    if (this.failAppends) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.appendAuditEntries(entries);
  }
  appendAuditEntriesUnless(entries: readonly Buffer[], unless: readonly KvRef[]): Promise<{ index: number } | { blocked: (string | undefined)[] }> {
    if (this.failAppends) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.appendAuditEntriesUnless(entries, unless);
  }
  auditSize(): Promise<number> {
    return this.inner.auditSize();
  }
  readAuditEntries(start: number, end: number): Promise<Buffer[]> {
    return this.inner.readAuditEntries(start, end);
  }
  appendCheckpoint(note: string): Promise<void> {
    if (this.failWrites) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.appendCheckpoint(note);
  }
  appendCheckpointIfNewer(note: string, size: number): Promise<string | undefined> {
    if (this.failWrites) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.appendCheckpointIfNewer(note, size);
  }
  listCheckpoints(): Promise<string[]> {
    return this.inner.listCheckpoints();
  }
  auditCursor(device: string): Promise<number> {
    return this.inner.auditCursor(device);
  }
  advanceAuditCursor(device: string, position: number): Promise<number> {
    if (this.failWrites) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.advanceAuditCursor(device, position);
  }
  consumeOnce(key: string, expiresAtMs: number): Promise<boolean> {
    if (this.failWrites) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.consumeOnce(key, expiresAtMs);
  }
  kvPut(space: string, key: string, value: string, expiresAtMs?: number): Promise<void> {
    if (this.failWrites) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.kvPut(space, key, value, expiresAtMs);
  }
  kvGet(space: string, key: string): Promise<string | undefined> {
    return this.inner.kvGet(space, key);
  }
  kvGetMany(refs: readonly KvRef[]): Promise<(string | undefined)[]> {
    return this.inner.kvGetMany(refs);
  }
  kvDelete(space: string, key: string): Promise<boolean> {
    if (this.failWrites) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.kvDelete(space, key);
  }
  kvList(space: string): Promise<{ key: string; value: string }[]> {
    return this.inner.kvList(space);
  }
  hit(key: string, windowMs: number): Promise<{ count: number; resetInMs: number }> {
    if (this.failWrites) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.hit(key, windowMs);
  }
  tryLock(name: string, owner: string, ttlMs: number): Promise<boolean> {
    if (this.failWrites) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.tryLock(name, owner, ttlMs);
  }
  unlock(name: string, owner: string): Promise<void> {
    if (this.failWrites) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.unlock(name, owner);
  }
  checkWritable(): Promise<void> {
    if (this.failAppends || this.failWrites) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.checkWritable();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
