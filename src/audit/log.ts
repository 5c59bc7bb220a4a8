/**
 * The audit log: every issuance and denial, appended to the store (durable before `append` resolves)
 * and mirrored into an in-memory RFC 6962 Merkle tree so each caller gets a receipt with an inclusion
 * proof. If the store cannot make the entry durable, `append` rejects with audit_unavailable and the
 * caller must not hand out a credential (fail closed).
 *
 * The store, not this class, assigns indexes: with a shared store (Redis) other replicas append too,
 * so after our append the tree is caught up to at least our index by reading entries we have not seen.
 * Entries never carry secrets (see AuditEntry): the log is permanent and copied to verifiers.
 *
 * Lost history: the tree is everything this replica has seen durable in the store. If the store later
 * holds less or something else (Redis restarted without its data), appending would produce receipts
 * for a history the store does not hold. So after every reconnect the store is checked to continue the
 * tree (audit/continuity.ts) before anything is appended, and a store that does not is latched as
 * `audit_history_lost`: every append, refresh and readiness check fails with it, nothing is written to
 * the store, and the listeners (log line, alert) are told once. Only an operator clears it by
 * restarting the replica against a recovered store (docs/redis.md).
 */
import { BrokerError, asAuditUnavailable, auditHistoryLost, auditUnavailable } from '../errors.js';
import type { KvRef, PersistedAuditTree, Store } from '../store/store.js';
import { checkContinuation, READ_BATCH } from './continuity.js';
import { type AuditEntry, canonicalJson } from './entry.js';
import { MerkleTree, leafHash } from './merkle.js';

export interface AuditReceipt {
  readonly index: number;
  /** Size of the tree the root and proof are for (≥ index + 1). */
  readonly treeSize: number;
  /** base64 */
  readonly rootHash: string;
  /** base64 of SHA-256(0x00 ‖ canonical entry bytes) */
  readonly leafHash: string;
  /** base64, leaf's sibling first (RFC 9162 inclusion path) */
  readonly inclusionProof: readonly string[];
}

/**
 * Told about every entry this log appended, after it is durable and before the caller gets its receipt.
 * Must be synchronous and quick (queue work, never await): it runs on the issuance path.
 */
export type AppendListener = (entry: AuditEntry, receipt: AuditReceipt) => void;

/**
 * Records that must not exist for an append to happen (AuditLog.append): checked by the store in the
 * same atomic step as the append. `refusal` turns their values (in order, undefined where absent) into
 * the error the caller gets when one exists; nothing is appended then.
 */
export interface AppendCondition {
  readonly unless: readonly KvRef[];
  refusal(values: readonly (string | undefined)[]): BrokerError;
}

/**
 * Told, while a lone append is being written, the tree it will most likely make: size and root with the
 * entry in it. Only a prediction (the write may still fail): for work that can be done early and thrown
 * away, never for anything shown. Synchronous and quick; it runs while the store writes.
 */
export type ExpectedTree = (size: number, rootHash: Buffer) => void;

/** Told once when the store is found not to hold the history this log knows (synchronous, never throws). */
export type HistoryLostListener = (err: BrokerError) => void;


export class AuditLog {
  readonly #store: Store;
  readonly #tree: MerkleTree;
  /** Leaf hashes of our own appends not yet in the tree, by index: catch-up needs no read for them. */
  readonly #ownPending = new Map<number, Buffer>();
  /** Tree size some caller is waiting for. */
  #want = 0;
  /** The single running catch-up, if any (catch-ups are serialized). */
  #catchingUp: Promise<void> | null = null;
  readonly #listeners: AppendListener[] = [];
  readonly #lostListeners: HistoryLostListener[] = [];
  /** Latched audit_history_lost: set once, never cleared in this process. */
  #lost: BrokerError | undefined;
  /** Reconnects the store reported, and how many of them a continuation check has covered. */
  #reconnects = 0;
  #checkedReconnects = 0;
  /** The single running continuation check, if any. */
  #checking: Promise<void> | null = null;

  readonly #persisted: PersistedAuditTree | undefined;
  /**
   * Only this process appends to the store (embedded: the data directory is locked), so a lone append's
   * index is known before the store answers. On a shared store another replica may append first.
   */
  readonly #soleWriter: boolean;
  /** Appends past the gate whose store write has not answered yet. */
  #writing = 0;
  /** Appends that reached the store so far, and whether the last one was written with no other in flight. */
  #started = 0;
  #lastWrittenAlone = false;

  private constructor(store: Store, tree: MerkleTree, persisted: PersistedAuditTree | undefined) {
    this.#store = store;
    this.#tree = tree;
    this.#persisted = persisted;
    this.#soleWriter = store.kind === 'embedded';
    store.onReconnect?.(() => {
      this.#reconnects++;
      // Check at once, not only at the next request: an idle replica raises the alarm too.
      this.#checkContinuation().catch(() => {});
    });
  }

  /** Rebuilds the tree from every entry in the store, reading in large batches. */
  static async open(store: Store): Promise<AuditLog> {
    let size: number;
    try {
      size = await store.auditSize();
    } catch (err) {
      throw asAuditUnavailable(err, 'audit store unavailable');
    }
    // A store that keeps the tree's nodes (embedded) hands over those of its first `persisted.size`
    // entries; only the entries after them are read and hashed. Otherwise every entry is, into memory
    // (with headroom so the first appends after a restart do not re-grow the level buffers).
    const persisted = store.claimAuditTree?.();
    if (persisted && persisted.size > size) {
      throw auditUnavailable(`the store's audit tree holds ${persisted.size} entries but the store only ${size}`);
    }
    const tree = persisted ? new MerkleTree({ nodes: persisted.nodes, size: persisted.size }) : new MerkleTree({ capacity: size + 1024 });
    const log = new AuditLog(store, tree, persisted);
    log.#want = size;
    await log.#catchUp();
    return log;
  }

  get size(): number {
    return this.#tree.size;
  }

  root(size: number = this.#tree.size): Buffer {
    return this.#tree.root(size);
  }

  inclusionProof(index: number, size: number): Buffer[] {
    return this.#tree.inclusionProof(index, size);
  }

  consistencyProof(from: number, to: number): Buffer[] {
    return this.#tree.consistencyProof(from, to);
  }

  /** Leaf hash of entry `index` (must be < size). */
  leafHash(index: number): Buffer {
    return this.#tree.leaf(index);
  }

  /**
   * Raw canonical entry bytes [start, end) from the store, each checked against its leaf hash in the
   * tree (when the tree has it): an entry changed on disk is refused, never served as if logged.
   */
  async entries(start: number, end: number): Promise<Buffer[]> {
    const got = await this.#store.readAuditEntries(start, end);
    const known = Math.min(end, this.#tree.size);
    for (let i = start; i < known; i++) {
      const bytes = got[i - start];
      if (bytes !== undefined && !leafHash(bytes).equals(this.#tree.leaf(i))) {
        throw auditUnavailable(`audit entry ${i} in the store does not match its leaf hash in the Merkle tree: the stored log was changed`);
      }
    }
    return got;
  }

  /** Catches the tree up with entries other replicas appended; returns the new size. */
  async refresh(): Promise<number> {
    await this.#gate();
    let size: number;
    try {
      size = await this.#store.auditSize();
    } catch (err) {
      throw asAuditUnavailable(err, 'audit store unavailable');
    }
    if (size < this.#tree.size) throw this.#markLost(`the store holds ${size} audit entries, fewer than the ${this.#tree.size} this replica knows`);
    await this.#ensure(size);
    return this.#tree.size;
  }

  /**
   * Throws the latched audit_history_lost, or first runs the continuation check if the store reconnected
   * since the last one. No store call otherwise: the checkpointer calls it before every signing round.
   */
  async assertHistoryKnown(): Promise<void> {
    await this.#gate();
  }

  /** The latched audit_history_lost error, if the store was found not to hold this log's history. */
  get historyLost(): BrokerError | undefined {
    return this.#lost;
  }

  /** Registers a listener told once when the history is found lost (log line, alert, metric). */
  onHistoryLost(listener: HistoryLostListener): void {
    this.#lostListeners.push(listener);
  }

  /** Registers a listener for this log's own appends (alert rules watch the log through this). */
  onAppend(listener: AppendListener): void {
    this.#listeners.push(listener);
  }

  async checkWritable(): Promise<void> {
    await this.#gate();
    try {
      await this.#store.checkWritable();
    } catch (err) {
      throw asAuditUnavailable(err, 'audit log is not writable');
    }
  }

  /**
   * Makes `entry` durable and returns its receipt. Rejects with audit_unavailable (503) if the store
   * refuses or the tree cannot be caught up; nothing is returned as success in that case. With a
   * `condition`, the entry is appended only if none of its records exists (one atomic store step);
   * otherwise nothing is appended and the condition's refusal is thrown. `expected`, if given, is told the
   * tree this append will most likely make when it is the only one being written (see ExpectedTree).
   */
  async append(entry: AuditEntry, condition?: AppendCondition, expected?: ExpectedTree): Promise<AuditReceipt> {
    let bytes: Buffer;
    try {
      bytes = canonicalJson(entry);
    } catch (err) {
      throw new BrokerError('internal', 'audit entry cannot be encoded', { cause: err });
    }
    const leaf = leafHash(bytes);
    // Never push an entry into a log whose history is unknown.
    await this.#gate();
    let index: number;
    let blocked: (string | undefined)[] | undefined;
    // Alone and caught up: the entry will be leaf #size of this tree, unless the write fails. Predicted
    // only while appends come one at a time (the last one was written alone too): under concurrency the
    // next signing round covers more entries than the prediction, and its signature would be wasted.
    const aloneAtStart = this.#writing === 0;
    const startedAs = ++this.#started;
    const predictable =
      expected !== undefined && this.#soleWriter && aloneAtStart && this.#lastWrittenAlone && this.#catchingUp === null && this.#tree.size >= this.#want;
    this.#writing++;
    try {
      // The store call starts the write before the prediction is handed out, so that work overlaps it.
      const written =
        condition === undefined || condition.unless.length === 0
          ? this.#store.appendAuditEntries([bytes]).then((i) => ({ index: i }))
          : this.#store.appendAuditEntriesUnless([bytes], condition.unless);
      if (predictable) {
        try {
          expected(this.#tree.size + 1, this.#tree.rootWith(leaf));
        } catch {
          // A prediction is an optimisation: its failure must not fail a durable append.
        }
      }
      const r = await written;
      if ('index' in r) index = r.index;
      else {
        index = -1;
        blocked = r.blocked;
      }
    } catch (err) {
      // The store itself refused: it holds fewer entries than it has shown us before (store/redis.ts).
      if (err instanceof BrokerError && err.code === 'audit_history_lost') throw this.#markLost(err.message);
      throw asAuditUnavailable(err, 'audit entry could not be recorded');
    } finally {
      this.#writing--;
      this.#lastWrittenAlone = aloneAtStart && this.#started === startedAs;
    }
    if (blocked !== undefined && condition !== undefined) throw condition.refusal(blocked);
    if (!Number.isSafeInteger(index) || index < 0) throw auditUnavailable(`store returned invalid audit index ${String(index)}`);
    if (index >= this.#tree.size) this.#ownPending.set(index, leaf);
    try {
      await this.#ensure(index + 1);
    } finally {
      this.#ownPending.delete(index);
    }
    // Only sync code from here: the receipt describes one consistent tree size.
    if (!this.#tree.leaf(index).equals(leaf)) {
      // The store put our entry at an index where this replica already knows a different one: the
      // store's history is not ours. Never hand out that receipt, and stop appending.
      throw this.#markLost(`the store put a new entry at index ${index}, where this replica knows a different entry`);
    }
    const treeSize = this.#tree.size;
    this.#persisted?.grew(treeSize);
    const receipt: AuditReceipt = {
      index,
      treeSize,
      rootHash: this.#tree.root(treeSize).toString('base64'),
      leafHash: leaf.toString('base64'),
      inclusionProof: this.#tree.inclusionProof(index, treeSize).map((h) => h.toString('base64')),
    };
    for (const listener of this.#listeners) {
      try {
        listener(entry, receipt);
      } catch {
        // A listener's bug must never turn a durable append into a failed request.
      }
    }
    return receipt;
  }

  /**
   * Throws the latched loss, or runs the continuation check first if the store reconnected since the
   * last one (its server may have restarted without its data).
   */
  async #gate(): Promise<void> {
    this.#throwIfLost();
    if (this.#checkedReconnects !== this.#reconnects) await this.#checkContinuation();
    this.#throwIfLost();
  }

  #throwIfLost(): void {
    if (this.#lost !== undefined) throw this.#lost;
  }

  /** One check at a time; callers arriving meanwhile wait for it (and re-check if it was stale). */
  async #checkContinuation(): Promise<void> {
    while (this.#lost === undefined && this.#checkedReconnects !== this.#reconnects) {
      if (this.#checking === null) {
        const covers = this.#reconnects;
        this.#checking = this.#runCheck(covers)
          .then(() => {
            if (covers > this.#checkedReconnects) this.#checkedReconnects = covers;
          })
          .finally(() => {
            this.#checking = null;
          });
      }
      await this.#checking;
    }
  }

  async #runCheck(covers: number): Promise<void> {
    // The tree only grows and its prefix never changes: this snapshot stays valid while we read.
    const known = { size: this.#tree.size, rootHash: this.#tree.root() };
    let size: number;
    try {
      size = await this.#store.auditSize();
    } catch (err) {
      throw asAuditUnavailable(err, 'audit store unavailable');
    }
    let result;
    try {
      result = await checkContinuation(known, size, (start, end) => this.#readLeafHashes(start, end));
    } catch (err) {
      throw asAuditUnavailable(err, 'audit entries could not be read to check the store after a reconnect');
    }
    if (!result.ok) throw this.#markLost(`${result.reason} (after store reconnect #${covers})`);
  }

  /** Latches the loss (once) and tells the listeners; returns the error to throw. */
  #markLost(reason: string): BrokerError {
    if (this.#lost !== undefined) return this.#lost;
    const err = auditHistoryLost(
      `audit history lost: ${reason}. Refusing every issuance and audit append until an operator recovers the store (docs/redis.md, "Data loss")`,
    );
    this.#lost = err;
    for (const listener of this.#lostListeners) {
      try {
        listener(err);
      } catch {
        // A listener's bug must not hide the loss from the caller.
      }
    }
    return err;
  }

  async #readLeafHashes(start: number, end: number): Promise<Buffer[]> {
    return (await this.#store.readAuditEntries(start, end)).map(leafHash);
  }

  /** Resolves once the tree has at least `target` leaves. */
  async #ensure(target: number): Promise<void> {
    while (this.#tree.size < target) {
      if (target > this.#want) this.#want = target;
      if (!this.#catchingUp) {
        this.#catchingUp = this.#catchUp().finally(() => {
          this.#catchingUp = null;
        });
      }
      await this.#catchingUp;
    }
  }

  /** Grows the tree to #want, taking our own leaf hashes from memory and reading the rest in batches. */
  async #catchUp(): Promise<void> {
    while (this.#tree.size < this.#want) {
      const own = this.#ownPending.get(this.#tree.size);
      if (own) {
        this.#tree.append(own);
        this.#ownPending.delete(this.#tree.size - 1);
        continue;
      }
      // Read the run of indexes we do not hold, up to the next own one.
      const start = this.#tree.size;
      let end = start + 1;
      while (end < this.#want && end - start < READ_BATCH && !this.#ownPending.has(end)) end++;
      let got: Buffer[];
      try {
        got = await this.#readLeafHashes(start, end);
      } catch (err) {
        throw asAuditUnavailable(err, 'audit entries could not be read');
      }
      if (got.length !== end - start) throw auditUnavailable(`audit store returned ${got.length} entries for [${start}, ${end})`);
      // Another reader cannot have advanced the tree meanwhile: catch-ups are serialized.
      for (const h of got) this.#tree.append(h);
    }
    this.#persisted?.grew(this.#tree.size);
  }
}
