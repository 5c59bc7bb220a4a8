/**
 * audit.snapshot / audit.tree / audit.idx: a reopen with a good snapshot replays only the entries after
 * it; a torn, tampered, stale or missing snapshot (or tree / index file) never yields a wrong tree.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../audit/log.js';
import { leafHash, rootFromLeaves, verifyInclusion } from '../audit/merkle.js';
import { BrokerError } from '../errors.js';
import { instrumentStore } from '../metrics/store.js';
import { SNAPSHOT_BYTES, decodeSnapshot, encodeSnapshot } from './audit-snapshot.js';
import { EmbeddedStore } from './embedded.js';

const entry = (i: number): Buffer => Buffer.from(JSON.stringify({ i, pad: 'y'.repeat(i % 37) }));
const FILE_HDR = 8;

let dir: string;
const opened: EmbeddedStore[] = [];

beforeEach(async () => {
  dir = path.join(await fsp.mkdtemp(path.join(os.tmpdir(), 'tessera-snap-')), 'data');
});
afterEach(async () => {
  await Promise.all(opened.splice(0).map((s) => s.close()));
  await fsp.rm(path.dirname(dir), { recursive: true, force: true });
});

async function openBoth(opts: { snapshotEvery?: number } = {}): Promise<{ store: EmbeddedStore; log: AuditLog }> {
  const store = await EmbeddedStore.open(dir, { fsync: false, ...opts });
  opened.push(store);
  return { store, log: await AuditLog.open(store) };
}

async function close(store: EmbeddedStore): Promise<void> {
  opened.splice(opened.indexOf(store), 1);
  await store.close();
}

/** Appends entries [from, to) through the store in batches and brings the log's tree up to them. */
async function fill(store: EmbeddedStore, log: AuditLog, from: number, to: number): Promise<void> {
  for (let i = from; i < to; i += 100) {
    const batch = [];
    for (let j = i; j < Math.min(to, i + 100); j++) batch.push(entry(j));
    await store.appendAuditEntries(batch);
    await log.refresh();
  }
}

const expectedRoot = (n: number): Buffer => rootFromLeaves(Array.from({ length: n }, (_, i) => leafHash(entry(i))));

async function expectSound(log: AuditLog, n: number): Promise<void> {
  expect(log.size).toBe(n);
  expect(log.root().equals(expectedRoot(n))).toBe(true);
  for (const i of [0, Math.floor(n / 2), n - 1]) {
    expect(verifyInclusion(leafHash(entry(i)), i, n, log.inclusionProof(i, n), log.root())).toBe(true);
  }
}

const file = (name: string): string => path.join(dir, name);

describe('audit snapshot', () => {
  it('a reopen after close replays nothing and serves the same tree, then keeps appending', async () => {
    let { store, log } = await openBoth();
    await fill(store, log, 0, 700);
    await close(store);
    expect((await fsp.stat(file('audit.snapshot'))).size).toBe(SNAPSHOT_BYTES);
    ({ store, log } = await openBoth());
    expect(store.stats).toMatchObject({ auditSnapshot: 'used', auditReplayed: 0, auditEntries: 700 });
    await expectSound(log, 700);
    // Old leaves and proofs now come from audit.tree on disk.
    expect(store.stats.auditTreeDiskReads).toBeGreaterThan(0);
    expect((await log.entries(0, 700)).map((b) => b.toString())).toEqual(Array.from({ length: 700 }, (_, i) => entry(i).toString()));
    await fill(store, log, 700, 1000);
    await expectSound(log, 1000);
    // A range across the snapshot: offsets before it from audit.idx, after it from memory.
    expect((await store.readAuditEntries(650, 760)).map((b) => b.toString())).toEqual(Array.from({ length: 110 }, (_, i) => entry(650 + i).toString()));
    await close(store);
    ({ store, log } = await openBoth());
    expect(store.stats).toMatchObject({ auditSnapshot: 'used', auditReplayed: 0 });
    await expectSound(log, 1000);
  });

  it('the broker\'s instrumented store hands the on-disk tree to its AuditLog (no full replay on restart)', async () => {
    let { store, log } = await openBoth();
    await fill(store, log, 0, 400);
    await close(store);
    store = await EmbeddedStore.open(dir, { fsync: false });
    opened.push(store);
    log = await AuditLog.open(instrumentStore(store, { storeError: () => {}, auditAppended: () => {} }));
    await expectSound(log, 400);
    // The proofs came from audit.tree: nothing was replayed into a tree in memory.
    expect(store.stats).toMatchObject({ auditSnapshot: 'used', auditReplayed: 0 });
    expect(store.stats.auditTreeDiskReads).toBeGreaterThan(0);
  });

  it('takes snapshots while running; a stale one (a crash after it) replays only the entries after it', async () => {
    let { store, log } = await openBoth({ snapshotEvery: 256 });
    await fill(store, log, 0, 300);
    await until(() => store.stats.auditSnapshotsTaken >= 1);
    const stale = await fsp.readFile(file('audit.snapshot'));
    const covered = (decodeSnapshot(stale) as { entries: number }).entries;
    expect(covered).toBeGreaterThanOrEqual(256);
    await fill(store, log, 300, 650);
    await close(store);
    // As if the process died after the first snapshot: audit.tree and audit.idx hold more than it names.
    await fsp.writeFile(file('audit.snapshot'), stale);
    ({ store, log } = await openBoth());
    expect(store.stats).toMatchObject({ auditSnapshot: 'used', auditReplayed: 650 - covered });
    await expectSound(log, 650);
  });

  const fullReplay: [string, () => Promise<void>, RegExp][] = [
    ['missing', () => fsp.rm(file('audit.snapshot')), /^none$/],
    ['torn (half written)', async () => fsp.truncate(file('audit.snapshot'), 40), /^invalid: 40 bytes/],
    [
      'a flipped byte',
      async () => {
        const b = await fsp.readFile(file('audit.snapshot'));
        b[30] = (b[30] as number) ^ 1;
        await fsp.writeFile(file('audit.snapshot'), b);
      },
      /^invalid: checksum mismatch/,
    ],
    [
      'a wrong root with a valid checksum',
      async () => {
        const s = decodeSnapshot(await fsp.readFile(file('audit.snapshot'))) as { entries: number; logBytes: number };
        await fsp.writeFile(file('audit.snapshot'), encodeSnapshot({ ...s, rootHash: Buffer.alloc(32, 7) }));
      },
      /^invalid: audit.tree does not hash to the snapshot root/,
    ],
    [
      'a changed node in audit.tree (on the root path)',
      async () => {
        // The last node of a 500-leaf tree is the root of its last perfect subtree (4 leaves).
        const h = await fsp.open(file('audit.tree'), 'r+');
        const { size } = await h.stat();
        await h.write(Buffer.alloc(32, 9), 0, 32, size - 32);
        await h.close();
      },
      /^invalid: audit.tree does not hash to the snapshot root/,
    ],
    ['audit.tree missing', () => fsp.rm(file('audit.tree')), /^invalid: .*fewer than/],
    ['audit.idx missing', () => fsp.rm(file('audit.idx')), /^invalid: audit.idx holds 0 offsets/],
    [
      'audit.idx changed',
      async () => {
        const h = await fsp.open(file('audit.idx'), 'r+');
        const b = Buffer.alloc(8);
        b.writeDoubleLE(12345.5);
        await h.write(b, 0, 8, 8 * 17);
        await h.close();
      },
      /^invalid: audit.idx offset 17 is not a record boundary/,
    ],
  ];
  for (const [name, damage, state] of fullReplay) {
    it(`${name}: full replay from audit.log, the same tree, and a fresh snapshot on close`, async () => {
      let { store, log } = await openBoth();
      await fill(store, log, 0, 500);
      await close(store);
      await damage();
      ({ store, log } = await openBoth());
      expect(store.stats.auditSnapshot).toMatch(state);
      expect(store.stats.auditReplayed).toBe(500);
      await expectSound(log, 500);
      await close(store);
      ({ store, log } = await openBoth());
      expect(store.stats).toMatchObject({ auditSnapshot: 'used', auditReplayed: 0 });
      await expectSound(log, 500);
    });
  }

  it('refuses to open when audit.log holds less than the snapshot says was durable', async () => {
    const { store, log } = await openBoth();
    await fill(store, log, 0, 200);
    await close(store);
    const { size } = await fsp.stat(file('audit.log'));
    await fsp.truncate(file('audit.log'), size - 50);
    const err = await EmbeddedStore.open(dir, { fsync: false }).then(
      () => new Error('opened'),
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BrokerError);
    expect((err as BrokerError).code).toBe('audit_unavailable');
    expect((err as BrokerError).message).toMatch(/acknowledged audit entries are gone/);
  });

  it('an entry changed on disk under a snapshot (checksum fixed up) is refused when read, never served', async () => {
    let { store, log } = await openBoth();
    await fill(store, log, 0, 300);
    await close(store);
    // Rewrite entry 5's payload byte-for-byte length, with a valid record CRC.
    const buf = await fsp.readFile(file('audit.log'));
    let at = FILE_HDR;
    for (let i = 0; i < 5; i++) at += 12 + buf.readUInt32BE(at + 8);
    const len = buf.readUInt32BE(at + 8);
    buf[at + 12 + 5] = 0x39; // a digit inside {"i":5,...} stays valid JSON of the same length
    buf.writeUInt32BE(crc32(buf.subarray(at + 8, at + 12 + len)), at + 4);
    await fsp.writeFile(file('audit.log'), buf);
    ({ store, log } = await openBoth());
    expect(store.stats.auditSnapshot).toBe('used');
    const err = await log.entries(0, 10).then(
      () => new Error('served'),
      (e: unknown) => e,
    );
    expect((err as BrokerError).code).toBe('audit_unavailable');
    expect((err as BrokerError).message).toMatch(/entry 5 .* does not match its leaf hash/);
    // The tree itself is still the one the entries were logged into.
    await expectSound(log, 300);
  });

  it('decodeSnapshot never throws and accepts only what encodeSnapshot wrote (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 120 }), (bytes) => {
        const d = decodeSnapshot(bytes);
        if (!('invalid' in d)) expect(encodeSnapshot(d).equals(Buffer.from(bytes))).toBe(true);
      }),
    );
    fc.assert(
      fc.property(
        fc.nat({ max: Number.MAX_SAFE_INTEGER }),
        fc.nat({ max: Number.MAX_SAFE_INTEGER }),
        fc.uint8Array({ minLength: 32, maxLength: 32 }),
        fc.nat({ max: SNAPSHOT_BYTES * 8 - 1 }),
        (entries, logBytes, root, bit) => {
          const enc = encodeSnapshot({ entries, logBytes, rootHash: Buffer.from(root) });
          expect(decodeSnapshot(enc)).toEqual({ entries, logBytes, rootHash: Buffer.from(root) });
          enc[bit >> 3] = (enc[bit >> 3] as number) ^ (1 << (bit & 7));
          expect('invalid' in decodeSnapshot(enc)).toBe(true);
        },
      ),
    );
  });
});

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(cond()).toBe(true);
}
