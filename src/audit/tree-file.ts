/**
 * Merkle tree nodes kept in an append-only file instead of memory (`<dir>/audit.tree`), so a broker
 * with 10^7 audit entries neither holds ~640 MB of hashes nor rehashes every entry on restart.
 *
 * File format: 8-byte header "TsMt" + u32 BE version 1, then every perfect-subtree hash of the tree,
 * 32 bytes each, in post-order: leaf 0, leaf 1, their parent, leaf 2, leaf 3, their parent, the parent
 * of those two, ... That is the order MerkleTree.append produces them in, so the file only ever
 * grows at its end, and a tree of n leaves is exactly the first 2n - popcount(n) nodes. The node for
 * the aligned 2^L-leaf subtree i is at position 2(m-1) - popcount(m-1) + L, m = (i+1)·2^L.
 *
 * Memory: nodes at level LOW_LEVELS (256-leaf subtrees) and above are cached once read or written
 * (~2.6 MB at 10^7 leaves); the nodes of the current 256-leaf block and of the previous one (with the
 * parents they completed) stay in a buffer, written or not. Everything else is read with a positioned
 * read when asked for (old inclusion proofs, old leaf hashes). The receipt path touches only those two
 * blocks and the cached upper levels, so it never reads the disk: under load a receipt is often for an
 * entry of the previous block, proven at a size the next block has already reached.
 *
 * Durability: writes go to the page cache as each 256-leaf block starts; `sync()` makes them
 * durable. Nothing here is trusted on its own: the store opens the file only up to a snapshot it
 * checks (store/embedded.ts, docs/audit.md "On-disk format"), and replays entries after it.
 */
import { closeSync, fdatasync, fstatSync, ftruncateSync, openSync, readSync, writeSync, constants } from 'node:fs';
import { promisify } from 'node:util';
import { HASH_SIZE, type MerkleNodes } from './merkle.js';

const fdatasyncAsync = promisify(fdatasync);

export const TREE_FILE_HEADER = Buffer.from([0x54, 0x73, 0x4d, 0x74, 0, 0, 0, 1]);
const HDR = TREE_FILE_HEADER.length;
/** Levels below this are read from the file; this level and above are cached in memory. */
export const LOW_LEVELS = 8;
const BLOCK = 2 ** LOW_LEVELS;

const TWO_32 = 2 ** 32;

function popcount32(x: number): number {
  let v = x >>> 0;
  v -= (v >>> 1) & 0x55555555;
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

function popcount(x: number): number {
  return popcount32(x % TWO_32) + popcount32(Math.floor(x / TWO_32));
}

/** Nodes in a tree of n leaves (all perfect subtrees, post-order): 2n - popcount(n). */
export function nodesForLeaves(n: number): number {
  return 2 * n - popcount(n);
}

/** Post-order position of the node of the aligned 2^level-leaf subtree `index`. */
export function postOrderPosition(level: number, index: number): number {
  const m = (index + 1) * 2 ** level;
  return 2 * (m - 1) - popcount(m - 1) + level;
}

interface LevelCache {
  buf: Buffer;
  have: Uint8Array;
}

export class TreeFile implements MerkleNodes {
  #fd: number;
  /** Nodes on file / appended in all. */
  #written: number;
  #total: number;
  #leaves: number;
  /** Nodes [#memStart, #total) in memory: the previous and the current block; those from #written not yet on file. */
  #memStart: number;
  #recent = Buffer.alloc(HASH_SIZE * 2 ** (LOW_LEVELS + 2));
  readonly #upper: LevelCache[] = [];
  /** Positioned reads served from the file (stats / tests). */
  diskReads = 0;

  private constructor(
    readonly filePath: string,
    fd: number,
    leaves: number,
  ) {
    this.#fd = fd;
    this.#leaves = leaves;
    this.#memStart = this.#written = this.#total = nodesForLeaves(leaves);
  }

  /**
   * Opens (creating if missing, mode 0600) the file holding at least `leaves` leaves' nodes and cuts it
   * to exactly those. Throws if the file is not a tree file or holds fewer nodes; the caller then
   * starts again from `leaves` = 0.
   */
  static open(filePath: string, leaves: number): TreeFile {
    const fd = openSync(filePath, constants.O_RDWR | constants.O_CREAT, 0o600);
    try {
      const size = fstatSync(fd).size;
      const want = HDR + nodesForLeaves(leaves) * HASH_SIZE;
      if (size < HDR || leaves === 0) {
        ftruncateSync(fd, 0);
        writeSync(fd, TREE_FILE_HEADER, 0, HDR, 0);
        if (leaves === 0) return new TreeFile(filePath, fd, 0);
      }
      const head = Buffer.alloc(HDR);
      readFullySync(fd, head, 0);
      if (!head.equals(TREE_FILE_HEADER)) throw new Error(`${filePath}: not a Tessera tree file of format 1`);
      if (size < want) throw new Error(`${filePath}: holds ${size} bytes, fewer than the ${want} of ${leaves} leaves`);
      if (size > want) ftruncateSync(fd, want);
      return new TreeFile(filePath, fd, leaves);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /** Leaves whose nodes this file holds (written or pending). */
  get leaves(): number {
    return this.#leaves;
  }

  node(level: number, index: number): Buffer {
    const pos = postOrderPosition(level, index);
    if (!Number.isSafeInteger(pos) || pos >= this.#total || index < 0) throw new Error(`merkle node ${level}/${index} missing`);
    if (level >= LOW_LEVELS) {
      const c = this.#cache(level, index);
      const off = index * HASH_SIZE;
      if (c.have[index] !== 1) {
        this.#read(pos, c.buf, off);
        c.have[index] = 1;
      }
      return c.buf.subarray(off, off + HASH_SIZE);
    }
    if (pos >= this.#memStart) {
      const off = (pos - this.#memStart) * HASH_SIZE;
      return Buffer.from(this.#recent.subarray(off, off + HASH_SIZE));
    }
    const out = Buffer.allocUnsafe(HASH_SIZE);
    this.#read(pos, out, 0);
    return out;
  }

  put(level: number, index: number, value: Uint8Array): void {
    const pos = postOrderPosition(level, index);
    if (pos !== this.#total || value.length !== HASH_SIZE) throw new Error(`tree file: node ${level}/${index} appended out of order`);
    // A new 256-leaf block starts: hand the one before it to the page cache, and keep only it and the
    // new one in memory (not dropped when it completes: receipts for its last leaves still need it).
    if (level === 0 && index % BLOCK === 0) {
      this.#flush();
      if (index >= BLOCK) this.#keepFrom(postOrderPosition(0, index - BLOCK));
    }
    const off = (pos - this.#memStart) * HASH_SIZE;
    if (off + HASH_SIZE > this.#recent.length) {
      const grown = Buffer.alloc(this.#recent.length * 2);
      this.#recent.copy(grown, 0, 0, off);
      this.#recent = grown;
    }
    this.#recent.set(value, off);
    this.#total++;
    if (level === 0) this.#leaves++;
    if (level >= LOW_LEVELS) {
      const c = this.#cache(level, index);
      c.buf.set(value, index * HASH_SIZE);
      c.have[index] = 1;
    }
  }

  /** Writes pending nodes and fdatasyncs: every node appended so far is durable when this resolves. */
  async sync(): Promise<void> {
    this.#flush();
    await fdatasyncAsync(this.#fd);
  }

  close(): void {
    if (this.#fd < 0) return;
    try {
      this.#flush();
    } finally {
      closeSync(this.#fd);
      this.#fd = -1;
    }
  }

  #flush(): void {
    const n = this.#total - this.#written;
    if (n === 0) return;
    const bytes = n * HASH_SIZE;
    const from = (this.#written - this.#memStart) * HASH_SIZE;
    let done = 0;
    while (done < bytes) {
      done += writeSync(this.#fd, this.#recent, from + done, bytes - done, HDR + this.#written * HASH_SIZE + done);
    }
    this.#written = this.#total;
  }

  /** Drops the in-memory nodes before position `start` (all of them written already). */
  #keepFrom(start: number): void {
    if (start <= this.#memStart) return;
    if (start > this.#written) throw new Error('tree file: dropping nodes that are not written');
    this.#recent.copyWithin(0, (start - this.#memStart) * HASH_SIZE, (this.#total - this.#memStart) * HASH_SIZE);
    this.#memStart = start;
  }

  #read(pos: number, into: Buffer, at: number): void {
    this.diskReads++;
    readFullySync(this.#fd, into.subarray(at, at + HASH_SIZE), HDR + pos * HASH_SIZE);
  }

  #cache(level: number, index: number): LevelCache {
    const k = level - LOW_LEVELS;
    let c = this.#upper[k];
    if (!c || index >= c.have.length) {
      const n = Math.max(64, (c?.have.length ?? 0) * 2, index + 1);
      const grown: LevelCache = { buf: Buffer.alloc(n * HASH_SIZE), have: new Uint8Array(n) };
      if (c) {
        c.buf.copy(grown.buf);
        grown.have.set(c.have);
      }
      this.#upper[k] = c = grown;
    }
    return c;
  }
}

function readFullySync(fd: number, into: Buffer, position: number): void {
  let got = 0;
  while (got < into.length) {
    const n = readSync(fd, into, got, into.length - got, position + got);
    if (n <= 0) throw new Error(`tree file: unexpected end at byte ${position + got}`);
    got += n;
  }
}
