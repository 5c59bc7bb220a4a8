/**
 * The only way to persistent state. Two implementations: `embedded` (memory + append-only files, fsync)
 * and, later, `redis`. Anything replicas must agree on goes through here atomically.
 */
export interface Store {
  readonly kind: 'embedded' | 'redis';

  /**
   * Appends audit entries (already-canonical bytes) in order and resolves with the index of the first
   * one only once they are on stable storage. Rejects if they could not be made durable; a rejected
   * append must never later appear in the log.
   */
  appendAuditEntries(entries: readonly Buffer[]): Promise<number>;
  /** Number of durably stored audit entries. */
  auditSize(): Promise<number>;
  /** Audit entries with index in [start, end), in order. */
  readAuditEntries(start: number, end: number): Promise<Buffer[]>;

  /** Keeps a signed checkpoint (signed-note text) for good: consistency between any two can be proven later. */
  appendCheckpoint(note: string): Promise<void>;
  listCheckpoints(): Promise<string[]>;

  /**
   * Atomically records `key` as used until `expiresAtMs`. Resolves true the first time, false on every
   * later call before expiry. Single-use nonces, token replay caches.
   */
  consumeOnce(key: string, expiresAtMs: number): Promise<boolean>;

  /** Throws a BrokerError (503) if the store cannot take durable writes right now. */
  checkWritable(): Promise<void>;
  close(): Promise<void>;
}
