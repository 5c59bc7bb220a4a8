import { afterEach, describe, expect, it, vi } from 'vitest';
import { RETIRED_POOL_GRACE_MS, RotatingAdminPool } from './admin-pool.js';

/** A stand-in pool that records the password it was made with and whether it was ended. */
class FakePool {
  ended = 0;
  constructor(readonly password: string | undefined) {}
  end(): Promise<void> {
    this.ended++;
    return Promise.resolve();
  }
}

function rotating(source?: () => Promise<string | undefined>) {
  const made: FakePool[] = [];
  const pool = new RotatingAdminPool(
    (password) => {
      const p = new FakePool(password);
      made.push(p);
      return p;
    },
    'configured',
    source,
  );
  return { pool, made };
}

afterEach(() => {
  vi.useRealTimers();
});

describe('RotatingAdminPool', () => {
  it('without a password source keeps the one pool made with the configured password', async () => {
    const { pool, made } = rotating();
    expect(await pool.current()).toBe(made[0]);
    expect(await pool.current()).toBe(made[0]);
    expect(made.map((p) => p.password)).toEqual([undefined]);
  });

  it('keeps the pool while the store holds nothing or the configured password', async () => {
    let stored: string | undefined = undefined;
    const { pool, made } = rotating(() => Promise.resolve(stored));
    expect(await pool.current()).toBe(made[0]);
    stored = 'configured';
    expect(await pool.current()).toBe(made[0]);
    expect(made).toHaveLength(1);
  });

  it('swaps to a pool with the rotated password and ends the old one only after the grace period', async () => {
    vi.useFakeTimers();
    let stored: string | undefined = 'rotated-1';
    const { pool, made } = rotating(() => Promise.resolve(stored));
    const first = made[0] as FakePool;
    const second = await pool.current();
    expect(second.password).toBe('rotated-1');
    expect(await pool.current()).toBe(second);
    expect(first.ended).toBe(0); // connections checked out of it may still be in use
    vi.advanceTimersByTime(RETIRED_POOL_GRACE_MS - 1);
    expect(first.ended).toBe(0);
    vi.advanceTimersByTime(1);
    expect(first.ended).toBe(1);

    // Back to the configured one (the store forgot the rotation): a pool with it, given explicitly.
    stored = undefined;
    const third = await pool.current();
    expect(third).not.toBe(second);
    expect(third.password).toBe('configured');
  });

  it('end() ends the current pool and every retired one, once', async () => {
    vi.useFakeTimers();
    let stored = 'a';
    const { pool, made } = rotating(() => Promise.resolve(stored));
    await pool.current();
    stored = 'b';
    await pool.current();
    expect(made).toHaveLength(3);
    await pool.end();
    expect(made.map((p) => p.ended)).toEqual([1, 1, 1]);
  });
});
