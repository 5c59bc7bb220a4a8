/**
 * Fault injection for fail-closed tests: wraps a real store and can make audit appends fail, the way
 * a full disk or an unreachable Redis would. Everything else goes to the real store.
 */
import { storeUnavailable } from '../../src/errors.js';
import type { Store } from '../../src/store/store.js';

export class FaultyStore implements Store {
  failAppends = false;
  constructor(private readonly inner: Store) {}
  get kind(): Store['kind'] {
    return this.inner.kind;
  }
  appendAuditEntries(entries: readonly Buffer[]): Promise<number> {
    if (this.failAppends) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.appendAuditEntries(entries);
  }
  auditSize(): Promise<number> {
    return this.inner.auditSize();
  }
  readAuditEntries(start: number, end: number): Promise<Buffer[]> {
    return this.inner.readAuditEntries(start, end);
  }
  appendCheckpoint(note: string): Promise<void> {
    return this.inner.appendCheckpoint(note);
  }
  listCheckpoints(): Promise<string[]> {
    return this.inner.listCheckpoints();
  }
  consumeOnce(key: string, expiresAtMs: number): Promise<boolean> {
    return this.inner.consumeOnce(key, expiresAtMs);
  }
  checkWritable(): Promise<void> {
    if (this.failAppends) return Promise.reject(storeUnavailable('injected fault: the disk is gone'));
    return this.inner.checkWritable();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
