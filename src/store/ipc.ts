/**
 * A Store that lives in another process: `IpcStore` (in each cluster worker) forwards every Store call
 * over the IPC channel to `serveStore` (in the cluster primary), which runs it against the one real
 * store. Everything the Store contract makes atomic stays atomic, because one process executes it.
 *
 *   worker                                     primary
 *   IpcStore.kvGet(…) ──► {t:'tessera.store.req', calls:[[id, op, args], …]} ──► serveStore → real store
 *   promise settles  ◄── {t:'tessera.store.res', results:[[id, 1, value] | [id, 0, error], …]} ◄──┘
 *
 * Calls made in one event-loop turn travel in one message, and so do the results the primary finishes
 * in one turn: a message costs ~25–60 µs of CPU on each side (a system call and a wake-up), a call
 * batched with others ~3 µs.
 * A call the primary does not answer within `timeoutMs` (or any call once the channel is gone) rejects
 * with store_unavailable (503), so a stuck primary is a refusal, never a hang. As with Redis, an audit
 * append that timed out may still have been made durable (the Store contract allows this over a network).
 */
import type { ChildProcess } from 'node:child_process';
import type { Worker } from 'node:cluster';
import type { EventEmitter } from 'node:events';
import { leafHash } from '../audit/merkle.js';
import { BrokerError, type ErrorCode, storeUnavailable } from '../errors.js';
import type { Store } from './store.js';

/** The Store methods that cross the channel (an allow-list: nothing else is ever invoked remotely). */
export const IPC_STORE_OPS = [
  'appendAuditEntries', 'auditSize', 'readAuditEntries', 'appendCheckpoint', 'listCheckpoints', 'consumeOnce',
  'kvPut', 'kvGet', 'kvDelete', 'kvList', 'hit', 'tryLock', 'unlock', 'checkWritable',
] as const;
/** Leaf hashes of audit entries, hashed once in the primary (not a Store method; see AuditLeafHashCache). */
const LEAF_HASHES = 'readAuditLeafHashes';
/** A checkpoint signed by the primary (not a Store method; see CheckpointerOptions.remote). */
const CHECKPOINT = 'checkpointCovering';
export type IpcStoreOp = (typeof IPC_STORE_OPS)[number] | typeof LEAF_HASHES | typeof CHECKPOINT;
const OPS: ReadonlySet<string> = new Set<string>([...IPC_STORE_OPS, LEAF_HASHES, CHECKPOINT]);

const HASH_SIZE = 32;
/** Most leaf hashes one call returns (512 KiB); AuditLog reads 16 384 at a time. */
export const MAX_LEAF_HASHES_PER_READ = 16_384;

/** What signs checkpoints in the primary (audit/checkpointer.ts's Checkpointer has this method). */
export interface CheckpointSource {
  covering(minSize: number): Promise<{ readonly note: string }>;
}

export const STORE_REQUEST = 'tessera.store.req';
export const STORE_RESPONSE = 'tessera.store.res';

type Call = [id: number, op: IpcStoreOp, args: unknown[]];
/** An error as it crosses the channel: a BrokerError keeps its code and status; anything else only its message. */
interface WireError {
  message: string;
  code?: ErrorCode;
  status?: number;
  retryAfterSeconds?: number;
}
type Result = [id: number, ok: 1, value: unknown] | [id: number, ok: 0, error: WireError];

interface RequestMessage {
  t: typeof STORE_REQUEST;
  calls: Call[];
}
interface ResponseMessage {
  t: typeof STORE_RESPONSE;
  results: Result[];
}

/**
 * One end of a message channel: a cluster worker's `process`, a `cluster.Worker` or `ChildProcess` in
 * the primary (all with advanced serialization, so Buffers cross as Buffers), or a test double.
 */
export interface IpcEndpoint {
  /** Sends one message; reports a closed channel through `onError` (or by throwing), never by crashing. */
  send(message: unknown, onError: (err: Error | null) => void): void;
  /** Subscribes to incoming messages; returns the unsubscribe function. */
  subscribe(listener: (message: unknown) => void): () => void;
  /** Subscribes to the channel closing for good (the other process is gone); returns the unsubscribe function. */
  onClose(listener: () => void): () => void;
}

/** The endpoint of a process (in a worker), or of a cluster.Worker / ChildProcess (in the primary). */
export function endpointOf(p: NodeJS.Process | ChildProcess | Worker): IpcEndpoint {
  const emitter = p as EventEmitter;
  // One shape behind the overloads of process.send, ChildProcess.send and Worker.send.
  const send = p.send as ((message: unknown, handle: undefined, options: object, cb: (err: Error | null) => void) => boolean) | undefined;
  return {
    send(message, onError) {
      if (typeof send !== 'function') {
        onError(new Error('no IPC channel'));
        return;
      }
      try {
        send.call(p, message, undefined, {}, (err) => {
          if (err) onError(err);
        });
      } catch (err) {
        onError(err as Error);
      }
    },
    subscribe(listener) {
      const l = (m: unknown): void => listener(m);
      emitter.on('message', l);
      return () => void emitter.off('message', l);
    },
    onClose(listener) {
      const l = (): void => listener();
      emitter.on('disconnect', l);
      return () => void emitter.off('disconnect', l);
    },
  };
}

const isBytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
/** Advanced serialization keeps Buffers; structured clone (MessageChannel) turns them into Uint8Arrays. */
const asBuffer = (v: Uint8Array): Buffer => (Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength));

function toWire(err: unknown): WireError {
  if (err instanceof BrokerError) {
    return {
      message: err.message,
      code: err.code,
      status: err.status,
      ...(err.retryAfterSeconds !== undefined ? { retryAfterSeconds: err.retryAfterSeconds } : {}),
    };
  }
  return { message: err instanceof Error ? err.message : String(err) };
}

function fromWire(w: WireError): Error {
  if (typeof w.code === 'string' && typeof w.status === 'number') {
    return new BrokerError(w.code, String(w.message), w.retryAfterSeconds !== undefined ? { retryAfterSeconds: w.retryAfterSeconds } : undefined);
  }
  return new Error(`store (primary process): ${String(w.message)}`);
}

export interface IpcStoreOptions {
  /** The primary's store kind (what `kind` reports here). */
  kind: Store['kind'];
  /** A call not answered within this many ms rejects with store_unavailable (default 10 000). */
  timeoutMs?: number;
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
  deadline: number;
}

/** The worker side: every Store method is a request to the primary. */
export class IpcStore implements Store {
  readonly kind: Store['kind'];
  readonly #endpoint: IpcEndpoint;
  readonly #timeoutMs: number;
  readonly #pending = new Map<number, Pending>();
  #outbox: Call[] = [];
  /** kvGet calls in the outbox by space + key (see kvGet); emptied when the outbox is sent. */
  readonly #turnReads = new Map<string, Promise<string | undefined>>();
  #flushScheduled = false;
  #nextId = 1;
  #closed: string | undefined;
  readonly #unsubscribe: () => void;
  readonly #unsubscribeClose: () => void;
  #sweeper: NodeJS.Timeout | undefined;

  constructor(endpoint: IpcEndpoint, opts: IpcStoreOptions) {
    this.kind = opts.kind;
    this.#endpoint = endpoint;
    this.#timeoutMs = opts.timeoutMs ?? 10_000;
    if (!Number.isSafeInteger(this.#timeoutMs) || this.#timeoutMs < 1) throw new TypeError('timeoutMs must be a positive integer');
    this.#unsubscribe = endpoint.subscribe((m) => this.#onMessage(m));
    this.#unsubscribeClose = endpoint.onClose(() => this.#fail('the store process is gone'));
  }

  /** Calls sent and not answered yet. */
  get inFlight(): number {
    return this.#pending.size;
  }

  #call<T>(op: IpcStoreOp, args: unknown[]): Promise<T> {
    if (this.#closed !== undefined) return Promise.reject(storeUnavailable(`store unavailable: ${this.#closed}`));
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, deadline: Date.now() + this.#timeoutMs });
      this.#outbox.push([id, op, args]);
      if (!this.#flushScheduled) {
        this.#flushScheduled = true;
        // Everything asked for in this event-loop turn goes out in one message.
        setImmediate(() => this.#flush());
      }
      // One timer for all calls: pending calls are in send order, so the sweep stops at the first live one.
      this.#sweeper ??= setInterval(() => this.#sweep(), Math.min(250, this.#timeoutMs)).unref();
    });
  }

  #flush(): void {
    this.#flushScheduled = false;
    const calls = this.#outbox;
    this.#outbox = [];
    this.#turnReads.clear();
    if (calls.length === 0 || this.#closed !== undefined) return;
    const message: RequestMessage = { t: STORE_REQUEST, calls };
    this.#endpoint.send(message, (err) => {
      if (!err) return;
      const e = storeUnavailable('store unavailable: the request could not be sent to the store process', err);
      for (const [id] of calls) this.#settle(id, (p) => p.reject(e));
    });
  }

  #sweep(): void {
    const now = Date.now();
    for (const [id, p] of this.#pending) {
      if (p.deadline > now) break;
      this.#pending.delete(id);
      p.reject(storeUnavailable(`store unavailable: no answer from the store process within ${this.#timeoutMs} ms`));
    }
    if (this.#pending.size === 0 && this.#sweeper !== undefined) {
      clearInterval(this.#sweeper);
      this.#sweeper = undefined;
    }
  }

  #settle(id: number, how: (p: Pending) => void): void {
    const p = this.#pending.get(id);
    if (p === undefined) return; // timed out already
    this.#pending.delete(id);
    how(p);
  }

  #onMessage(m: unknown): void {
    if (typeof m !== 'object' || m === null || (m as { t?: unknown }).t !== STORE_RESPONSE) return;
    const results = (m as ResponseMessage).results;
    if (!Array.isArray(results)) return;
    for (const r of results) {
      if (!Array.isArray(r)) continue;
      const [id, ok, value] = r;
      this.#settle(id, (p) => (ok === 1 ? p.resolve(value) : p.reject(fromWire(value as WireError))));
    }
  }

  /** Rejects everything in flight and refuses further calls (the channel is gone or we are closing). */
  #fail(why: string): void {
    if (this.#closed === undefined) this.#closed = why;
    this.#turnReads.clear();
    const e = storeUnavailable(`store unavailable: ${why}`);
    for (const [id, p] of this.#pending) {
      this.#pending.delete(id);
      p.reject(e);
    }
    this.#outbox = [];
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
    this.#sweeper = undefined;
  }

  async appendAuditEntries(entries: readonly Buffer[]): Promise<number> {
    return this.#call('appendAuditEntries', [entries]);
  }
  async auditSize(): Promise<number> {
    return this.#call('auditSize', []);
  }
  async readAuditEntries(start: number, end: number): Promise<Buffer[]> {
    const got = await this.#call<unknown>('readAuditEntries', [start, end]);
    if (!Array.isArray(got) || !got.every(isBytes)) throw storeUnavailable('store process returned malformed audit entries');
    return got.map(asBuffer);
  }
  /**
   * Leaf hashes (SHA-256(0x00 ‖ entry)) of audit entries [start, end): what AuditLog needs to catch up,
   * at 32 bytes per entry instead of the entry (audit/log.ts uses this when the store has it).
   */
  async readAuditLeafHashes(start: number, end: number): Promise<Buffer[]> {
    const got = await this.#call<unknown>(LEAF_HASHES, [start, end]);
    if (!isBytes(got) || got.length !== (end - start) * HASH_SIZE) throw storeUnavailable('store process returned malformed audit leaf hashes');
    const all = asBuffer(got);
    const out: Buffer[] = [];
    for (let at = 0; at < all.length; at += HASH_SIZE) out.push(all.subarray(at, at + HASH_SIZE));
    return out;
  }
  /** A signed, stored checkpoint note covering at least `minSize` entries, signed by the primary. */
  async checkpointCovering(minSize: number): Promise<string> {
    const note = await this.#call<unknown>(CHECKPOINT, [minSize]);
    if (typeof note !== 'string') throw storeUnavailable('store process returned a malformed checkpoint');
    return note;
  }
  async appendCheckpoint(note: string): Promise<void> {
    await this.#call('appendCheckpoint', [note]);
  }
  async listCheckpoints(): Promise<string[]> {
    return this.#call('listCheckpoints', []);
  }
  async consumeOnce(key: string, expiresAtMs: number): Promise<boolean> {
    return this.#call('consumeOnce', [key, expiresAtMs]);
  }
  async kvPut(space: string, key: string, value: string, expiresAtMs?: number): Promise<void> {
    await this.#call('kvPut', expiresAtMs === undefined ? [space, key, value] : [space, key, value, expiresAtMs]);
  }
  async kvGet(space: string, key: string): Promise<string | undefined> {
    // Identical reads asked for in the same event-loop turn share one call: they reach the primary
    // together and would get the same answer anyway. Every request reads the same few revocation and
    // freeze records, so under load this removes most calls. A read never joins an earlier turn's call.
    const k = typeof space === 'string' && typeof key === 'string' ? `${space}\0${key}` : undefined;
    const shared = k !== undefined ? this.#turnReads.get(k) : undefined;
    if (shared !== undefined) return shared;
    const p = this.#call<string | null | undefined>('kvGet', [space, key]).then((v) => v ?? undefined);
    if (k !== undefined) this.#turnReads.set(k, p);
    return p;
  }
  async kvDelete(space: string, key: string): Promise<boolean> {
    return this.#call('kvDelete', [space, key]);
  }
  async kvList(space: string): Promise<{ key: string; value: string }[]> {
    return this.#call('kvList', [space]);
  }
  async hit(key: string, windowMs: number): Promise<{ count: number; resetInMs: number }> {
    return this.#call('hit', [key, windowMs]);
  }
  async tryLock(name: string, owner: string, ttlMs: number): Promise<boolean> {
    return this.#call('tryLock', [name, owner, ttlMs]);
  }
  async unlock(name: string, owner: string): Promise<void> {
    await this.#call('unlock', [name, owner]);
  }
  async checkWritable(): Promise<void> {
    await this.#call('checkWritable', []);
  }

  /** Stops using the channel (the primary owns and closes the real store). Calls in flight are answered first. */
  async close(): Promise<void> {
    if (this.#closed !== undefined) return;
    this.#flush();
    const deadline = Date.now() + this.#timeoutMs;
    while (this.#pending.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    this.#fail('store is closed');
    this.#unsubscribe();
    this.#unsubscribeClose();
  }
}

export interface StoreServer {
  /** Calls received and not answered yet. */
  readonly inFlight: number;
  /** Stops listening (calls already running still answer if the channel is open). */
  close(): void;
  /**
   * Releases every lock this worker holds (call once it is dead): a worker killed while signing a
   * checkpoint must not stall the others' receipts until the lock's TTL runs out.
   */
  releaseLocks(): Promise<void>;
}

/**
 * The leaf hashes of the store's audit entries, computed once, in order, as workers ask for them (at
 * start every worker rebuilds its tree: the primary hashes 10^6 entries once instead of shipping
 * ~500 MB to each worker). Entries are immutable once durable, so a hash never goes stale.
 */
export class AuditLeafHashCache {
  readonly #store: Store;
  #hashes = Buffer.allocUnsafe(HASH_SIZE * 1024);
  #count = 0;
  /** Entries the store is known to hold (refreshed when someone asks for more). */
  #known = 0;
  /** Callers waiting for `count` to reach their `end`; woken batch by batch, so they overlap the hashing. */
  #waiters: { end: number; resolve: () => void; reject: (err: unknown) => void }[] = [];
  #running = false;

  constructor(store: Store) {
    this.#store = store;
  }

  /** Entries hashed so far. */
  get count(): number {
    return this.#count;
  }

  /** Hashes of entries [start, end), concatenated (32 bytes each). Rejects (400) beyond the log, like readAuditEntries. */
  async read(start: number, end: number): Promise<Buffer> {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start || end - start > MAX_LEAF_HASHES_PER_READ) {
      throw new BrokerError('bad_request', `leaf hash range must satisfy 0 <= start <= end, at most ${MAX_LEAF_HASHES_PER_READ} at a time`);
    }
    await this.#upTo(end);
    // A view: the bytes for [0, count) never change, even when a later batch reallocates.
    return this.#hashes.subarray(start * HASH_SIZE, end * HASH_SIZE);
  }

  /** Hashes every entry the store holds now (the primary starts this while its workers boot). */
  async warm(): Promise<void> {
    await this.#upTo(await this.#store.auditSize());
  }

  #upTo(end: number): Promise<void> {
    if (this.#count >= end) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.#waiters.push({ end, resolve, reject });
      if (!this.#running) void this.#run();
    });
  }

  /** Hashes batch after batch until every waiter is served; one run at a time. */
  async #run(): Promise<void> {
    this.#running = true;
    try {
      for (;;) {
        let target = 0;
        for (const w of this.#waiters) target = Math.max(target, w.end);
        if (target <= this.#count) break;
        if (target > this.#known) {
          this.#known = await this.#store.auditSize();
          // Asking beyond the log is the caller's mistake, not the others'.
          const beyond = this.#waiters.filter((w) => w.end > this.#known);
          this.#waiters = this.#waiters.filter((w) => w.end <= this.#known);
          const err = new BrokerError('bad_request', `record range must satisfy 0 <= start <= end <= ${this.#known}`);
          for (const w of beyond) w.reject(err);
          continue;
        }
        const from = this.#count;
        const to = Math.min(target, from + MAX_LEAF_HASHES_PER_READ);
        const entries = await this.#store.readAuditEntries(from, to);
        if (entries.length !== to - from) throw storeUnavailable(`audit store returned ${entries.length} entries for [${from}, ${to})`);
        if (this.#hashes.length < to * HASH_SIZE) {
          const grown = Buffer.allocUnsafe(Math.max(to * HASH_SIZE, this.#hashes.length * 2));
          this.#hashes.copy(grown, 0, 0, from * HASH_SIZE);
          this.#hashes = grown;
        }
        for (let i = 0; i < entries.length; i++) leafHash(entries[i] as Buffer).copy(this.#hashes, (from + i) * HASH_SIZE);
        this.#count = to;
        const ready = this.#waiters.filter((w) => w.end <= to);
        this.#waiters = this.#waiters.filter((w) => w.end > to);
        for (const w of ready) w.resolve();
      }
    } catch (err) {
      const waiting = this.#waiters;
      this.#waiters = [];
      for (const w of waiting) w.reject(err);
    } finally {
      this.#running = false;
    }
  }
}

/** How long the primary holds a worker's tryLock on a lock another worker holds, waiting for its release. */
export const LOCK_WAIT_MS = 50;

/**
 * Workers waiting for a lock, shared by the primary's connections: an unlock by one worker retries the
 * others' tryLocks at once. Without it, a worker polls with growing sleeps while its neighbour signs
 * round after round (checkpoint receipts then wait 100+ ms); with it, the lock is handed over.
 */
export class LockWaiters {
  readonly #waiting = new Map<string, Set<() => void>>();

  /** Resolves when `name` is released or after `ms`, whichever comes first. */
  wait(name: string, ms: number): Promise<void> {
    return new Promise((resolve) => {
      let set = this.#waiting.get(name);
      if (set === undefined) this.#waiting.set(name, (set = new Set()));
      const waiters = set;
      const done = (): void => {
        clearTimeout(timer);
        waiters.delete(done);
        if (waiters.size === 0 && this.#waiting.get(name) === waiters) this.#waiting.delete(name);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, ms));
      waiters.add(done);
    });
  }

  /** `name` may be free now: every waiter tries again (one wins, the rest wait on). */
  released(name: string): void {
    const waiters = this.#waiting.get(name);
    if (waiters !== undefined) for (const w of [...waiters]) w();
  }
}

/**
 * The primary side for one worker: runs each allowed call against `store` and sends the results back,
 * those finished in the same event-loop turn in one message. A call the primary cannot deliver (the
 * worker died) is dropped; what it did to the store stands, like a client that disconnected.
 */
export function serveStore(
  store: Store,
  endpoint: IpcEndpoint,
  opts: { leafHashes?: AuditLeafHashCache; locks?: LockWaiters; checkpoints?: CheckpointSource } = {},
): StoreServer {
  // One cache and one set of lock waiters for all workers when the primary passes them.
  const leafHashes = opts.leafHashes ?? new AuditLeafHashCache(store);
  const locks = opts.locks ?? new LockWaiters();
  let outbox: Result[] = [];
  let scheduled = false;
  let inFlight = 0;
  /** lock name → owner, for the locks this worker acquired and has not released. */
  const held = new Map<string, string>();
  /** Set once the worker is dead (releaseLocks): nothing is held on its behalf any more. */
  let dead = false;
  const flush = (): void => {
    scheduled = false;
    const results = outbox;
    outbox = [];
    if (results.length > 0) endpoint.send({ t: STORE_RESPONSE, results } satisfies ResponseMessage, () => {});
  };
  const answer = (r: Result): void => {
    inFlight--;
    outbox.push(r);
    if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  };
  /** tryLock, but a lock held by someone else is waited for (up to LOCK_WAIT_MS) instead of refused at once. */
  const tryLockWaiting = async (args: unknown[]): Promise<boolean> => {
    const [name, owner, ttlMs] = args as [string, string, number];
    const deadline = Date.now() + LOCK_WAIT_MS;
    for (;;) {
      if (await store.tryLock(name, owner, ttlMs)) return true;
      if (dead || Date.now() >= deadline) return false;
      await locks.wait(String(name), deadline - Date.now());
    }
  };
  const signedCheckpoint = async (minSize: unknown): Promise<string> => {
    if (opts.checkpoints === undefined) throw new BrokerError('bad_request', 'this store process does not sign checkpoints');
    if (!Number.isSafeInteger(minSize) || (minSize as number) < 0) throw new BrokerError('bad_request', 'minSize must be a non-negative integer');
    return (await opts.checkpoints.covering(minSize as number)).note;
  };
  const run = (id: number, op: IpcStoreOp, args: unknown[]): void => {
    inFlight++;
    let p: Promise<unknown>;
    try {
      if (op === 'appendAuditEntries') {
        const entries = args[0];
        if (!Array.isArray(entries) || !entries.every(isBytes)) throw new BrokerError('bad_request', 'audit entries must be byte arrays');
        args = [entries.map(asBuffer)];
      }
      p =
        op === LEAF_HASHES
          ? leafHashes.read(args[0] as number, args[1] as number)
          : op === CHECKPOINT
            ? signedCheckpoint(args[0])
            : op === 'tryLock'
              ? tryLockWaiting(args)
              : Promise.resolve((store[op] as (...a: unknown[]) => Promise<unknown>).apply(store, args));
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(
      (value) => {
        if (op === 'tryLock' && value === true) {
          // Acquired after the worker died (the call was in flight): give it straight back.
          if (dead) void store.unlock(String(args[0]), String(args[1])).then(() => locks.released(String(args[0])), () => {});
          else held.set(String(args[0]), String(args[1]));
        }
        if (op === 'unlock') {
          if (held.get(String(args[0])) === String(args[1])) held.delete(String(args[0]));
          locks.released(String(args[0]));
        }
        answer([id, 1, value ?? null]);
      },
      (err: unknown) => answer([id, 0, toWire(err)]),
    );
  };
  const unsubscribe = endpoint.subscribe((m) => {
    if (typeof m !== 'object' || m === null || (m as { t?: unknown }).t !== STORE_REQUEST) return;
    const calls = (m as RequestMessage).calls;
    if (!Array.isArray(calls)) return;
    for (const c of calls) {
      if (!Array.isArray(c) || c.length !== 3) continue;
      const [id, op, args] = c as unknown[];
      if (!Number.isSafeInteger(id)) continue;
      if (typeof op !== 'string' || !OPS.has(op) || !Array.isArray(args)) {
        inFlight++;
        answer([id as number, 0, toWire(new BrokerError('bad_request', `unknown store operation ${JSON.stringify(op)}`))]);
        continue;
      }
      run(id as number, op as IpcStoreOp, args);
    }
  });
  return {
    get inFlight() {
      return inFlight;
    },
    close: unsubscribe,
    async releaseLocks() {
      dead = true;
      const mine = [...held];
      held.clear();
      // unlock is compare-and-delete: a lock that expired and went to another owner is left alone.
      await Promise.all(mine.map(([name, owner]) => store.unlock(name, owner).then(() => locks.released(name), () => {})));
    },
  };
}
