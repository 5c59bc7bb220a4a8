/**
 * Ships the audit log to one device: in order, at least once, resuming from the position kept in the
 * store.
 *
 * The log is the buffer. The shipper reads at most `batchSize` entries at a time from the store by
 * index, so a destination that is down for an hour costs no memory: when it comes back, the hour's
 * entries are read and written in order from the stored position.
 *
 *   next       the index the next write starts at;
 *   confirmed  the stored position (Store.advanceAuditCursor): every entry below it was delivered.
 *
 * A write that resolves moves `next`. For a device whose resolved writes can still be lost (a stream
 * socket whose peer dies with our bytes in its buffers; a file truncated by copytruncate) a batch is
 * confirmed only once it has been out for `resendWindowMs` with no sign of loss (the device's
 * `generation` unchanged); on any failure or sign of loss, `next` goes back to `confirmed` and those
 * entries are written again. So an entry can arrive twice (same `index`: a receiver drops the
 * duplicate), never not at all. Cursor writes are coalesced (at most one per CURSOR_EVERY_MS while busy).
 *
 * With a shared store, a lease (Store.tryLock `audit-device:<name>`) makes exactly one replica ship a
 * device at a time; the others watch the stored position (for their lag figures) and take over when the
 * lease lapses — a SIGKILLed shipper's lease runs out after LEASE_TTL_MS.
 *
 * Failures (connect refused, write error, write timeout, store error) are retried after an exponential
 * backoff with jitter, from retryInitialMs up to retryMaxMs. Nothing here is on the issuance path.
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { AuditDeviceConfig } from '../../config/config.js';
import type { Store } from '../../store/store.js';
import type { AuditLog } from '../log.js';
import type { SignedCheckpoint } from '../note.js';
import type { AuditDevice } from './device.js';
import { canonicalEntry, type ShipRecord } from './record.js';

export const LEASE_TTL_MS = 6_000;
const LEASE_RENEW_MS = 2_000;
/** How often a replica that does not ship (or an idle shipper) looks at the store. */
const POLL_MS = 1_000;
const CURSOR_EVERY_MS = 250;
/** Lag-time marks kept at most (older entries keep the oldest time: errs towards "more behind"). */
const MAX_MARKS = 1024;

export interface DeviceStatus {
  readonly name: string;
  readonly type: AuditDeviceConfig['type'];
  readonly required: boolean;
  /** This replica holds the device's lease and ships it. */
  readonly shipping: boolean;
  /** The stored position: entries [0, position) were delivered. */
  readonly position: number;
  readonly lagEntries: number;
  readonly lagSeconds: number;
  readonly delivered: number;
  readonly failed: number;
  readonly lastError?: string;
}

export interface ShipperOptions {
  readonly device: AuditDevice;
  readonly config: AuditDeviceConfig;
  readonly store: Store;
  readonly audit: AuditLog;
  /** The newest signed checkpoint this replica knows. */
  readonly checkpoint: () => SignedCheckpoint | undefined;
  readonly replicaId: string;
  readonly onDelivered?: (count: number) => void;
  readonly onFailed?: () => void;
  readonly onError?: (err: unknown) => void;
}

/** Monotonic ms: lease renewal, resend windows and lag times never follow a stepped wall clock. */
const now = (): number => performance.now();

const errorText = (err: unknown): string => (err instanceof Error ? err.message : String(err));

export class Shipper {
  readonly #o: ShipperOptions;
  readonly #cfg: AuditDeviceConfig;
  readonly #device: AuditDevice;
  readonly #owner: string;
  readonly #lease: string;
  #leaseAt = -Infinity;
  #shipping = false;
  #next = 0;
  #confirmed = 0;
  #generation = 0;
  /** Batches written, not yet confirmed: where each ends and when it went out. */
  #unconfirmed: { end: number; at: number }[] = [];
  #lastCursorWrite = -Infinity;
  /** (log size, first seen at): for lagSeconds, the time the oldest undelivered entry was first seen. */
  #marks: { size: number; at: number }[] = [];
  #delivered = 0;
  #failed = 0;
  #attempt = 0;
  #lastError: string | undefined;
  #closed = false;
  #wake: (() => void) | null = null;
  /** Set by notify(): the next sleep returns at once (an append may land between refresh and sleep). */
  #dirty = false;
  #loop: Promise<void> | null = null;

  constructor(opts: ShipperOptions) {
    this.#o = opts;
    this.#cfg = opts.config;
    this.#device = opts.device;
    this.#owner = `${opts.replicaId}/${randomUUID()}`;
    this.#lease = `audit-device:${opts.config.name}`;
  }

  start(): void {
    this.#loop ??= this.#run();
  }

  /** New entries were appended: ship them now rather than at the next poll. */
  notify(size: number): void {
    this.#mark(size);
    this.#dirty = true;
    this.#wake?.();
  }

  status(): DeviceStatus {
    const size = Math.max(this.#o.audit.size, this.#marks[this.#marks.length - 1]?.size ?? 0);
    this.#mark(size);
    const lagEntries = Math.max(0, size - this.#confirmed);
    const oldest = this.#marks.find((m) => m.size > this.#confirmed);
    const lagSeconds = lagEntries > 0 && oldest !== undefined ? Math.max(0, Math.floor((now() - oldest.at) / 1000)) : 0;
    return {
      name: this.#cfg.name,
      type: this.#cfg.type,
      required: this.#cfg.required,
      shipping: this.#shipping,
      position: this.#confirmed,
      lagEntries,
      lagSeconds,
      delivered: this.#delivered,
      failed: this.#failed,
      ...(this.#lastError !== undefined ? { lastError: this.#lastError } : {}),
    };
  }

  reopen(): void {
    this.#device.reopen();
    this.#wake?.();
  }

  /** Stops shipping (a write in flight gets up to `graceMs`), closes the device and gives the lease up. */
  async close(graceMs = 3_000): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#wake?.();
    if (this.#loop !== null) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.#loop, new Promise<void>((r) => (timer = setTimeout(r, graceMs)))]);
      clearTimeout(timer);
    }
    this.#device.reset();
    await this.#device.close().catch(() => {});
    if (this.#shipping) await this.#o.store.unlock(this.#lease, this.#owner).catch(() => {});
  }

  #mark(size: number): void {
    const last = this.#marks[this.#marks.length - 1];
    if (last !== undefined && size <= last.size) return;
    while (this.#marks.length > 0 && (this.#marks[0] as { size: number }).size <= this.#confirmed) this.#marks.shift();
    if (size <= this.#confirmed) return;
    if (this.#marks.length >= MAX_MARKS) this.#marks.pop();
    this.#marks.push({ size, at: now() });
  }

  #setConfirmed(position: number): void {
    if (position <= this.#confirmed) return;
    this.#confirmed = position;
    while (this.#marks.length > 0 && (this.#marks[0] as { size: number }).size <= position) this.#marks.shift();
  }

  async #run(): Promise<void> {
    while (!this.#closed) {
      this.#dirty = false;
      try {
        if (!(await this.#holdLease())) {
          // Another replica ships: follow its stored position for our lag figures.
          this.#setConfirmed(await this.#o.store.auditCursor(this.#cfg.name));
          this.#mark(await this.#o.audit.refresh());
          await this.#sleep(POLL_MS);
          continue;
        }
        await this.#step();
        this.#attempt = 0;
      } catch (err) {
        if (this.#closed) break;
        this.#failed++;
        this.#lastError = errorText(err);
        this.#o.onFailed?.();
        // Once per streak of failures (the backoff retries quietly; metrics count every attempt).
        if (this.#attempt === 0) this.#o.onError?.(err);
        this.#device.reset();
        this.#rewind();
        this.#attempt++;
        const base = Math.min(this.#cfg.retryMaxMs, this.#cfg.retryInitialMs * 2 ** Math.min(30, this.#attempt - 1));
        await this.#sleep(base / 2 + Math.random() * (base / 2));
      }
    }
  }

  /** Takes or renews the lease when due; false if another replica holds it. */
  async #holdLease(): Promise<boolean> {
    const t = now();
    if (this.#shipping && t - this.#leaseAt < LEASE_RENEW_MS) return true;
    const held = await this.#o.store.tryLock(this.#lease, this.#owner, LEASE_TTL_MS);
    if (held) {
      this.#leaseAt = t;
      if (!this.#shipping) {
        // Newly acquired: start from the stored position, whoever wrote it.
        this.#shipping = true;
        this.#setConfirmed(await this.#o.store.auditCursor(this.#cfg.name));
        this.#next = this.#confirmed;
        this.#unconfirmed = [];
        this.#generation = this.#device.generation;
      }
      return true;
    }
    if (this.#shipping) {
      // Lost it (a long pause): stop writing; whoever holds it resumes from the stored position.
      this.#shipping = false;
      this.#device.reset();
      this.#rewind();
    }
    return false;
  }

  #rewind(): void {
    this.#next = this.#confirmed;
    this.#unconfirmed = [];
    this.#generation = this.#device.generation;
  }

  /** One round: look for loss, confirm what settled, write one batch (or wait for entries). */
  async #step(): Promise<void> {
    await this.#device.check();
    if (this.#device.generation !== this.#generation) this.#rewind();
    await this.#confirm(false);
    const size = await this.#o.audit.refresh();
    this.#mark(size);
    if (this.#next >= size) {
      await this.#confirm(true);
      const settle = this.#unconfirmed[0];
      const wait = settle !== undefined ? Math.max(10, settle.at + this.#cfg.resendWindowMs - now()) : POLL_MS;
      await this.#sleep(Math.min(POLL_MS, wait));
      return;
    }
    const start = this.#next;
    const end = Math.min(size, start + this.#cfg.batchSize);
    const bytes = await this.#o.audit.entries(start, end);
    if (bytes.length !== end - start) throw new Error(`the store returned ${bytes.length} entries for [${start}, ${end})`);
    const cp = this.#o.checkpoint();
    const records: ShipRecord[] = bytes.map((b, i) => {
      const index = start + i;
      const entry = canonicalEntry(b);
      return {
        index,
        bytes: b,
        ...(entry !== undefined ? { entry } : {}),
        leafHash: this.#o.audit.leafHash(index).toString('base64'),
        replicaId: this.#o.replicaId,
        ...(cp !== undefined && cp.size > index ? { checkpoint: { treeSize: cp.size, rootHash: cp.rootHash.toString('base64'), note: cp.note } } : {}),
      };
    });
    const gen = this.#generation;
    await this.#withTimeout(this.#device.write(records));
    if (this.#device.generation !== gen) throw new Error('the destination went away while writing');
    this.#next = end;
    this.#delivered += records.length;
    this.#o.onDelivered?.(records.length);
    this.#lastError = undefined;
    if (this.#device.lossyAfterWrite && this.#cfg.resendWindowMs > 0) this.#unconfirmed.push({ end, at: now() });
    else this.#unconfirmed.push({ end, at: -Infinity });
    await this.#confirm(end >= size);
  }

  /** Stores the position of every batch that has settled (at most every CURSOR_EVERY_MS unless `force`). */
  async #confirm(force: boolean): Promise<void> {
    const t = now();
    let upTo = -1;
    let n = 0;
    for (const b of this.#unconfirmed) {
      if (b.at > t - this.#cfg.resendWindowMs && b.at !== -Infinity) break;
      upTo = b.end;
      n++;
    }
    if (upTo < 0 || (!force && t - this.#lastCursorWrite < CURSOR_EVERY_MS)) return;
    // Last look for loss before confirming (a file truncated since the write).
    await this.#device.check();
    if (this.#device.generation !== this.#generation) {
      this.#rewind();
      return;
    }
    this.#lastCursorWrite = t;
    const stored = await this.#o.store.advanceAuditCursor(this.#cfg.name, upTo);
    this.#unconfirmed.splice(0, n);
    this.#setConfirmed(stored);
  }

  async #withTimeout(p: Promise<void>): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.#device.reset();
        reject(new Error(`write did not complete within ${this.#cfg.writeTimeoutMs} ms`));
      }, this.#cfg.writeTimeoutMs);
    });
    try {
      await Promise.race([p, timeout]);
    } finally {
      clearTimeout(timer);
      p.catch(() => {});
    }
  }

  #sleep(ms: number): Promise<void> {
    if (this.#closed || this.#dirty) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.#wake = () => {
        this.#wake = null;
        done();
      };
    });
  }
}
