/**
 * Keeps one credential fresh: fetch, then renew at half the remaining lifetime (with jitter); after a
 * failure retry with capped exponential backoff, faster as expiry nears. One timer, never overlapping
 * attempts, stoppable at any point.
 */
import { renewDelayMs, retryDelayMs, type BackoffOptions } from './timing.js';

/** setTimeout's ceiling (about 24.8 days); longer delays simply wake up early and reschedule. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface RefresherOptions<T> {
  readonly fetch: () => Promise<T>;
  readonly expiresAt: (value: T) => number;
  /** Called with each new value; a throw or rejection counts as a failed attempt. */
  readonly onValue: (value: T) => void | Promise<void>;
  readonly onError: (err: unknown, retry: { readonly attempt: number; readonly delayMs: number }) => void;
  readonly backoff?: BackoffOptions;
  readonly random?: () => number;
  readonly now?: () => number;
  /**
   * Keep the event loop alive while waiting to renew (the agent). Otherwise the timer only holds the
   * process while a caller awaits next(); between renewals the host process decides.
   */
  readonly keepAlive?: boolean;
}

export class Refresher<T> {
  #current: T | undefined;
  #timer: NodeJS.Timeout | undefined;
  #failures = 0;
  #started = false;
  #stopped = false;
  #waiters: { resolve: (v: T) => void; reject: (e: unknown) => void }[] = [];

  constructor(private readonly opts: RefresherOptions<T>) {}

  get current(): T | undefined {
    return this.#current;
  }

  /** Consecutive failed attempts since the last success. */
  get failures(): number {
    return this.#failures;
  }

  start(): void {
    if (this.#started || this.#stopped) return;
    this.#started = true;
    this.#schedule(0);
  }

  /** Resolves with the next value obtained (not the current one). Rejects when stopped. */
  next(): Promise<T> {
    if (this.#stopped) return Promise.reject(new Error('stopped'));
    // Someone is waiting for a value: the pending attempt must keep the process alive.
    this.#timer?.ref();
    return new Promise<T>((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /**
   * Tries again at once instead of waiting for the renewal or retry timer (the agent's SIGHUP). No-op
   * before start(), after stop(), or while an attempt is already running.
   */
  refreshNow(): void {
    if (!this.#started || this.#stopped || this.#timer === undefined) return;
    clearTimeout(this.#timer);
    this.#schedule(0);
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    const waiters = this.#waiters.splice(0);
    for (const w of waiters) w.reject(new Error('stopped'));
  }

  #now(): number {
    return (this.opts.now ?? Date.now)();
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    const delay = Math.min(Math.max(0, delayMs), MAX_TIMER_MS);
    this.#timer = setTimeout(() => void this.#attempt(delayMs - delay), delay);
    if (this.opts.keepAlive !== true && this.#waiters.length === 0) this.#timer.unref();
  }

  async #attempt(leftoverMs: number): Promise<void> {
    this.#timer = undefined;
    if (this.#stopped) return;
    if (leftoverMs > 0) {
      this.#schedule(leftoverMs);
      return;
    }
    const random = this.opts.random ?? Math.random;
    try {
      const value = await this.opts.fetch();
      if (this.#stopped) return;
      this.#current = value;
      await this.opts.onValue(value);
      if (this.#stopped) return;
      this.#failures = 0;
      for (const w of this.#waiters.splice(0)) w.resolve(value);
      this.#schedule(renewDelayMs(this.opts.expiresAt(value), this.#now(), random()));
    } catch (err) {
      if (this.#stopped) return;
      this.#failures += 1;
      const remaining = this.#current === undefined ? 0 : this.opts.expiresAt(this.#current) - this.#now();
      const delayMs = retryDelayMs(this.#failures, remaining, random(), this.opts.backoff);
      try {
        this.opts.onError(err, { attempt: this.#failures, delayMs });
      } finally {
        this.#schedule(delayMs);
      }
    }
  }
}
