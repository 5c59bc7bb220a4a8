/**
 * The body of a C2SP tlog-witness `add-checkpoint` request:
 *
 *   old <size>\n                 decimal, no leading zeroes ("0" for zero)
 *   <base64 hash>\n              zero to 63 consistency proof lines, 32-byte hashes
 *   \n                           an empty line
 *   <checkpoint signed note>     audit/note.ts parses it
 *
 * Everything here is syntax: a body that does not parse is a 400. Whether the proof verifies, whose
 * signature the note carries and what the witness has seen before is the witness's business (witness.ts).
 */
import { HASH_SIZE } from '../audit/merkle.js';
import { MAX_NOTE_BYTES, NoteError, type ParsedNote, parseCheckpoint, parseNote, type Checkpoint } from '../audit/note.js';

/** The spec's bound on proof lines. */
export const MAX_PROOF_LINES = 63;
/** "old " + 16 digits + 63 proof lines of 44 base64 characters + the blank line + the largest note. */
export const MAX_REQUEST_BYTES = 24 + MAX_PROOF_LINES * 45 + 1 + MAX_NOTE_BYTES;

/** A refusal with the HTTP status the spec names for it. */
export class WitnessRefusal extends Error {
  constructor(
    readonly status: 400 | 403 | 404 | 409 | 413 | 422,
    message: string,
    /** For 409: the size of the latest checkpoint the witness cosigned for this log. */
    readonly latestSize?: number,
  ) {
    super(message);
    this.name = 'WitnessRefusal';
  }
}

export interface AddCheckpointRequest {
  readonly oldSize: number;
  readonly proof: readonly Buffer[];
  /** The submitted checkpoint note as sent (its signatures not yet verified). */
  readonly note: string;
  /** Its text and signature lines. */
  readonly parsed: ParsedNote;
  /** The note's text as a checkpoint. */
  readonly checkpoint: Checkpoint;
}

const bad = (message: string): WitnessRefusal => new WitnessRefusal(400, message);
const HASH_B64 = /^[A-Za-z0-9+/]{43}=$/;

/** Parses an add-checkpoint body; throws WitnessRefusal(400 or 413) with a message naming what is wrong. */
export function parseAddCheckpoint(body: Uint8Array): AddCheckpointRequest {
  if (body.length > MAX_REQUEST_BYTES) throw new WitnessRefusal(413, `request body is larger than ${MAX_REQUEST_BYTES} bytes`);
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  let pos = 0;
  const line = (): string | undefined => {
    const nl = buf.indexOf(0x0a, pos);
    if (nl < 0) return undefined;
    const s = buf.subarray(pos, nl).toString('latin1');
    pos = nl + 1;
    return s;
  };
  const first = line();
  if (first === undefined) throw bad('the body must start with an "old <size>" line ending in a newline');
  const m = /^old (0|[1-9][0-9]{0,15})$/.exec(first);
  if (m === null || !Number.isSafeInteger(Number(m[1]))) throw bad('the first line must be "old <size>": a decimal size without leading zeroes');
  const oldSize = Number(m[1]);
  const proof: Buffer[] = [];
  for (;;) {
    const l = line();
    if (l === undefined) throw bad('the proof lines must be followed by an empty line and the checkpoint');
    if (l === '') break;
    if (proof.length === MAX_PROOF_LINES) throw bad(`more than ${MAX_PROOF_LINES} consistency proof lines`);
    if (!HASH_B64.test(l)) throw bad(`consistency proof line ${proof.length + 1} is not a base64 ${HASH_SIZE}-byte hash`);
    const h = Buffer.from(l, 'base64');
    if (h.length !== HASH_SIZE || h.toString('base64') !== l) throw bad(`consistency proof line ${proof.length + 1} is not a canonical base64 ${HASH_SIZE}-byte hash`);
    proof.push(h);
  }
  let parsed: ParsedNote;
  let checkpoint: Checkpoint;
  try {
    parsed = parseNote(buf.subarray(pos));
    checkpoint = parseCheckpoint(parsed.text);
  } catch (err) {
    if (err instanceof NoteError) throw bad(`the checkpoint is malformed: ${err.message}`);
    throw err;
  }
  // parseNote checked the bytes are UTF-8: this decoding is exact.
  return { oldSize, proof, note: buf.subarray(pos).toString('utf8'), parsed, checkpoint };
}

/** The request body for `checkpoint` (a signed note) with a proof from `oldSize`: what a log sends. */
export function formatAddCheckpoint(oldSize: number, proof: readonly Uint8Array[], note: string): string {
  if (!Number.isSafeInteger(oldSize) || oldSize < 0) throw new TypeError('old size must be a non-negative integer');
  if (proof.length > MAX_PROOF_LINES) throw new TypeError(`at most ${MAX_PROOF_LINES} proof hashes`);
  return `old ${oldSize}\n${proof.map((h) => `${Buffer.from(h).toString('base64')}\n`).join('')}\n${note}`;
}
