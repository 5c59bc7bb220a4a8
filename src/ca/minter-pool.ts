/**
 * Minting threads: X.509-SVID minting (CSR check, key import, leaf signature; ca/minter.ts) on
 * worker_threads, so the event loop keeps serving TLS, attestation and the audit log meanwhile.
 *
 * - Jobs created in one event-loop turn go to a thread in one message (least-loaded thread first);
 *   a thread answers a batch in one message. Under load that is ~1 message per several issuances.
 * - Fail closed, never hang: a thread that dies, or holds a job past `jobTimeoutMs` (it is then
 *   terminated), fails its jobs with 503 `ca_unavailable` — nothing was issued — and is replaced
 *   (after 100 ms, doubling to 5 s while replacements keep dying at once).
 * - Threads hold a copy of the CA key; they live in this process and never leave it.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { BrokerError, type ErrorCode } from '../errors.js';
import type { CaSource, CertificateAuthority } from './authority.js';
import type { X509MintRequest, X509Minted, X509Minter } from './minter.js';

/** Data every thread starts with. */
export interface ThreadInit {
  readonly ca: CaSource;
}
export interface MintJob {
  readonly id: number;
  readonly req: X509MintRequest;
}
export type MintResult =
  | { readonly id: number; readonly ok: true; readonly value: X509Minted }
  | { readonly id: number; readonly ok: false; readonly error: { readonly code: ErrorCode; readonly message: string } };
/** What the pool sends a thread: a batch of jobs, or the CA to mint with from then on (rotation). */
export type ThreadCommand = readonly MintJob[] | { readonly type: 'ca'; readonly ca: CaSource };
export type ThreadMessage = { readonly type: 'ready' } | { readonly type: 'results'; readonly results: readonly MintResult[] };

export const MAX_CA_THREADS = 16;

/**
 * `auto` threads: the cores one broker process may use beyond its event loop, at most 4 (CSR checks
 * and signatures stop being the bottleneck well before that), at least 1.
 */
export function autoCaThreads(processes = 1): number {
  return Math.max(1, Math.min(4, Math.floor(availableParallelism() / Math.max(1, processes)) - 1));
}

export interface MinterPoolOptions {
  readonly threads: number;
  /** A job not answered by then fails with 503 and its thread is replaced (default 10 s). */
  readonly jobTimeoutMs?: number;
  /** The thread's script (tests use their own to kill or hang a thread); default minter-worker.js. */
  readonly script?: URL;
  /** Told when a thread dies or is replaced. */
  readonly onError?: (err: unknown, what: string) => void;
  /** Counted in metrics: a thread exited, or was terminated for holding a job too long. */
  readonly onThreadFailure?: (reason: 'exited' | 'stuck') => void;
}

const unavailable = (message: string): BrokerError => new BrokerError('ca_unavailable', message);

interface Pending {
  readonly resolve: (value: X509Minted) => void;
  readonly reject: (err: BrokerError) => void;
  readonly thread: Thread;
  readonly sentAt: number;
}

interface Thread {
  readonly worker: Worker;
  readonly startedAt: number;
  /** Jobs sent or queued and not yet answered. */
  inFlight: number;
  /** Jobs of this turn, not yet posted. */
  queue: MintJob[];
  alive: boolean;
  /** Terminated by the watchdog (counted as stuck, not as exited). */
  stuck: boolean;
}

// Under vitest the sources are .ts files that plain Node cannot run in a thread: the build's copy is
// used there (`npm test` builds first).
function defaultScript(): URL {
  return import.meta.url.endsWith('.ts')
    ? new URL('../../dist/ca/minter-worker.js', import.meta.url)
    : new URL('./minter-worker.js', import.meta.url);
}

export class MinterPool implements X509Minter {
  #source: CaSource;
  readonly #opts: MinterPoolOptions;
  readonly #jobTimeoutMs: number;
  readonly #threads: (Thread | undefined)[];
  readonly #pending = new Map<number, Pending>();
  #nextId = 0;
  #flushScheduled = false;
  #closed = false;
  #restartDelayMs = 100;
  readonly #watchdog: NodeJS.Timeout;

  private constructor(source: CaSource, opts: MinterPoolOptions) {
    if (!Number.isInteger(opts.threads) || opts.threads < 1 || opts.threads > MAX_CA_THREADS) {
      throw new RangeError(`threads must be an integer in [1, ${MAX_CA_THREADS}]`);
    }
    this.#source = source;
    this.#opts = opts;
    this.#jobTimeoutMs = opts.jobTimeoutMs ?? 10_000;
    this.#threads = new Array<Thread | undefined>(opts.threads).fill(undefined);
    this.#watchdog = setInterval(() => this.#expire(), Math.min(1000, this.#jobTimeoutMs)).unref();
  }

  /** Starts `threads` threads and resolves once every one has loaded the CA. */
  static async start(source: CaSource, opts: MinterPoolOptions): Promise<MinterPool> {
    const pool = new MinterPool(source, opts);
    try {
      await Promise.all(pool.#threads.map((_, slot) => pool.#spawn(slot)));
    } catch (err) {
      await pool.close();
      throw err;
    }
    return pool;
  }

  get threads(): number {
    return this.#threads.length;
  }

  /** Jobs handed to the threads and not yet answered. */
  get inFlight(): number {
    return this.#pending.size;
  }

  mint(req: X509MintRequest): Promise<X509Minted> {
    if (this.#closed) return Promise.reject(unavailable('the broker is shutting down; nothing was issued'));
    let thread: Thread | undefined;
    for (const t of this.#threads) if (t?.alive === true && (thread === undefined || t.inFlight < thread.inFlight)) thread = t;
    if (thread === undefined) return Promise.reject(unavailable('no certificate minting thread is running; nothing was issued (retry shortly)'));
    const chosen = thread;
    const id = this.#nextId++;
    return new Promise<X509Minted>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, thread: chosen, sentAt: Date.now() });
      if (chosen.inFlight++ === 0) chosen.worker.ref();
      chosen.queue.push({ id, req });
      if (!this.#flushScheduled) {
        this.#flushScheduled = true;
        setImmediate(() => this.#flush());
      }
    });
  }

  /**
   * Every thread mints with `ca` from now on (CA rotation): jobs of this turn go first, with the CA they
   * were taken under; a thread started later loads `ca`.
   */
  setAuthority(ca: CertificateAuthority): void {
    this.#source = ca.source;
    this.#flush();
    for (const t of this.#threads) if (t !== undefined) t.worker.postMessage({ type: 'ca', ca: ca.source } satisfies ThreadCommand);
  }

  /** Refuses new jobs, lets the ones in flight finish (up to the job timeout), stops the threads. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#flush();
    const deadline = Date.now() + this.#jobTimeoutMs;
    while (this.#pending.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    clearInterval(this.#watchdog);
    const threads = this.#threads.filter((t): t is Thread => t !== undefined);
    for (const t of threads) t.alive = false;
    await Promise.all(threads.map((t) => t.worker.terminate()));
    this.#failAll(() => true, 'the broker is shutting down; nothing was issued');
  }

  #flush(): void {
    this.#flushScheduled = false;
    for (const t of this.#threads) {
      if (t === undefined || t.queue.length === 0) continue;
      const batch = t.queue;
      t.queue = [];
      t.worker.postMessage(batch satisfies ThreadCommand);
    }
  }

  #spawn(slot: number): Promise<void> {
    const worker = new Worker(this.#opts.script ?? defaultScript(), { workerData: { ca: this.#source } satisfies ThreadInit });
    worker.unref();
    const thread: Thread = { worker, startedAt: Date.now(), inFlight: 0, queue: [], alive: false, stuck: false };
    this.#threads[slot] = thread;
    return new Promise<void>((resolve, reject) => {
      let ready = false;
      worker.on('message', (msg: ThreadMessage) => {
        if (msg.type === 'ready') {
          ready = true;
          thread.alive = !this.#closed;
          resolve();
        } else {
          this.#settle(thread, msg.results);
        }
      });
      worker.on('error', (err) => {
        this.#opts.onError?.(err, `certificate minting thread ${slot + 1} failed`);
        if (!ready) reject(new BrokerError('internal', `certificate minting thread could not start: ${err.message}`));
      });
      worker.on('exit', (code) => {
        if (!ready) reject(new BrokerError('internal', `certificate minting thread exited with code ${code} before it was ready`));
        this.#onExit(slot, thread, code);
      });
    });
  }

  #settle(thread: Thread, results: readonly MintResult[]): void {
    for (const r of results) {
      const p = this.#pending.get(r.id);
      if (p === undefined) continue; // already failed by the watchdog
      this.#pending.delete(r.id);
      if (--thread.inFlight === 0) thread.worker.unref();
      if (r.ok) p.resolve(r.value);
      else p.reject(new BrokerError(r.error.code, r.error.message));
    }
  }

  #failAll(match: (p: Pending) => boolean, message: string): void {
    for (const [id, p] of this.#pending) {
      if (!match(p)) continue;
      this.#pending.delete(id);
      p.thread.inFlight--;
      p.reject(unavailable(message));
    }
  }

  #onExit(slot: number, thread: Thread, code: number): void {
    // A stuck thread was counted by #expire; a thread that never got ready counts as exited too.
    if (!thread.stuck && !this.#closed) this.#opts.onThreadFailure?.('exited');
    thread.alive = false;
    thread.queue = [];
    this.#failAll((p) => p.thread === thread, 'the certificate minting thread stopped; nothing was issued (retry shortly)');
    if (this.#closed || this.#threads[slot] !== thread) return;
    this.#opts.onError?.(new Error(`exited with code ${code}`), `certificate minting thread ${slot + 1} stopped; replacing it`);
    // A thread that dies right after starting would otherwise be replaced in a tight loop.
    this.#restartDelayMs = Date.now() - thread.startedAt > 30_000 ? 100 : Math.min(5000, this.#restartDelayMs * 2);
    setTimeout(() => {
      if (this.#closed) return;
      this.#spawn(slot).catch((err: unknown) => this.#opts.onError?.(err, `certificate minting thread ${slot + 1} could not be replaced`));
    }, this.#restartDelayMs).unref();
  }

  /** Terminates a thread holding a job past its deadline; its exit fails the jobs and replaces it. */
  #expire(): void {
    const now = Date.now();
    for (const p of this.#pending.values()) {
      // The map is in send order: the first job not yet late means none after it is.
      if (now - p.sentAt < this.#jobTimeoutMs) break;
      if (p.thread.alive) {
        p.thread.alive = false;
        p.thread.stuck = true;
        this.#opts.onThreadFailure?.('stuck');
        this.#opts.onError?.(new Error(`a job took over ${this.#jobTimeoutMs} ms`), 'certificate minting thread is stuck; terminating it');
        void p.thread.worker.terminate();
      }
    }
  }
}
