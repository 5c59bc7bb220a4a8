import type { MerkleNodes } from '../audit/merkle.js';

/**
 * The only way to persistent state. Two implementations: `embedded` (memory + append-only files, fsync)
 * and `redis` (store/redis.ts, shared by replicas). Anything replicas must agree on goes through here atomically.
 */
/** Merkle nodes a store persists for the audit log (store/embedded.ts, audit/tree-file.ts). */
export interface PersistedAuditTree {
  /** Holds the nodes of the first `size` audit entries, checked when the store was opened. */
  readonly nodes: MerkleNodes;
  readonly size: number;
  /** Told (synchronously, cheaply) each time the tree grew; the store may snapshot in the background. */
  grew(size: number): void;
}

/** Where a kv record lives (Store.kvGetMany). */
export interface KvRef {
  readonly space: string;
  readonly key: string;
}

export interface Store {
  readonly kind: 'embedded' | 'redis';

  /**
   * A store that keeps the audit Merkle tree's nodes itself (embedded: audit.tree, checked against a
   * snapshot on open) hands them to the first AuditLog opened on it, which builds its tree on them and
   * replays only entries [size, end). Later calls get undefined (one writer of the nodes).
   */
  claimAuditTree?(): PersistedAuditTree | undefined;

  /**
   * Appends audit entries (already-canonical bytes) in order and resolves with the index of the first
   * one only once they are on stable storage. Rejects if they could not be made durable; a rejected
   * append must never later appear in the log — except that over a network (Redis) a command that timed
   * out may have run: such an entry can appear (once, never twice) although the caller saw a 503.
   */
  appendAuditEntries(entries: readonly Buffer[]): Promise<number>;
  /**
   * appendAuditEntries, unless one of the `unless` kv records exists — checked and appended in one
   * atomic step (one Redis command): the issuance path passes the revocation and freeze records of the
   * credential it is about to hand out, so none can be set between the check and the entry. When one
   * exists nothing is appended and the values of all of them (in order, undefined where absent) come back.
   */
  appendAuditEntriesUnless(entries: readonly Buffer[], unless: readonly KvRef[]): Promise<{ index: number } | { blocked: (string | undefined)[] }>;
  /** Number of durably stored audit entries. */
  auditSize(): Promise<number>;
  /** Audit entries with index in [start, end), in order. */
  readAuditEntries(start: number, end: number): Promise<Buffer[]>;

  /** Keeps a signed checkpoint (signed-note text) for good: consistency between any two can be proven later. */
  appendCheckpoint(note: string): Promise<void>;
  /**
   * Keeps the checkpoint `note` of tree size `size` only if the stored checkpoints do not already end
   * with one at least as large, in one atomic step (replicas sign without a lock and the stored list
   * still never shrinks): a larger size is stored; an equal size is stored unless the newest note is
   * byte-identical. Resolves undefined when `note` was stored, else with the newest stored note (size ≥
   * `size`), which covers everything `note` would have. A newest note whose size cannot be read is a
   * 503, never overwritten; a `size` beyond the stored audit entries is refused (503
   * audit_history_lost: a store that lost entries never gets a checkpoint of them).
   */
  appendCheckpointIfNewer(note: string, size: number): Promise<string | undefined>;
  listCheckpoints(): Promise<string[]>;

  /**
   * An audit device's acknowledged position (audit/devices/): how many entries, from index 0, it has
   * delivered. 0 for a device never seen. Shared by replicas, so another one resumes where it stopped.
   */
  auditCursor(device: string): Promise<number>;
  /**
   * Moves a device's position forward to `position` (never back: a smaller value leaves it as it is),
   * durably, and resolves with the stored position afterwards.
   */
  advanceAuditCursor(device: string, position: number): Promise<number>;

  /**
   * Atomically records `key` as used until `expiresAtMs`. Resolves true the first time, false on every
   * later call before expiry. Single-use nonces, token replay caches.
   */
  consumeOnce(key: string, expiresAtMs: number): Promise<boolean>;

  /**
   * Small durable records in a named space ('revocation', 'freeze', 'secret', 'lease', …). The value is
   * opaque text to the store (secrets arrive already encrypted). A record with `expiresAtMs` disappears
   * after that time. Writes are durable (fsync / Redis ack) before the promise resolves.
   */
  kvPut(space: string, key: string, value: string, expiresAtMs?: number): Promise<void>;
  kvGet(space: string, key: string): Promise<string | undefined>;
  /** kvGet of several records in one step (one Redis command): the values in the order of `refs`. */
  kvGetMany(refs: readonly KvRef[]): Promise<(string | undefined)[]>;
  /** Resolves true if a record was removed. */
  kvDelete(space: string, key: string): Promise<boolean>;
  /** Every live record of a space (spaces are expected to stay small: thousands, not millions). */
  kvList(space: string): Promise<{ key: string; value: string }[]>;

  /**
   * Fixed-window counter shared by all replicas (rate limits, alert thresholds): atomically counts this
   * hit in the current window of `windowMs` for `key` and returns the count and the time until reset.
   */
  hit(key: string, windowMs: number): Promise<{ count: number; resetInMs: number }>;

  /**
   * Mutual exclusion across replicas for singleton work (checkpoint signing, lease sweeping): resolves
   * true if `owner` holds `name` for `ttlMs` after the call (a new acquisition or a renewal).
   */
  tryLock(name: string, owner: string, ttlMs: number): Promise<boolean>;
  unlock(name: string, owner: string): Promise<void>;

  /**
   * Networked stores (Redis): `listener` runs each time the connection comes back after it was lost.
   * The server behind it may have restarted with less (or other) data, so the audit log checks that
   * the store still continues the history it knows before it appends again (audit/continuity.ts).
   */
  onReconnect?(listener: () => void): void;

  /** Throws a BrokerError (503) if the store cannot take durable writes right now. */
  checkWritable(): Promise<void>;
  close(): Promise<void>;
}
