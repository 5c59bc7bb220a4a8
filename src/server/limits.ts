/**
 * Rate limits, in one place, counted in the Store (`hit`, a fixed window shared by every replica):
 *
 *   source    every request whose attestation FAILS (a bad token, a bad certificate, no credential)
 *             counts against the client address. Past the limit such failures answer 429 and are no
 *             longer audited one by one, so a flood of forged tokens costs a verify and a counter
 *             increment, not an fsync each. A request that attests is never counted here: in
 *             Kubernetes many pods share a node's address, and junk from one must not lock out the
 *             rest. The address is used only as this counter's key: never in identity, audit or policy.
 *   identity  every authenticated request counts against the caller's SPIFFE ID.
 *
 * Over the limit: 429 `rate_limited` with Retry-After (seconds until the window resets). Only the
 * first refusal of a window is meant for the audit log (`firstInWindow`): a flood then leaves one
 * entry per key and window instead of one per request. Store failures propagate (503, fail closed).
 */
import { createHash } from 'node:crypto';
import { isIPv6 } from 'node:net';
import type { Identity } from '../attest/identity.js';
import type { LimitsConfig } from '../config/config.js';
import { BrokerError, storeUnavailable } from '../errors.js';
import type { LimitScope } from '../metrics/metrics.js';
import type { Store } from '../store/store.js';

export class RateLimitedError extends BrokerError {
  readonly scope: LimitScope;
  /** True for the first refusal of a key's window: the one worth an audit entry. */
  readonly firstInWindow: boolean;
  /** The authenticated caller an identity limit refused (its audit entry names it). */
  readonly identity: Identity | undefined;

  constructor(scope: LimitScope, message: string, retryAfterSeconds: number, firstInWindow: boolean, identity?: Identity) {
    super('rate_limited', message, { retryAfterSeconds });
    this.scope = scope;
    this.firstInWindow = firstInWindow;
    this.identity = identity;
  }
}

/** True for a 429 that repeats one already audited in this window (skip the audit entry). */
export function isRepeatedRateLimit(err: unknown): boolean {
  return err instanceof RateLimitedError && !err.firstInWindow;
}

/** Store counter keys are at most 1024 characters; SPIFFE IDs may be longer. */
const MAX_PLAIN_KEY = 900;

/** Expands an IPv6 address to 8 groups of 4 hex digits (no zone). Undefined if it is not one. */
export function expandIPv6(address: string): string[] | undefined {
  const bare = address.split('%')[0] ?? '';
  if (!isIPv6(bare)) return undefined;
  let text = bare;
  // A trailing dotted quad (::ffff:1.2.3.4) becomes two groups.
  const quad = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (quad) {
    const [a, b, c, d] = quad.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, quad.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const fill = tail === undefined ? [] : new Array<string>(8 - h.length - t.length).fill('0');
  const groups = [...h, ...fill, ...t];
  if (groups.length !== 8) return undefined;
  return groups.map((g) => g.toLowerCase().padStart(4, '0'));
}

/**
 * The counter key of a client address: IPv4 (also when IPv4-mapped) as is, IPv6 by its /64 — one
 * host usually holds a whole /64, so counting single IPv6 addresses would not limit anything.
 */
export function sourceKey(address: string | undefined): string {
  if (address === undefined || address === '') return 'rl:src:unknown';
  const groups = expandIPv6(address);
  if (groups === undefined) return `rl:src:${address}`;
  if (groups.slice(0, 6).join(':') === '0000:0000:0000:0000:0000:ffff') {
    const v4 = groups.slice(6).flatMap((g) => [parseInt(g.slice(0, 2), 16), parseInt(g.slice(2), 16)]);
    return `rl:src:${v4.join('.')}`;
  }
  return `rl:src:${groups.slice(0, 4).join(':')}::/64`;
}

export function identityKey(spiffeId: string): string {
  return spiffeId.length <= MAX_PLAIN_KEY
    ? `rl:id:${spiffeId}`
    : `rl:id:sha256:${createHash('sha256').update(spiffeId).digest('hex')}`;
}

export interface LimitObserver {
  rateLimited(scope: LimitScope): void;
}

export class RateLimiter {
  readonly #store: Store;
  #windowMs = 0;
  #perSource = 0;
  #perIdentity = 0;
  readonly #observer: LimitObserver | undefined;

  constructor(store: Store, config: LimitsConfig, observer?: LimitObserver) {
    this.#store = store;
    this.configure(config);
    this.#observer = observer;
  }

  /** Applies new limits (config reload); counts in the store carry on. */
  configure(config: LimitsConfig): void {
    this.#windowMs = config.windowSeconds * 1000;
    // 0 (or disabled) means no counting at all: no store call on the hot path.
    this.#perSource = config.enabled ? config.attemptsPerSource : 0;
    this.#perIdentity = config.enabled ? config.issuancesPerIdentity : 0;
  }

  /** Counts one failed attestation from `address`; throws 429 over the limit. */
  async failedAttempt(address: string | undefined): Promise<void> {
    if (this.#perSource === 0) return;
    await this.#count('source', sourceKey(address), this.#perSource, 'too many failed authentication attempts from this client address');
  }

  /** Counts one authenticated request by `identity` (its SPIFFE ID); throws 429 over the limit. */
  async identity(identity: Identity): Promise<void> {
    if (this.#perIdentity === 0) return;
    await this.#count('identity', identityKey(identity.spiffeId), this.#perIdentity, 'too many requests for this identity', identity);
  }

  async #count(scope: LimitScope, key: string, limit: number, what: string, identity?: Identity): Promise<void> {
    let count: number;
    let resetInMs: number;
    try {
      ({ count, resetInMs } = await this.#store.hit(key, this.#windowMs));
    } catch (err) {
      if (err instanceof BrokerError) throw err;
      throw storeUnavailable('rate-limit counters are unavailable', err);
    }
    if (count <= limit) return;
    this.#observer?.rateLimited(scope);
    const retryAfterSeconds = Math.max(1, Math.ceil(resetInMs / 1000));
    const message = `${what} (limit ${limit} per ${this.#windowMs / 1000} s); retry after ${retryAfterSeconds} s`;
    throw new RateLimitedError(scope, message, retryAfterSeconds, count === limit + 1, identity);
  }
}
