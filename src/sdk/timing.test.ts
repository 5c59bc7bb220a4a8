import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FLOOR_MS, RENEW_JITTER, renewDelayMs, retryDelayMs } from './timing.js';

describe('renewDelayMs', () => {
  it('renews at half the remaining lifetime, within ±10%', () => {
    expect(renewDelayMs(10_000, 0, 0.5)).toBe(5_000);
    expect(renewDelayMs(10_000, 0, 0)).toBe(4_500);
    expect(renewDelayMs(10_000, 0, 0.999_999)).toBe(5_499);
    expect(renewDelayMs(10_000, 4_000, 0.5)).toBe(3_000);
  });

  it('renews at once when the credential is already expired', () => {
    expect(renewDelayMs(1_000, 1_000, 0.5)).toBe(0);
    expect(renewDelayMs(1_000, 5_000, 0.9)).toBe(0);
  });

  it('always lands inside the jitter window, never after expiry', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 30 * 86_400_000 }), fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), (remaining, r) => {
        const d = renewDelayMs(remaining, 0, r);
        expect(d).toBeGreaterThanOrEqual(Math.floor(remaining * 0.5 * (1 - RENEW_JITTER)));
        expect(d).toBeLessThanOrEqual(Math.ceil(remaining * 0.5 * (1 + RENEW_JITTER)));
        expect(d).toBeLessThan(remaining + 1);
      }),
    );
  });

  it('spreads clients out: different random draws give different times', () => {
    const times = new Set([0, 0.25, 0.5, 0.75].map((r) => renewDelayMs(3_600_000, 0, r)));
    expect(times.size).toBe(4);
  });
});

describe('retryDelayMs', () => {
  it('grows exponentially from the minimum, with equal jitter', () => {
    // rand = 1 (upper end) shows the un-jittered ceiling: 500, 1000, 2000, 4000 …
    expect([1, 2, 3, 4].map((a) => retryDelayMs(a, 0, 0.999_999))).toEqual([499, 999, 1_999, 3_999]);
    // rand = 0: half of it
    expect([1, 2, 3, 4].map((a) => retryDelayMs(a, 0, 0))).toEqual([250, 500, 1_000, 2_000]);
  });

  it('is capped at maxMs', () => {
    expect(retryDelayMs(50, 0, 0.999_999, { maxMs: 30_000 })).toBe(29_999);
    expect(retryDelayMs(1_000, 0, 0.999_999, { minMs: 100, maxMs: 2_000 })).toBe(1_999);
  });

  it('retries faster as expiry nears while the credential is still valid', () => {
    // Attempt 10 would be 30 s, but only 8 s of validity remain: at most 2 s.
    expect(retryDelayMs(10, 8_000, 0.999_999)).toBe(1_999);
    expect(retryDelayMs(10, 8_000, 0)).toBe(1_000);
    // Never below the minimum, even right before expiry.
    expect(retryDelayMs(10, 100, 0.999_999)).toBe(499);
  });

  it('never spins and never exceeds the cap', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 10_000 }),
        fc.integer({ min: -86_400_000, max: 86_400_000 }),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        fc.integer({ min: 1, max: 5_000 }),
        fc.integer({ min: 1, max: 600_000 }),
        (attempt, remaining, r, minMs, maxMs) => {
          const d = retryDelayMs(attempt, remaining, r, { minMs, maxMs });
          expect(d).toBeGreaterThanOrEqual(FLOOR_MS);
          expect(d).toBeLessThanOrEqual(Math.max(FLOOR_MS, Math.max(minMs, maxMs)));
          expect(Number.isInteger(d)).toBe(true);
        },
      ),
    );
  });
});
