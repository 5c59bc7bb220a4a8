/**
 * A client's own check that the audit log only grows: it keeps the newest checkpoint it has seen (in
 * receipts) and, for each other one, asks the broker for an RFC 9162 consistency proof between the two
 * and checks it against the two roots it holds (never against roots the broker sends along).
 *
 *   newer (size > held)  proof held → new must verify, then the new one is held
 *   older (size < held)  proof new → held must verify (a replica a little behind is fine); a broker that
 *                        cannot even produce the held size has lost entries: rolled back
 *   same size            the roots must be equal
 *
 * Anything else is a rolled-back or forked log: an `inconsistent` event and a TesseraError with code
 * `audit_inconsistent`. The held checkpoint never moves to the inconsistent one. A broker that cannot
 * be reached proves nothing either way: that is an `unavailable` error and the check is retried on the
 * next receipt.
 */
import { EventEmitter } from 'node:events';
import { verifyConsistency } from '../audit/merkle.js';
import { type Checkpoint, type NoteVerifier, openCheckpoint, parseCheckpoint, parseNote } from '../audit/note.js';
import { TesseraError } from './errors.js';
import { brokerUrl, type BrokerEndpoint, callBroker } from './http.js';

export interface HeldCheckpoint extends Checkpoint {
  readonly note: string;
}

export interface InconsistentEvent {
  readonly reason: string;
  readonly held: HeldCheckpoint;
  readonly seen: HeldCheckpoint;
}

export interface CheckpointWatchOptions {
  /** The newest checkpoint seen before (e.g. an agent's saved state). */
  readonly initial?: string;
  /** The audit key (GET /v1/audit/key): with it, a checkpoint whose signature does not verify is refused. */
  readonly auditKey?: NoteVerifier;
  /** Told about every newly held checkpoint (to persist it). */
  readonly onNewer?: (cp: HeldCheckpoint) => void | Promise<void>;
}

interface ConsistencyResponse {
  consistencyProof?: unknown;
}

export type Observation = 'first' | 'newer' | 'same' | 'older';

export class CheckpointWatch extends EventEmitter<{ inconsistent: [InconsistentEvent]; newer: [HeldCheckpoint] }> {
  #held: HeldCheckpoint | undefined;
  readonly #opts: CheckpointWatchOptions;
  /** One check at a time, so the held checkpoint moves in order. */
  #queue: Promise<unknown> = Promise.resolve();
  #inconsistencies = 0;

  constructor(opts: CheckpointWatchOptions = {}) {
    super();
    this.#opts = opts;
    if (opts.initial !== undefined) this.#held = this.#parse(opts.initial);
  }

  /** The newest checkpoint held. */
  get latest(): HeldCheckpoint | undefined {
    return this.#held;
  }

  /** How many inconsistent checkpoints were seen. */
  get inconsistencies(): number {
    return this.#inconsistencies;
  }

  /** Checks `note` against the held checkpoint, asking `broker` (base URL, with `ca`) for the proof. */
  observe(note: string, broker: string | URL | BrokerEndpoint, tls: { ca?: string; timeoutMs?: number } = {}): Promise<Observation> {
    const endpoint: BrokerEndpoint =
      typeof broker === 'string' || broker instanceof URL
        ? { url: brokerUrl(broker), ca: () => tls.ca ?? '', timeoutMs: tls.timeoutMs ?? 10_000 }
        : broker;
    const run = this.#queue.then(
      () => this.#observe(note, endpoint),
      () => this.#observe(note, endpoint),
    );
    this.#queue = run.catch(() => {});
    return run;
  }

  #parse(note: string): HeldCheckpoint {
    try {
      if (this.#opts.auditKey !== undefined) return openCheckpoint(note, this.#opts.auditKey);
      return { ...parseCheckpoint(parseNote(note).text), note };
    } catch (err) {
      throw new TesseraError('bad_response', `the audit checkpoint is not valid: ${(err as Error).message}`, { cause: err });
    }
  }

  async #observe(note: string, endpoint: BrokerEndpoint): Promise<Observation> {
    const seen = this.#parse(note);
    const held = this.#held;
    if (held === undefined) {
      await this.#hold(seen);
      return 'first';
    }
    if (seen.origin !== held.origin) return this.#inconsistent(held, seen, `the checkpoint is for log "${seen.origin}", not "${held.origin}"`);
    if (seen.size === held.size) {
      if (!seen.rootHash.equals(held.rootHash)) return this.#inconsistent(held, seen, `two different roots for size ${held.size}: the log was forked`);
      return 'same';
    }
    const [from, to] = seen.size > held.size ? [held, seen] : [seen, held];
    let proof: Buffer[];
    try {
      const res = await callBroker<ConsistencyResponse>(endpoint, { method: 'GET', path: `/v1/audit/proof/consistency?from=${from.size}&to=${to.size}` });
      if (!Array.isArray(res.consistencyProof) || !res.consistencyProof.every((h) => typeof h === 'string')) {
        throw new TesseraError('bad_response', 'GET /v1/audit/proof/consistency: no consistencyProof list');
      }
      proof = res.consistencyProof.map((h) => Buffer.from(h, 'base64'));
    } catch (err) {
      if (err instanceof TesseraError && err.code === 'bad_request' && seen.size < held.size) {
        return this.#inconsistent(held, seen, `the broker cannot prove size ${held.size} (${err.message}): the audit log was rolled back below a checkpoint this client saw`);
      }
      throw err;
    }
    if (!verifyConsistency(from.size, to.size, from.rootHash, to.rootHash, proof)) {
      return this.#inconsistent(held, seen, `checkpoint size ${seen.size} is not consistent with the held checkpoint size ${held.size}: the log was rolled back or forked`);
    }
    if (seen.size > held.size) {
      await this.#hold(seen);
      return 'newer';
    }
    return 'older';
  }

  async #hold(cp: HeldCheckpoint): Promise<void> {
    this.#held = cp;
    this.emit('newer', cp);
    await this.#opts.onNewer?.(cp);
  }

  #inconsistent(held: HeldCheckpoint, seen: HeldCheckpoint, reason: string): never {
    this.#inconsistencies++;
    this.emit('inconsistent', { reason, held, seen });
    throw new TesseraError('audit_inconsistent', reason);
  }
}
