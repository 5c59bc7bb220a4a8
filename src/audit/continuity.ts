/**
 * Is the store's audit log still the log this replica knows? After Redis comes back (a restart, a
 * failover) it may hold less than before (data lost: `--save ""`, `appendfsync everysec`, an
 * unreplicated failover) or something else (restored from another backup). Appending to such a log
 * would hand out receipts for a history the store does not hold, so before the next append the
 * replica checks that the store's log is a continuation of what it knows: at least as long, and an
 * RFC 9162 consistency proof from the known (size, root) to the store's tree holds.
 */
import { MerkleTree, verifyConsistency } from './merkle.js';

/** What a replica knows of the log: a size and the root at that size (its tree or a signed checkpoint). */
export interface KnownLog {
  readonly size: number;
  readonly rootHash: Buffer;
}

/** Leaf hashes (SHA-256(0x00 ‖ entry)) of the store's entries [start, end). */
export type LeafReader = (start: number, end: number) => Promise<Buffer[]>;

export type Continuation =
  | { readonly ok: true; readonly storeSize: number }
  | { readonly ok: false; readonly storeSize: number; readonly reason: string };

/** Entries read per store call while checking, and by AuditLog while rebuilding or catching up. */
export const READ_BATCH = 16_384;

/**
 * Checks the store's log (`storeSize` entries, read through `read`) against `known`. A store that
 * cannot be read rejects (the caller stays unavailable and tries again later); a store that can be
 * read but does not continue the known log resolves `{ ok: false, reason }`.
 */
export async function checkContinuation(known: KnownLog, storeSize: number, read: LeafReader): Promise<Continuation> {
  if (!Number.isSafeInteger(storeSize) || storeSize < 0) {
    return { ok: false, storeSize, reason: `the store reports an invalid audit size ${String(storeSize)}` };
  }
  if (storeSize < known.size) {
    return { ok: false, storeSize, reason: `the store holds ${storeSize} audit entries, fewer than the ${known.size} this replica knows` };
  }
  const tree = new MerkleTree({ capacity: storeSize + 1 });
  for (let start = 0; start < storeSize; start += READ_BATCH) {
    const end = Math.min(storeSize, start + READ_BATCH);
    const got = await read(start, end);
    if (got.length !== end - start) {
      return { ok: false, storeSize, reason: `the store returned ${got.length} audit entries for [${start}, ${end})` };
    }
    for (const h of got) tree.append(h);
  }
  const proof = tree.consistencyProof(known.size, storeSize);
  if (!verifyConsistency(known.size, storeSize, known.rootHash, tree.root(storeSize), proof)) {
    return {
      ok: false,
      storeSize,
      reason: `the store's audit log (${storeSize} entries) is not a continuation of the log this replica knows (size ${known.size}): entries were changed`,
    };
  }
  return { ok: true, storeSize };
}
