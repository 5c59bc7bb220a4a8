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
 * entries in [g, s) were changed, removed or reordered (s = the smallest mismatching size). When s = g + 1
 * (a checkpoint per issuance) that names the entry. When entries share a checkpoint, checkpoints alone
 * only localize the damage to the range [g, s); the verifier then compares entry by entry with a
 * reference list of leaf hashes (the log's public GET /v1/audit/leaves), which it trusts only after
 * the proven prefix [0, g) followed by the reference's [g, s) hashes to the signed root of size s.
 * Without such a reference (an export holds no per-entry hashes of its own) it says it is a range.
 *
 * Hashes-only mode (a remote log read without the auditor role): steps 1 and 3 on the log's public
 * leaf hashes instead of entries. It proves the log's leaves are consistent with every signed
 * checkpoint, but not what the entries say: nothing is read to check.
 */
import { BrokerError } from '../errors.js';
import { canonicalJson, parseAuditEntry } from './entry.js';
import { type Cosignature, type CosignerKey, verifyCosignatures } from './cosignature.js';
import { MerkleTree, leafHash } from './merkle.js';
import { type NoteVerifier, NoteError, openCheckpoint, type SignedCheckpoint } from './note.js';
import type { LeafHashSource, LogSource } from './source.js';

export type VerifyProblemKind =
  | 'checkpoint-malformed'
  | 'checkpoint-signature'
  | 'checkpoint-origin'
  | 'checkpoint-inconsistent'
  | 'entry-malformed'
  | 'entries-mismatch'
  | 'entries-missing'
  | 'no-checkpoint'
  /** No cosigned checkpoint consistent with the log reaches the witness quorum. */
  | 'witness-quorum'
  /** A checkpoint witnesses cosigned does not match the log: witnessed entries are gone or changed. */
  | 'cosigned-inconsistent'
  | 'cosigned-malformed';

export interface VerifyProblem {
  readonly kind: VerifyProblemKind;
  /** First bad entry index, for entry problems. */
  readonly index?: number;
  /** Checkpoint number (0-based, in stored order), for checkpoint problems. */
  readonly checkpoint?: number;
  /** For an entries-mismatch that could not be narrowed to one entry: the range [from, to). */
  readonly range?: readonly [number, number];
  readonly message: string;
}

export interface VerifyOptions {
  /**
   * Per-entry leaf hashes from elsewhere (the log's public leaves), to name the exact first bad index
   * when entries share a checkpoint. Trusted only once they hash to a signed root.
   */
  readonly reference?: LeafHashSource & { readonly name: string };
  /** Read the source's leaf hashes instead of its entries (a log read without the auditor role). */
  readonly hashesOnly?: boolean;
  /**
   * Cosigned checkpoints to check (C2SP tlog-cosignature): each must carry the log's signature, match
   * the log, and at least one must be cosigned by `quorum` of `keys`.
   */
  readonly witnesses?: { readonly keys: readonly CosignerKey[]; readonly quorum: number; readonly notes: readonly string[] };
}

export interface WitnessedCheckpoint {
  readonly size: number;
  readonly cosigners: readonly Cosignature[];
  /** Its root is the log's root at its size. */
  readonly consistent: boolean;
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
  /**
   * Set when the damage can only be localized to entries [from, to) (entries share a checkpoint and no
   * trusted per-entry reference was available); firstBadIndex is then `from`, the first unproven entry.
   */
  readonly firstBadRange?: readonly [number, number];
  /** 'entries': every entry read and re-hashed; 'hashes': only the log's leaf hashes (contents unchecked). */
  readonly mode: 'entries' | 'hashes';
  readonly firstBadCheckpoint?: number;
  /** With witness keys: every cosigned checkpoint checked, and the largest size a quorum vouches for. */
  readonly witnessed?: { readonly quorum: number; readonly checkpoints: readonly WitnessedCheckpoint[]; readonly witnessedSize: number };
  /** In order of discovery; `ok` is true only when empty. */
  readonly problems: readonly VerifyProblem[];
}

/** Malformed entries reported individually before they are summarised. */
const MAX_MALFORMED_REPORTED = 20;

export async function verifyLog(source: LogSource, key: NoteVerifier, opts: VerifyOptions = {}): Promise<VerifyResult> {
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
  if (opts.hashesOnly === true) {
    if (source.leafHashes === undefined) throw new BrokerError('bad_request', 'this log source serves no leaf hashes');
    for await (const leaf of source.leafHashes(0, end)) tree.append(leaf);
  } else {
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
  let firstBadRange: readonly [number, number] | undefined;
  if (firstMismatch !== undefined) {
    const s = firstMismatch.cp.size;
    const others = mismatches > 1 ? ` (${mismatches - 1} later checkpoint(s) fail too)` : '';
    const why =
      s > n
        ? `checkpoint #${firstMismatch.n} covers ${s} entries but only ${n} are present: entries were removed`
        : `entries [${g}, ${s}) do not hash to the root of checkpoint #${firstMismatch.n} (size ${s}): an entry was changed, removed, inserted or reordered`;
    // The exact index: one unproven entry, else the reference's first differing leaf, else a malformed entry.
    let exact: number | undefined;
    let note = '';
    if (s === g + 1 || (g === n && s > n)) exact = g;
    else if (opts.reference !== undefined) {
      const r = await firstDifference(tree, g, s, firstMismatch.cp, opts.reference);
      if (typeof r === 'number') exact = r;
      else note = `; ${r}`;
    } else {
      note = `; checkpoints alone cannot tell which of these entries is bad: the export holds no per-entry leaf hashes of its own (verify with --reference https://<broker> to compare with the log's public leaf hashes)`;
    }
    exact ??= malformed.find((i) => i >= g && i < s);
    if (exact === undefined) firstBadRange = [g, Math.max(s, g + 1)];
    problems.push({
      kind: 'entries-mismatch',
      index: exact ?? g,
      checkpoint: firstMismatch.n,
      ...(firstBadRange !== undefined ? { range: firstBadRange } : {}),
      message:
        exact !== undefined
          ? `${why}; the first bad index is ${exact}${others}`
          : `${why}; the first bad entry is somewhere in [${g}, ${s})${note}${others}`,
    });
  }

  let witnessed: VerifyResult['witnessed'];
  if (opts.witnesses !== undefined) {
    const w = opts.witnesses;
    const checked: WitnessedCheckpoint[] = [];
    for (const note of w.notes) {
      let cp: SignedCheckpoint;
      let cosigners: Cosignature[];
      try {
        cp = openCheckpoint(note, key);
        cosigners = verifyCosignatures(note, w.keys);
      } catch (err) {
        if (!(err instanceof NoteError)) throw err;
        problems.push({ kind: 'cosigned-malformed', message: `a cosigned checkpoint does not verify: ${err.message}` });
        continue;
      }
      const consistent = matches(cp);
      checked.push({ size: cp.size, cosigners, consistent });
      if (!consistent && cosigners.length > 0) {
        problems.push({
          kind: 'cosigned-inconsistent',
          message: `witnesses (${cosigners.map((c) => c.name).join(', ')}) cosigned size ${cp.size} with another root than this log has${cp.size > n ? ` (the log has only ${n} entries)` : ''}: the log was rolled back or forked after they saw it`,
        });
      }
    }
    const quorate = checked.filter((c) => c.consistent && c.cosigners.length >= w.quorum);
    const witnessedSize = Math.max(0, ...quorate.map((c) => c.size));
    if (quorate.length === 0) {
      problems.push({ kind: 'witness-quorum', message: `no checkpoint consistent with the log is cosigned by ${w.quorum} of the ${w.keys.length} witness key(s)` });
    }
    witnessed = { quorum: w.quorum, checkpoints: checked.sort((a, b) => b.size - a.size), witnessedSize };
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
    // A range only when nothing more exact came before it.
    ...(firstBadRange !== undefined && Math.min(...indexes) === firstBadRange[0] ? { firstBadRange } : {}),
    mode: opts.hashesOnly === true ? 'hashes' : 'entries',
    ...(cps.length > 0 ? { firstBadCheckpoint: Math.min(...cps) } : {}),
    ...(witnessed !== undefined ? { witnessed } : {}),
    problems,
  };
}

/**
 * The first index in [g, s) whose leaf differs from the reference's, once the reference is proven:
 * the authentic leaves [0, g) followed by the reference's [g, s) must hash to the signed root of size s.
 * Returns a sentence saying why not otherwise.
 */
async function firstDifference(
  tree: MerkleTree,
  g: number,
  s: number,
  cp: SignedCheckpoint,
  reference: LeafHashSource & { readonly name: string },
): Promise<number | string> {
  const ref = new MerkleTree({ capacity: s });
  for (let i = 0; i < g; i++) ref.append(tree.leaf(i));
  let first: number | undefined;
  try {
    for await (const h of reference.leafHashes(g, s)) {
      const i = ref.append(h);
      if (first === undefined && (i >= tree.size || !tree.leaf(i).equals(h))) first = i;
    }
  } catch (err) {
    return `the leaf hashes from ${reference.name} could not be read (${(err as Error).message}), so only the range is known`;
  }
  if (ref.size !== s || !ref.root(s).equals(cp.rootHash)) {
    return `the leaf hashes from ${reference.name} do not hash to the root of checkpoint (size ${s}) either, so they cannot name the entry`;
  }
  // Proven reference: the first differing leaf is the first bad entry (n ≤ index means it is missing).
  return first ?? Math.min(tree.size, s);
}
