import { describe, expect, it } from 'vitest';
import { CaExpiryWatch, caExpiry, describeCaExpiry, humanSeconds } from './expiry.js';

const DAY = 86_400;
const WINDOWS = [30 * DAY, 7 * DAY, DAY];
const NOT_AFTER = 1_000_000_000_000;

function watch(start: number): { w: CaExpiryWatch; warnings: string[]; windows: number[]; setNow(t: number): void } {
  let now = start;
  const warnings: string[] = [];
  const windows: number[] = [];
  const w = new CaExpiryWatch({
    authority: 'ab12',
    notAfter: NOT_AFTER,
    windows: WINDOWS,
    clock: { now: () => now },
    onWarning: (e, message) => {
      warnings.push(message);
      windows.push(e.window ?? 0);
    },
  });
  return { w, warnings, windows, setNow: (t) => (now = t) };
}

describe('caExpiry', () => {
  it('is ok outside every window, expiring inside with the narrowest window, expired at notAfter', () => {
    expect(caExpiry('a', NOT_AFTER, NOT_AFTER - 31 * DAY * 1000, WINDOWS)).toMatchObject({ state: 'ok', secondsLeft: 31 * DAY });
    expect(caExpiry('a', NOT_AFTER, NOT_AFTER - 30 * DAY * 1000, WINDOWS)).toMatchObject({ state: 'expiring', window: 30 * DAY });
    expect(caExpiry('a', NOT_AFTER, NOT_AFTER - 5 * DAY * 1000, WINDOWS)).toMatchObject({ state: 'expiring', window: 7 * DAY });
    expect(caExpiry('a', NOT_AFTER, NOT_AFTER - 1000, WINDOWS)).toMatchObject({ state: 'expiring', window: DAY, secondsLeft: 1 });
    expect(caExpiry('a', NOT_AFTER, NOT_AFTER, WINDOWS)).toMatchObject({ state: 'expired', secondsLeft: 0 });
    expect(caExpiry('a', NOT_AFTER, NOT_AFTER - 5 * DAY * 1000, [])).toMatchObject({ state: 'ok' });
  });

  it('says when, in how long, and what to do', () => {
    const text = describeCaExpiry(caExpiry('ab12', NOT_AFTER, NOT_AFTER - (5 * DAY + 3 * 3600) * 1000, WINDOWS));
    expect(text).toContain(new Date(NOT_AFTER).toISOString());
    expect(text).toContain('in 5d 3h');
    expect(text).toContain('ab12');
    expect(describeCaExpiry(caExpiry('ab12', NOT_AFTER, NOT_AFTER + 1, WINDOWS))).toMatch(/expired at .* no X\.509-SVID can be issued/);
    expect([humanSeconds(42), humanSeconds(125), humanSeconds(3 * 3600 + 60), humanSeconds(-5)]).toEqual(['42s', '2m 5s', '3h 1m', '0s']);
  });
});

describe('CaExpiryWatch', () => {
  it('warns once per window entered, at startup for the window it starts in, and once at expiry', () => {
    const t = watch(NOT_AFTER - 40 * DAY * 1000);
    t.w.check();
    expect(t.warnings).toEqual([]);
    t.setNow(NOT_AFTER - 5 * DAY * 1000); // jumped past 30 days straight into 7: one warning, not two
    t.w.check();
    t.w.check();
    expect(t.windows).toEqual([7 * DAY]);
    t.setNow(NOT_AFTER - 3600 * 1000);
    t.w.check();
    t.w.check();
    expect(t.windows).toEqual([7 * DAY, DAY]);
    t.setNow(NOT_AFTER + 1);
    t.w.check();
    t.w.check();
    expect(t.windows).toEqual([7 * DAY, DAY, 0]);
    expect(t.warnings[2]).toMatch(/expired/);
  });

  it('a broker started inside the last day warns at once', () => {
    const t = watch(NOT_AFTER - 600 * 1000);
    t.w.start();
    t.w.close();
    expect(t.windows).toEqual([DAY]);
    expect(t.warnings[0]).toContain('in 10m 0s');
  });

  it('a failing warning sink does not break the watch', () => {
    const w = new CaExpiryWatch({
      authority: 'x',
      notAfter: NOT_AFTER,
      windows: WINDOWS,
      clock: { now: () => NOT_AFTER - 1000 },
      onWarning: () => {
        throw new Error('sink down');
      },
    });
    expect(w.check().state).toBe('expiring');
  });

  it('with rotation (target): no warning while a next authority is on its way; a new active authority starts the warnings over', () => {
    let now = NOT_AFTER - 2 * DAY * 1000;
    let target = { authority: 'a', notAfter: NOT_AFTER, successorPrepared: true };
    const warned: string[] = [];
    const w = new CaExpiryWatch({ authority: 'x', notAfter: 0, target: () => target, windows: WINDOWS, clock: { now: () => now }, onWarning: (e) => warned.push(`${e.authority}:${e.window ?? 'expired'}`) });
    expect(w.check().state).toBe('ok');
    target = { ...target, successorPrepared: false };
    expect(w.check()).toMatchObject({ state: 'expiring', authority: 'a', window: 7 * DAY });
    // The next authority is active: it is judged on its own, from its own first window.
    target = { authority: 'b', notAfter: NOT_AFTER + 10 * DAY * 1000, successorPrepared: false };
    now += 1000;
    expect(w.check()).toMatchObject({ state: 'expiring', authority: 'b', window: 30 * DAY });
    target = { ...target, successorPrepared: true };
    now = target.notAfter + 1;
    expect(w.check().state).toBe('expired'); // a prepared successor does not hide a real expiry
    expect(warned).toEqual([`a:${7 * DAY}`, `b:${30 * DAY}`, 'b:expired']);
  });
});
