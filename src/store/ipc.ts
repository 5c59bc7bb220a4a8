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
 * in one turn: a round trip costs ~20 µs of CPU on each side, a batched call ~3 µs.
 * A call the primary does not answer within `timeoutMs` (or any call once the channel is gone) rejects
 * with store_unavailable (503), so a stuck primary is a refusal, never a hang. As with Redis, an audit
 * append that timed out may still have been made durable (the Store contract allows this over a network).
 */
import type { ChildProcess } from 'node:child_process';
import type { Worker } from 'node:cluster';
import type { EventEmitter } from 'node:events';
import { BrokerError, type ErrorCode, storeUnavailable } from '../errors.js';
import type { Store } from './store.js';

/** The Store methods that cross the channel (an allow-list: nothing else is ever invoked remotely). */
export const IPC_STORE_OPS = [
  'appendAuditEntries', 'auditSize', 'readAuditEntries', 'appendCheckpoint', 'listCheckpoints', 'consumeOnce',
  'kvPut', 'kvGet', 'kvDelete', 'kvList', 'hit', 'tryLock', 'unlock', 'checkWritable',
] as const;
export type IpcStoreOp = (typeof IPC_STORE_OPS)[number];
const OPS: ReadonlySet<string> = new Set(IPC_STORE_OPS);

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
    return new BrokerError(w.code, w.status, String(w.message), w.retryAfterSeconds !== undefined ? { retryAfterSeconds: w.retryAfterSeconds } : undefined);
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
    const v = await this.#call<string | null | undefined>('kvGet', [space, key]);
    return v ?? undefined;
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
 * The primary side for one worker: runs each allowed call against `store` and sends the results back,
 * those finished in the same event-loop turn in one message. A call the primary cannot deliver (the
 * worker died) is dropped; what it did to the store stands, like a client that disconnected.
 */
export function serveStore(store: Store, endpoint: IpcEndpoint): StoreServer {
  let outbox: Result[] = [];
  let scheduled = false;
  let inFlight = 0;
  /** lock name → owner, for the locks this worker acquired and has not released. */
  const held = new Map<string, string>();
  let released = false;
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
  const run = (id: number, op: IpcStoreOp, args: unknown[]): void => {
    inFlight++;
    let p: Promise<unknown>;
    try {
      if (op === 'appendAuditEntries') {
        const entries = args[0];
        if (!Array.isArray(entries) || !entries.every(isBytes)) throw new BrokerError('bad_request', 400, 'audit entries must be byte arrays');
        args = [entries.map(asBuffer)];
      }
      p = Promise.resolve((store[op] as (...a: unknown[]) => Promise<unknown>).apply(store, args));
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(
      (value) => {
        if (op === 'tryLock' && value === true) {
          // Acquired after the worker died (the call was in flight): give it straight back.
          if (released) void store.unlock(String(args[0]), String(args[1])).catch(() => {});
          else held.set(String(args[0]), String(args[1]));
        }
        if (op === 'unlock' && held.get(String(args[0])) === String(args[1])) held.delete(String(args[0]));
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
        answer([id as number, 0, toWire(new BrokerError('bad_request', 400, `unknown store operation ${JSON.stringify(op)}`))]);
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
      released = true;
      const locks = [...held];
      held.clear();
      // unlock is compare-and-delete: a lock that expired and went to another owner is left alone.
      await Promise.all(locks.map(([name, owner]) => store.unlock(name, owner).catch(() => {})));
    },
  };
}
