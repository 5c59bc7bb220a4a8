import { describe, expect, it } from 'vitest';
import { Refresher } from './refresher.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Cred {
  id: number;
  expiresAt: number;
}

describe('Refresher', () => {
  it('fetches at once, then renews around half the remaining lifetime', async () => {
    const fetchedAt: number[] = [];
    let n = 0;
    const r = new Refresher<Cred>({
      fetch: async () => {
        fetchedAt.push(Date.now());
        return { id: ++n, expiresAt: Date.now() + 400 };
      },
      expiresAt: (c) => c.expiresAt,
      onValue: () => undefined,
      onError: () => undefined,
      random: () => 0.5,
    });
    const first = r.next();
    r.start();
    expect((await first).id).toBe(1);
    await r.next();
    await r.next();
    r.stop();
    expect(n).toBe(3);
    const gaps = fetchedAt.slice(1).map((t, i) => t - (fetchedAt[i] as number));
    for (const gap of gaps) {
      expect(gap).toBeGreaterThanOrEqual(190);
      expect(gap).toBeLessThan(350);
    }
  });

  it('retries failures with growing delays, reports each, and recovers', async () => {
    const errors: { attempt: number; delayMs: number }[] = [];
    let calls = 0;
    const r = new Refresher<Cred>({
      fetch: async () => {
        calls += 1;
        if (calls <= 3) throw new Error(`down ${calls}`);
        return { id: calls, expiresAt: Date.now() + 60_000 };
      },
      expiresAt: (c) => c.expiresAt,
      onValue: () => undefined,
      onError: (_err, retry) => errors.push(retry),
      backoff: { minMs: 120, maxMs: 1_000 },
      random: () => 0.999,
    });
    const value = r.next();
    r.start();
    expect((await value).id).toBe(4);
    r.stop();
    expect(errors.map((e) => e.attempt)).toEqual([1, 2, 3]);
    // 120, 240, 480 ms, times (0.5 + 0.5 × 0.999) jitter.
    expect(errors.map((e) => e.delayMs)).toEqual([119, 239, 479]);
    expect(r.failures).toBe(0);
  });

  it('treats a failing onValue as a failed attempt and keeps the loop going', async () => {
    const seen: string[] = [];
    let calls = 0;
    const r = new Refresher<Cred>({
      fetch: async () => ({ id: ++calls, expiresAt: Date.now() + 60_000 }),
      expiresAt: (c) => c.expiresAt,
      onValue: (c) => {
        if (c.id === 1) throw new Error('disk full');
      },
      onError: (err) => seen.push((err as Error).message),
      backoff: { minMs: 10 },
    });
    const value = r.next();
    r.start();
    expect((await value).id).toBe(2);
    r.stop();
    expect(seen).toEqual(['disk full']);
  });

  it('stop() cancels the timer and rejects waiters; nothing runs afterwards', async () => {
    let calls = 0;
    const r = new Refresher<Cred>({
      fetch: async () => ({ id: ++calls, expiresAt: Date.now() + 100 }),
      expiresAt: (c) => c.expiresAt,
      onValue: () => undefined,
      onError: () => undefined,
    });
    const first = r.next();
    r.start();
    await first;
    const pending = r.next();
    r.stop();
    await expect(pending).rejects.toThrow(/stopped/);
    const before = calls;
    await sleep(250);
    expect(calls).toBe(before);
    await expect(r.next()).rejects.toThrow(/stopped/);
  });

  it('refreshNow tries again at once instead of waiting out the retry delay', async () => {
    let attempts = 0;
    const r = new Refresher<Cred>({
      fetch: async () => {
        attempts += 1;
        if (attempts === 1) throw new Error('token file not there yet');
        return { id: attempts, expiresAt: Date.now() + 3_600_000 };
      },
      expiresAt: (c) => c.expiresAt,
      onValue: () => undefined,
      onError: () => undefined,
      backoff: { minMs: 60_000, maxMs: 60_000 },
      random: () => 0.5,
    });
    r.refreshNow(); // before start: nothing
    const value = r.next();
    r.start();
    await sleep(50);
    expect(attempts).toBe(1); // failed; the next try is a minute away
    r.refreshNow();
    expect((await value).id).toBe(2);
    r.stop();
    r.refreshNow(); // after stop: nothing
    await sleep(20);
    expect(attempts).toBe(2);
  });
});
