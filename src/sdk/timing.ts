/**
 * When to renew and how long to wait after a failure. Pure functions of time and a random number,
 * so the rules are tested directly and every client spreads its load the same way.
 */

export interface BackoffOptions {
  /** First retry delay, default 500 ms. */
  readonly minMs?: number;
  /** Longest retry delay, default 30 s. */
  readonly maxMs?: number;
}

export const DEFAULT_MIN_BACKOFF_MS = 500;
export const DEFAULT_MAX_BACKOFF_MS = 30_000;
/** Renewals land within ±10% of the half-way point, so replicas started together do not renew together. */
export const RENEW_JITTER = 0.1;
/** Never spin: even an expired credential waits this long between attempts. */
export const FLOOR_MS = 100;

/**
 * Delay until renewal: half the remaining lifetime, ±10% jitter. `rand` is in [0, 1).
 * A credential already past its half-life renews at once (0).
 */
export function renewDelayMs(expiresAt: number, now: number, rand: number): number {
  const remaining = expiresAt - now;
  if (remaining <= 0) return 0;
  const factor = 0.5 * (1 - RENEW_JITTER + 2 * RENEW_JITTER * rand);
  return Math.max(0, Math.floor(remaining * factor));
}

/**
 * Delay before retry number `attempt` (1 = first retry): exponential from minMs, capped at maxMs
 * and, while the current credential is still valid, at a quarter of its remaining life, so a broker
 * that comes back shortly before expiry is found in time. "Equal jitter": between half and all of it.
 */
export function retryDelayMs(attempt: number, remainingMs: number, rand: number, opts: BackoffOptions = {}): number {
  const min = opts.minMs ?? DEFAULT_MIN_BACKOFF_MS;
  const max = Math.max(min, opts.maxMs ?? DEFAULT_MAX_BACKOFF_MS);
  let delay = Math.min(max, min * 2 ** Math.min(Math.max(attempt - 1, 0), 30));
  if (remainingMs > 0) delay = Math.min(delay, Math.max(min, remainingMs / 4));
  return Math.max(FLOOR_MS, Math.floor(delay / 2 + (delay / 2) * rand));
}
