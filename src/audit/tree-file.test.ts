import { mkdtempSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { MerkleTree, leafHash } from './merkle.js';
import { LOW_LEVELS, TREE_FILE_HEADER, TreeFile, nodesForLeaves, postOrderPosition } from './tree-file.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'tessera-treefile-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let files = 0;

const leaf = (i: number): Buffer => leafHash(Buffer.from(`entry ${i}`));

describe('TreeFile', () => {
  it('numbers nodes in post-order: each leaf, then the parents it completes', () => {
    // leaf0 leaf1 p(0,1) leaf2 leaf3 p(2,3) p(0..3) leaf4
    expect([postOrderPosition(0, 0), postOrderPosition(0, 1), postOrderPosition(1, 0)]).toEqual([0, 1, 2]);
    expect([postOrderPosition(0, 2), postOrderPosition(0, 3), postOrderPosition(1, 1), postOrderPosition(2, 0), postOrderPosition(0, 4)]).toEqual([3, 4, 5, 6, 7]);
    expect([1, 2, 3, 4, 5, 1000].map(nodesForLeaves)).toEqual([1, 3, 4, 7, 8, 2000 - 6]);
    // Beyond 2^32 leaves the arithmetic stays exact.
    expect(nodesForLeaves(2 ** 40 + 3)).toBe(2 * (2 ** 40 + 3) - 3);
  });

  it('proofs served from the file (across reopens) equal the in-memory tree (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 * 2 ** LOW_LEVELS + 50 }),
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 3 }),
        fc.array(fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0, max: 1, noNaN: true })), { minLength: 1, maxLength: 8 }),
        (n, cuts, queries) => {
          const file = path.join(tmp, `t${files++}`);
          const mem = new MerkleTree();
          for (let i = 0; i < n; i++) mem.append(leaf(i));
          // Build the file tree in pieces, closing and reopening at each cut (a restart from a snapshot).
          const stops = [...cuts.map((c) => Math.floor(c * n)).sort((a, b) => a - b), n];
          let tf = TreeFile.open(file, 0);
          let tree = new MerkleTree({ nodes: tf, size: 0 });
          for (const stop of stops) {
            for (let i = tree.size; i < stop; i++) tree.append(leaf(i));
            tf.close();
            tf = TreeFile.open(file, stop);
            tree = new MerkleTree({ nodes: tf, size: stop });
            expect(statSync(file).size).toBe(TREE_FILE_HEADER.length + 32 * nodesForLeaves(stop));
          }
          try {
            expect(tree.root().equals(mem.root())).toBe(true);
            for (const [a, b] of queries) {
              const size = 1 + Math.floor(b * (n - 1));
              const index = Math.floor(a * (size - 1));
              expect(tree.root(size).equals(mem.root(size))).toBe(true);
              expect(tree.leaf(index).equals(mem.leaf(index))).toBe(true);
              expect(tree.inclusionProof(index, size)).toEqual(mem.inclusionProof(index, size));
              expect(tree.consistencyProof(index, size)).toEqual(mem.consistencyProof(index, size));
            }
          } finally {
            tf.close();
            rmSync(file);
          }
        },
      ),
      { numRuns: 40 },
    );
  });

  it('a receipt for the newest leaf reads nothing from disk', () => {
    const file = path.join(tmp, 'hot');
    const tf = TreeFile.open(file, 0);
    const tree = new MerkleTree({ nodes: tf, size: 0 });
    for (let i = 0; i < 5 * 2 ** LOW_LEVELS + 17; i++) tree.append(leaf(i));
    const before = tf.diskReads;
    for (let i = 0; i < 600; i++) {
      const index = tree.append(leaf(10_000 + i));
      tree.root();
      tree.inclusionProof(index, tree.size);
    }
    expect(tf.diskReads).toBe(before);
    tf.close();
  });

  it('a receipt for a leaf of the previous block, at a size the next block has reached, reads nothing from disk', () => {
    // Under load the receipt for entry i is cut at a tree size well past i (a group commit, a signing
    // round covering later entries), so i is often in the block before the newest one.
    const file = path.join(tmp, 'lagging');
    const tf = TreeFile.open(file, 0);
    const tree = new MerkleTree({ nodes: tf, size: 0 });
    const memory = new MerkleTree();
    for (let i = 0; i < 3 * 2 ** LOW_LEVELS - 40; i++) {
      tree.append(leaf(i));
      memory.append(leaf(i));
    }
    const before = tf.diskReads;
    for (let i = 0; i < 2 * 2 ** LOW_LEVELS; i++) {
      tree.append(leaf(20_000 + i));
      memory.append(leaf(20_000 + i));
      if (i % 4 !== 0) continue;
      // Leaves up to 64 behind the newest, proven at the newest size and at one 32 leaves earlier.
      for (const lag of [0, 1, 32, 63]) {
        const index = tree.size - 1 - lag;
        for (const size of [tree.size, Math.max(index + 1, tree.size - 32)]) {
          expect(tree.inclusionProof(index, size)).toEqual(memory.inclusionProof(index, size));
          expect(tree.root(size)).toEqual(memory.root(size));
        }
        expect(tree.leaf(index)).toEqual(memory.leaf(index));
      }
    }
    expect(tf.diskReads).toBe(before);
    // Older leaves are still there, read from the file.
    expect(tree.inclusionProof(5, tree.size)).toEqual(memory.inclusionProof(5, memory.size));
    expect(tf.diskReads).toBeGreaterThan(before);
    tf.close();
    const reopened = TreeFile.open(file, memory.size);
    const again = new MerkleTree({ nodes: reopened, size: memory.size });
    expect(again.root()).toEqual(memory.root());
    expect(again.inclusionProof(memory.size - 300, memory.size)).toEqual(memory.inclusionProof(memory.size - 300, memory.size));
    reopened.close();
  });

  it('refuses a file that is not a tree file, or holds fewer nodes than asked for', () => {
    const file = path.join(tmp, 'short');
    const tf = TreeFile.open(file, 0);
    const tree = new MerkleTree({ nodes: tf, size: 0 });
    for (let i = 0; i < 10; i++) tree.append(leaf(i));
    tf.close();
    expect(() => TreeFile.open(file, 11)).toThrow(/fewer than/);
    expect(() => TreeFile.open(path.join(tmp, 'fresh'), 3)).toThrow(/fewer than/);
  });
});
