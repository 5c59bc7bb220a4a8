/**
 * RFC 6962 §2.1 / RFC 9162 §2.1 Merkle tree hashing, proofs and proof verification (SHA-256).
 *
 *   leaf hash   = SHA-256(0x00 ‖ entry)
 *   node hash   = SHA-256(0x01 ‖ left ‖ right)
 *   empty root  = SHA-256("")
 *
 * `MerkleTree` keeps every perfect subtree hash (level k holds the hashes of the aligned 2^k-leaf
 * subtrees) in a `MerkleNodes` storage: by default `MemoryNodes`, one growable Buffer per level, 32
 * bytes per node (the embedded store uses audit/tree-file.ts: the same nodes in a file). That is ~64 bytes per leaf in
 * total and lets root/inclusion/consistency proofs for ANY historical size be answered with
 * O(log n) stored-node lookups plus at most O(log n) hashes for the ragged right edge.
 *
 * Sizes and indexes are JS numbers (exact up to 2^53); no 32-bit bit operations are used on them.
 */
import { hash as oneShotHash } from 'node:crypto';
import { BrokerError } from '../errors.js';

export const HASH_SIZE = 32;

const EMPTY_ROOT = oneShotHash('sha256', Buffer.alloc(0), 'buffer');

/** Root of the empty tree, SHA-256(""). A fresh copy each call (Buffers are mutable). */
export function emptyRoot(): Buffer {
  return Buffer.from(EMPTY_ROOT);
}

// Reused scratch buffers: hashing is synchronous, so one per module is safe and avoids an
// allocation + concat per hash on the hot append / rebuild path.
let leafScratch = Buffer.alloc(1024);
const nodeScratch = Buffer.alloc(1 + 2 * HASH_SIZE);
nodeScratch[0] = 0x01;

/** RFC 6962 leaf hash: SHA-256(0x00 ‖ entry). */
export function leafHash(entry: Uint8Array): Buffer {
  const need = entry.length + 1;
  if (need > leafScratch.length) {
    leafScratch = Buffer.alloc(Math.max(need, leafScratch.length * 2));
  }
  leafScratch[0] = 0x00;
  leafScratch.set(entry, 1);
  return oneShotHash('sha256', leafScratch.subarray(0, need), 'buffer');
}

/** RFC 6962 interior node hash: SHA-256(0x01 ‖ left ‖ right). Both inputs must be 32 bytes. */
export function nodeHash(left: Uint8Array, right: Uint8Array): Buffer {
  if (left.length !== HASH_SIZE || right.length !== HASH_SIZE) {
    throw new BrokerError('bad_request', 'node hash inputs must be 32 bytes');
  }
  nodeScratch.set(left, 1);
  nodeScratch.set(right, 1 + HASH_SIZE);
  return oneShotHash('sha256', nodeScratch, 'buffer');
}

const TWO_32 = 2 ** 32;

/** A perfect subtree's root and height (2^level leaves). */
interface Subtree {
  readonly level: number;
  readonly hash: Buffer;
}

/**
 * Folds perfect subtrees (largest first) right to left into their root: MTH's shape. One part is
 * returned as it is (callers holding a view of stored nodes copy it).
 */
function foldRight(parts: readonly Subtree[]): Buffer {
  let acc = (parts[parts.length - 1] as Subtree).hash;
  for (let i = parts.length - 2; i >= 0; i--) acc = nodeHash((parts[i] as Subtree).hash, acc);
  return acc;
}

/** Number of bits needed to represent x (x ≥ 0, safe integer). bitLength(0) = 0. */
function bitLength(x: number): number {
  if (x < TWO_32) return 32 - Math.clz32(x);
  return 32 + bitLength(Math.floor(x / TWO_32));
}

/** Largest power of two strictly less than n (n ≥ 2): the RFC's split point k. */
function splitPoint(n: number): number {
  return 2 ** (bitLength(n - 1) - 1);
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && 2 ** (bitLength(n) - 1) === n;
}

function isSafeNonNegInt(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

const badArg = (message: string): BrokerError => new BrokerError('bad_request', message);

const MIN_LEVEL_NODES = 64;

/**
 * Where a tree keeps its perfect-subtree hashes. `put` is called in post-order (each leaf, then the
 * parents it completes, lowest first): exactly the order a file can append them in (audit/tree-file.ts).
 */
export interface MerkleNodes {
  /** Hash of the aligned 2^level-leaf subtree `index` (a view or a copy; callers never write to it). */
  node(level: number, index: number): Buffer;
  put(level: number, index: number, value: Uint8Array): void;
}

/** Every node in memory: one growable Buffer per level, 32 bytes per node (~64 bytes per leaf). */
export class MemoryNodes implements MerkleNodes {
  /** levels[k] holds floor(size / 2^k) hashes, 32 bytes each, packed. Buffers grow by doubling. */
  readonly #levels: Buffer[] = [];

  constructor(capacity = 0) {
    for (let n = capacity; n >= 1; n = Math.floor(n / 2)) {
      this.#levels.push(Buffer.alloc(Math.max(n, MIN_LEVEL_NODES) * HASH_SIZE));
    }
  }

  node(level: number, index: number): Buffer {
    const buf = this.#levels[level];
    const off = index * HASH_SIZE;
    if (!buf || off + HASH_SIZE > buf.length) throw new Error(`merkle node ${level}/${index} missing`);
    return buf.subarray(off, off + HASH_SIZE);
  }

  put(level: number, index: number, value: Uint8Array): void {
    let buf = this.#levels[level];
    const off = index * HASH_SIZE;
    if (!buf || off + HASH_SIZE > buf.length) {
      const grown = Buffer.alloc(Math.max(MIN_LEVEL_NODES * HASH_SIZE, (buf?.length ?? 0) * 2, off + HASH_SIZE));
      if (buf) buf.copy(grown, 0, 0, buf.length);
      this.#levels[level] = grown;
      buf = grown;
    }
    buf.set(value, off);
  }
}

export interface MerkleTreeOptions {
  /** Expected number of leaves; pre-sizes the level buffers so a rebuild does not re-grow them. */
  capacity?: number;
  /**
   * Node storage holding the first `size` leaves' nodes already (a persisted tree reopened);
   * default: a fresh MemoryNodes.
   */
  nodes?: MerkleNodes;
  size?: number;
}

export class MerkleTree {
  readonly #nodes: MerkleNodes;
  #size = 0;
  #rootCache: Buffer | null = null;

  constructor(opts: MerkleTreeOptions = {}) {
    const cap = opts.capacity ?? 0;
    if (!isSafeNonNegInt(cap)) throw badArg('capacity must be a non-negative integer');
    const size = opts.size ?? 0;
    if (!isSafeNonNegInt(size) || (size > 0 && opts.nodes === undefined)) throw badArg('size needs nodes holding that many leaves');
    this.#nodes = opts.nodes ?? new MemoryNodes(cap);
    this.#size = size;
  }

  get size(): number {
    return this.#size;
  }

  /** Appends one leaf hash (already SHA-256(0x00‖entry)); returns its index. O(log n) worst, O(1) amortised. */
  append(leaf: Uint8Array): number {
    if (leaf.length !== HASH_SIZE) throw badArg('leaf hash must be 32 bytes');
    const index = this.#size;
    this.#nodes.put(0, index, leaf);
    // Every time the new node is a right child, its parent perfect subtree just completed.
    let level = 0;
    let i = index;
    while (i % 2 === 1) {
      nodeScratch.set(this.#nodes.node(level, i - 1), 1);
      nodeScratch.set(this.#nodes.node(level, i), 1 + HASH_SIZE);
      const parent = oneShotHash('sha256', nodeScratch, 'buffer');
      i = (i - 1) / 2;
      level++;
      this.#nodes.put(level, i, parent);
    }
    this.#size = index + 1;
    this.#rootCache = null;
    return index;
  }

  /**
   * The root the tree would have after appending `leaf`, without appending it: the perfect subtrees
   * of [0, size) with the leaf merged into the trailing ones of equal height (binary carry), folded
   * right to left. O(log n) hashes; lets a checkpoint be signed while the entry is still being written.
   */
  rootWith(leaf: Uint8Array): Buffer {
    if (leaf.length !== HASH_SIZE) throw badArg('leaf hash must be 32 bytes');
    const peaks = this.#perfectSubtrees(0, this.#size);
    let carry: Subtree = { level: 0, hash: Buffer.from(leaf) };
    for (let last = peaks.at(-1); last !== undefined && last.level === carry.level; last = peaks.at(-1)) {
      peaks.pop();
      carry = { level: carry.level + 1, hash: nodeHash(last.hash, carry.hash) };
    }
    peaks.push(carry);
    return foldRight(peaks);
  }

  /** The stored leaf hash at `index` (a copy). */
  leaf(index: number): Buffer {
    this.#checkIndex(index, this.#size);
    return Buffer.from(this.#node(0, index));
  }

  /** Root hash of the tree's first `size` leaves (any historical size). */
  root(size: number = this.#size): Buffer {
    this.#checkSize(size);
    if (size === this.#size && this.#rootCache) return Buffer.from(this.#rootCache);
    const r = size === 0 ? emptyRoot() : this.#rangeHash(0, size);
    if (size === this.#size) this.#rootCache = Buffer.from(r);
    return r;
  }

  /** RFC 9162 §2.1.3.1 PATH(index, D[0:size]), ordered from the leaf's sibling up to the root's child. */
  inclusionProof(index: number, size: number = this.#size): Buffer[] {
    this.#checkSize(size);
    this.#checkIndex(index, size);
    const topDown: Buffer[] = [];
    let lo = 0;
    let hi = size;
    while (hi - lo > 1) {
      const k = splitPoint(hi - lo);
      if (index < lo + k) {
        topDown.push(this.#rangeHash(lo + k, hi));
        hi = lo + k;
      } else {
        topDown.push(this.#rangeHash(lo, lo + k));
        lo += k;
      }
    }
    return topDown.reverse();
  }

  /** RFC 9162 §2.1.4.1 PROOF(from, D[0:to]). Empty when from is 0 or from == to. */
  consistencyProof(from: number, to: number = this.#size): Buffer[] {
    this.#checkSize(to);
    if (!isSafeNonNegInt(from) || from > to) {
      throw badArg(`consistency proof needs 0 <= from <= to (from=${String(from)}, to=${to})`);
    }
    if (from === 0 || from === to) return [];
    // Iterative SUBPROOF(m, D[lo:hi], b) with m = from - lo.
    const topDown: Buffer[] = [];
    let lo = 0;
    let hi = to;
    let haveRoot = true;
    for (;;) {
      if (from === hi) {
        if (!haveRoot) topDown.push(this.#rangeHash(lo, hi));
        break;
      }
      const k = splitPoint(hi - lo);
      if (from - lo <= k) {
        topDown.push(this.#rangeHash(lo + k, hi));
        hi = lo + k;
      } else {
        topDown.push(this.#rangeHash(lo, lo + k));
        lo += k;
        haveRoot = false;
      }
    }
    return topDown.reverse();
  }

  /**
   * MTH(D[lo:hi]) for an RFC subtree (lo aligned to a power of two ≥ hi - lo). Splits the range into
   * perfect subtrees, largest first (exactly the RFC's left-heavy shape), and folds them right to left.
   */
  #rangeHash(lo: number, hi: number): Buffer {
    const parts = this.#perfectSubtrees(lo, hi);
    if (parts.length === 0) throw new Error('rangeHash on empty range');
    return parts.length === 1 ? Buffer.from((parts[0] as Subtree).hash) : foldRight(parts);
  }

  /** The stored perfect subtrees that make up [lo, hi), largest first. */
  #perfectSubtrees(lo: number, hi: number): Subtree[] {
    const parts: Subtree[] = [];
    let pos = lo;
    while (pos < hi) {
      const level = bitLength(hi - pos) - 1;
      const width = 2 ** level;
      parts.push({ level, hash: this.#node(level, pos / width) });
      pos += width;
    }
    return parts;
  }

  /** Stored node `index` at `level` (a view or a copy; never written to). */
  #node(level: number, index: number): Buffer {
    return this.#nodes.node(level, index);
  }

  #checkSize(size: number): void {
    if (!isSafeNonNegInt(size) || size > this.#size) {
      throw badArg(`tree size must be an integer in [0, ${this.#size}] (got ${String(size)})`);
    }
  }

  #checkIndex(index: number, size: number): void {
    if (!isSafeNonNegInt(index) || index >= size) {
      throw badArg(`leaf index must be an integer in [0, ${size}) (got ${String(index)})`);
    }
  }
}

/**
 * Reference MTH (RFC 6962 §2.1) over leaf hashes, straight from the recursive definition.
 * O(n) hashes; meant for tests and independent verifiers, not the hot path.
 */
export function rootFromLeaves(hashes: readonly Uint8Array[]): Buffer {
  for (const h of hashes) if (h.length !== HASH_SIZE) throw badArg('leaf hashes must be 32 bytes');
  const mth = (lo: number, hi: number): Buffer => {
    const n = hi - lo;
    if (n === 1) return Buffer.from(hashes[lo] as Uint8Array);
    const k = splitPoint(n);
    return nodeHash(mth(lo, lo + k), mth(lo + k, hi));
  };
  return hashes.length === 0 ? emptyRoot() : mth(0, hashes.length);
}

function wellFormed(hashes: readonly Uint8Array[]): boolean {
  return Array.isArray(hashes) && hashes.every((h) => h instanceof Uint8Array && h.length === HASH_SIZE);
}

/**
 * RFC 9162 §2.1.3.2, step for step. Total: any malformed input (bad sizes, wrong hash lengths)
 * yields false rather than throwing, so it is safe to call on untrusted proofs.
 */
export function verifyInclusion(
  leaf: Uint8Array,
  index: number,
  size: number,
  proof: readonly Uint8Array[],
  root: Uint8Array,
): boolean {
  if (!isSafeNonNegInt(index) || !isSafeNonNegInt(size) || index >= size) return false;
  if (!wellFormed([leaf, root]) || !wellFormed(proof)) return false;
  let fn = index;
  let sn = size - 1;
  let r: Uint8Array = leaf;
  for (const p of proof) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 && equalBytes(r, root);
}

/**
 * RFC 9162 §2.1.4.2, step for step, for 0 < from < to. Edge cases outside the RFC algorithm:
 * from == to needs an empty proof and equal roots; from == 0 needs an empty proof and
 * fromRoot == SHA-256("") (the empty tree is a prefix of every tree). Total like verifyInclusion.
 */
export function verifyConsistency(
  from: number,
  to: number,
  fromRoot: Uint8Array,
  toRoot: Uint8Array,
  proof: readonly Uint8Array[],
): boolean {
  if (!isSafeNonNegInt(from) || !isSafeNonNegInt(to) || from > to) return false;
  if (!wellFormed([fromRoot, toRoot]) || !wellFormed(proof)) return false;
  if (from === to) return proof.length === 0 && equalBytes(fromRoot, toRoot);
  if (from === 0) return proof.length === 0 && equalBytes(fromRoot, EMPTY_ROOT);
  // 1. An empty path cannot prove anything for 0 < from < to.
  if (proof.length === 0) return false;
  // 2. If from is a power of two its root is a node of the new tree: prepend it.
  const path: readonly Uint8Array[] = isPowerOfTwo(from) ? [fromRoot, ...proof] : proof;
  // 3.
  let fn = from - 1;
  let sn = to - 1;
  // 4.
  while (fn % 2 === 1) {
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  // 5.
  let fr: Uint8Array = path[0] as Uint8Array;
  let sr: Uint8Array = fr;
  // 6.
  for (let i = 1; i < path.length; i++) {
    const c = path[i] as Uint8Array;
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  // 7.
  return sn === 0 && equalBytes(fr, fromRoot) && equalBytes(sr, toRoot);
}
