/**
 * `tessera audit recover`: re-seeds an EMPTY store (Redis that lost its data) from an audit export,
 * after the export verifies against its signed checkpoints with the audit public key.
 *
 *   1. the export must verify (verify.ts): every checkpoint signed by the key and a prefix of the
 *      exported entries; entries after the newest checkpoint are not restored (no signature covers
 *      them, and no receipt can have named them);
 *   2. the store must hold no audit entries and no checkpoints (never merge two histories);
 *   3. the entries [0, N) and every checkpoint are appended in order, then read back: the store's root
 *      at N must be the newest checkpoint's root;
 *   4. one 'admin' entry (action 'audit-recover') records the recovery in the log itself, so the gap
 *      between the export and the loss is visible to every later verifier.
 *
 * Replicas that found the loss stay failed closed (audit_history_lost) until they are restarted: on
 * start each one rebuilds its tree from the recovered store and checks it against the newest stored
 * checkpoint (checkpointer.ts), then signs a checkpoint covering the recovery entry.
 */
import { randomUUID } from 'node:crypto';
import { BrokerError } from '../errors.js';
import type { Store } from '../store/store.js';
import { checkContinuation } from './continuity.js';
import { canonicalJson } from './entry.js';
import { MerkleTree, leafHash } from './merkle.js';
import { type NoteVerifier, parseCheckpoint, parseNote } from './note.js';
import type { LogSource } from './source.js';
import { verifyLog } from './verify.js';

export class RecoverError extends BrokerError {
  constructor(message: string) {
    super('bad_request', message);
    this.name = 'RecoverError';
  }
}

export interface RecoverResult {
  /** Entries restored: [0, restored), all covered by a signed checkpoint. */
  readonly restored: number;
  readonly checkpoints: number;
  /** Exported entries after the newest checkpoint, not restored. */
  readonly skipped: number;
  /** Base64 root of the restored entries (= the newest checkpoint's root). */
  readonly rootHash: string;
  /** Index of the 'admin' entry recording the recovery. */
  readonly recordIndex: number;
}

/** Entries per append (the Redis store takes at most 1024 per call). */
const BATCH = 1024;

export async function recoverLog(
  source: LogSource,
  key: NoteVerifier,
  store: Store,
  opts: { readonly from: string; readonly now: () => number },
): Promise<RecoverResult> {
  const verified = await verifyLog(source, key);
  if (!verified.ok) {
    throw new RecoverError(`the export does not verify, nothing restored: ${verified.problems.map((p) => p.message).join('; ')}`);
  }
  const notes = await source.checkpoints();
  const last = notes[notes.length - 1];
  if (last === undefined || verified.verifiedSize === 0) throw new RecoverError('the export has no signed checkpoint covering any entry: nothing can be restored');
  const newest = parseCheckpoint(parseNote(last).text);
  const size = verified.verifiedSize;
  if (newest.size !== size) throw new RecoverError(`the newest checkpoint (size ${newest.size}) is not the largest one (${size})`);

  const [have, stored] = await Promise.all([store.auditSize(), store.listCheckpoints()]);
  if (have !== 0 || stored.length !== 0) {
    throw new RecoverError(
      `the store is not empty (${have} audit entries, ${stored.length} checkpoints): recover only re-seeds an empty store. ` +
        'Export what it holds first, then remove its audit and checkpoint keys (docs/redis.md, "Data loss")',
    );
  }

  const tree = new MerkleTree({ capacity: size + 1 });
  let batch: Buffer[] = [];
  const flush = async (): Promise<void> => {
    if (batch.length === 0) return;
    const first = await store.appendAuditEntries(batch);
    // Someone else appended meanwhile (a replica restarted too early): stop, never interleave.
    if (first !== tree.size - batch.length) throw new RecoverError(`the store put restored entry ${tree.size - batch.length} at index ${first}: another writer is active; stop every replica and start again`);
    batch = [];
  };
  for await (const entry of source.entries(0, size)) {
    tree.append(leafHash(entry));
    batch.push(entry);
    if (batch.length === BATCH) await flush();
  }
  await flush();
  if (tree.size !== size || !tree.root(size).equals(newest.rootHash)) throw new RecoverError('the restored entries do not hash to the newest checkpoint');
  for (const note of notes) await store.appendCheckpoint(note);

  // Read back what the store now holds: it must be exactly the verified log.
  const readBack = await checkContinuation({ size, rootHash: newest.rootHash }, size, async (start, end) =>
    (await store.readAuditEntries(start, end)).map((e) => leafHash(e)),
  );
  if (!readBack.ok) throw new RecoverError('the store does not hold the restored log after writing it; do not start replicas on it');

  const skipped = verified.entries - size;
  const recordIndex = await store.appendAuditEntries([
    canonicalJson({
      ts: opts.now(),
      type: 'admin',
      decision: 'allow',
      actor: null,
      subject: null,
      action: 'audit-recover',
      reason:
        `store re-seeded from export ${opts.from} after it lost the audit history: ${size} entries and ${notes.length} checkpoints ` +
        `restored (root ${newest.rootHash.toString('base64')})${skipped > 0 ? `, ${skipped} unsigned newer entries not restored` : ''}; ` +
        'entries written after the export was taken are lost',
      requestId: randomUUID(),
      replica: 'tessera-audit-recover',
    }),
  ]);
  if (recordIndex !== size) throw new RecoverError(`the recovery record landed at index ${recordIndex}, expected ${size}: another writer is active`);
  return { restored: size, checkpoints: notes.length, skipped, rootHash: newest.rootHash.toString('base64'), recordIndex };
}
