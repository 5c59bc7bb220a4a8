/**
 * The offline verifier: trusts nothing but the audit public key.
 *
 *   1. Every stored checkpoint must parse and carry a valid signature by the key.
 *   2. Every entry is re-hashed (RFC 6962 leaf hash of its exact bytes) into a fresh Merkle tree, and
 *      must be a well-formed canonical entry (parse + re-encode gives the same bytes).
 *   3. Each checkpoint's root must equal the rebuilt tree's root at the checkpoint's size. When all do,
 *      every checkpoint is a prefix of one and the same entry sequence, which is exactly "each later
 *      checkpoint is consistent with each earlier one" (a consistency proof between any two exists).
 *
 * Locating the damage: roots are the only trusted facts, so the authentic prefix is the largest
 * checkpoint size g whose root matches. A checkpoint of size ≤ g that does not match is a signed
 * fork (inconsistent with the matching one). A checkpoint of size > g that does not match means the
 * entries from index g on were changed, removed or reordered; the first bad index is g, or the first
 * malformed entry in that range if there is one. (With checkpoints signed per issuance, g is exact.)
 */
import { BrokerError } from '../errors.js';
import { canonicalJson, parseAuditEntry } from './entry.js';
import { MerkleTree, leafHash } from './merkle.js';
import { type NoteVerifier, NoteError, openCheckpoint, type SignedCheckpoint } from './note.js';
import type { LogSource } from './source.js';

export type VerifyProblemKind =
  | 'checkpoint-malformed'
  | 'checkpoint-signature'
  | 'checkpoint-origin'
  | 'checkpoint-inconsistent'
  | 'entry-malformed'
  | 'entries-mismatch'
  | 'entries-missing'
  | 'no-checkpoint';

export interface VerifyProblem {
  readonly kind: VerifyProblemKind;
  /** First bad entry index, for entry problems. */
  readonly index?: number;
  /** Checkpoint number (0-based, in stored order), for checkpoint problems. */
  readonly checkpoint?: number;
  readonly message: string;
}

export interface VerifyResult {
  readonly ok: boolean;
  readonly entries: number;
  readonly checkpoints: number;
  readonly origin?: string;
  /** Base64 root of all entries read. */
  readonly rootHash: string;
  /** Entries [0, verifiedSize) are proven by a signed checkpoint. */
  readonly verifiedSize: number;
  /** Entries after the newest matching checkpoint: read and hashed, but no signature covers them. */
  readonly uncovered: number;
  readonly firstBadIndex?: number;
  readonly firstBadCheckpoint?: number;
  /** In order of discovery; `ok` is true only when empty. */
  readonly problems: readonly VerifyProblem[];
}

/** Malformed entries reported individually before they are summarised. */
const MAX_MALFORMED_REPORTED = 20;

export async function verifyLog(source: LogSource, key: NoteVerifier): Promise<VerifyResult> {
  const problems: VerifyProblem[] = [];

  // 1. Checkpoints: parse and check signatures.
  const notes = await source.checkpoints();
  const valid: { n: number; cp: SignedCheckpoint }[] = [];
  let origin: string | undefined;
  notes.forEach((note, n) => {
    let cp: SignedCheckpoint;
    try {
      cp = openCheckpoint(note, key);
    } catch (err) {
      if (!(err instanceof NoteError)) throw err;
      const forged = /does not verify|no signature/.test(err.message);
      problems.push({
        kind: forged ? 'checkpoint-signature' : 'checkpoint-malformed',
        checkpoint: n,
        message: forged
          ? `checkpoint #${n}: forged or foreign — ${err.message}`
          : `checkpoint #${n}: malformed — ${err.message}`,
      });
      return;
    }
    if (origin === undefined) origin = cp.origin;
    else if (cp.origin !== origin) {
      problems.push({ kind: 'checkpoint-origin', checkpoint: n, message: `checkpoint #${n}: origin "${cp.origin}" differs from "${origin}"` });
      return;
    }
    valid.push({ n, cp });
  });
  if (valid.length === 0) problems.push({ kind: 'no-checkpoint', message: 'no checkpoint signed by the audit key: nothing in the log can be vouched for' });

  // 2. Entries: rebuild the tree from the exact bytes, check each is a canonical entry.
  // An export is read to its end (extra lines are tampering too); a live log up to its current size.
  const expected = source.expectedSize ?? (await source.size());
  const end = source.expectedSize !== undefined ? Number.POSITIVE_INFINITY : expected;
  const tree = new MerkleTree({ capacity: expected });
  const malformed: number[] = [];
  for await (const bytes of source.entries(0, end)) {
    const index = tree.append(leafHash(bytes));
    let why: string | undefined;
    try {
      if (!canonicalJson(parseAuditEntry(bytes)).equals(bytes)) why = 'not in canonical form';
    } catch (err) {
      why = err instanceof BrokerError || err instanceof TypeError ? err.message : String(err);
    }
    if (why !== undefined) {
      malformed.push(index);
      if (malformed.length <= MAX_MALFORMED_REPORTED) problems.push({ kind: 'entry-malformed', index, message: `entry ${index}: ${why}` });
    }
  }
  const n = tree.size;
  if (malformed.length > MAX_MALFORMED_REPORTED) {
    problems.push({ kind: 'entry-malformed', index: malformed[0] as number, message: `${malformed.length} malformed entries in all` });
  }
  if (source.expectedSize !== undefined && n !== source.expectedSize) {
    problems.push({
      kind: 'entries-missing',
      index: Math.min(n, source.expectedSize),
      message: `the export's manifest lists ${source.expectedSize} entries but ${n} were found`,
    });
  }

  // 3. Roots: the authentic prefix, then classify every checkpoint that does not match it.
  const matches = (cp: SignedCheckpoint): boolean => cp.size <= n && tree.root(cp.size).equals(cp.rootHash);
  let good: { n: number; cp: SignedCheckpoint } | undefined;
  for (const v of valid) if (matches(v.cp) && (good === undefined || v.cp.size > good.cp.size)) good = v;
  const g = good?.cp.size ?? 0;
  let firstMismatch: { n: number; cp: SignedCheckpoint } | undefined;
  let mismatches = 0;
  for (const v of valid) {
    if (matches(v.cp)) continue;
    if (good !== undefined && v.cp.size <= g) {
      problems.push({
        kind: 'checkpoint-inconsistent',
        checkpoint: v.n,
        message: `checkpoint #${v.n} (size ${v.cp.size}) is inconsistent with checkpoint #${good.n} (size ${g}): a signed fork of the log`,
      });
      continue;
    }
    mismatches++;
    if (firstMismatch === undefined || v.cp.size < firstMismatch.cp.size) firstMismatch = v;
  }
  if (firstMismatch !== undefined) {
    const s = firstMismatch.cp.size;
    const exact = malformed.find((i) => i >= g && i < s);
    const index = exact ?? g;
    const others = mismatches > 1 ? ` (${mismatches - 1} later checkpoint(s) fail too)` : '';
    const why =
      s > n
        ? `checkpoint #${firstMismatch.n} covers ${s} entries but only ${n} are present: entries were removed`
        : `entries [${g}, ${s}) do not hash to the root of checkpoint #${firstMismatch.n} (size ${s}): an entry was changed, removed, inserted or reordered`;
    problems.push({
      kind: 'entries-mismatch',
      index,
      checkpoint: firstMismatch.n,
      message: `${why}; the first bad index is ${exact !== undefined ? index : `${index} (the first entry not proven by a matching checkpoint)`}${others}`,
    });
  }

  const indexes = problems.filter((p) => p.index !== undefined).map((p) => p.index as number);
  const cps = problems.filter((p) => p.checkpoint !== undefined && p.kind !== 'entries-mismatch').map((p) => p.checkpoint as number);
  return {
    ok: problems.length === 0,
    entries: n,
    checkpoints: notes.length,
    ...(origin !== undefined ? { origin } : {}),
    rootHash: tree.root().toString('base64'),
    verifiedSize: g,
    uncovered: Math.max(0, n - g),
    ...(indexes.length > 0 ? { firstBadIndex: Math.min(...indexes) } : {}),
    ...(cps.length > 0 ? { firstBadCheckpoint: Math.min(...cps) } : {}),
    problems,
  };
}
