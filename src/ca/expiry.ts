/**
 * Sees the signing CA's end coming. The configured warning windows (ca.expiryWarningSeconds, by default
 * 30, 7 and 1 days before notAfter) decide what /readyz says (`expiring`, still ready), and the watch
 * raises one warning each time the broker enters a narrower window — at startup too, so a broker started
 * on a CA with five days left says so at once, not two days later.
 *
 * Nothing here refuses issuance: past notAfter the CA itself answers 503 ca_expired (authority.ts).
 */
import type { Clock } from '../clock.js';

export type CaExpiryState = 'ok' | 'expiring' | 'expired';

export interface CaExpiry {
  readonly state: CaExpiryState;
  /** Which authority (the signing certificate's subject key identifier, hex). */
  readonly authority: string;
  readonly notAfter: number;
  /** Whole seconds until notAfter (negative once past it). */
  readonly secondsLeft: number;
  /** The narrowest warning window (seconds before notAfter) the clock is inside, when expiring. */
  readonly window?: number;
}

export interface CaExpiryWatchOptions {
  readonly authority: string;
  readonly notAfter: number;
  /** Seconds before notAfter at which to warn; any order, duplicates ignored. */
  readonly windows: readonly number[];
  /**
   * With CA rotation: the authority active now, and whether a next one is prepared or on schedule (then
   * nothing is expiring — the next one takes over in time). Overrides `authority` and `notAfter`.
   */
  readonly target?: () => { readonly authority: string; readonly notAfter: number; readonly successorPrepared: boolean };
  readonly clock: Clock;
  /** Called once per window entered, and once at expiry. Never throws into the watch. */
  readonly onWarning: (expiry: CaExpiry, message: string) => void;
}

/** How often the watch looks: often enough that a warning is late by at most a minute. */
const CHECK_INTERVAL_MS = 60_000;

export function caExpiry(authority: string, notAfter: number, now: number, windows: readonly number[]): CaExpiry {
  const secondsLeft = Math.floor((notAfter - now) / 1000);
  if (notAfter <= now) return { state: 'expired', authority, notAfter, secondsLeft };
  const inside = windows.filter((w) => notAfter - now <= w * 1000);
  if (inside.length === 0) return { state: 'ok', authority, notAfter, secondsLeft };
  return { state: 'expiring', authority, notAfter, secondsLeft, window: Math.min(...inside) };
}

/** "3d 4h", "5h 12m", "42s": how long is left, for people. */
export function humanSeconds(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86_400);
  const h = Math.floor((s % 86_400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

export function describeCaExpiry(e: CaExpiry): string {
  const at = new Date(e.notAfter).toISOString();
  if (e.state === 'expired') return `the signing CA ${e.authority} expired at ${at}; no X.509-SVID can be issued until it is replaced`;
  if (e.state === 'expiring') {
    return `the signing CA ${e.authority} expires at ${at} (in ${humanSeconds(e.secondsLeft)}) and no next CA is prepared; install a new signing CA before then`;
  }
  return `the signing CA ${e.authority} is valid until ${at}`;
}

export class CaExpiryWatch {
  readonly #opts: CaExpiryWatchOptions;
  readonly #windows: readonly number[];
  /** The narrowest window already warned about (Infinity: none yet). */
  #warnedWindow = Number.POSITIVE_INFINITY;
  #warnedExpired = false;
  #timer: NodeJS.Timeout | undefined;
  /** The authority the warnings so far were about (a new one starts over). */
  #warnedAuthority: string | undefined;

  constructor(opts: CaExpiryWatchOptions) {
    this.#opts = opts;
    this.#windows = [...new Set(opts.windows)];
  }

  /** Where the CA stands now. */
  current(): CaExpiry {
    const target = this.#opts.target?.();
    if (target === undefined) return caExpiry(this.#opts.authority, this.#opts.notAfter, this.#opts.clock.now(), this.#windows);
    const e = caExpiry(target.authority, target.notAfter, this.#opts.clock.now(), this.#windows);
    return e.state === 'expiring' && target.successorPrepared ? { state: 'ok', authority: e.authority, notAfter: e.notAfter, secondsLeft: e.secondsLeft } : e;
  }

  /** Looks now; warns if a narrower window (or expiry) was entered since the last warning. */
  check(): CaExpiry {
    const e = this.current();
    if (e.authority !== this.#warnedAuthority) {
      this.#warnedAuthority = e.authority;
      this.#warnedWindow = Number.POSITIVE_INFINITY;
      this.#warnedExpired = false;
    }
    const fresh =
      (e.state === 'expired' && !this.#warnedExpired) || (e.state === 'expiring' && e.window !== undefined && e.window < this.#warnedWindow);
    if (fresh) {
      if (e.state === 'expired') this.#warnedExpired = true;
      // Entering a window also covers every wider one (a broker started with 5 days left warns once).
      this.#warnedWindow = e.window ?? 0;
      try {
        this.#opts.onWarning(e, describeCaExpiry(e));
      } catch {
        // A failing sink must not stop the watch.
      }
    }
    return e;
  }

  /** Checks now, then every minute (the timer does not keep the process alive). */
  start(): void {
    this.check();
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(() => this.check(), CHECK_INTERVAL_MS);
    this.#timer.unref();
  }

  close(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
