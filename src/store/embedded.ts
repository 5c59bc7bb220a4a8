/**
 * Embedded Store: memory + append-only files in one directory (mode 0700), fsync'd.
 *
 *   <dir>/audit.log        audit entries, one record each, index = position in the file
 *   <dir>/audit.tree       the audit Merkle tree's nodes (audit/tree-file.ts)
 *   <dir>/audit.idx        audit.log record offsets, float64 LE, written before each snapshot
 *   <dir>/audit.snapshot   entries, log length and root the two files above are good for
 *                          (audit-snapshot.ts); an open with a valid one scans only the records after
 *                          it (openAudit below; docs/audit.md "On-disk format")
 *   <dir>/checkpoints.log  signed checkpoint notes (UTF-8); written without waiting for fdatasync, which
 *                          they do not need (see open()), and synced on close
 *   <dir>/nonces.log       consumed single-use keys (see consumeOnce)
 *   <dir>/kv.log           small records (kvPut/kvDelete), one JSON operation per record, replayed on
 *                          open; expired and overwritten records are compacted away on open
 *   <dir>/tessera.lock     the process that has the store open (store/dir-lock.ts): one at a time
 *
 * Rate-limit counters (hit) and locks (tryLock) live in memory only: one embedded store is one
 * process, so there is nobody to share them with, and a restart resets them (a fresh window, no holder).
 *
 * Record framing (all three files), big-endian:
 *
 *   offset 0  4 bytes  magic "TsR1"
 *   offset 4  4 bytes  CRC-32 (zlib polynomial) of bytes 8..12+L, i.e. the length field and the payload
 *   offset 8  4 bytes  payload length L (u32, at most MAX_PAYLOAD)
 *   offset 12 L bytes  payload
 *
 * The CRC catches torn writes and media corruption; tampering is caught by the Merkle root over the
 * audit entries (and signed checkpoints), not by this checksum. The magic lets recovery tell a torn
 * tail (nothing valid after the first bad record: truncate it) from damage in the middle of the file
 * (a valid record follows the bad one: refuse to open, never silently drop acknowledged entries).
 *
 * Writes use group commit: appends queue while a flush runs; the next flush writes everything queued
 * with one positioned write and one fdatasync, then resolves the callers in order. On failure the
 * whole batch is rejected and the file is truncated back to its last durable length before anything
 * else is written, so a rejected entry cannot reappear.
 *
 * Files synced per write are preallocated: the file grows in zeroed chunks (PREALLOCATE_BYTES, written
 * and synced before use), so a group commit overwrites bytes that already exist instead of extending the
 * file, and its durable write need not also commit a new file size through the file system's journal
 * (on ext4 ~120 instead of ~180 µs here: docs/performance.md). The log therefore ends at the first byte
 * that does not start a valid record, and may be followed by zero bytes, which are not data: opening
 * truncates them off with any torn tail (the next write preallocates again).
 */
import { createHash } from 'node:crypto';
import { constants as fsConstants, promises as fsp } from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { type Clock, systemClock } from '../clock.js';
import { BrokerError, auditHistoryLost, auditUnavailable, storeUnavailable } from '../errors.js';
import { writeFileAtomic } from '../atomic-file.js';
import { MerkleTree, leafHash } from '../audit/merkle.js';
import { TreeFile } from '../audit/tree-file.js';
import { type AuditSnapshot, decodeSnapshot, encodeSnapshot } from './audit-snapshot.js';
import { type DirLock, lockDataDir } from './dir-lock.js';
import { checkCheckpointSize, checkCursor, checkDuration, checkExpiry, checkName, checkSpace, checkValue, storedCheckpointSize } from './limits.js';
import type { KvRef, PersistedAuditTree, Store } from './store.js';

/** The subset of fs.promises.FileHandle the store uses; injectable so tests can make I/O fail. */
export interface StoreFileHandle {
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  write(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesWritten: number }>;
  datasync(): Promise<void>;
  truncate(len: number): Promise<void>;
  stat(): Promise<{ size: number }>;
  close(): Promise<void>;
  /**
   * Every write is durable when it resolves (opened with O_DSYNC: POSIX synchronized I/O data
   * integrity completion, what fdatasync gives), so a flush needs no separate datasync.
   */
  readonly writesAreDurable?: boolean;
}

/**
 * Opens (creating if missing, mode 0600) a file for positioned reads and writes; with `durableWrites`,
 * one whose writes complete only once durable (O_DSYNC), if the opener can (it says so on the handle).
 */
export type OpenStoreFile = (filePath: string, opts?: { readonly durableWrites?: boolean }) => Promise<StoreFileHandle>;

export const openStoreFile: OpenStoreFile = async (filePath, opts) => {
  if (opts?.durableWrites !== true) return fsp.open(filePath, fsConstants.O_RDWR | fsConstants.O_CREAT, 0o600);
  const h = await fsp.open(filePath, fsConstants.O_RDWR | fsConstants.O_CREAT | fsConstants.O_DSYNC, 0o600);
  return {
    read: (b, o, l, pos) => h.read(b, o, l, pos),
    write: (b, o, l, pos) => h.write(b, o, l, pos),
    datasync: () => h.datasync(),
    truncate: (len) => h.truncate(len),
    stat: () => h.stat(),
    close: () => h.close(),
    writesAreDurable: true,
  };
};

export interface EmbeddedStoreOptions {
  /** fdatasync after every group commit (default true). Only tests and benchmarks turn it off. */
  fsync?: boolean;
  /** Time source for nonce expiry. */
  clock?: Clock;
  /** File opener; tests inject failures through it. */
  openFile?: OpenStoreFile;
  /** Take an audit snapshot (audit.snapshot) every this many new entries (default 2^18), and on close. */
  snapshotEvery?: number;
}

export interface EmbeddedStoreStats {
  auditEntries: number;
  auditBytes: number;
  /** Successful group commits (one write + one fdatasync each). */
  auditFlushes: number;
  auditFlushFailures: number;
  /** Bytes of torn tail dropped from audit.log when this store was opened. */
  auditTornBytesDropped: number;
  /** Zero bytes (space preallocated by the last process, never written) dropped from audit.log on open. */
  auditPreallocatedBytesDropped: number;
  /** Zeroed chunks written ahead of audit.log's records by this process (one write each). */
  auditPreallocations: number;
  /**
   * How this open found audit.snapshot: 'used' (entries after it replayed), 'none', or why it was not
   * used ('invalid: …'; then every entry was replayed).
   */
  auditSnapshot: string;
  /** Audit entries read and hashed on open (all of them without a usable snapshot). */
  auditReplayed: number;
  /** Snapshots written by this process / failed (a failure only means a longer replay next open). */
  auditSnapshotsTaken: number;
  auditSnapshotFailures: number;
  /** Merkle nodes read from audit.tree (old proofs and leaf hashes). */
  auditTreeDiskReads: number;
  liveNonces: number;
  /** Live kv records (expired ones may still be counted until they are next looked at). */
  kvRecords: number;
}

/** File header: "TsLg" + u32 format version. */
const FILE_HEADER = Buffer.from([0x54, 0x73, 0x4c, 0x67, 0, 0, 0, 1]);
const MAGIC = Buffer.from('TsR1', 'latin1');
const MAGIC_U32 = MAGIC.readUInt32BE(0);
const HEADER = 12;
/** Largest payload accepted; audit entries and notes are a few hundred bytes. */
export const MAX_PAYLOAD = 1 << 20;
const READ_CHUNK = 8 << 20;
/** How far ahead a file synced per write is preallocated with zeros (one ~1.3 ms write per ~1,900 entries). */
const PREALLOCATE_BYTES = 1 << 20;
/** Cap per group commit so one flush never builds an unbounded buffer under load. */
const MAX_BATCH_BYTES = 8 << 20;
const MAX_NONCE_KEY = 4096;

type Unavailable = (message: string, cause?: unknown) => BrokerError;

function frameRecord(payload: Uint8Array, out: Buffer, at: number): number {
  MAGIC.copy(out, at);
  out.writeUInt32BE(payload.length, at + 8);
  out.set(payload, at + HEADER);
  out.writeUInt32BE(crc32(out.subarray(at + 8, at + HEADER + payload.length)), at + 4);
  return at + HEADER + payload.length;
}

/** Validates the record starting at `at` in `buf`; returns its payload length or -1. */
function checkRecord(buf: Buffer, at: number, avail: number): number {
  if (avail < HEADER || buf.readUInt32BE(at) !== MAGIC_U32) return -1;
  const len = buf.readUInt32BE(at + 8);
  if (len > MAX_PAYLOAD || HEADER + len > avail) return -1;
  return crc32(buf.subarray(at + 8, at + HEADER + len)) === buf.readUInt32BE(at + 4) ? len : -1;
}

/** Where a scan may start: after `count` records ending at byte `end`, whose offsets audit.idx holds. */
interface ResumeAt {
  count: number;
  end: number;
  /** offsets[from..to] (to inclusive) of records before `count`. */
  readOffsets: (from: number, to: number) => Promise<Float64Array>;
}

interface PendingAppend {
  /** A probe writes `frame` (zeros, never a valid record) past the end, syncs, and truncates it off. */
  probe?: boolean;
  frame: Buffer;
  lengths: number[]; // framed length of each record in `frame`
  resolve: (firstIndex: number) => void;
  reject: (err: unknown) => void;
}

/** One append-only framed file with in-memory record offsets and group commit. */
class FramedFile {
  /**
   * offsets[i] = file offset of record #base + i; offsets[count - base] = durable file length. Records
   * before #base (those an audit snapshot covers) have their offsets in audit.idx, read when needed.
   */
  #offsets = new Float64Array(1024);
  #base = 0;
  #readOffsets: ((from: number, to: number) => Promise<Float64Array>) | undefined;
  #count = 0;
  #queue: PendingAppend[] = [];
  #flushing = false;
  #idle: Promise<void> = Promise.resolve();
  #markIdle: () => void = () => {};
  /** A failed flush may have left bytes past the durable length: truncate before writing again. */
  #needsTruncate = false;
  #lastFlushFailed = false;
  #closed = false;
  /** File bytes known written (records, then preallocated zeros): a write below this extends nothing. */
  #allocated = 0;
  flushes = 0;
  flushFailures = 0;
  tornBytesDropped = 0;
  /** Zero bytes past the last record dropped on open (preallocated space; not data). */
  preallocatedBytesDropped = 0;
  /** Zeroed chunks written ahead of the records. */
  preallocations = 0;

  private constructor(
    readonly filePath: string,
    private readonly handle: StoreFileHandle,
    private readonly fsync: boolean,
    private readonly unavailable: Unavailable,
  ) {}

  get count(): number {
    return this.#count;
  }

  /** Offsets of records [start, end] (end inclusive: where record `end` starts), a copy; start >= the resume point. */
  offsets(start: number, end: number): Float64Array {
    if (start < this.#base || end > this.#count) throw new Error(`offsets [${start}, ${end}] not in memory`);
    return this.#offsets.slice(start - this.#base, end - this.#base + 1);
  }

  get durableLength(): number {
    return this.#offsets[this.#count - this.#base] ?? 0;
  }

  get failed(): boolean {
    return this.#lastFlushFailed || this.#needsTruncate;
  }

  /**
   * Opens and scans the file: whole valid records are accepted, a torn tail is truncated off, and a bad
   * record followed by a valid one refuses the open. `onRecord` sees each payload (a view, valid only
   * during the call).
   */
  static async open(
    filePath: string,
    openFile: OpenStoreFile,
    fsync: boolean,
    unavailable: Unavailable,
    onRecord?: (payload: Buffer, index: number) => void,
    resume?: ResumeAt,
  ): Promise<FramedFile> {
    // Group commits of an fsync'd file: one O_DSYNC write instead of a write and an fdatasync, i.e.
    // one thread-pool hop instead of two on every flush (and the same durability before it resolves).
    const handle = await openFile(filePath, fsync ? { durableWrites: true } : {});
    const file = new FramedFile(filePath, handle, fsync, unavailable);
    try {
      await file.#scan(onRecord, resume);
    } catch (err) {
      await handle.close().catch(() => {});
      throw err;
    }
    // The scan truncated whatever followed the last record: nothing is preallocated yet.
    file.#allocated = file.durableLength;
    return file;
  }

  async #scan(onRecord?: (payload: Buffer, index: number) => void, resume?: ResumeAt): Promise<void> {
    let fileSize = (await this.handle.stat()).size;
    fileSize = await this.#checkFileHeader(fileSize);
    this.#offsets[0] = FILE_HEADER.length;
    if (resume) {
      // Records [0, resume.count) were checked when the snapshot naming them was taken: scan the rest.
      if (resume.end > fileSize) {
        throw storeUnavailable(`${this.filePath}: holds ${fileSize} bytes, fewer than the ${resume.end} its snapshot says were durable`);
      }
      this.#offsets[0] = resume.end;
      this.#base = this.#count = resume.count;
      this.#readOffsets = resume.readOffsets;
    }
    let buf = Buffer.alloc(0);
    let bufStart = 0;
    let bufLen = 0;
    // Makes [at, at+n) resident (n clipped to the file end); returns bytes available from `at`.
    const ensure = async (at: number, n: number): Promise<number> => {
      const want = Math.min(n, fileSize - at);
      if (at >= bufStart && at + want <= bufStart + bufLen) return bufStart + bufLen - at;
      const len = Math.min(Math.max(READ_CHUNK, want), fileSize - at);
      if (buf.length < len) buf = Buffer.allocUnsafeSlow(len);
      await readFully(this.handle, buf, len, at);
      bufStart = at;
      bufLen = len;
      return len;
    };
    let off = this.durableLength;
    while (off < fileSize) {
      let avail = await ensure(off, HEADER);
      let len = -1;
      if (avail >= HEADER && buf.readUInt32BE(off - bufStart) === MAGIC_U32) {
        const claimed = buf.readUInt32BE(off - bufStart + 8);
        if (claimed <= MAX_PAYLOAD && off + HEADER + claimed <= fileSize) {
          avail = await ensure(off, HEADER + claimed);
          len = checkRecord(buf, off - bufStart, avail);
        }
      }
      if (len < 0) {
        await this.#handleBadRecord(off, fileSize);
        break;
      }
      const at = off - bufStart;
      onRecord?.(buf.subarray(at + HEADER, at + HEADER + len), this.#count);
      off += HEADER + len;
      this.#pushOffset(off);
    }
  }

  /**
   * Checks (or, for a new or torn-at-creation file, writes) the 8-byte file header; returns the file
   * size to scan. A file that is not ours, or of another format version, is refused untouched.
   */
  async #checkFileHeader(fileSize: number): Promise<number> {
    const head = Buffer.alloc(FILE_HEADER.length);
    const n = Math.min(fileSize, head.length);
    if (n > 0) await readFully(this.handle, head, n, 0);
    if (fileSize >= FILE_HEADER.length && head.equals(FILE_HEADER)) return fileSize;
    if (fileSize < FILE_HEADER.length && head.subarray(0, n).equals(FILE_HEADER.subarray(0, n))) {
      await this.handle.truncate(0);
      await writeFully(this.handle, FILE_HEADER, 0);
      if (this.fsync) await this.handle.datasync();
      return FILE_HEADER.length;
    }
    throw storeUnavailable(
      `${this.filePath}: not a Tessera log file of format ${FILE_HEADER.readUInt32BE(4)} (header ${head.toString('hex')}); refusing to open`,
    );
  }

  /**
   * Bad record at `off`. A crash can only tear the last group commit, which is at most MAX_BATCH_BYTES:
   * if the damaged region is that small and no valid record follows it, it is a torn tail and is
   * truncated off. Anything else is corruption or tampering: refuse, leaving the file untouched.
   */
  async #handleBadRecord(off: number, fileSize: number): Promise<void> {
    const refuse = (why: string): BrokerError =>
      storeUnavailable(
        `${this.filePath}: corrupt record at byte ${off} (after ${this.#count} valid records); ${why}. ` +
          `Refusing to open: this is not a torn write. Restore from backup or inspect the file; do not delete it.`,
      );
    // A crash leaves at most one torn batch and the zeros preallocated after it (see the header).
    if (fileSize - off > MAX_BATCH_BYTES + PREALLOCATE_BYTES) {
      throw refuse(`${fileSize - off} bytes follow it, more than one write batch and the space preallocated after it`);
    }
    const rest = Buffer.allocUnsafeSlow(fileSize - off);
    await readFully(this.handle, rest, rest.length, off);
    // Trailing zero bytes are preallocated space never written to: not data.
    let tail = rest.length;
    while (tail > 0 && rest[tail - 1] === 0) tail--;
    if (tail > MAX_BATCH_BYTES) throw refuse(`${tail} bytes follow it, more than one write batch`);
    const region = rest.subarray(0, tail);
    for (let i = region.indexOf(MAGIC, 1); i !== -1; i = region.indexOf(MAGIC, i + 1)) {
      if (checkRecord(region, i, tail - i) >= 0) throw refuse(`a valid record follows at byte ${off + i}`);
    }
    this.tornBytesDropped = tail;
    this.preallocatedBytesDropped = rest.length - tail;
    await this.#truncateTo(off);
  }

  /**
   * Cuts the file to `length` (durably, when synced per write): a torn or failed write, a probe, or the
   * zeros preallocated after it go, and nothing past `length` is allocated any more.
   */
  async #truncateTo(length: number): Promise<void> {
    await this.handle.truncate(length);
    if (this.fsync) await this.handle.datasync();
    this.#needsTruncate = false;
    this.#allocated = length;
  }

  #pushOffset(end: number): void {
    if (this.#count - this.#base + 2 > this.#offsets.length) {
      const grown = new Float64Array(this.#offsets.length * 2);
      grown.set(this.#offsets);
      this.#offsets = grown;
    }
    this.#count++;
    this.#offsets[this.#count - this.#base] = end;
  }

  /** Queues payloads for the next group commit; resolves with the first one's index once durable. */
  append(payloads: readonly Uint8Array[]): Promise<number> {
    if (this.#closed) return Promise.reject(this.unavailable(`${path.basename(this.filePath)} is closed`));
    let total = 0;
    for (const p of payloads) total += HEADER + p.length;
    // One call is one write; keeping it within a batch bounds what a crash can tear (see #handleBadRecord).
    if (total > MAX_BATCH_BYTES) {
      return Promise.reject(new BrokerError('bad_request', `one append may carry at most ${MAX_BATCH_BYTES} bytes`));
    }
    const frame = Buffer.allocUnsafe(total);
    const lengths: number[] = [];
    let at = 0;
    for (const p of payloads) {
      lengths.push(HEADER + p.length);
      at = frameRecord(p, frame, at);
    }
    return new Promise<number>((resolve, reject) => {
      this.#queue.push({ frame, lengths, resolve, reject });
      this.#kick();
    });
  }

  /** Resolves once everything queued so far has been flushed (or failed). */
  drain(): Promise<void> {
    return this.#idle;
  }

  /**
   * Probe after a failed flush, serialized with the flushes: truncate to the durable length, write a
   * few zero bytes past it, fdatasync, truncate them off again. A crash mid-probe leaves only a torn
   * tail, which open() drops. Rejects if the file still cannot be written; clears the failure if it can.
   */
  recover(): Promise<void> {
    if (!this.failed) return Promise.resolve();
    if (this.#closed) return Promise.reject(this.unavailable(`${path.basename(this.filePath)} is closed`));
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ probe: true, frame: Buffer.alloc(HEADER), lengths: [], resolve: () => resolve(), reject });
      this.#kick();
    });
  }

  #kick(): void {
    if (this.#flushing) return;
    this.#flushing = true;
    this.#idle = new Promise<void>((r) => (this.#markIdle = r));
    void this.#flushLoop();
  }

  async #flushLoop(): Promise<void> {
    while (this.#queue.length > 0) {
      let bytes = 0;
      let n = 0;
      // A probe always flushes alone; appends batch up to MAX_BATCH_BYTES (at least one).
      while (n < this.#queue.length) {
        const next = this.#queue[n] as PendingAppend;
        if (n > 0 && (next.probe || (this.#queue[0] as PendingAppend).probe || bytes + next.frame.length > MAX_BATCH_BYTES)) break;
        bytes += next.frame.length;
        n++;
      }
      await this.#flush(this.#queue.splice(0, n), bytes);
    }
    // No await between the empty-queue check and this: an append arriving now sees !flushing and kicks.
    this.#flushing = false;
    this.#markIdle();
  }

  async #flush(batch: PendingAppend[], bytes: number): Promise<void> {
    const base = this.durableLength;
    try {
      if (this.#needsTruncate) await this.#truncateTo(base);
      // A probe is truncated off again at once: nothing to preallocate for it.
      if (this.fsync && !batch[0]?.probe && base + bytes > this.#allocated) await this.#preallocate(base + bytes + PREALLOCATE_BYTES);
      const buf = batch.length === 1 ? (batch[0] as PendingAppend).frame : Buffer.concat(batch.map((b) => b.frame), bytes);
      await writeFully(this.handle, buf, base);
      if (this.fsync && this.handle.writesAreDurable !== true) await this.handle.datasync();
      if (batch[0]?.probe) await this.#truncateTo(base);
    } catch (err) {
      this.flushFailures++;
      this.#lastFlushFailed = true;
      this.#needsTruncate = true;
      // Best effort now; if this fails too, the next flush (or probe) truncates before writing.
      try {
        await this.#truncateTo(base);
      } catch {
        /* retried before the next write */
      }
      const e = this.unavailable(`${path.basename(this.filePath)}: write could not be made durable`, err);
      for (const p of batch) p.reject(e);
      return;
    }
    this.#lastFlushFailed = false;
    if (batch[0]?.probe) {
      batch[0].resolve(this.#count);
      return;
    }
    this.flushes++;
    let end = base;
    for (const p of batch) {
      const first = this.#count;
      for (const len of p.lengths) {
        end += len;
        this.#pushOffset(end);
      }
      p.resolve(first);
    }
  }

  /**
   * Writes zeros from the allocated end up to `end` and makes them durable, so that the records written
   * there later overwrite existing bytes. Inside a flush: its failure fails that flush like any write.
   */
  async #preallocate(end: number): Promise<void> {
    await writeFully(this.handle, Buffer.alloc(end - this.#allocated), this.#allocated);
    if (this.handle.writesAreDurable !== true) await this.handle.datasync();
    this.#allocated = end;
    this.preallocations++;
  }

  /** Payloads of records [start, end), read with positioned reads and re-checked against their CRC. */
  async read(start: number, end: number): Promise<Buffer[]> {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start || end > this.#count) {
      throw new BrokerError('bad_request', `record range must satisfy 0 <= start <= end <= ${this.#count}`);
    }
    if (this.#closed) throw this.unavailable(`${path.basename(this.filePath)} is closed`);
    const out: Buffer[] = [];
    let next = start;
    // Records before the resume point: their offsets from audit.idx, in one read for the range.
    if (next < this.#base && this.#readOffsets) {
      const stop = Math.min(end, this.#base);
      let offs: Float64Array;
      try {
        offs = await this.#readOffsets(next, stop);
      } catch (err) {
        throw this.unavailable(`${path.basename(this.filePath)}: reading the offset index failed`, err);
      }
      await this.#readRecords(next, stop, (k) => offs[k - start] as number, out);
      next = stop;
    }
    const base = this.#base;
    const mem = this.#offsets;
    await this.#readRecords(next, end, (k) => mem[k - base] as number, out);
    return out;
  }

  async #readRecords(start: number, end: number, offsetOf: (k: number) => number, out: Buffer[]): Promise<void> {
    let i = start;
    while (i < end) {
      // Group whole records into reads of at most READ_CHUNK bytes (at least one record).
      const from = offsetOf(i);
      let j = i + 1;
      while (j < end && offsetOf(j + 1) - from <= READ_CHUNK) j++;
      const to = offsetOf(j);
      const buf = Buffer.allocUnsafeSlow(to - from);
      try {
        await readFully(this.handle, buf, buf.length, from);
      } catch (err) {
        throw this.unavailable(`${path.basename(this.filePath)}: read failed`, err);
      }
      for (let k = i; k < j; k++) {
        const at = offsetOf(k) - from;
        const recLen = offsetOf(k + 1) - offsetOf(k);
        if (checkRecord(buf, at, recLen) !== recLen - HEADER) {
          throw this.unavailable(`${path.basename(this.filePath)}: record ${k} failed its checksum on read`);
        }
        out.push(buf.subarray(at + HEADER, at + recLen));
      }
      i = j;
    }
  }

  async close(opts: { sync?: boolean } = {}): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.drain();
    try {
      if (opts.sync === true) await this.handle.datasync();
    } finally {
      await this.handle.close();
    }
  }
}

async function writeFully(h: StoreFileHandle, buf: Buffer, position: number): Promise<void> {
  let written = 0;
  while (written < buf.length) {
    const { bytesWritten } = await h.write(buf, written, buf.length - written, position + written);
    if (bytesWritten <= 0) throw new Error('short write');
    written += bytesWritten;
  }
}

async function readFully(h: StoreFileHandle, buf: Buffer, len: number, position: number): Promise<void> {
  let got = 0;
  while (got < len) {
    const { bytesRead } = await h.read(buf, got, len - got, position + got);
    if (bytesRead <= 0) throw new Error(`unexpected end of file at ${position + got}`);
    got += bytesRead;
  }
}

interface NonceEntry {
  expiresAt: number;
  /** Set while the record is being made durable; concurrent callers wait on it. */
  pending?: Promise<boolean> | undefined;
}

interface KvRecord {
  value: string;
  expiresAt?: number | undefined;
}

/** One kv.log record: a put (`v` set, `x` optional expiry) or a delete (no `v`). */
interface KvOp {
  s: string;
  k: string;
  v?: string;
  x?: number;
}

function parseKvOp(p: Buffer): KvOp | undefined {
  try {
    const o = JSON.parse(p.toString('utf8')) as Partial<KvOp> | null;
    if (!o || typeof o.s !== 'string' || typeof o.k !== 'string') return undefined;
    if (o.v !== undefined && typeof o.v !== 'string') return undefined;
    if (o.x !== undefined && typeof o.x !== 'number') return undefined;
    return o as KvOp;
  } catch {
    return undefined;
  }
}

const kvPayload = (op: KvOp): Buffer => Buffer.from(JSON.stringify(op), 'utf8');

/** kv space of the audit devices' positions ('.' cannot start a space a caller names: checkSpace refuses it). */
const CURSOR_SPACE = '.audit-cursor';

/** Directories open in this process: two stores on one directory would interleave writes. */
const openDirs = new Set<string>();

export class EmbeddedStore implements Store {
  readonly kind = 'embedded' as const;
  readonly dir: string;
  readonly #audit: FramedFile;
  readonly #checkpoints: FramedFile;
  /** Not readonly: compaction on open swaps in the rewritten file. */
  #nonceFile: FramedFile;
  readonly #nonces: Map<string, NonceEntry>;
  #kvFile!: FramedFile;
  /** space → key → record; updated only once the operation is durable, in file order. */
  #kv = new Map<string, Map<string, KvRecord>>();
  /** `space\0key` → kv writes queued but not yet durable (a delete must not be skipped while one is). */
  readonly #kvPending = new Map<string, number>();
  /** Serializes appendCheckpointIfNewer: its compare and its append are one step. */
  #checkpointTurn: Promise<unknown> = Promise.resolve();
  /**
   * The newest stored checkpoint (by file position), once read or written: only this process writes
   * checkpoints.log (the data dir is locked), so the compare needs no read per receipt.
   */
  #newestCheckpoint: { readonly index: number; readonly note: string } | undefined;
  /** Fixed-window counters: `windowMs\0key` → current window. */
  readonly #hits = new Map<string, { count: number; resetAt: number }>();
  #hitSweepAt = 1024;
  readonly #locks = new Map<string, { owner: string; expiresAt: number }>();
  /** The running cursor advance per audit device (advances of one device are serialized). */
  readonly #cursorWrites = new Map<string, Promise<number>>();
  readonly #clock: Clock;
  readonly #openFile: OpenStoreFile;
  readonly #fsync: boolean;
  readonly #lock: DirLock;
  #tree!: TreeFile;
  /** audit.idx: offsets[0..k] of audit.log records as float64 LE; #idxValues of them are written. */
  #idx!: fsp.FileHandle;
  #idxValues = 0;
  /** Entries the newest durable audit.snapshot covers. */
  #snapEntries = 0;
  #snapshotEvery = SNAPSHOT_EVERY;
  #snapshotting: Promise<void> | null = null;
  #snapshotState = 'none';
  /** Entries the snapshot used at open covered (0 without one). */
  #snapshotAtOpen = 0;
  #snapshotsTaken = 0;
  #snapshotFailures = 0;
  /** The audit Merkle tree's nodes on disk (audit.tree), until an AuditLog claims them (store.ts). */
  #unclaimedTree: PersistedAuditTree | undefined;
  #sweepAt = 1024;
  #closed = false;
  #closing: Promise<void> | null = null;

  private constructor(
    dir: string,
    audit: FramedFile,
    checkpoints: FramedFile,
    nonceFile: FramedFile,
    nonces: Map<string, NonceEntry>,
    clock: Clock,
    openFile: OpenStoreFile,
    fsync: boolean,
    lock: DirLock,
  ) {
    this.dir = dir;
    this.#fsync = fsync;
    this.#lock = lock;
    this.#audit = audit;
    this.#checkpoints = checkpoints;
    this.#nonceFile = nonceFile;
    this.#nonces = nonces;
    this.#clock = clock;
    this.#openFile = openFile;
  }

  static async open(dir: string, opts: EmbeddedStoreOptions = {}): Promise<EmbeddedStore> {
    const fsync = opts.fsync ?? true;
    const clock = opts.clock ?? systemClock;
    const openFile = opts.openFile ?? openStoreFile;
    const abs = path.resolve(dir);
    if (openDirs.has(abs)) throw storeUnavailable(`store directory ${abs} is already open in this process`);
    openDirs.add(abs);
    const opened: FramedFile[] = [];
    const closeOnError: { tree: TreeFile; idx: fsp.FileHandle }[] = [];
    let lock: DirLock | undefined;
    try {
      await fsp.mkdir(abs, { recursive: true, mode: 0o700 });
      // One process per directory: a second broker appending to the same files would destroy the log.
      lock = await lockDataDir(abs);
      const opening = await openAudit(abs, openFile, fsync);
      const audit = opening.audit;
      opened.push(audit);
      closeOnError.push(opening);
      // Checkpoint notes are written without waiting for fdatasync (synced on close). A note is a pure
      // function of audit entries that are already durable (origin, size, root; Ed25519 signatures are
      // deterministic): if the machine loses the last notes in a crash, the entries they cover are on
      // disk, the next checkpoint covers at least as much, and a lost note could be re-signed byte for
      // byte. Saves one fdatasync per signing round (docs/performance.md).
      const checkpoints = await FramedFile.open(path.join(abs, 'checkpoints.log'), openFile, false, storeUnavailable);
      opened.push(checkpoints);
      const now = clock.now();
      const nonces = new Map<string, NonceEntry>();
      let nonceRecords = 0;
      const nonceFile = await FramedFile.open(path.join(abs, 'nonces.log'), openFile, fsync, storeUnavailable, (p) => {
        nonceRecords++;
        if (p.length !== 8 + 32) return; // unknown record shape: ignore rather than refuse
        const expiresAt = p.readDoubleBE(0);
        if (expiresAt <= now) return;
        const key = p.toString('base64', 8);
        const prev = nonces.get(key);
        if (!prev || prev.expiresAt < expiresAt) nonces.set(key, { expiresAt });
      });
      opened.push(nonceFile);
      const kv = new Map<string, Map<string, KvRecord>>();
      let kvRecords = 0;
      const kvFile = await FramedFile.open(path.join(abs, 'kv.log'), openFile, fsync, storeUnavailable, (p) => {
        kvRecords++;
        const op = parseKvOp(p);
        if (!op) return; // unknown record shape: ignore rather than refuse (like nonces)
        let space = kv.get(op.s);
        if (op.v === undefined) {
          space?.delete(op.k);
          return;
        }
        if (op.x !== undefined && op.x <= now) {
          space?.delete(op.k); // a put that has already expired still replaces what was there
          return;
        }
        if (!space) kv.set(op.s, (space = new Map<string, KvRecord>()));
        space.set(op.k, { value: op.v, expiresAt: op.x });
      });
      opened.push(kvFile);
      if (fsync) await syncDir(abs);
      const store = new EmbeddedStore(abs, audit, checkpoints, nonceFile, nonces, clock, openFile, fsync, lock);
      store.#kvFile = kvFile;
      store.#tree = opening.tree;
      store.#idx = opening.idx;
      store.#idxValues = opening.idxValues;
      store.#snapEntries = opening.snapshotEntries;
      store.#snapshotState = opening.state;
      store.#snapshotAtOpen = opening.snapshotEntries;
      store.#snapshotEvery = opts.snapshotEvery ?? SNAPSHOT_EVERY;
      store.#unclaimedTree = store.#persistedTree(opening.tree.leaves);
      store.#kv = kv;
      // Expired nonces are dead weight: rewrite the file when they dominate it.
      if (nonceRecords > 1024 && nonceRecords > 2 * nonces.size) {
        store.#nonceFile = await store.#compact('nonces.log', store.#nonceFile, fsync, function* () {
          for (const [key, e] of nonces) yield noncePayload(Buffer.from(key, 'base64'), e.expiresAt);
        });
      }
      // kv records are few; drop every overwritten, deleted or expired one on each open.
      let liveKv = 0;
      for (const space of kv.values()) liveKv += space.size;
      if (kvRecords > liveKv) {
        store.#kvFile = await store.#compact('kv.log', store.#kvFile, fsync, function* () {
          for (const [s, space] of kv) for (const [k, r] of space) yield kvPayload({ s, k, v: r.value, ...(r.expiresAt !== undefined ? { x: r.expiresAt } : {}) });
        });
      }
      return store;
    } catch (err) {
      await Promise.all(opened.map((f) => f.close().catch(() => {})));
      for (const o of closeOnError) {
        o.tree.close();
        await o.idx.close().catch(() => {});
      }
      await lock?.release().catch(() => {});
      openDirs.delete(abs);
      if (err instanceof BrokerError) throw err;
      throw storeUnavailable(`cannot open store in ${abs}`, err);
    }
  }

  /**
   * Replaces `<name>` with only the given live records (temp file, fsync, rename, fsync dir) and returns
   * the file to use from now on. Best effort up to the rename: if writing the copy fails, the old file
   * simply stays in use.
   */
  async #compact(name: string, current: FramedFile, fsync: boolean, records: () => Iterable<Buffer>): Promise<FramedFile> {
    const file = path.join(this.dir, name);
    const tmp = `${file}.compact`;
    try {
      await fsp.rm(tmp, { force: true });
      const fresh = await FramedFile.open(tmp, this.#openFile, fsync, storeUnavailable);
      try {
        let chunk: Buffer[] = [];
        let bytes = 0;
        for (const rec of records()) {
          chunk.push(rec);
          bytes += HEADER + rec.length;
          if (chunk.length === 65_536 || bytes > MAX_BATCH_BYTES / 2) {
            await fresh.append(chunk);
            chunk = [];
            bytes = 0;
          }
        }
        if (chunk.length > 0) await fresh.append(chunk);
      } finally {
        await fresh.close();
      }
      await fsp.rename(tmp, file);
    } catch {
      await fsp.rm(tmp, { force: true }).catch(() => {});
      return current;
    }
    if (fsync) await syncDir(this.dir);
    await current.close();
    return FramedFile.open(file, this.#openFile, fsync, storeUnavailable);
  }

  claimAuditTree(): PersistedAuditTree | undefined {
    const t = this.#unclaimedTree;
    this.#unclaimedTree = undefined;
    return t;
  }

  #persistedTree(size: number): PersistedAuditTree {
    return {
      nodes: this.#tree,
      size,
      grew: (n: number) => {
        if (n - this.#snapEntries >= this.#snapshotEvery && this.#snapshotting === null && !this.#closed) {
          this.#snapshotting = this.#takeSnapshot().finally(() => {
            this.#snapshotting = null;
          });
        }
      },
    };
  }

  /**
   * Makes the tree's nodes and the record offsets durable up to the tree's size N, then replaces
   * audit.snapshot (atomically) with (N, audit.log length after N, root of N). Never throws: a failed
   * snapshot only means the next open replays more.
   */
  async #takeSnapshot(): Promise<void> {
    try {
      const n = Math.min(this.#tree.leaves, this.#audit.count);
      if (n <= this.#snapEntries) return;
      const root = new MerkleTree({ nodes: this.#tree, size: n }).root();
      // audit.idx already holds offsets [0, idxValues); the rest are in memory.
      const from = Math.min(this.#idxValues, n + 1);
      const offsets = this.#audit.offsets(from, n);
      await this.#tree.sync();
      const bytes = Buffer.from(offsets.buffer, offsets.byteOffset, offsets.byteLength);
      if (!isLittleEndian) for (let i = 0; i < bytes.length; i += 8) bytes.subarray(i, i + 8).reverse();
      await writeFully(this.#idx, bytes, from * 8);
      await this.#idx.datasync();
      this.#idxValues = n + 1;
      const snap: AuditSnapshot = { entries: n, logBytes: offsets[offsets.length - 1] as number, rootHash: root };
      await writeFileAtomic(path.join(this.dir, 'audit.snapshot'), encodeSnapshot(snap));
      this.#snapEntries = n;
      this.#snapshotsTaken++;
    } catch {
      this.#snapshotFailures++;
    }
  }

  appendAuditEntries(entries: readonly Buffer[]): Promise<number> {
    if (this.#closed) return Promise.reject(auditUnavailable('store is closed'));
    for (const e of entries) {
      if (!(e instanceof Uint8Array) || e.length > MAX_PAYLOAD) {
        return Promise.reject(new BrokerError('bad_request', `audit entries must be buffers of at most ${MAX_PAYLOAD} bytes`));
      }
    }
    return this.#audit.append(entries);
  }

  /** The records are read and the append queued in one synchronous step (no await before it): nothing runs in between. */
  async appendAuditEntriesUnless(entries: readonly Buffer[], unless: readonly KvRef[]): Promise<{ index: number } | { blocked: (string | undefined)[] }> {
    if (this.#closed) throw auditUnavailable('store is closed');
    if (entries.length === 0) throw new BrokerError('bad_request', 'an append carries at least one entry');
    for (const r of unless) {
      checkSpace(r.space);
      checkName('kv key', r.key);
    }
    const now = this.#clock.now();
    const values = unless.map((r) => this.#kvLive(r.space, r.key, now)?.value);
    if (values.some((v) => v !== undefined)) return { blocked: values };
    return { index: await this.appendAuditEntries(entries) };
  }

  async auditSize(): Promise<number> {
    return this.#audit.count;
  }

  readAuditEntries(start: number, end: number): Promise<Buffer[]> {
    return this.#audit.read(start, end);
  }

  async appendCheckpoint(note: string): Promise<void> {
    if (this.#closed) throw storeUnavailable('store is closed');
    if (typeof note !== 'string' || note.length === 0) throw new BrokerError('bad_request', 'checkpoint note must be a non-empty string');
    const bytes = Buffer.from(note, 'utf8');
    if (bytes.length > MAX_PAYLOAD) throw new BrokerError('bad_request', 'checkpoint note too large');
    const index = await this.#checkpoints.append([bytes]);
    if (this.#newestCheckpoint === undefined || index > this.#newestCheckpoint.index) this.#newestCheckpoint = { index, note };
  }

  /** The newest stored checkpoint, read from the file only the first time. */
  async #newest(): Promise<string | undefined> {
    const n = this.#checkpoints.count;
    if (n === 0) return undefined;
    if (this.#newestCheckpoint?.index !== n - 1) {
      const [raw] = await this.#checkpoints.read(n - 1, n);
      this.#newestCheckpoint = { index: n - 1, note: (raw as Buffer).toString('utf8') };
    }
    return this.#newestCheckpoint.note;
  }

  appendCheckpointIfNewer(note: string, size: number): Promise<string | undefined> {
    const run = async (): Promise<string | undefined> => {
      if (this.#closed) throw storeUnavailable('store is closed');
      if (typeof note !== 'string' || note.length === 0) throw new BrokerError('bad_request', 'checkpoint note must be a non-empty string');
      checkCheckpointSize(size);
      if (size > this.#audit.count) throw auditHistoryLost(`the audit log holds ${this.#audit.count} entries, fewer than the checkpoint size ${size}`);
      const last = await this.#newest();
      if (last !== undefined) {
        const lastSize = storedCheckpointSize(last);
        if (lastSize === undefined) throw storeUnavailable('the newest stored checkpoint declares no tree size');
        if (lastSize > size || (lastSize === size && last === note)) return last;
      }
      await this.appendCheckpoint(note);
      return undefined;
    };
    const turn = this.#checkpointTurn.then(run, run);
    this.#checkpointTurn = turn.catch(() => {});
    return turn;
  }

  async listCheckpoints(): Promise<string[]> {
    const recs = await this.#checkpoints.read(0, this.#checkpoints.count);
    return recs.map((r) => r.toString('utf8'));
  }

  /** Kept as kv records of a reserved space (kv.log, fdatasync'd, compacted on open). */
  async auditCursor(device: string): Promise<number> {
    if (this.#closed) throw storeUnavailable('store is closed');
    checkCursor(device);
    const v = this.#kvLive(CURSOR_SPACE, device, this.#clock.now())?.value;
    return v === undefined ? 0 : Number(v);
  }

  async advanceAuditCursor(device: string, position: number): Promise<number> {
    if (this.#closed) throw storeUnavailable('store is closed');
    checkCursor(device, position);
    // One advance per device at a time, so the max is taken against the durable value.
    const prev = this.#cursorWrites.get(device) ?? Promise.resolve(0);
    const next = prev.catch(() => 0).then(async () => {
      const cur = await this.auditCursor(device);
      if (position <= cur) return cur;
      await this.#kvWrite({ s: CURSOR_SPACE, k: device, v: String(position) }, () => {
        let m = this.#kv.get(CURSOR_SPACE);
        if (!m) this.#kv.set(CURSOR_SPACE, (m = new Map<string, KvRecord>()));
        m.set(device, { value: String(position), expiresAt: undefined });
      });
      return position;
    });
    this.#cursorWrites.set(device, next);
    void next.finally(() => {
      if (this.#cursorWrites.get(device) === next) this.#cursorWrites.delete(device);
    }).catch(() => {});
    return next;
  }

  /**
   * Single-use keys. Keys are stored as SHA-256(key) (memory and disk stay bounded whatever the key
   * length, and the file never holds raw token IDs). The record is fdatasync'd before true is returned.
   * A key whose expiry is already past is refused (false): fail closed rather than accept a replay
   * window of zero length that was never recorded.
   */
  async consumeOnce(key: string, expiresAtMs: number): Promise<boolean> {
    if (this.#closed) throw storeUnavailable('store is closed');
    if (typeof key !== 'string' || key.length === 0 || key.length > MAX_NONCE_KEY) {
      throw new BrokerError('bad_request', `key must be a non-empty string of at most ${MAX_NONCE_KEY} chars`);
    }
    if (!Number.isSafeInteger(expiresAtMs)) throw new BrokerError('bad_request', 'expiresAtMs must be an integer');
    const now = this.#clock.now();
    if (expiresAtMs <= now) return false;
    const digest = createHash('sha256').update(key, 'utf8').digest();
    const id = digest.toString('base64');
    const existing = this.#nonces.get(id);
    if (existing && existing.expiresAt > now) {
      if (existing.pending) {
        try {
          await existing.pending;
        } catch (err) {
          throw storeUnavailable('single-use key could not be recorded', err);
        }
      }
      return false;
    }
    const entry: NonceEntry = { expiresAt: expiresAtMs };
    this.#nonces.set(id, entry);
    entry.pending = this.#nonceFile.append([noncePayload(digest, expiresAtMs)]).then(
      () => {
        entry.pending = undefined;
        return true;
      },
      (err: unknown) => {
        if (this.#nonces.get(id) === entry) this.#nonces.delete(id);
        throw err instanceof BrokerError ? err : storeUnavailable('single-use key could not be recorded', err);
      },
    );
    this.#maybeSweep(now);
    return entry.pending;
  }

  /** Drops expired keys when the map has doubled since the last sweep: amortised O(1) per call. */
  #maybeSweep(now: number): void {
    if (this.#nonces.size < this.#sweepAt) return;
    for (const [k, e] of this.#nonces) if (!e.pending && e.expiresAt <= now) this.#nonces.delete(k);
    this.#sweepAt = Math.max(1024, this.#nonces.size * 2);
  }

  /** Live record or undefined; drops an expired one from memory on the way. */
  #kvLive(space: string, key: string, now: number): KvRecord | undefined {
    const m = this.#kv.get(space);
    const r = m?.get(key);
    if (!r) return undefined;
    if (r.expiresAt !== undefined && r.expiresAt <= now) {
      m?.delete(key);
      return undefined;
    }
    return r;
  }

  /** Appends one kv operation; `apply` runs once it is durable, in file order with every other kv write. */
  async #kvWrite<T>(op: KvOp, apply: () => T): Promise<T> {
    const id = `${op.s}\0${op.k}`;
    this.#kvPending.set(id, (this.#kvPending.get(id) ?? 0) + 1);
    try {
      await this.#kvFile.append([kvPayload(op)]);
      return apply();
    } finally {
      const n = (this.#kvPending.get(id) ?? 1) - 1;
      if (n <= 0) this.#kvPending.delete(id);
      else this.#kvPending.set(id, n);
    }
  }

  /** fdatasync'd before it resolves; a failed write changes nothing (memory is updated only after). */
  async kvPut(space: string, key: string, value: string, expiresAtMs?: number): Promise<void> {
    if (this.#closed) throw storeUnavailable('store is closed');
    checkSpace(space);
    checkName('kv key', key);
    checkValue(value);
    checkExpiry(expiresAtMs);
    const op: KvOp = { s: space, k: key, v: value, ...(expiresAtMs !== undefined ? { x: expiresAtMs } : {}) };
    await this.#kvWrite(op, () => {
      let m = this.#kv.get(space);
      if (!m) this.#kv.set(space, (m = new Map<string, KvRecord>()));
      m.set(key, { value, expiresAt: expiresAtMs });
    });
  }

  async kvGet(space: string, key: string): Promise<string | undefined> {
    if (this.#closed) throw storeUnavailable('store is closed');
    checkSpace(space);
    checkName('kv key', key);
    return this.#kvLive(space, key, this.#clock.now())?.value;
  }

  async kvGetMany(refs: readonly KvRef[]): Promise<(string | undefined)[]> {
    if (this.#closed) throw storeUnavailable('store is closed');
    for (const r of refs) {
      checkSpace(r.space);
      checkName('kv key', r.key);
    }
    const now = this.#clock.now();
    return refs.map((r) => this.#kvLive(r.space, r.key, now)?.value);
  }

  async kvDelete(space: string, key: string): Promise<boolean> {
    if (this.#closed) throw storeUnavailable('store is closed');
    checkSpace(space);
    checkName('kv key', key);
    // Nothing to delete and nothing on its way: no write needed.
    if (!this.#kvLive(space, key, this.#clock.now()) && !this.#kvPending.has(`${space}\0${key}`)) return false;
    return this.#kvWrite({ s: space, k: key }, () => {
      const existed = this.#kvLive(space, key, this.#clock.now()) !== undefined;
      this.#kv.get(space)?.delete(key);
      return existed;
    });
  }

  async kvList(space: string): Promise<{ key: string; value: string }[]> {
    if (this.#closed) throw storeUnavailable('store is closed');
    checkSpace(space);
    const m = this.#kv.get(space);
    if (!m) return [];
    const now = this.#clock.now();
    const out: { key: string; value: string }[] = [];
    for (const [key, r] of m) {
      if (r.expiresAt !== undefined && r.expiresAt <= now) m.delete(key);
      else out.push({ key, value: r.value });
    }
    return out;
  }

  /** The first hit opens a window of `windowMs`; hits count until it ends, then the next hit opens a new one. */
  async hit(key: string, windowMs: number): Promise<{ count: number; resetInMs: number }> {
    if (this.#closed) throw storeUnavailable('store is closed');
    checkName('counter key', key);
    checkDuration('windowMs', windowMs);
    const now = this.#clock.now();
    const id = `${windowMs}\0${key}`;
    let w = this.#hits.get(id);
    if (!w || w.resetAt <= now) {
      w = { count: 0, resetAt: now + windowMs };
      this.#hits.set(id, w);
    }
    w.count++;
    if (this.#hits.size >= this.#hitSweepAt) {
      for (const [k, v] of this.#hits) if (v.resetAt <= now) this.#hits.delete(k);
      this.#hitSweepAt = Math.max(1024, this.#hits.size * 2);
    }
    return { count: w.count, resetInMs: w.resetAt - now };
  }

  async tryLock(name: string, owner: string, ttlMs: number): Promise<boolean> {
    if (this.#closed) throw storeUnavailable('store is closed');
    checkName('lock name', name);
    checkName('lock owner', owner);
    checkDuration('ttlMs', ttlMs);
    const now = this.#clock.now();
    const held = this.#locks.get(name);
    if (held && held.expiresAt > now && held.owner !== owner) return false;
    this.#locks.set(name, { owner, expiresAt: now + ttlMs });
    return true;
  }

  async unlock(name: string, owner: string): Promise<void> {
    if (this.#closed) throw storeUnavailable('store is closed');
    checkName('lock name', name);
    checkName('lock owner', owner);
    if (this.#locks.get(name)?.owner === owner) this.#locks.delete(name);
  }

  /**
   * Cheap when healthy (no I/O). After a failed flush, probes the failed file (see FramedFile.recover)
   * and throws audit_unavailable / store_unavailable if it still cannot take durable writes.
   */
  async checkWritable(): Promise<void> {
    if (this.#closed) throw storeUnavailable('store is closed');
    const files: [FramedFile, Unavailable][] = [
      [this.#audit, auditUnavailable],
      [this.#checkpoints, storeUnavailable],
      [this.#nonceFile, storeUnavailable],
      [this.#kvFile, storeUnavailable],
    ];
    for (const [f, unavailable] of files) {
      if (!f.failed) continue;
      try {
        await f.recover();
      } catch (err) {
        throw unavailable(`${path.basename(f.filePath)} is not writable`, err);
      }
    }
  }

  get stats(): EmbeddedStoreStats {
    return {
      auditEntries: this.#audit.count,
      auditBytes: this.#audit.durableLength,
      auditFlushes: this.#audit.flushes,
      auditFlushFailures: this.#audit.flushFailures,
      auditTornBytesDropped: this.#audit.tornBytesDropped,
      auditPreallocatedBytesDropped: this.#audit.preallocatedBytesDropped,
      auditPreallocations: this.#audit.preallocations,
      auditSnapshot: this.#snapshotState,
      auditReplayed: this.#audit.count - this.#snapshotAtOpen,
      auditSnapshotsTaken: this.#snapshotsTaken,
      auditSnapshotFailures: this.#snapshotFailures,
      auditTreeDiskReads: this.#tree.diskReads,
      liveNonces: this.#nonces.size,
      kvRecords: [...this.#kv.values()].reduce((n, m) => n + m.size, 0),
    };
  }

  /** Flushes everything queued, then closes the files. Idempotent. */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closed = true;
    this.#closing = (async () => {
      try {
        // Entries first, then a snapshot covering them, so the next open replays nothing.
        await this.#audit.drain();
        await this.#snapshotting;
        if (this.#tree.leaves > this.#snapEntries) await this.#takeSnapshot();
        this.#tree.close();
        await this.#idx.close().catch(() => {});
        await Promise.all([
          this.#audit.close(),
          this.#checkpoints.close({ sync: this.#fsync }),
          this.#nonceFile.close(),
          this.#kvFile.close(),
        ]);
      } finally {
        await this.#lock.release().catch(() => {});
        openDirs.delete(this.dir);
      }
    })();
    return this.#closing;
  }
}

function noncePayload(digest: Buffer, expiresAt: number): Buffer {
  const p = Buffer.alloc(8 + 32);
  p.writeDoubleBE(expiresAt, 0);
  digest.copy(p, 8);
  return p;
}

async function syncDir(dir: string): Promise<void> {
  // Makes newly created files' directory entries durable. Some filesystems refuse fsync on a directory.
  const h = await fsp.open(dir, 'r');
  try {
    await h.sync();
  } catch {
    /* not supported here; nothing more we can do */
  } finally {
    await h.close();
  }
}

/** New audit entries between two snapshots (a crash replays at most about this many). */
const SNAPSHOT_EVERY = 1 << 18;
/** Offsets read per step when audit.idx is checked on open (1 MiB). */
const IDX_CHECK_CHUNK = 1 << 17;
const isLittleEndian = new Uint8Array(new Float64Array([1]).buffer)[7] === 0x3f;

interface AuditOpening {
  audit: FramedFile;
  tree: TreeFile;
  idx: fsp.FileHandle;
  idxValues: number;
  snapshotEntries: number;
  state: string;
}

/**
 * Opens audit.log with its tree (audit.tree) and offset index (audit.idx). With a valid audit.snapshot
 * of N entries whose offsets, tree nodes and root all check out, only the records after N are scanned
 * (and hashed by AuditLog); otherwise the snapshot is removed, the tree file restarts empty, and every
 * record is scanned and replayed. A snapshot that checks out but names more of audit.log than the file
 * holds means acknowledged entries are gone: refuse, never start on a shorter log.
 */
async function openAudit(dir: string, openFile: OpenStoreFile, fsync: boolean): Promise<AuditOpening> {
  const logPath = path.join(dir, 'audit.log');
  const snapPath = path.join(dir, 'audit.snapshot');
  const treePath = path.join(dir, 'audit.tree');
  const idx = await fsp.open(path.join(dir, 'audit.idx'), fsConstants.O_RDWR | fsConstants.O_CREAT, 0o600);
  try {
    let state = 'none';
    let raw: Buffer | undefined;
    try {
      raw = await fsp.readFile(snapPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') state = `invalid: cannot read (${String(err)})`;
    }
    const decoded = raw === undefined ? undefined : decodeSnapshot(raw);
    if (decoded !== undefined && 'invalid' in decoded) state = `invalid: ${decoded.invalid}`;
    if (decoded !== undefined && !('invalid' in decoded)) {
      const logSize = await fsp.stat(logPath).then((st) => st.size, () => 0);
      if (logSize < decoded.logBytes) {
        throw auditUnavailable(
          `${logPath} holds ${logSize} bytes but ${snapPath} says ${decoded.entries} entries (${decoded.logBytes} bytes) were durable: ` +
            'acknowledged audit entries are gone. Refusing to open; restore the data directory from backup (docs/audit.md)',
        );
      }
      const used = await resumeFromSnapshot(decoded, logPath, treePath, idx, openFile, fsync);
      if ('audit' in used) return { ...used, idx, idxValues: decoded.entries + 1, snapshotEntries: decoded.entries, state: 'used' };
      state = `invalid: ${used.invalid}`;
    }
    // Full replay: nothing on disk but audit.log itself is trusted.
    if (raw !== undefined) {
      await fsp.rm(snapPath, { force: true });
      if (fsync) await syncDir(dir);
    }
    await idx.truncate(0);
    const tree = TreeFile.open(treePath, 0);
    try {
      const audit = await FramedFile.open(logPath, openFile, fsync, auditUnavailable);
      return { audit, tree, idx, idxValues: 0, snapshotEntries: 0, state };
    } catch (err) {
      tree.close();
      throw err;
    }
  } catch (err) {
    await idx.close().catch(() => {});
    throw err;
  }
}

async function resumeFromSnapshot(
  snap: AuditSnapshot,
  logPath: string,
  treePath: string,
  idx: fsp.FileHandle,
  openFile: OpenStoreFile,
  fsync: boolean,
): Promise<{ audit: FramedFile; tree: TreeFile } | { invalid: string }> {
  const n = snap.entries;
  const idxSize = (await idx.stat()).size;
  if (idxSize < (n + 1) * 8) return { invalid: `audit.idx holds ${Math.floor(idxSize / 8)} offsets, fewer than ${n + 1}` };
  const readOffsets = async (from: number, to: number): Promise<Float64Array> => {
    const out = new Float64Array(to - from + 1);
    const view = Buffer.from(out.buffer);
    await readFully(idx, view, view.length, from * 8);
    if (!isLittleEndian) for (let i = 0; i < view.length; i += 8) view.subarray(i, i + 8).reverse();
    return out;
  };
  // Every step must be one whole record: checked in chunks through one buffer (the offsets are not
  // kept in memory). The one linear step of a restart: 8 bytes per entry, read sequentially.
  const chunk = new Float64Array(IDX_CHECK_CHUNK);
  const chunkBytes = Buffer.from(chunk.buffer);
  let prev = FILE_HEADER.length - HEADER - 1;
  for (let from = 0; from <= n; from += IDX_CHECK_CHUNK) {
    const count = Math.min(n + 1 - from, IDX_CHECK_CHUNK);
    await readFully(idx, chunkBytes, count * 8, from * 8);
    if (!isLittleEndian) for (let i = 0; i < count * 8; i += 8) chunkBytes.subarray(i, i + 8).reverse();
    if (from === 0 && chunk[0] !== FILE_HEADER.length) return { invalid: 'audit.idx does not start at the first record' };
    for (let k = 0; k < count; k++) {
      const b = chunk[k] as number;
      const step = b - prev;
      if (!(step > HEADER && step <= HEADER + MAX_PAYLOAD) || !Number.isInteger(b)) {
        return { invalid: `audit.idx offset ${from + k} is not a record boundary` };
      }
      prev = b;
    }
  }
  if (prev !== snap.logBytes) return { invalid: 'audit.idx does not end where the snapshot says audit.log does' };
  if (idxSize > (n + 1) * 8) await idx.truncate((n + 1) * 8);
  let tree: TreeFile;
  try {
    tree = TreeFile.open(treePath, n);
  } catch (err) {
    return { invalid: err instanceof Error ? err.message : String(err) };
  }
  let audit: FramedFile | undefined;
  try {
    if (!new MerkleTree({ nodes: tree, size: n }).root().equals(snap.rootHash)) throw new Error('audit.tree does not hash to the snapshot root');
    audit = await FramedFile.open(logPath, openFile, fsync, auditUnavailable, undefined, { count: n, end: snap.logBytes, readOffsets });
    // The log and the tree must name the same last entry.
    if (n > 0) {
      const [last] = await audit.read(n - 1, n);
      if (!last || !leafHash(last).equals(tree.node(0, n - 1))) throw new Error(`audit.log entry ${n - 1} does not match audit.tree`);
    }
    return { audit, tree };
  } catch (err) {
    tree.close();
    await audit?.close().catch(() => {});
    if (err instanceof BrokerError) throw err;
    return { invalid: err instanceof Error ? err.message : String(err) };
  }
}
