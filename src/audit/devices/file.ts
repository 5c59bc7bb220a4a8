/**
 * The `file` audit device: one JSON record per line (record.ts), appended to `path` (mode 0600).
 *
 *   - Own rotation: before a batch would take the file past `maxBytes` (0: never), path.(k) becomes
 *     path.(k+1) up to `keep`, path becomes path.1, and a new path is started.
 *   - fsync: 'batch' fdatasyncs after every batch before the shipper may count it delivered.
 *   - Outside rotation, found before every batch and before the shipper confirms anything (check()):
 *       create-style (path renamed away, maybe a new empty file created): our handle still writes to the
 *       renamed file, so nothing is lost; we reopen path and carry on there;
 *       copytruncate-style (path copied, then truncated under our handle): what was written between the
 *       copy and the truncation is gone from both files. The file is opened O_APPEND (writes go to the
 *       new end, no hole), and `generation` is bumped so the shipper writes its recent records again
 *       (duplicates carry the same index).
 *   - reopen() (SIGUSR1): close and reopen path at the next write.
 */
import { constants as fsConstants, promises as fsp } from 'node:fs';
import path from 'node:path';
import { type ShipRecord, recordJson } from './record.js';
import type { AuditDevice } from './device.js';

export interface FileDeviceOptions {
  readonly path: string;
  readonly maxBytes: number;
  readonly keep: number;
  readonly fsync: boolean;
}

export class FileDevice implements AuditDevice {
  readonly type = 'file' as const;
  /** A record written but not yet confirmed can still be lost to a copytruncate. */
  readonly lossyAfterWrite = true;
  #generation = 0;
  #handle: fsp.FileHandle | null = null;
  /** Identity of the open file (dev:ino) and its size as we last wrote it. */
  #id = '';
  #size = 0;
  #reopen = false;

  constructor(
    readonly name: string,
    private readonly opts: FileDeviceOptions,
  ) {}

  get generation(): number {
    return this.#generation;
  }

  async write(records: readonly ShipRecord[]): Promise<void> {
    const data = Buffer.from(records.map((r) => `${recordJson(r)}\n`).join(''), 'utf8');
    await this.check();
    if (this.opts.maxBytes > 0 && this.#handle !== null && this.#size > 0 && this.#size + data.length > this.opts.maxBytes) await this.#rotate();
    const h = this.#handle ?? (await this.#open());
    let off = 0;
    while (off < data.length) {
      const { bytesWritten } = await h.write(data, off, data.length - off);
      off += bytesWritten;
    }
    this.#size += data.length;
    if (this.opts.fsync) await h.datasync();
  }

  async check(): Promise<void> {
    if (this.#reopen) {
      this.#reopen = false;
      await this.#closeHandle();
      return;
    }
    const h = this.#handle;
    if (h === null) return;
    let onDisk: { dev: number; ino: number } | undefined;
    try {
      onDisk = await fsp.stat(this.opts.path);
    } catch {
      onDisk = undefined; // renamed away and not recreated
    }
    const ours = await h.stat();
    if (ours.size < this.#size) {
      // Truncated under us (copytruncate): what the copy missed is lost; write it again.
      this.#generation++;
      this.#size = ours.size;
    }
    if (onDisk === undefined || `${onDisk.dev}:${onDisk.ino}` !== this.#id) await this.#closeHandle(); // rotated away: reopen path
  }

  async #open(): Promise<fsp.FileHandle> {
    await fsp.mkdir(path.dirname(this.opts.path), { recursive: true, mode: 0o700 });
    const h = await fsp.open(this.opts.path, fsConstants.O_WRONLY | fsConstants.O_APPEND | fsConstants.O_CREAT, 0o600);
    const st = await h.stat();
    this.#handle = h;
    this.#id = `${st.dev}:${st.ino}`;
    this.#size = st.size;
    return h;
  }

  async #closeHandle(): Promise<void> {
    const h = this.#handle;
    this.#handle = null;
    await h?.close().catch(() => {});
  }

  async #rotate(): Promise<void> {
    await this.#closeHandle();
    const p = this.opts.path;
    if (this.opts.keep === 0) {
      await fsp.rm(p, { force: true });
      return;
    }
    await fsp.rm(`${p}.${this.opts.keep}`, { force: true });
    for (let k = this.opts.keep - 1; k >= 1; k--) {
      await fsp.rename(`${p}.${k}`, `${p}.${k + 1}`).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
    await fsp.rename(p, `${p}.1`);
  }

  reset(): void {
    void this.#closeHandle();
  }

  reopen(): void {
    this.#reopen = true;
  }

  async close(): Promise<void> {
    await this.#closeHandle();
  }
}
