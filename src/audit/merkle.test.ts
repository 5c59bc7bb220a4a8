import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BrokerError } from '../errors.js';
import {
  MerkleTree,
  emptyRoot,
  leafHash,
  nodeHash,
  rootFromLeaves,
  verifyConsistency,
  verifyInclusion,
} from './merkle.js';

/*
 * Published vectors for the RFC 6962 8-leaf test tree, from transparency-dev/merkle:
 *   testonly/constants.go   (LeafInputs, NodeHashes, RootHashes)
 *   testonly/reference_test.go (TestRefInclusionProof, TestRefConsistencyProof)
 *   proof/verify_test.go    (inclusionProofs, consistencyProofs, roots)
 * The same tree and values are used by certificate-transparency-go's merkletree tests.
 */
const hx = (s: string): Buffer => Buffer.from(s, 'hex');

const LEAF_INPUTS = ['', '00', '10', '2021', '3031', '40414243', '5051525354555657', '606162636465666768696a6b6c6d6e6f'].map(hx);

const NODE_HASHES = [
  [
    '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d',
    '96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7',
    '0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7',
    '07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7',
    'bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b',
    '4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658',
    'b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f',
    '46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1',
  ],
  [
    'fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125',
    '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e',
    '0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a',
    'ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0',
  ],
  ['d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7', '6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4'],
  ['5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328'],
];

/** RootHashes(): index = tree size. */
const ROOTS = [
  'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
  '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d',
  'fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125',
  'aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77',
  'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
  '4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4',
  '76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef',
  'ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c',
  '5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328',
].map(hx);

/** Inclusion vectors (0-based index). reference_test.go plus verify_test.go's {3,3}, {2,5} and {6,8}. */
const INCLUSION: { index: number; size: number; proof: string[] }[] = [
  { index: 0, size: 1, proof: [] },
  { index: 0, size: 2, proof: ['96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7'] },
  { index: 1, size: 2, proof: ['6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d'] },
  { index: 2, size: 3, proof: ['fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125'] },
  {
    index: 1,
    size: 5,
    proof: [
      '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d',
      '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e',
      'bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b',
    ],
  },
  {
    index: 0,
    size: 8,
    proof: [
      '96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7',
      '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e',
      '6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4',
    ],
  },
  {
    index: 5,
    size: 8,
    proof: [
      'bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b',
      'ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0',
      'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
    ],
  },
];

/** Consistency vectors: reference_test.go plus verify_test.go's {6,7}. */
const CONSISTENCY: { from: number; to: number; proof: string[] }[] = [
  { from: 1, to: 1, proof: [] },
  {
    from: 1,
    to: 8,
    proof: [
      '96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7',
      '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e',
      '6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4',
    ],
  },
  {
    from: 6,
    to: 8,
    proof: [
      '0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a',
      'ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0',
      'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
    ],
  },
  {
    from: 2,
    to: 5,
    proof: ['5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e', 'bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b'],
  },
  {
    from: 6,
    to: 7,
    proof: [
      '0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a',
      'b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f',
      'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
    ],
  },
];

const SOME_HASH = hx('abacaba000000000000000000000000000000000000000000060061e00123456');

function testTree(): MerkleTree {
  const t = new MerkleTree();
  for (const e of LEAF_INPUTS) t.append(leafHash(e));
  return t;
}

const flip = (b: Buffer, at: number, mask = 0x08): Buffer => {
  const c = Buffer.from(b);
  c[at] = (c[at] as number) ^ mask;
  return c;
};

/** Deterministic distinct leaf hashes for big trees. */
function leaves(n: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) out.push(leafHash(Buffer.from(`entry-${i}`)));
  return out;
}

/* Reference PATH and PROOF straight from the RFC 6962 §2.1.1 / §2.1.2 recursive definitions. */
function refSplit(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}
function refPath(m: number, d: Buffer[]): Buffer[] {
  if (d.length <= 1) return [];
  const k = refSplit(d.length);
  return m < k ? [...refPath(m, d.slice(0, k)), rootFromLeaves(d.slice(k))] : [...refPath(m - k, d.slice(k)), rootFromLeaves(d.slice(0, k))];
}
function refSubproof(m: number, d: Buffer[], b: boolean): Buffer[] {
  if (m === d.length) return b ? [] : [rootFromLeaves(d)];
  const k = refSplit(d.length);
  return m <= k
    ? [...refSubproof(m, d.slice(0, k), b), rootFromLeaves(d.slice(k))]
    : [...refSubproof(m - k, d.slice(k), false), rootFromLeaves(d.slice(0, k))];
}

describe('RFC 6962 hashing', () => {
  it('empty root is SHA-256("")', () => {
    expect(emptyRoot()).toEqual(ROOTS[0]);
    expect(new MerkleTree().root()).toEqual(ROOTS[0]);
    expect(rootFromLeaves([])).toEqual(ROOTS[0]);
  });

  it('leaf hashes of the 8 test inputs match NodeHashes level 0', () => {
    LEAF_INPUTS.forEach((e, i) => expect(leafHash(e).toString('hex')).toBe(NODE_HASHES[0]?.[i]));
  });

  it('interior node hashes match NodeHashes levels 1..3', () => {
    for (let level = 1; level < NODE_HASHES.length; level++) {
      const below = NODE_HASHES[level - 1] as string[];
      (NODE_HASHES[level] as string[]).forEach((want, i) => {
        expect(nodeHash(hx(below[2 * i] as string), hx(below[2 * i + 1] as string)).toString('hex')).toBe(want);
      });
    }
  });

  it('roots of every prefix 0..8 of the test tree match RootHashes, incrementally and historically', () => {
    const t = new MerkleTree();
    expect(t.root()).toEqual(ROOTS[0]);
    LEAF_INPUTS.forEach((e, i) => {
      t.append(leafHash(e));
      expect(t.root().toString('hex')).toBe(ROOTS[i + 1]?.toString('hex'));
    });
    for (let size = 0; size <= 8; size++) {
      expect(t.root(size)).toEqual(ROOTS[size]);
      expect(rootFromLeaves(LEAF_INPUTS.slice(0, size).map(leafHash))).toEqual(ROOTS[size]);
    }
  });
});

describe('published inclusion proofs', () => {
  const t = testTree();
  for (const v of INCLUSION) {
    it(`index ${v.index} in size ${v.size}`, () => {
      const proof = t.inclusionProof(v.index, v.size);
      expect(proof.map((p) => p.toString('hex'))).toEqual(v.proof);
      const leaf = leafHash(LEAF_INPUTS[v.index] as Buffer);
      const root = ROOTS[v.size] as Buffer;
      const want = v.proof.map(hx);
      expect(verifyInclusion(leaf, v.index, v.size, want, root)).toBe(true);

      // transparency-dev's corruptInclusionProof probes: all must fail.
      const probes: [number, number, Buffer, Buffer[], Buffer][] = [
        [v.index - 1, v.size, leaf, want, root],
        [v.index + 1, v.size, leaf, want, root],
        [v.index ^ 2, v.size, leaf, want, root],
        [v.index, v.size * 2, leaf, want, root],
        [v.index, Math.floor(v.size / 2), leaf, want, root],
        [v.index, v.size, Buffer.from('WrongLeaf'), want, root],
        [v.index, v.size, leaf, want, ROOTS[0] as Buffer],
        [v.index, v.size, leaf, want, SOME_HASH],
        [v.index, v.size, leaf, [...want, Buffer.alloc(0)], root],
        [v.index, v.size, leaf, [...want, root], root],
        [v.index, v.size, leaf, [Buffer.alloc(0), ...want], root],
        [v.index, v.size, leaf, [root, ...want], root],
      ];
      want.forEach((_, i) => probes.push([v.index, v.size, leaf, want.map((p, j) => (j === i ? flip(p, 0) : p)), root]));
      if (want.length > 0) probes.push([v.index, v.size, leaf, want.slice(0, -1), root]);
      if (want.length > 1) probes.push([v.index, v.size, leaf, [want[0] as Buffer, SOME_HASH, ...want.slice(1)], root]);
      for (const [i, s, l, p, r] of probes) {
        expect(verifyInclusion(l, i, s, p, r), `probe ${i}/${s}`).toBe(false);
      }
    });
  }

  it('rejects the degenerate probes from TestVerifyInclusion', () => {
    for (const [index, size] of [
      [0, 0],
      [0, 1],
      [1, 0],
      [2, 1],
    ] as const) {
      expect(verifyInclusion(SOME_HASH, index, size, [], Buffer.alloc(0))).toBe(false);
      expect(verifyInclusion(Buffer.alloc(0), index, size, [], ROOTS[0] as Buffer)).toBe(false);
      expect(verifyInclusion(SOME_HASH, index, size, [], ROOTS[0] as Buffer)).toBe(false);
    }
    const h = leafHash(Buffer.from('data'));
    expect(verifyInclusion(h, 0, 1, [], h)).toBe(true);
    expect(verifyInclusion(Buffer.alloc(0), 0, 1, [], h)).toBe(false);
    expect(verifyInclusion(h, 0, 1, [], Buffer.alloc(0))).toBe(false);
  });
});

describe('published consistency proofs', () => {
  const t = testTree();
  for (const v of CONSISTENCY) {
    it(`${v.from} -> ${v.to}`, () => {
      expect(t.consistencyProof(v.from, v.to).map((p) => p.toString('hex'))).toEqual(v.proof);
      const r1 = ROOTS[v.from] as Buffer;
      const r2 = ROOTS[v.to] as Buffer;
      const want = v.proof.map(hx);
      expect(verifyConsistency(v.from, v.to, r1, r2, want)).toBe(true);
      if (want.length === 0) return;
      // transparency-dev's corruptConsistencyProof probes.
      const probes: [number, number, Buffer, Buffer, Buffer[]][] = [
        [v.from - 1, v.to, r1, r2, want],
        [v.from + 1, v.to, r1, r2, want],
        [v.from ^ 2, v.to, r1, r2, want],
        [v.from, v.to * 2, r1, r2, want],
        [v.from, Math.floor(v.to / 2), r1, r2, want],
        [v.from, v.to, Buffer.from('WrongRoot'), r2, want],
        [v.from, v.to, r1, Buffer.from('WrongRoot'), want],
        [v.from, v.to, r2, r1, want],
        [v.from, v.to, r1, r2, []],
        [v.from, v.to, r1, r2, [...want, Buffer.alloc(0)]],
        [v.from, v.to, r1, r2, [...want, r1]],
        [v.from, v.to, r1, r2, [...want, r2]],
        [v.from, v.to, r1, r2, [Buffer.alloc(0), ...want]],
        [v.from, v.to, r1, r2, [r1, ...want]],
        [v.from, v.to, r1, r2, [r2, ...want]],
        [v.from, v.to, r1, r2, [want[0] as Buffer, ...want]],
        [v.from, v.to, r1, r2, want.slice(0, -1)],
      ];
      want.forEach((_, i) => probes.push([v.from, v.to, r1, r2, want.map((p, j) => (j === i ? flip(p, 0, 0x10) : p))]));
      for (const [a, b, x, y, p] of probes) expect(verifyConsistency(a, b, x, y, p), `probe ${a}->${b}`).toBe(false);
    });
  }

  it('edge cases from TestVerifyConsistency (with real 32-byte roots)', () => {
    const [e, r1, r2] = [ROOTS[0] as Buffer, ROOTS[1] as Buffer, ROOTS[2] as Buffer];
    expect(verifyConsistency(0, 0, e, e, [])).toBe(true);
    expect(verifyConsistency(0, 0, e, r1, [])).toBe(false);
    expect(verifyConsistency(0, 1, e, r1, [])).toBe(true);
    expect(verifyConsistency(0, 1, e, r1, [e])).toBe(false);
    expect(verifyConsistency(1, 1, r1, r1, [])).toBe(true);
    expect(verifyConsistency(1, 1, r1, r2, [])).toBe(false);
    expect(verifyConsistency(1, 1, r1, r1, [e])).toBe(false);
    expect(verifyConsistency(1, 0, r1, e, [])).toBe(false);
    expect(verifyConsistency(2, 1, r2, r1, [])).toBe(false);
    expect(verifyConsistency(1, 2, r1, r2, [])).toBe(false);
    expect(t.consistencyProof(0, 8)).toEqual([]);
  });
});

describe('MerkleTree', () => {
  const N = 300;
  const ls = leaves(N);
  const tree = new MerkleTree();
  const incremental: Buffer[] = [tree.root()];
  for (const l of ls) {
    tree.append(l);
    incremental.push(tree.root());
  }

  it('root equals rootFromLeaves for every size 0..300, incrementally and for historical sizes', () => {
    for (let n = 0; n <= N; n++) {
      const want = rootFromLeaves(ls.slice(0, n));
      expect(incremental[n]).toEqual(want);
      expect(tree.root(n)).toEqual(want);
    }
  });

  it('rootWith(leaf) is the root the tree has once leaf is appended, for every size 0..300, and appends nothing', () => {
    const t = new MerkleTree();
    for (let n = 0; n <= N; n++) {
      const next = leafHash(Buffer.from(`next-${n}`));
      const expected = t.rootWith(next);
      expect(t.size).toBe(n);
      expect(expected).toEqual(rootFromLeaves([...ls.slice(0, n), next]));
      if (n < N) t.append(ls[n] as Buffer);
    }
    const grown = new MerkleTree();
    ls.slice(0, 5).forEach((l) => grown.append(l));
    const expected = grown.rootWith(ls[5] as Buffer);
    grown.append(ls[5] as Buffer);
    expect(grown.root()).toEqual(expected);
    expect(() => grown.rootWith(Buffer.alloc(31))).toThrow(/32 bytes/);
  });

  it('a pre-sized tree gives the same roots', () => {
    const t = new MerkleTree({ capacity: 37 });
    ls.forEach((l) => t.append(l));
    expect(t.root()).toEqual(tree.root());
    expect(t.root(37)).toEqual(tree.root(37));
  });

  it('inclusion proofs equal the RFC recursive PATH for all index < size <= 40', () => {
    for (let size = 1; size <= 40; size++) {
      for (let i = 0; i < size; i++) {
        expect(tree.inclusionProof(i, size)).toEqual(refPath(i, ls.slice(0, size)));
      }
    }
  });

  it('consistency proofs equal the RFC recursive PROOF for all 0 < from <= to <= 40', () => {
    for (let to = 1; to <= 40; to++) {
      for (let from = 1; from <= to; from++) {
        expect(tree.consistencyProof(from, to)).toEqual(refSubproof(from, ls.slice(0, to), true));
      }
    }
  });

  it('leaf() returns the stored leaf hash', () => {
    expect(tree.leaf(123)).toEqual(ls[123]);
  });

  it('rejects invalid indexes and sizes with bad_request', () => {
    const bad = (f: () => unknown): void => {
      try {
        f();
        expect.unreachable('did not throw');
      } catch (err) {
        expect(err).toBeInstanceOf(BrokerError);
        expect((err as BrokerError).code).toBe('bad_request');
        expect((err as BrokerError).status).toBe(400);
      }
    };
    bad(() => tree.root(N + 1));
    bad(() => tree.root(-1));
    bad(() => tree.root(1.5));
    bad(() => tree.inclusionProof(5, 5));
    bad(() => tree.inclusionProof(0, 0));
    bad(() => tree.inclusionProof(-1, 10));
    bad(() => tree.inclusionProof(0, N + 1));
    bad(() => tree.inclusionProof(Number.NaN, 10));
    bad(() => tree.consistencyProof(5, 4));
    bad(() => tree.consistencyProof(-1, 4));
    bad(() => tree.consistencyProof(1, N + 1));
    bad(() => tree.leaf(N));
    bad(() => tree.append(Buffer.alloc(31)));
    bad(() => rootFromLeaves([Buffer.alloc(3)]));
  });
});

describe('proof properties (fast-check)', () => {
  const N = 2048;
  const ls = leaves(N);
  const tree = new MerkleTree();
  ls.forEach((l) => tree.append(l));

  const sizeAndIndex = fc.integer({ min: 1, max: N }).chain((size) => fc.tuple(fc.constant(size), fc.integer({ min: 0, max: size - 1 })));

  it('every inclusion proof verifies; any flipped byte, wrong index, wrong size or wrong leaf fails', () => {
    fc.assert(
      fc.property(sizeAndIndex, fc.nat(), fc.integer({ min: 1, max: 255 }), fc.nat(), ([size, index], pick, mask, other) => {
        const root = tree.root(size);
        const leaf = ls[index] as Buffer;
        const proof = tree.inclusionProof(index, size);
        expect(proof.length).toBeLessThanOrEqual(Math.ceil(Math.log2(size)));
        expect(verifyInclusion(leaf, index, size, proof, root)).toBe(true);
        // Flip any byte of any proof element, of the leaf, or of the root.
        if (proof.length > 0) {
          const i = pick % proof.length;
          const at = Math.floor(pick / proof.length) % 32;
          const bad = proof.map((p, j) => (j === i ? flip(p, at, mask) : p));
          expect(verifyInclusion(leaf, index, size, bad, root)).toBe(false);
        }
        expect(verifyInclusion(flip(leaf, pick % 32, mask), index, size, proof, root)).toBe(false);
        expect(verifyInclusion(leaf, index, size, proof, flip(root, pick % 32, mask))).toBe(false);
        // Wrong index.
        if (size > 1) {
          const wrong = (index + 1 + (other % (size - 1))) % size;
          expect(verifyInclusion(leaf, wrong, size, proof, root)).toBe(false);
          // Someone else's leaf at the right index.
          expect(verifyInclusion(ls[wrong] as Buffer, index, size, proof, root)).toBe(false);
        }
        // A different tree size, with that size's real root.
        const otherSize = 1 + (other % N);
        if (otherSize > index && otherSize !== size) {
          expect(verifyInclusion(leaf, index, otherSize, proof, tree.root(otherSize))).toBe(false);
        }
      }),
      { numRuns: 400 },
    );
  });

  const fromTo = fc.integer({ min: 1, max: N }).chain((to) => fc.tuple(fc.integer({ min: 1, max: to }), fc.constant(to)));

  it('every consistency proof verifies; any flipped byte or wrong size fails', () => {
    fc.assert(
      fc.property(fromTo, fc.nat(), fc.integer({ min: 1, max: 255 }), fc.nat(), ([from, to], pick, mask, other) => {
        const r1 = tree.root(from);
        const r2 = tree.root(to);
        const proof = tree.consistencyProof(from, to);
        expect(verifyConsistency(from, to, r1, r2, proof)).toBe(true);
        expect(proof.length).toBeLessThanOrEqual(2 * Math.ceil(Math.log2(to)) + 1);
        if (from === to) {
          expect(proof).toEqual([]);
          return;
        }
        const i = pick % proof.length;
        const at = Math.floor(pick / proof.length) % 32;
        expect(verifyConsistency(from, to, r1, r2, proof.map((p, j) => (j === i ? flip(p, at, mask) : p)))).toBe(false);
        expect(verifyConsistency(from, to, flip(r1, pick % 32, mask), r2, proof)).toBe(false);
        expect(verifyConsistency(from, to, r1, flip(r2, pick % 32, mask), proof)).toBe(false);
        // Wrong old size (with that size's real root) or wrong new size.
        const wrongFrom = 1 + ((from + (other % (to - 1))) % (to - 1));
        if (wrongFrom !== from) expect(verifyConsistency(wrongFrom, to, tree.root(wrongFrom), r2, proof)).toBe(false);
        const wrongTo = from + 1 + (other % (N - from));
        if (wrongTo !== to) expect(verifyConsistency(from, wrongTo, r1, tree.root(wrongTo), proof)).toBe(false);
      }),
      { numRuns: 400 },
    );
  });
});
