/**
 * Signs the audit log's checkpoints (C2SP tlog-checkpoint notes, Ed25519) and keeps every one in the store.
 *
 * Two triggers, one signing path:
 *   - background: at most once per `intervalMs`, only when the tree grew, and once more on close();
 *   - on demand: an issuance receipt must name a signed checkpoint that covers its entry. Waiters are
 *     coalesced: at most one signing round runs at a time, and everyone who arrives while it runs is
 *     covered by the next round (so a burst of N issuances costs ~2 signatures, not N). `receiptGapMs`
 *     optionally spaces rounds further apart to bound how many checkpoints a busy log stores.
 *
 * A round takes the store's `audit-checkpoint` lock (only one replica signs at a time), catches the tree
 * up with the store, signs the root at that size, and stores the note before anyone sees it. The entries
 * a note covers are durable before it is signed, so the note itself is re-creatable (store/embedded.ts).
 * Because every round first catches up under the lock, stored checkpoints never shrink, and every one
 * is a prefix of the same log: no checkpoint is ever inconsistent with an earlier one.
 */
import { randomUUID } from 'node:crypto';
import { type Clock, systemClock } from '../clock.js';
import { asAuditUnavailable, auditUnavailable } from '../errors.js';
import type { Store } from '../store/store.js';
import type { AuditLog, AuditReceipt } from './log.js';
import { type NoteSigner, NoteError, openCheckpoint, parseCheckpoint, parseNote, signCheckpoint, type SignedCheckpoint } from './note.js';

/** An issuance receipt: the entry's place in the log, proven against a signed checkpoint. */
export interface CheckpointedReceipt extends AuditReceipt {
  /** The signed checkpoint note (tree size = treeSize, root = rootHash) the inclusion proof is for. */
  readonly checkpoint: string;
  /**
   * The newest checkpoint a quorum of witnesses cosigned, once one covers the entry (the note with the
   * log's signature and the cosignatures), and the entry's inclusion proof at its size.
   */
  readonly cosignedCheckpoint?: string;
  readonly cosignedInclusionProof?: readonly string[];
}

/** Where signed checkpoints go to be cosigned, and where the newest cosigned one comes from (audit/witnesses.ts). */
export interface CheckpointWitnesses {
  submit(cp: SignedCheckpoint): void;
  readonly latestQuorum: SignedCheckpoint | undefined;
}

export interface CheckpointerOptions {
  readonly store: Store;
  readonly audit: AuditLog;
  readonly signer: NoteSigner;
  /** Background cadence (ms). */
  readonly intervalMs: number;
  /** Minimum gap between two signing rounds started for receipts (ms, 0 = none). */
  readonly receiptGapMs?: number;
  /** Replica id; a random suffix makes the lock owner unique per process. */
  readonly replicaId: string;
  readonly clock?: Clock;
  /** Background failures (a tick, the final checkpoint) are reported here instead of thrown. */
  readonly onError?: (err: unknown, what: string) => void;
}

export interface CheckpointerStats {
  /** Checkpoints this process signed and stored. */
  readonly signed: number;
  /** Signing rounds that found nothing new to sign. */
  readonly idleRounds: number;
  /** Receipts served, and how many of them had to wait for a new checkpoint. */
  readonly receipts: number;
  readonly receiptsWaited: number;
}

export const CHECKPOINT_LOCK = 'audit-checkpoint';
/** Long enough for a slow fsync; a crashed signer's lock frees itself after this. */
const LOCK_TTL_MS = 10_000;
/** Waiting for another replica's round: retries at 2, 4, 6 … ms, about 2 s in total. */
const LOCK_ATTEMPTS = 45;
/** A receipt that cannot get a checkpoint within this time fails closed (503). */
const RECEIPT_DEADLINE_MS = 5_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class Checkpointer {
  readonly #store: Store;
  readonly #audit: AuditLog;
  readonly #signer: NoteSigner;
  readonly #clock: Clock;
  readonly #owner: string;
  readonly #receiptGapMs: number;
  readonly #onError: (err: unknown, what: string) => void;
  #latest: SignedCheckpoint | undefined;
  #witnesses: CheckpointWitnesses | undefined;
  #round: Promise<void> | null = null;
  #lastRoundAt = -Infinity;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #closing: Promise<void> | null = null;
  #signed = 0;
  #idleRounds = 0;
  #receipts = 0;
  #receiptsWaited = 0;

  private constructor(opts: CheckpointerOptions) {
    this.#store = opts.store;
    this.#audit = opts.audit;
    this.#signer = opts.signer;
    this.#clock = opts.clock ?? systemClock;
    this.#owner = `${opts.replicaId}/${randomUUID()}`;
    this.#receiptGapMs = opts.receiptGapMs ?? 0;
    this.#onError = opts.onError ?? (() => {});
  }

  /**
   * Loads the last stored checkpoint, refuses to start if the log no longer matches it (entries lost or
   * changed since it was signed), signs a fresh one if the log grew meanwhile (e.g. after a crash), and
   * starts the background timer.
   */
  static async start(opts: CheckpointerOptions): Promise<Checkpointer> {
    if (!Number.isSafeInteger(opts.intervalMs) || opts.intervalMs < 1) throw new TypeError('intervalMs must be a positive integer');
    const cp = new Checkpointer(opts);
    await cp.#loadLatest();
    if (cp.#latest === undefined || cp.#audit.size > cp.#latest.size) await cp.#signRound();
    cp.#timer = setInterval(() => void cp.#tick(), opts.intervalMs);
    cp.#timer.unref();
    return cp;
  }

  /** The newest checkpoint this process knows (signed here or loaded at start). */
  get latest(): SignedCheckpoint | undefined {
    return this.#latest;
  }

  /** The C2SP verifier key (name+id+key) for the audit public key. */
  get verifierKey(): string {
    return this.#signer.verifierKey;
  }

  /** The audit public key as SPKI PEM. */
  get publicKeyPem(): string {
    return this.#signer.publicKey.export({ type: 'spki', format: 'pem' }).toString();
  }

  get stats(): CheckpointerStats {
    return { signed: this.#signed, idleRounds: this.#idleRounds, receipts: this.#receipts, receiptsWaited: this.#receiptsWaited };
  }

  /** A signed, stored checkpoint of size ≥ `minSize`; signs one (coalesced with other waiters) if needed. */
  async covering(minSize: number): Promise<SignedCheckpoint> {
    const deadline = this.#clock.now() + RECEIPT_DEADLINE_MS;
    for (;;) {
      const latest = this.#latest;
      if (latest !== undefined && latest.size >= minSize) return latest;
      if (this.#closed) throw auditUnavailable('the audit checkpointer is shut down');
      if (this.#clock.now() > deadline) throw auditUnavailable(`no signed checkpoint covers audit entry ${minSize - 1} yet`);
      if (this.#round === null) {
        // Clamped to the gap: a wall clock stepped backwards (NTP) must not park every receipt for the step.
        const wait = Math.min(this.#receiptGapMs, this.#lastRoundAt + this.#receiptGapMs - this.#clock.now());
        this.#round = (async () => {
          if (wait > 0) await sleep(wait);
          await this.#signRound();
        })().finally(() => {
          this.#round = null;
        });
      }
      await this.#round;
    }
  }

  /** Sends every checkpoint signed from now on (and the latest one now) to `w` to be cosigned. */
  witnessWith(w: CheckpointWitnesses): void {
    this.#witnesses = w;
    if (this.#latest !== undefined) w.submit(this.#latest);
  }

  /** Turns the log's receipt into one proven against a signed checkpoint that covers the entry. */
  async receipt(r: AuditReceipt): Promise<CheckpointedReceipt> {
    this.#receipts++;
    if (this.#latest === undefined || this.#latest.size <= r.index) this.#receiptsWaited++;
    const cp = await this.covering(r.index + 1);
    if (cp.size > this.#audit.size) await this.#audit.refresh();
    const cosigned = this.#witnesses?.latestQuorum;
    if (cosigned !== undefined && cosigned.size > this.#audit.size) await this.#audit.refresh();
    // Only sync code from here: proof and root describe one tree size.
    if (this.#audit.leafHash(r.index).toString('base64') !== r.leafHash) {
      throw auditUnavailable(`audit entry ${r.index} changed under its receipt`);
    }
    const witnessed =
      cosigned !== undefined && cosigned.size > r.index && cosigned.size <= this.#audit.size && this.#audit.root(cosigned.size).equals(cosigned.rootHash)
        ? {
            cosignedCheckpoint: cosigned.note,
            cosignedInclusionProof: this.#audit.inclusionProof(r.index, cosigned.size).map((h) => h.toString('base64')),
          }
        : {};
    return {
      ...witnessed,
      index: r.index,
      treeSize: cp.size,
      rootHash: cp.rootHash.toString('base64'),
      leafHash: r.leafHash,
      inclusionProof: this.#audit.inclusionProof(r.index, cp.size).map((h) => h.toString('base64')),
      checkpoint: cp.note,
    };
  }

  /** Signs a checkpoint now if the log grew since the last one (waits for a running round first). */
  async signNow(): Promise<SignedCheckpoint | undefined> {
    while (this.#round !== null) await this.#round.catch(() => {});
    this.#round = this.#signRound().finally(() => {
      this.#round = null;
    });
    await this.#round;
    return this.#latest;
  }

  /** Stops the timer and signs a final checkpoint if the log grew. Idempotent; never throws. */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closing = (async () => {
      if (this.#timer !== undefined) clearInterval(this.#timer);
      try {
        await this.signNow();
      } catch (err) {
        this.#onError(err, 'final audit checkpoint');
      } finally {
        this.#closed = true;
      }
    })();
    return this.#closing;
  }

  async #tick(): Promise<void> {
    if (this.#round !== null || this.#closed || this.#closing) return;
    try {
      const size = await this.#audit.refresh();
      if (this.#latest !== undefined && size <= this.#latest.size) return;
      await this.signNow();
    } catch (err) {
      this.#onError(err, 'background audit checkpoint');
    }
  }

  /** One signing round under the cross-replica lock. */
  async #signRound(): Promise<void> {
    this.#lastRoundAt = this.#clock.now();
    let locked = false;
    for (let attempt = 1; attempt <= LOCK_ATTEMPTS; attempt++) {
      try {
        locked = await this.#store.tryLock(CHECKPOINT_LOCK, this.#owner, LOCK_TTL_MS);
      } catch (err) {
        throw asAuditUnavailable(err, 'the checkpoint lock is unavailable');
      }
      if (locked) break;
      await sleep(2 * attempt);
    }
    if (!locked) throw auditUnavailable('another replica has held the audit checkpoint lock for too long');
    try {
      const size = await this.#audit.refresh();
      if (this.#latest !== undefined && size <= this.#latest.size) {
        this.#idleRounds++;
        return;
      }
      const cp = await signCheckpoint(this.#signer, size, this.#audit.root(size));
      try {
        await this.#store.appendCheckpoint(cp.note);
      } catch (err) {
        throw asAuditUnavailable(err, 'the signed checkpoint could not be stored');
      }
      // Only ever move forward (a round never runs concurrently with another in this process).
      if (this.#latest === undefined || cp.size > this.#latest.size) this.#latest = cp;
      this.#signed++;
      this.#witnesses?.submit(cp);
    } finally {
      await this.#store.unlock(CHECKPOINT_LOCK, this.#owner).catch(() => {});
    }
  }

  /**
   * Reads the newest stored checkpoint and checks the log still matches it. A checkpoint signed by
   * another key (a rotated audit key) is not ours to serve, but the log must still match its root.
   */
  async #loadLatest(): Promise<void> {
    let notes: string[];
    try {
      await this.#audit.refresh();
      notes = await this.#store.listCheckpoints();
    } catch (err) {
      throw asAuditUnavailable(err, 'stored audit checkpoints could not be read');
    }
    const last = notes[notes.length - 1];
    if (last === undefined) return;
    let body;
    try {
      body = parseCheckpoint(parseNote(last).text);
    } catch (err) {
      throw auditUnavailable(`the last stored audit checkpoint is malformed: ${(err as Error).message}`, err);
    }
    if (body.size > this.#audit.size || !this.#audit.root(body.size).equals(body.rootHash)) {
      throw auditUnavailable(
        `the audit log (${this.#audit.size} entries) does not match its last signed checkpoint (size ${body.size}): ` +
          'entries were lost or changed; refusing to sign anything more. Restore the store from backup and run `tessera audit verify`.',
      );
    }
    try {
      this.#latest = openCheckpoint(last, this.#signer.verifier);
    } catch (err) {
      if (!(err instanceof NoteError)) throw err;
      this.#onError(err, 'last stored checkpoint is not signed by the current audit key; a new one will be signed');
    }
  }
}
