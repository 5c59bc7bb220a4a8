import type { Clock } from '../../src/clock.js';

/**
 * A clock tests move by hand instead of sleeping. By default it is real time plus what the test
 * advanced (tokens and certificates minted at real time stay valid); `TestClock.frozen()` stands
 * still between advances, so a short window cannot run out while a loaded machine is slow.
 */
export class TestClock implements Clock {
  #offset = 0;

  constructor(private readonly base: () => number = Date.now) {}

  static frozen(at = Date.now()): TestClock {
    return new TestClock(() => at);
  }

  now(): number {
    return this.base() + this.#offset;
  }

  advance(ms: number): void {
    this.#offset += ms;
  }

  /** Jumps to `at` (ms since the epoch), from where it runs on as before. */
  set(at: number): void {
    this.#offset = at - this.base();
  }

  /** Back to the base clock (real time, or the frozen instant). */
  reset(): void {
    this.#offset = 0;
  }
}
