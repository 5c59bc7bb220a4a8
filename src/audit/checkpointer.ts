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
 * A round signs the root of the tree this replica holds (every entry in it is durable in the store, so
 * the note is re-creatable: store/embedded.ts) and stores the note before anyone sees it — in one store
 * step that stores it only if no larger checkpoint is stored yet (Store.appendCheckpointIfNewer; no
 * lock, so on Redis a round is one command). A replica that finds a newer checkpoint there adopts it
 * after checking it against its tree. Every tree is a prefix of the one store log, so no checkpoint is
 * ever inconsistent with an earlier one, and the stored checkpoints never shrink.
 */
import { type Clock, systemClock } from '../clock.js';
import { asAuditUnavailable, auditUnavailable } from '../errors.js';
import type { Store } from '../store/store.js';
import type { AuditEntry } from './entry.js';
import type { AppendCondition, AuditLog, AuditReceipt } from './log.js';
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
  /** Replica id (kept for the callers' logs; signing needs no lock owner any more). */
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
  /** Signing rounds that found a newer checkpoint another replica had stored, and used it instead. */
  readonly adopted: number;
  /** Receipts served, and how many of them had to wait for a new checkpoint. */
  readonly receipts: number;
  readonly receiptsWaited: number;
  /**
   * Checkpoints signed early, while a lone entry was being written (appendForReceipt), and how many of
   * them the next signing round found to be exactly the tree it had to sign, and used.
   */
  readonly signedEarly: number;
  readonly signedEarlyUsed: number;
}

/** A receipt that cannot get a checkpoint within this time fails closed (503). */
const RECEIPT_DEADLINE_MS = 5_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class Checkpointer {
  readonly #store: Store;
  readonly #audit: AuditLog;
  readonly #signer: NoteSigner;
  readonly #clock: Clock;
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
  #adopted = 0;
  #receipts = 0;
  #receiptsWaited = 0;
  /** The checkpoint signed early for the tree a lone append is expected to make (at most one). */
  #early: { readonly size: number; readonly rootHash: Buffer; readonly signed: Promise<SignedCheckpoint> } | undefined;
  #signedEarly = 0;
  #signedEarlyUsed = 0;

  private constructor(opts: CheckpointerOptions) {
    this.#store = opts.store;
    this.#audit = opts.audit;
    this.#signer = opts.signer;
    this.#clock = opts.clock ?? systemClock;
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
    return {
      signed: this.#signed,
      idleRounds: this.#idleRounds,
      adopted: this.#adopted,
      receipts: this.#receipts,
      receiptsWaited: this.#receiptsWaited,
      signedEarly: this.#signedEarly,
      signedEarlyUsed: this.#signedEarlyUsed,
    };
  }

  /**
   * Appends `entry` and returns its receipt against a signed checkpoint (AuditLog.append, then
   * receipt). When the entry is the only one being written, the checkpoint for the tree it will make is
   * signed while the store writes, so the signing round that follows only checks and stores it. Nothing
   * signed early is stored or shown unless the round finds it is exactly the tree it would have signed
   * (same size, same root; a note is a function of those, and Ed25519 signatures are deterministic).
   */
  async appendForReceipt(entry: AuditEntry, condition?: AppendCondition): Promise<CheckpointedReceipt> {
    return this.receipt(await this.#audit.append(entry, condition, (size, rootHash) => this.#signEarly(size, rootHash)));
  }

  #signEarly(size: number, rootHash: Buffer): void {
    if (this.#closed || (this.#latest !== undefined && size <= this.#latest.size)) return;
    const signed = signCheckpoint(this.#signer, size, rootHash);
    // Unused or failed, it is dropped at the next round; a failure here must never surface by itself.
    signed.catch(() => {});
    this.#early = { size, rootHash, signed };
    this.#signedEarly++;
  }

  /** The early signature for exactly (size, root), if there is one; clears it either way. */
  async #takeEarly(size: number, rootHash: Buffer): Promise<SignedCheckpoint | undefined> {
    const early = this.#early;
    this.#early = undefined;
    if (early === undefined || early.size !== size || !early.rootHash.equals(rootHash)) return undefined;
    try {
      const cp = await early.signed;
      this.#signedEarlyUsed++;
      return cp;
    } catch {
      return undefined; // signed again below, and that failure is the one reported
    }
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

  /**
   * One signing round: sign the tree this replica holds and store the note only if no larger one is
   * stored yet (Store.appendCheckpointIfNewer: one atomic step, no lock). If another replica stored a
   * newer checkpoint meanwhile, that one is adopted instead, once the tree is caught up to it and its
   * root matches the tree's (it covers everything ours would have).
   */
  async #signRound(): Promise<void> {
    this.#lastRoundAt = this.#clock.now();
    const size = this.#audit.size;
    if (this.#latest !== undefined && size <= this.#latest.size) {
      this.#idleRounds++;
      return;
    }
    // Never sign for a store whose history this replica no longer recognises (after a reconnect).
    await this.#audit.assertHistoryKnown();
    const root = this.#audit.root(size);
    const cp = (await this.#takeEarly(size, root)) ?? (await signCheckpoint(this.#signer, size, root));
    let newer: string | undefined;
    try {
      newer = await this.#store.appendCheckpointIfNewer(cp.note, cp.size);
    } catch (err) {
      throw asAuditUnavailable(err, 'the signed checkpoint could not be stored');
    }
    if (newer === undefined) {
      // Only ever move forward (a round never runs concurrently with another in this process).
      if (this.#latest === undefined || cp.size > this.#latest.size) this.#latest = cp;
      this.#signed++;
      this.#witnesses?.submit(cp);
      return;
    }
    await this.#adopt(newer);
  }

  /** Takes another replica's newer stored checkpoint as ours to serve, after checking it against the tree. */
  async #adopt(note: string): Promise<void> {
    let other: SignedCheckpoint;
    try {
      other = openCheckpoint(note, this.#signer.verifier);
    } catch (err) {
      throw auditUnavailable(`the newest stored audit checkpoint is not one this replica can serve (${(err as Error).message})`, err);
    }
    if (other.size > this.#audit.size) await this.#audit.refresh();
    if (other.size > this.#audit.size || !this.#audit.root(other.size).equals(other.rootHash)) {
      throw auditUnavailable(`the newest stored audit checkpoint (size ${other.size}) does not match this replica's audit tree`);
    }
    this.#adopted++;
    if (this.#latest === undefined || other.size > this.#latest.size) this.#latest = other;
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
