import { describe, expect, it } from 'vitest';
import { storeUnavailable } from '../errors.js';
import { checkContinuation, type KnownLog, type LeafReader } from './continuity.js';
import { leafHash, rootFromLeaves } from './merkle.js';

const leaves = (from: number, to: number, tag = 'entry'): Buffer[] =>
  Array.from({ length: to - from }, (_, i) => leafHash(Buffer.from(`${tag}-${from + i}`)));
const known = (ls: readonly Buffer[]): KnownLog => ({ size: ls.length, rootHash: rootFromLeaves(ls) });
const reader = (ls: readonly Buffer[]): LeafReader => async (start, end) => ls.slice(start, end);

describe('checkContinuation', () => {
  const mine = leaves(0, 50);

  it('refuses a store shorter than the known log (Redis restarted empty, or lost the last second)', async () => {
    const empty = await checkContinuation(known(mine), 0, reader([]));
    expect(empty).toMatchObject({ ok: false, storeSize: 0 });
    expect(empty.ok ? '' : empty.reason).toMatch(/holds 0 audit entries, fewer than the 50/);
    const shorter = await checkContinuation(known(mine), 49, reader(mine.slice(0, 49)));
    expect(shorter.ok).toBe(false);
  });

  it('refuses a store of the same size whose entries differ (different root)', async () => {
    const other = [...mine.slice(0, 20), leafHash(Buffer.from('forged')), ...mine.slice(21)];
    const r = await checkContinuation(known(mine), 50, reader(other));
    expect(r.ok).toBe(false);
    expect(r.ok ? '' : r.reason).toMatch(/not a continuation/);
  });

  it('refuses a longer store whose prefix differs from the known log', async () => {
    const other = [...leaves(0, 50, 'other'), ...leaves(50, 80)];
    expect((await checkContinuation(known(mine), 80, reader(other))).ok).toBe(false);
  });

  it('accepts a longer store that is consistent with the known log (other replicas appended)', async () => {
    const longer = [...mine, ...leaves(50, 90)];
    expect(await checkContinuation(known(mine), 90, reader(longer))).toEqual({ ok: true, storeSize: 90 });
  });

  it('accepts the same log, and anything when nothing is known yet', async () => {
    expect(await checkContinuation(known(mine), 50, reader(mine))).toEqual({ ok: true, storeSize: 50 });
    expect(await checkContinuation(known([]), 50, reader(mine))).toEqual({ ok: true, storeSize: 50 });
    expect(await checkContinuation(known([]), 0, reader([]))).toEqual({ ok: true, storeSize: 0 });
  });

  it('refuses a store that returns fewer entries than its size says, and rejects when it cannot be read', async () => {
    const short: LeafReader = async (start, end) => mine.slice(start, Math.min(end, 30));
    expect((await checkContinuation(known(mine.slice(0, 10)), 50, short)).ok).toBe(false);
    const down: LeafReader = async () => {
      throw storeUnavailable('redis down');
    };
    await expect(checkContinuation(known(mine), 50, down)).rejects.toMatchObject({ code: 'store_unavailable' });
  });

  it('reads large logs in batches', async () => {
    const big = leaves(0, 40_000);
    let calls = 0;
    const counting: LeafReader = async (start, end) => {
      calls++;
      return big.slice(start, end);
    };
    expect((await checkContinuation(known(big.slice(0, 39_999)), 40_000, counting)).ok).toBe(true);
    expect(calls).toBe(3);
  });
});
