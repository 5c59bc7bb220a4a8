import fs, { constants as fsConstants, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../audit/log.js';
import { leafHash, rootFromLeaves } from '../audit/merkle.js';
import type { Clock } from '../clock.js';
import { BrokerError } from '../errors.js';
import { EmbeddedStore, type OpenStoreFile, type StoreFileHandle, openStoreFile } from './embedded.js';

/** Failure switches for the files whose name ends with `target`. */
interface Faults {
  target: string;
  write?: 'throw' | 'partial' | undefined;
  sync?: boolean;
  truncate?: boolean;
  open?: boolean;
  writes: number;
  syncs: number;
}

const eio = (): Error => Object.assign(new Error('EIO: simulated I/O error'), { code: 'EIO' });

function faultyOpen(f: Faults): OpenStoreFile {
  return async (p) => {
    const hit = p.endsWith(f.target);
    if (hit && f.open) throw eio();
    const h = await openStoreFile(p);
    const wrapped: StoreFileHandle = {
      read: (b, o, l, pos) => h.read(b, o, l, pos),
      write: async (b, o, l, pos) => {
        if (hit && f.write === 'throw') throw eio();
        if (hit && f.write === 'partial') {
          // Half the bytes reach the file, then the device errors.
          await h.write(b, o, Math.max(1, Math.floor(l / 2)), pos);
          throw eio();
        }
        if (hit) f.writes++;
        return h.write(b, o, l, pos);
      },
      datasync: async () => {
        if (hit && f.sync) throw eio();
        if (hit) f.syncs++;
        return h.datasync();
      },
      truncate: async (len) => {
        if (hit && f.truncate) throw eio();
        return h.truncate(len);
      },
      stat: () => h.stat(),
      close: () => h.close(),
    };
    return wrapped;
  };
}

class FakeClock implements Clock {
  constructor(public t = 1_000_000) {}
  now(): number {
    return this.t;
  }
}

/** Bytes of the file header before the first record. */
const FILE_HDR = 8;
const entry = (i: number): Buffer => Buffer.from(JSON.stringify({ i, pad: 'x'.repeat(i % 50) }));

async function expectBroker(p: Promise<unknown>, code: string, status: number): Promise<BrokerError> {
  const err = await p.then(
    () => {
      throw new Error('expected rejection');
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BrokerError);
  expect((err as BrokerError).code).toBe(code);
  expect((err as BrokerError).status).toBe(status);
  return err as BrokerError;
}

let dir: string;
const open: EmbeddedStore[] = [];
async function openStore(opts?: Parameters<typeof EmbeddedStore.open>[1], d = dir): Promise<EmbeddedStore> {
  const s = await EmbeddedStore.open(d, opts);
  open.push(s);
  return s;
}

beforeEach(async () => {
  dir = path.join(await fsp.mkdtemp(path.join(os.tmpdir(), 'tessera-store-')), 'data');
});
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
  await fsp.rm(path.dirname(dir), { recursive: true, force: true });
});

describe('EmbeddedStore audit log', () => {
  it('creates the directory with mode 0700', async () => {
    await openStore();
    expect((await fsp.stat(dir)).mode & 0o777).toBe(0o700);
    expect((await fsp.stat(path.join(dir, 'audit.log'))).mode & 0o777).toBe(0o600);
  });

  it('group-commits concurrent appends: contiguous indexes in call order, few fsyncs', async () => {
    const faults: Faults = { target: 'audit.log', writes: 0, syncs: 0 };
    const s = await openStore({ openFile: faultyOpen(faults) });
    Object.assign(faults, { writes: 0, syncs: 0 }); // the file header written at creation
    const N = 500;
    const idx = await Promise.all(Array.from({ length: N }, (_, i) => s.appendAuditEntries([entry(i)])));
    expect(idx).toEqual(Array.from({ length: N }, (_, i) => i));
    // The first append starts a flush alone; everything that queued behind it shares the next one.
    expect(s.stats.auditFlushes).toBeLessThanOrEqual(3);
    // One write and one fdatasync per flush, and per zeroed chunk written ahead (the first flush's).
    expect(s.stats.auditPreallocations).toBe(1);
    expect(faults.syncs).toBe(s.stats.auditFlushes + s.stats.auditPreallocations);
    expect(faults.writes).toBe(s.stats.auditFlushes + s.stats.auditPreallocations);
    expect(await s.auditSize()).toBe(N);
    const back = await s.readAuditEntries(0, N);
    back.forEach((b, i) => expect(b).toEqual(entry(i)));
  });

  it('a multi-entry append resolves with its first index and keeps order', async () => {
    const s = await openStore();
    expect(await s.appendAuditEntries([entry(0), entry(1)])).toBe(0);
    const [a, b] = await Promise.all([s.appendAuditEntries([entry(2)]), s.appendAuditEntries([entry(3), entry(4), entry(5)])]);
    expect([a, b]).toEqual([2, 3]);
    expect(await s.appendAuditEntries([])).toBe(6);
    expect((await s.readAuditEntries(1, 4)).map((x) => x.toString())).toEqual([1, 2, 3].map((i) => entry(i).toString()));
    expect(await s.readAuditEntries(6, 6)).toEqual([]);
  });

  it('validates read ranges', async () => {
    const s = await openStore();
    await s.appendAuditEntries([entry(0)]);
    await expectBroker(s.readAuditEntries(0, 2), 'bad_request', 400);
    await expectBroker(s.readAuditEntries(1, 0), 'bad_request', 400);
    await expectBroker(s.readAuditEntries(-1, 1), 'bad_request', 400);
    await expectBroker(s.readAuditEntries(0.5, 1), 'bad_request', 400);
  });

  it('reopen restores the same entries and the same Merkle root', async () => {
    const s = await openStore();
    const log = await AuditLog.open(s);
    const receipts = [];
    for (let i = 0; i < 40; i++) {
      receipts.push(
        await log.append({ ts: i, type: 'denial', decision: 'deny', actor: null, subject: null, requestId: `r${i}`, replica: 'a' }),
      );
    }
    const root = log.root();
    const entries = await s.readAuditEntries(0, 40);
    await s.close();
    const s2 = await openStore();
    expect(await s2.auditSize()).toBe(40);
    expect(await s2.readAuditEntries(0, 40)).toEqual(entries);
    const log2 = await AuditLog.open(s2);
    expect(log2.size).toBe(40);
    expect(log2.root()).toEqual(root);
    expect(log2.root()).toEqual(rootFromLeaves(entries.map(leafHash)));
    expect(log2.root(17).toString('base64')).toBe(receipts[16]?.rootHash);
    // Appends continue at the right index after a restart.
    const r = await log2.append({ ts: 99, type: 'admin', decision: 'allow', actor: 'x', subject: null, requestId: 'z', replica: 'a' });
    expect(r.index).toBe(40);
  });

  it('audit device cursors survive a reopen (and the kv compaction on open), and only move forward', async () => {
    const s = await openStore();
    for (let i = 1; i <= 50; i++) await s.advanceAuditCursor('siem', i);
    await s.advanceAuditCursor('local', 7);
    await s.kvPut('other', 'k', 'v');
    await s.close();
    const s2 = await openStore();
    expect(await s2.auditCursor('siem')).toBe(50);
    expect(await s2.auditCursor('local')).toBe(7);
    expect(await s2.advanceAuditCursor('siem', 10)).toBe(50);
    expect(await s2.kvList('other')).toEqual([{ key: 'k', value: 'v' }]);
  });

  it('close() flushes appends still queued', async () => {
    const s = await openStore();
    const pending = Array.from({ length: 20 }, (_, i) => s.appendAuditEntries([entry(i)]));
    await s.close();
    expect(await Promise.all(pending)).toEqual(Array.from({ length: 20 }, (_, i) => i));
    await expectBroker(s.appendAuditEntries([entry(0)]), 'audit_unavailable', 503);
    const s2 = await openStore();
    expect(await s2.auditSize()).toBe(20);
  });

  it('refuses a second open of the same directory in one process', async () => {
    await openStore();
    await expectBroker(EmbeddedStore.open(dir), 'store_unavailable', 503);
  });

  it('works with fsync disabled', async () => {
    const faults: Faults = { target: 'audit.log', writes: 0, syncs: 0 };
    const s = await openStore({ fsync: false, openFile: faultyOpen(faults) });
    await Promise.all([0, 1, 2].map((i) => s.appendAuditEntries([entry(i)])));
    expect(faults.syncs).toBe(0);
    expect(await s.auditSize()).toBe(3);
  });
});

describe('EmbeddedStore crash recovery', () => {
  /** n records; `size` is where the log ends (the file goes on with the zeros preallocated after it). */
  async function seed(n: number): Promise<{ file: string; size: number; lastStart: number }> {
    const s = await EmbeddedStore.open(dir);
    for (let i = 0; i < n; i++) await s.appendAuditEntries([entry(i)]);
    await s.close();
    const file = path.join(dir, 'audit.log');
    let size = FILE_HDR;
    for (let i = 0; i < n; i++) size += 12 + entry(i).length;
    expect((await fsp.stat(file)).size).toBeGreaterThan(size);
    return { file, size, lastStart: size - (12 + entry(n - 1).length) };
  }

  it('drops a record torn mid-payload and keeps appending after it', async () => {
    const { file, lastStart } = await seed(10);
    await fsp.truncate(file, lastStart + 12 + 3);
    const s = await openStore();
    expect(await s.auditSize()).toBe(9);
    expect(s.stats.auditTornBytesDropped).toBe(15);
    expect((await fsp.stat(file)).size).toBe(lastStart);
    expect(await s.appendAuditEntries([entry(42)])).toBe(9);
    await s.close();
    open.pop();
    const s2 = await openStore();
    expect((await s2.readAuditEntries(9, 10))[0]).toEqual(entry(42));
    expect(s2.stats.auditTornBytesDropped).toBe(0);
  });

  it('drops a torn header (fewer than 12 bytes)', async () => {
    const { file, lastStart } = await seed(5);
    await fsp.truncate(file, lastStart + 5);
    const s = await openStore();
    expect(await s.auditSize()).toBe(4);
  });

  it('drops garbage appended after the last record', async () => {
    const { file, size } = await seed(5);
    await fsp.appendFile(file, Buffer.from('garbage that is not a record, even with TsR1 inside'));
    const s = await openStore();
    expect(await s.auditSize()).toBe(5);
    expect((await fsp.stat(file)).size).toBe(size);
  });

  it('drops a zero-filled tail (a crash after the size was extended but before the data landed)', async () => {
    const { file, size } = await seed(5);
    await fsp.truncate(file, size);
    await fsp.appendFile(file, Buffer.alloc(4096));
    const s = await openStore();
    expect(await s.auditSize()).toBe(5);
    expect(s.stats).toMatchObject({ auditTornBytesDropped: 0, auditPreallocatedBytesDropped: 4096 });
    expect((await fsp.stat(file)).size).toBe(size);
  });

  it('a reopen drops the preallocated zeros (not data, not torn), and appends preallocate again', async () => {
    const { file, size } = await seed(3);
    const onDisk = (await fsp.stat(file)).size;
    const s = await openStore();
    expect(await s.auditSize()).toBe(3);
    expect(s.stats).toMatchObject({ auditTornBytesDropped: 0, auditPreallocatedBytesDropped: onDisk - size });
    expect((await fsp.stat(file)).size).toBe(size);
    expect(await s.appendAuditEntries([entry(3)])).toBe(3);
    expect(s.stats.auditPreallocations).toBe(1);
    expect((await fsp.stat(file)).size).toBeGreaterThanOrEqual(size + 12 + entry(3).length + (1 << 20));
    expect((await s.readAuditEntries(0, 4)).map(String)).toEqual([0, 1, 2, 3].map((i) => String(entry(i))));
  });

  it('a record torn inside the preallocated space (a crash mid-write) is dropped with the zeros after it', async () => {
    const { file, size, lastStart } = await seed(4);
    // The last record half written over the zeros: its first bytes, then zeros to the end.
    const bytes = await fsp.readFile(file);
    bytes.fill(0, lastStart + 20);
    await fsp.writeFile(file, bytes);
    const s = await openStore();
    expect(await s.auditSize()).toBe(3);
    expect(s.stats.auditTornBytesDropped).toBe(20);
    expect(s.stats.auditPreallocatedBytesDropped).toBe(bytes.length - lastStart - 20);
    expect((await fsp.stat(file)).size).toBe(lastStart);
    expect(size).toBeGreaterThan(lastStart);
  });

  it('refuses a zero tail longer than a write batch and its preallocation: not what a crash leaves', async () => {
    const { file, size } = await seed(3);
    await fsp.truncate(file, size + (10 << 20));
    const err = await expectBroker(EmbeddedStore.open(dir), 'store_unavailable', 503);
    expect(err.message).toMatch(/more than one write batch and the space preallocated after it/);
    expect((await fsp.stat(file)).size).toBe(size + (10 << 20));
  });

  it('a valid record after zeros is not preallocated space: refused, the file left as it is', async () => {
    const { file, size } = await seed(3);
    const bytes = await fsp.readFile(file);
    // A record 64 KiB into the zeros: the zeros before it are a hole in the log, not its end.
    const rec = bytes.subarray(FILE_HDR, FILE_HDR + 12 + entry(0).length);
    rec.copy(bytes, size + 65_536);
    await fsp.writeFile(file, bytes);
    const err = await expectBroker(EmbeddedStore.open(dir), 'store_unavailable', 503);
    expect(err.message).toMatch(/a valid record follows/);
    expect((await fsp.readFile(file)).equals(bytes)).toBe(true);
  });

  it('refuses to open when a record in the middle fails its checksum', async () => {
    const { file } = await seed(10);
    const bytes = await fsp.readFile(file);
    const at = FILE_HDR + 3 * (12 + entry(0).length) + 20; // inside the 4th record's payload (entries 0..3 share length)
    bytes[at] = (bytes[at] as number) ^ 0x01;
    await fsp.writeFile(file, bytes);
    const err = await expectBroker(EmbeddedStore.open(dir), 'store_unavailable', 503);
    expect(err.message).toMatch(/corrupt record at byte \d+ \(after 3 valid records\)/);
    // Nothing was truncated: the evidence is left in place.
    expect((await fsp.readFile(file)).length).toBe(bytes.length);
  });

  it('refuses to open when a length field in the middle is corrupted', async () => {
    const { file } = await seed(10);
    const bytes = await fsp.readFile(file);
    bytes.writeUInt32BE(0x00ffffff, FILE_HDR + 2 * (12 + entry(0).length) + 8);
    await fsp.writeFile(file, bytes);
    await expectBroker(EmbeddedStore.open(dir), 'store_unavailable', 503);
  });

  it('refuses a long damaged tail: a crash cannot tear more than one write batch', async () => {
    const { file } = await seed(5);
    const onDisk = (await fsp.stat(file)).size;
    await fsp.appendFile(file, Buffer.alloc(9 << 20, 0x5a));
    const err = await expectBroker(EmbeddedStore.open(dir), 'store_unavailable', 503);
    expect(err.message).toMatch(/more than one write batch/);
    expect((await fsp.stat(file)).size).toBe(onDisk + (9 << 20));
  });

  it('refuses a file that is not a Tessera log of this format version, leaving it untouched', async () => {
    const { file } = await seed(3);
    const bytes = await fsp.readFile(file);
    bytes[7] = 2; // format version 2
    await fsp.writeFile(file, bytes);
    await expectBroker(EmbeddedStore.open(dir), 'store_unavailable', 503);
    await fsp.writeFile(file, 'hello, not a log');
    await expectBroker(EmbeddedStore.open(dir), 'store_unavailable', 503);
    expect(await fsp.readFile(file, 'utf8')).toBe('hello, not a log');
  });

  it('completes a file header torn at creation', async () => {
    await fsp.mkdir(dir, { recursive: true });
    await fsp.writeFile(path.join(dir, 'audit.log'), Buffer.from('TsL'));
    const s = await openStore();
    expect(await s.auditSize()).toBe(0);
    expect(await s.appendAuditEntries([entry(0)])).toBe(0);
  });

  it('detects on-disk corruption of an acknowledged record at read time', async () => {
    const s = await openStore();
    for (let i = 0; i < 3; i++) await s.appendAuditEntries([entry(i)]);
    const file = path.join(dir, 'audit.log');
    const h = await fsp.open(file, 'r+');
    await h.write(Buffer.from('!'), 0, 1, FILE_HDR + 12 + 2);
    await h.close();
    await expectBroker(s.readAuditEntries(0, 1), 'audit_unavailable', 503);
  });
});

describe('EmbeddedStore checkpoint notes', () => {
  it('are written without an fdatasync each (they are re-creatable from the fsynced entries) and synced on close', async () => {
    const cp: Faults = { target: 'checkpoints.log', writes: 0, syncs: 0 };
    const s = await openStore({ openFile: faultyOpen(cp) });
    await s.appendAuditEntries([entry(0)]);
    const [writes, syncs] = [cp.writes, cp.syncs]; // the new file's header
    for (let i = 0; i < 3; i++) await s.appendCheckpoint(`note ${i}\n`);
    expect(cp.writes).toBe(writes + 3);
    expect(cp.syncs).toBe(syncs);
    await s.close();
    expect(cp.syncs).toBe(syncs + 1);
    open.pop();
    const reopened = await openStore();
    expect(await reopened.listCheckpoints()).toEqual(['note 0\n', 'note 1\n', 'note 2\n']);
  });

  it('audit entries still get their fdatasync before the append resolves', async () => {
    const faults: Faults = { target: 'audit.log', writes: 0, syncs: 0 };
    const s = await openStore({ openFile: faultyOpen(faults) });
    await s.appendAuditEntries([entry(0)]);
    expect(faults.syncs).toBeGreaterThanOrEqual(1);
    const before = faults.syncs;
    await s.appendAuditEntries([entry(1)]);
    expect(faults.syncs).toBe(before + 1);
  });
});

describe('EmbeddedStore durable writes (O_DSYNC)', () => {
  /** The open-file flags the kernel holds for this process's descriptor of `file` (Linux /proc). */
  const kernelFlags = (file: string): number[] =>
    fs.readdirSync('/proc/self/fd').flatMap((fd) => {
      try {
        if (fs.readlinkSync(`/proc/self/fd/${fd}`) !== file) return [];
        return [Number.parseInt(/^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1] ?? '0', 8)];
      } catch {
        return []; // closed meanwhile
      }
    });

  function countingOpen(counts: Map<string, { writes: number; syncs: number; durable: boolean; reads?: number }>): OpenStoreFile {
    return async (p, o) => {
      const h = await openStoreFile(p, o);
      const c = { writes: 0, syncs: 0, reads: 0, durable: h.writesAreDurable === true };
      counts.set(path.basename(p), c);
      return {
        read: (b, off, l, pos) => {
          c.reads++;
          return h.read(b, off, l, pos);
        },
        write: (b, off, l, pos) => {
          c.writes++;
          return h.write(b, off, l, pos);
        },
        datasync: () => {
          c.syncs++;
          return h.datasync();
        },
        truncate: (len) => h.truncate(len),
        stat: () => h.stat(),
        close: () => h.close(),
        ...(h.writesAreDurable === true ? { writesAreDurable: true } : {}),
      };
    };
  }

  it.skipIf(process.platform !== 'linux')('an audit group commit is one O_DSYNC write, durable when the append resolves, with no separate fdatasync', async () => {
    const counts = new Map<string, { writes: number; syncs: number; durable: boolean }>();
    const s = await openStore({ openFile: countingOpen(counts) });
    const audit = counts.get('audit.log')!;
    expect(audit.durable).toBe(true);
    const flags = kernelFlags(path.join(fs.realpathSync(dir), 'audit.log'));
    expect(flags.length).toBeGreaterThan(0);
    for (const f of flags) expect(f & fsConstants.O_DSYNC).toBe(fsConstants.O_DSYNC);
    // Checkpoint notes are not synced per write (re-creatable); they stay on a plain descriptor.
    expect(counts.get('checkpoints.log')!.durable).toBe(false);
    for (const f of kernelFlags(path.join(fs.realpathSync(dir), 'checkpoints.log'))) expect(f & fsConstants.O_DSYNC).toBe(0);
    const [writes, syncs] = [audit.writes, audit.syncs];
    await s.appendAuditEntries([entry(0)]);
    await Promise.all([1, 2, 3].map((i) => s.appendAuditEntries([entry(i)])));
    // One write per group commit, and one for the zeroed chunk written ahead of the first.
    expect(audit.writes - writes).toBe(s.stats.auditFlushes + s.stats.auditPreallocations);
    expect(audit.syncs).toBe(syncs);
    expect((await s.readAuditEntries(0, 4)).map(String)).toEqual([0, 1, 2, 3].map((i) => String(entry(i))));
  });

  it('a receipt checkpoint compares against the newest one in memory: no read of checkpoints.log per append, the file read once after a reopen', async () => {
    const counts = new Map<string, { writes: number; syncs: number; durable: boolean; reads?: number }>();
    const note = (size: number): string => `tessera.test/log\n${size}\nroot${size}\n`;
    let s = await openStore({ fsync: false, openFile: countingOpen(counts) });
    await s.appendAuditEntries([entry(0), entry(1), entry(2)]);
    const cp = (): { reads?: number; writes: number } => counts.get('checkpoints.log')!;
    const opened = cp().reads ?? 0;
    for (const size of [1, 2, 3]) expect(await s.appendCheckpointIfNewer(note(size), size)).toBeUndefined();
    // Older and equal ones are refused from memory too.
    expect(await s.appendCheckpointIfNewer(note(2), 2)).toBe(note(3));
    expect(await s.appendCheckpointIfNewer(note(3), 3)).toBe(note(3));
    expect(cp().reads).toBe(opened);
    await s.close();
    s = await openStore({ fsync: false, openFile: countingOpen(counts) });
    const reopened = cp().reads ?? 0;
    // After a reopen, the newest is read from the file once, then kept.
    expect(await s.appendCheckpointIfNewer(note(2), 2)).toBe(note(3));
    expect(await s.appendCheckpointIfNewer(note(1), 1)).toBe(note(3));
    expect(cp().reads).toBe(reopened + 1);
    expect(await s.listCheckpoints()).toEqual([note(1), note(2), note(3)]);
    await s.close();
  });

  it.skipIf(process.platform !== 'linux')('without fsync, nothing is opened O_DSYNC', async () => {
    const counts = new Map<string, { writes: number; syncs: number; durable: boolean }>();
    await openStore({ fsync: false, openFile: countingOpen(counts) });
    expect([...counts.values()].every((c) => !c.durable)).toBe(true);
    for (const f of kernelFlags(path.join(fs.realpathSync(dir), 'audit.log'))) expect(f & fsConstants.O_DSYNC).toBe(0);
  });

  it('an opener that cannot do durable writes still gets an fdatasync per group commit', async () => {
    const faults: Faults = { target: 'audit.log', writes: 0, syncs: 0 };
    const s = await openStore({ openFile: faultyOpen(faults) }); // ignores durableWrites
    await s.appendAuditEntries([entry(0)]); // the first also syncs the zeroed chunk it writes ahead
    const before = faults.syncs;
    await s.appendAuditEntries([entry(1)]);
    expect(faults.syncs).toBe(before + 1);
  });
});

describe('EmbeddedStore write failures', () => {
  const cases: [string, Partial<Faults>][] = [
    ['write throws', { write: 'throw' }],
    ['write is torn then throws', { write: 'partial' }],
    ['fdatasync fails', { sync: true }],
    ['fdatasync and the truncate-back both fail', { sync: true, truncate: true }],
  ];
  for (const [name, fault] of cases) {
    it(`${name}: the whole batch rejects with 503, never appears, and later appends work`, async () => {
      const faults: Faults = { target: 'audit.log', writes: 0, syncs: 0 };
      const s = await openStore({ openFile: faultyOpen(faults) });
      await s.appendAuditEntries([entry(0), entry(1)]);
      Object.assign(faults, fault);
      const batch = Array.from({ length: 5 }, (_, i) => s.appendAuditEntries([Buffer.from(`rejected-${i}`)]));
      for (const p of batch) await expectBroker(p, 'audit_unavailable', 503);
      expect(await s.auditSize()).toBe(2);
      expect(s.stats.auditFlushFailures).toBeGreaterThan(0);
      // Still failing: readiness says so.
      await expectBroker(s.checkWritable(), 'audit_unavailable', 503);
      // The disk recovers.
      Object.assign(faults, { write: undefined, sync: false, truncate: false });
      await s.checkWritable();
      expect(await s.appendAuditEntries([entry(2)])).toBe(2);
      await s.close();
      const raw = await fsp.readFile(path.join(dir, 'audit.log'));
      expect(raw.includes(Buffer.from('rejected-'))).toBe(false);
      open.pop();
      const s2 = await openStore();
      expect(await s2.auditSize()).toBe(3);
      expect((await s2.readAuditEntries(0, 3)).map(String)).toEqual([0, 1, 2].map((i) => String(entry(i))));
    });
  }

  it('a failed batch whose truncate-back fails is truncated before the next write (no stale records resurface)', async () => {
    const faults: Faults = { target: 'audit.log', writes: 0, syncs: 0 };
    const s = await openStore({ openFile: faultyOpen(faults) });
    await s.appendAuditEntries([entry(0)]);
    // Written fully, sync fails, truncate fails: the rejected bytes stay in the file for now.
    Object.assign(faults, { sync: true, truncate: true });
    const big = Array.from({ length: 5 }, (_, i) => s.appendAuditEntries([Buffer.from(`rejected-${i}-${'y'.repeat(100)}`)]));
    for (const p of big) await expectBroker(p, 'audit_unavailable', 503);
    // The disk recovers without anyone calling checkWritable; a short append must not leave the
    // tail of the longer rejected batch behind it.
    Object.assign(faults, { sync: false, truncate: false });
    expect(await s.appendAuditEntries([entry(1)])).toBe(1);
    await s.close();
    open.pop();
    const s2 = await openStore();
    expect(await s2.auditSize()).toBe(2);
    expect((await fsp.readFile(path.join(dir, 'audit.log'))).includes(Buffer.from('rejected-'))).toBe(false);
  });

  it('AuditLog.append rejects with audit_unavailable and returns no receipt when the store cannot write', async () => {
    const faults: Faults = { target: 'audit.log', writes: 0, syncs: 0 };
    const s = await openStore({ openFile: faultyOpen(faults) });
    const log = await AuditLog.open(s);
    faults.write = 'throw';
    await expectBroker(
      log.append({ ts: 1, type: 'x509-svid.issued', decision: 'allow', actor: 'a', subject: 'a', requestId: 'r', replica: 'x' }),
      'audit_unavailable',
      503,
    );
    expect(log.size).toBe(0);
    await expectBroker(log.checkWritable(), 'audit_unavailable', 503);
  });

  it('checkWritable reports a closed store', async () => {
    const s = await openStore();
    await s.checkWritable();
    await s.close();
    await expectBroker(s.checkWritable(), 'store_unavailable', 503);
  });

  it('open fails cleanly (and can be retried) when a file cannot be opened', async () => {
    const faults: Faults = { target: 'nonces.log', open: true, writes: 0, syncs: 0 };
    await expectBroker(EmbeddedStore.open(dir, { openFile: faultyOpen(faults) }), 'store_unavailable', 503);
    faults.open = false;
    await openStore({ openFile: faultyOpen(faults) });
  });
});

describe('EmbeddedStore checkpoints', () => {
  it('appends, lists and survives reopen', async () => {
    const s = await openStore();
    expect(await s.listCheckpoints()).toEqual([]);
    await s.appendCheckpoint('tessera/log\n1\nabc=\n\n— sig\n');
    await s.appendCheckpoint('second ✓');
    await s.close();
    open.pop();
    const s2 = await openStore();
    expect(await s2.listCheckpoints()).toEqual(['tessera/log\n1\nabc=\n\n— sig\n', 'second ✓']);
    await expectBroker(s2.appendCheckpoint(''), 'bad_request', 400);
  });
});

describe('EmbeddedStore consumeOnce', () => {
  it('exactly one concurrent caller wins, and the win is durable across reopen', async () => {
    const clock = new FakeClock();
    const s = await openStore({ clock });
    const results = await Promise.all(Array.from({ length: 50 }, () => s.consumeOnce('nonce-1', clock.t + 60_000)));
    expect(results.filter(Boolean)).toHaveLength(1);
    expect(await s.consumeOnce('nonce-2', clock.t + 60_000)).toBe(true);
    await s.close();
    open.pop();
    const s2 = await openStore({ clock });
    expect(await s2.consumeOnce('nonce-1', clock.t + 60_000)).toBe(false);
    expect(await s2.consumeOnce('nonce-2', clock.t + 60_000)).toBe(false);
    expect(await s2.consumeOnce('nonce-3', clock.t + 60_000)).toBe(true);
  });

  it('honours expiry in memory and on reopen', async () => {
    const clock = new FakeClock();
    const s = await openStore({ clock });
    expect(await s.consumeOnce('k', clock.t + 1000)).toBe(true);
    clock.t += 999;
    expect(await s.consumeOnce('k', clock.t + 1000)).toBe(false);
    clock.t += 1;
    expect(await s.consumeOnce('k', clock.t + 1000)).toBe(true); // expired: usable again, recorded again
    expect(await s.consumeOnce('short', clock.t + 10)).toBe(true);
    await s.close();
    open.pop();
    clock.t += 500;
    const s2 = await openStore({ clock });
    expect(s2.stats.liveNonces).toBe(1); // 'short' and the first 'k' expired and were dropped
    expect(await s2.consumeOnce('k', clock.t + 1000)).toBe(false);
    expect(await s2.consumeOnce('short', clock.t + 1000)).toBe(true);
  });

  it('refuses keys that are already expired, and bad arguments', async () => {
    const clock = new FakeClock();
    const s = await openStore({ clock });
    expect(await s.consumeOnce('old', clock.t)).toBe(false);
    await expectBroker(s.consumeOnce('', clock.t + 1), 'bad_request', 400);
    await expectBroker(s.consumeOnce('k', 1.5), 'bad_request', 400);
  });

  it('a failed write does not consume the key, and concurrent waiters see the failure', async () => {
    const clock = new FakeClock();
    const faults: Faults = { target: 'nonces.log', writes: 0, syncs: 0 };
    const s = await openStore({ clock, openFile: faultyOpen(faults) });
    faults.sync = true;
    const [a, b] = [s.consumeOnce('k', clock.t + 1000), s.consumeOnce('k', clock.t + 1000)];
    await expectBroker(a, 'store_unavailable', 503);
    await expectBroker(b, 'store_unavailable', 503);
    await expectBroker(s.checkWritable(), 'store_unavailable', 503);
    faults.sync = false;
    await s.checkWritable();
    expect(await s.consumeOnce('k', clock.t + 1000)).toBe(true);
  });

  it('compacts expired records away on open', async () => {
    const clock = new FakeClock();
    const s = await openStore({ clock, fsync: false });
    await Promise.all(Array.from({ length: 3000 }, (_, i) => s.consumeOnce(`n${i}`, clock.t + (i < 10 ? 1_000_000 : 10))));
    await s.close();
    open.pop();
    const file = path.join(dir, 'nonces.log');
    const before = (await fsp.stat(file)).size;
    clock.t += 100;
    const s2 = await openStore({ clock });
    expect(s2.stats.liveNonces).toBe(10);
    expect((await fsp.stat(file)).size).toBeLessThan(before / 100);
    expect(await s2.consumeOnce('n3', clock.t + 1000)).toBe(false);
    expect(await s2.consumeOnce('n2999', clock.t + 1000)).toBe(true);
    await s2.close();
    open.pop();
    const s3 = await openStore({ clock });
    expect(s3.stats.liveNonces).toBe(11);
  });
});

describe('EmbeddedStore kv', () => {
  it('puts, gets, lists, deletes, and everything survives reopen', async () => {
    const clock = new FakeClock();
    const s = await openStore({ clock });
    await s.kvPut('revocation', 'serial-1', 'why=compromised');
    await s.kvPut('revocation', 'serial-2', 'v1');
    await s.kvPut('revocation', 'serial-2', 'v2 ✓');
    await s.kvPut('lease', 'serial-1', 'other space');
    expect(await s.kvGet('revocation', 'serial-2')).toBe('v2 ✓');
    expect(await s.kvGet('revocation', 'nope')).toBeUndefined();
    expect(await s.kvGet('freeze', 'serial-1')).toBeUndefined();
    expect(await s.kvDelete('revocation', 'serial-1')).toBe(true);
    expect(await s.kvDelete('revocation', 'serial-1')).toBe(false);
    expect(await s.kvList('revocation')).toEqual([{ key: 'serial-2', value: 'v2 ✓' }]);
    expect(await s.kvList('empty')).toEqual([]);
    await s.close();
    open.pop();
    const s2 = await openStore({ clock });
    expect(await s2.kvGet('revocation', 'serial-1')).toBeUndefined();
    expect(await s2.kvGet('revocation', 'serial-2')).toBe('v2 ✓');
    expect(await s2.kvList('lease')).toEqual([{ key: 'serial-1', value: 'other space' }]);
    expect(s2.stats.kvRecords).toBe(2);
  });

  it('expires records in memory and drops them on reopen, compacting the file', async () => {
    const clock = new FakeClock();
    const s = await openStore({ clock });
    await s.kvPut('lease', 'short', 'a', clock.t + 100);
    await s.kvPut('lease', 'long', 'b', clock.t + 10_000);
    for (let i = 0; i < 20; i++) await s.kvPut('lease', 'churn', `v${i}`);
    clock.t += 99;
    expect(await s.kvGet('lease', 'short')).toBe('a');
    clock.t += 1;
    expect(await s.kvGet('lease', 'short')).toBeUndefined();
    expect(await s.kvDelete('lease', 'short')).toBe(false);
    expect((await s.kvList('lease')).map((r) => r.key).sort()).toEqual(['churn', 'long']);
    await s.close();
    open.pop();
    const file = path.join(dir, 'kv.log');
    const before = (await fsp.stat(file)).size;
    const s2 = await openStore({ clock });
    expect((await fsp.stat(file)).size).toBeLessThan(before / 5);
    expect(await s2.kvGet('lease', 'churn')).toBe('v19');
    expect(await s2.kvGet('lease', 'long')).toBe('b');
    clock.t += 10_000;
    await s2.close();
    open.pop();
    const s3 = await openStore({ clock });
    expect(await s3.kvList('lease')).toEqual([{ key: 'churn', value: 'v19' }]);
  });

  it('concurrent writes to one key land in call order; a delete behind a pending put sees it', async () => {
    const s = await openStore();
    const puts = Array.from({ length: 30 }, (_, i) => s.kvPut('secret', 'k', `v${i}`));
    const del = s.kvDelete('secret', 'k');
    const last = s.kvPut('secret', 'k', 'final');
    await Promise.all(puts);
    expect(await del).toBe(true);
    await last;
    expect(await s.kvGet('secret', 'k')).toBe('final');
  });

  it('a failed write changes nothing, rejects with 503, and the store recovers', async () => {
    const faults: Faults = { target: 'kv.log', writes: 0, syncs: 0 };
    const s = await openStore({ openFile: faultyOpen(faults) });
    await s.kvPut('freeze', 'ns/shop', 'on');
    faults.sync = true;
    await expectBroker(s.kvPut('freeze', 'ns/shop', 'changed'), 'store_unavailable', 503);
    await expectBroker(s.kvPut('freeze', 'ns/new', 'x'), 'store_unavailable', 503);
    await expectBroker(s.kvDelete('freeze', 'ns/shop'), 'store_unavailable', 503);
    await expectBroker(s.checkWritable(), 'store_unavailable', 503);
    expect(await s.kvList('freeze')).toEqual([{ key: 'ns/shop', value: 'on' }]);
    faults.sync = false;
    await s.checkWritable();
    await s.kvPut('freeze', 'ns/new', 'y');
    await s.close();
    open.pop();
    const s2 = await openStore();
    expect((await s2.kvList('freeze')).sort((a, b) => a.key.localeCompare(b.key))).toEqual([
      { key: 'ns/new', value: 'y' },
      { key: 'ns/shop', value: 'on' },
    ]);
  });

  it('refuses bad arguments with 400', async () => {
    const s = await openStore();
    await expectBroker(s.kvPut('Bad Space', 'k', 'v'), 'bad_request', 400);
    await expectBroker(s.kvPut('', 'k', 'v'), 'bad_request', 400);
    await expectBroker(s.kvPut('ok', '', 'v'), 'bad_request', 400);
    await expectBroker(s.kvPut('ok', 'k'.repeat(1025), 'v'), 'bad_request', 400);
    await expectBroker(s.kvPut('ok', 'k', 'x'.repeat(256 * 1024 + 1)), 'bad_request', 400);
    await expectBroker(s.kvPut('ok', 'k', 'v', 1.5), 'bad_request', 400);
    await expectBroker(s.kvGet('ok', ''), 'bad_request', 400);
    await expectBroker(s.kvList('a/b'), 'bad_request', 400);
  });
});

describe('EmbeddedStore hit and tryLock', () => {
  it('counts hits in a fixed window per key and resets after it', async () => {
    const clock = new FakeClock();
    const s = await openStore({ clock });
    expect(await s.hit('ip:a', 1000)).toEqual({ count: 1, resetInMs: 1000 });
    clock.t += 400;
    expect(await s.hit('ip:a', 1000)).toEqual({ count: 2, resetInMs: 600 });
    expect(await s.hit('ip:b', 1000)).toEqual({ count: 1, resetInMs: 1000 });
    const many = await Promise.all(Array.from({ length: 10 }, () => s.hit('ip:a', 1000)));
    expect(many.map((r) => r.count).sort((x, y) => x - y)).toEqual([3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    clock.t += 600;
    expect(await s.hit('ip:a', 1000)).toEqual({ count: 1, resetInMs: 1000 });
    await expectBroker(s.hit('ip:a', 0), 'bad_request', 400);
    await expectBroker(s.hit('', 1000), 'bad_request', 400);
  });

  it('gives a lock to one owner at a time, renews for the holder, and frees it on unlock or expiry', async () => {
    const clock = new FakeClock();
    const s = await openStore({ clock });
    expect(await s.tryLock('checkpoint', 'replica-a', 1000)).toBe(true);
    expect(await s.tryLock('checkpoint', 'replica-b', 1000)).toBe(false);
    clock.t += 900;
    expect(await s.tryLock('checkpoint', 'replica-a', 1000)).toBe(true); // renewal
    clock.t += 900;
    expect(await s.tryLock('checkpoint', 'replica-b', 1000)).toBe(false); // renewal extended it
    await s.unlock('checkpoint', 'replica-b'); // not the owner: no effect
    expect(await s.tryLock('checkpoint', 'replica-b', 1000)).toBe(false);
    await s.unlock('checkpoint', 'replica-a');
    expect(await s.tryLock('checkpoint', 'replica-b', 1000)).toBe(true);
    clock.t += 1000;
    expect(await s.tryLock('checkpoint', 'replica-a', 1000)).toBe(true); // b's lease expired
    await expectBroker(s.tryLock('checkpoint', 'a', 0), 'bad_request', 400);
    await expectBroker(s.tryLock('', 'a', 10), 'bad_request', 400);
  });
});
