/**
 * A C2SP tlog-witness (c2sp.org/tlog-witness, add-checkpoint): for each log it follows, it cosigns a
 * checkpoint only after checking, in the spec's order,
 *
 *   1. the body parses                                        else 400 (413 when oversized)
 *   2. the origin is a log it follows                          else 404
 *   3. a signature by the log's key verifies, and no signature
 *      line by that key fails                                  else 403
 *   4. old size ≤ checkpoint size                              else 400
 *   5. old size = the size it last cosigned (0 if none)        else 409, body "<its size>\n"
 *   6. a size-0 checkpoint has the empty tree's root           else 422
 *   7. the consistency proof from (its size, its root) to the
 *      checkpoint verifies (empty when old is 0); at equal
 *      sizes the roots are equal                               else 422
 *
 * and then cosigns (tlog-cosignature, Ed25519) and persists the new record before it answers. Steps 5–7
 * and the write run under one lock per log, so two requests can never both pass against the same old
 * record (the rollback race the spec describes). It never cosigns a smaller size than its last, two roots
 * for one size, or anything without a proof: those are the only ways a rolled-back or forked log could
 * get its signature.
 */
import { type Clock, systemClock } from '../clock.js';
import { Cosigner } from '../audit/cosignature.js';
import { emptyRoot, verifyConsistency } from '../audit/merkle.js';
import { NoteError, type NoteVerifier, openNote } from '../audit/note.js';
import { parseAddCheckpoint, WitnessRefusal } from './request.js';
import type { LogRecord, WitnessState } from './state.js';

export interface WitnessAnswer {
  readonly status: number;
  readonly contentType: string;
  readonly body: string;
}

/** Told about every refusal of a checkpoint signed by a log it follows: possible evidence of misbehaviour. */
export type RefusalListener = (event: { origin: string; status: number; message: string; request: Buffer }) => void;

export interface WitnessOptions {
  readonly cosigner: Cosigner;
  /** The logs followed: each key's name is the log's origin. Several keys may share an origin. */
  readonly logs: readonly NoteVerifier[];
  readonly state: WitnessState;
  readonly clock?: Clock;
  readonly onRefusal?: RefusalListener;
}

const text = (status: number, body: string, contentType = 'text/plain; charset=utf-8'): WitnessAnswer => ({ status, contentType, body });

export class Witness {
  readonly #cosigner: Cosigner;
  readonly #logs = new Map<string, NoteVerifier[]>();
  readonly #state: WitnessState;
  readonly #clock: Clock;
  readonly #onRefusal: RefusalListener;
  /** The tail of each log's queue: one add-checkpoint at a time per log. */
  readonly #queues = new Map<string, Promise<unknown>>();

  constructor(opts: WitnessOptions) {
    this.#cosigner = opts.cosigner;
    this.#state = opts.state;
    this.#clock = opts.clock ?? systemClock;
    this.#onRefusal = opts.onRefusal ?? (() => {});
    for (const key of opts.logs) {
      if (key.name === undefined) throw new TypeError('a followed log needs a named verifier key (its name is the origin)');
      this.#logs.set(key.name, [...(this.#logs.get(key.name) ?? []), key]);
    }
  }

  get name(): string {
    return this.#cosigner.name;
  }

  get verifierKey(): string {
    return this.#cosigner.verifierKey;
  }

  get origins(): string[] {
    return [...this.#logs.keys()];
  }

  /** Handles one add-checkpoint body; never throws for bad input (every refusal is an answer). */
  async addCheckpoint(body: Buffer): Promise<WitnessAnswer> {
    let origin: string | undefined;
    try {
      const req = parseAddCheckpoint(body);
      origin = req.checkpoint.origin;
      const keys = this.#logs.get(origin);
      if (keys === undefined) {
        origin = undefined; // not a log we follow: nothing worth recording
        throw new WitnessRefusal(404, `this witness does not follow the log ${JSON.stringify(req.checkpoint.origin)}`);
      }
      this.#checkSignature(req.note, keys);
      if (req.oldSize > req.checkpoint.size) {
        throw new WitnessRefusal(400, `old size ${req.oldSize} is larger than the checkpoint size ${req.checkpoint.size}`);
      }
      const o = origin;
      return await this.#serialized(o, async () => {
        const rec = this.#state.get(o);
        this.#checkConsistency(req, rec);
        const line = this.#cosigner.cosign(req.parsed.text, Math.floor(this.#clock.now() / 1000));
        await this.#state.put({ origin: o, size: req.checkpoint.size, rootHash: req.checkpoint.rootHash, note: `${req.note}${line}` });
        return text(200, line);
      });
    } catch (err) {
      if (!(err instanceof WitnessRefusal)) throw err;
      if (origin !== undefined && err.status !== 403) this.#onRefusal({ origin, status: err.status, message: err.message, request: body });
      if (err.status === 409) return text(409, `${err.latestSize ?? 0}\n`, 'text/x.tlog.size');
      return text(err.status, `${err.message}\n`);
    }
  }

  /** The latest cosigned checkpoint of the log whose origin hashes (SHA-256, lowercase hex) to `hex`. */
  checkpoint(hex: string): WitnessAnswer {
    const rec = /^[0-9a-f]{64}$/.test(hex) ? this.#state.byOriginHash(hex) : undefined;
    if (rec === undefined || !this.#logs.has(rec.origin)) return text(404, 'this witness has cosigned no checkpoint of that log\n');
    return text(200, rec.note, 'text/plain; charset=utf-8');
  }

  #checkSignature(note: string, keys: readonly NoteVerifier[]): void {
    let verified = false;
    for (const key of keys) {
      try {
        openNote(note, key);
        verified = true;
      } catch (err) {
        if (!(err instanceof NoteError)) throw err;
        // A line by this key that does not verify makes the note malformed: refuse outright.
        if (/does not verify/.test(err.message)) throw new WitnessRefusal(403, err.message);
      }
    }
    if (!verified) throw new WitnessRefusal(403, 'the checkpoint carries no valid signature by a key this witness trusts for its origin');
  }

  #checkConsistency(req: ReturnType<typeof parseAddCheckpoint>, rec: LogRecord | undefined): void {
    const known = rec?.size ?? 0;
    const cp = req.checkpoint;
    if (req.oldSize !== known) throw new WitnessRefusal(409, `old size ${req.oldSize} is not the size this witness last cosigned (${known})`, known);
    if (cp.size === 0 && !cp.rootHash.equals(emptyRoot())) throw new WitnessRefusal(422, 'a checkpoint of size 0 must have the root of the empty tree');
    if (req.oldSize === 0) {
      if (req.proof.length !== 0) throw new WitnessRefusal(422, 'the consistency proof must be empty when the old size is 0');
      return;
    }
    const knownRoot = (rec as LogRecord).rootHash;
    if (cp.size === known) {
      if (req.proof.length !== 0 || !cp.rootHash.equals(knownRoot)) {
        throw new WitnessRefusal(422, `the checkpoint has a different root for size ${known} than the one this witness cosigned`);
      }
      return;
    }
    if (!verifyConsistency(known, cp.size, knownRoot, cp.rootHash, req.proof)) {
      throw new WitnessRefusal(422, `the consistency proof from size ${known} to ${cp.size} does not verify`);
    }
  }

  /** Runs `fn` after every earlier call for `origin` has settled. */
  async #serialized<T>(origin: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#queues.get(origin) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => {});
    this.#queues.set(origin, tail);
    try {
      return await run;
    } finally {
      if (this.#queues.get(origin) === tail) this.#queues.delete(origin);
    }
  }
}
