import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Identity } from '../attest/identity.js';
import type { LimitsConfig } from '../config/config.js';
import { BrokerError } from '../errors.js';
import type { LimitScope } from '../metrics/metrics.js';
import { EmbeddedStore } from '../store/embedded.js';
import type { Store } from '../store/store.js';
import { expandIPv6, identityKey, isRepeatedRateLimit, RateLimitedError, RateLimiter, sourceKey } from './limits.js';

const who = (spiffeId: string): Identity => ({
  spiffeId,
  trustDomain: 'example.org',
  source: 'k8s-sa-token',
  claims: { namespace: 'shop', serviceAccount: 'web' },
});

const config = (over: Partial<LimitsConfig> = {}): LimitsConfig => ({
  enabled: true,
  windowSeconds: 60,
  attemptsPerSource: 3,
  issuancesPerIdentity: 2,
  ...over,
});

let dir: string;
let store: EmbeddedStore;
let now: number;
beforeEach(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'tessera-limits-'));
  now = 1_700_000_000_000;
  store = await EmbeddedStore.open(dir, { fsync: false, clock: { now: () => now } });
});
afterEach(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

async function refusal(p: Promise<void>): Promise<RateLimitedError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RateLimitedError);
  return err as RateLimitedError;
}

describe('RateLimiter', () => {
  it('lets a source make its attempts, then answers 429 with Retry-After until the window resets', async () => {
    const seen: LimitScope[] = [];
    const limiter = new RateLimiter(store, config(), { rateLimited: (s) => seen.push(s) });
    for (let i = 0; i < 3; i++) await limiter.failedAttempt('10.0.0.1');
    now += 15_000;
    const first = await refusal(limiter.failedAttempt('10.0.0.1'));
    expect(first).toMatchObject({ code: 'rate_limited', status: 429, scope: 'source', firstInWindow: true, retryAfterSeconds: 45 });
    expect(first.message).not.toContain('10.0.0.1');
    expect(isRepeatedRateLimit(first)).toBe(false);
    const second = await refusal(limiter.failedAttempt('10.0.0.1'));
    expect(second.firstInWindow).toBe(false);
    expect(isRepeatedRateLimit(second)).toBe(true);
    // Another address has its own counter.
    await limiter.failedAttempt('10.0.0.2');
    expect(seen).toEqual(['source', 'source']);
    now += 45_000;
    await limiter.failedAttempt('10.0.0.1');
  });

  it('counts identities by SPIFFE ID and carries the refused identity', async () => {
    const limiter = new RateLimiter(store, config());
    const web = who('spiffe://example.org/ns/shop/sa/web');
    await limiter.identity(web);
    await limiter.identity(web);
    const err = await refusal(limiter.identity(web));
    expect(err).toMatchObject({ scope: 'identity', retryAfterSeconds: 60 });
    expect(err.identity).toBe(web);
    await limiter.identity(who('spiffe://example.org/ns/shop/sa/api'));
  });

  it('never touches the store when disabled or when a limit is 0', async () => {
    const broken = new Proxy({} as Store, {
      get: () => () => Promise.reject(new Error('the store must not be called')),
    });
    const off = new RateLimiter(broken, config({ enabled: false }));
    const zero = new RateLimiter(broken, config({ attemptsPerSource: 0, issuancesPerIdentity: 0 }));
    for (let i = 0; i < 10; i++) {
      await off.failedAttempt('10.0.0.1');
      await off.identity(who('spiffe://example.org/ns/shop/sa/web'));
      await zero.failedAttempt('10.0.0.1');
      await zero.identity(who('spiffe://example.org/ns/shop/sa/web'));
    }
  });

  it('fails closed with 503 when the counters cannot be reached', async () => {
    const broken = new Proxy({} as Store, { get: () => () => Promise.reject(new Error('connection refused')) });
    const err = await new RateLimiter(broken, config()).failedAttempt('10.0.0.1').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BrokerError);
    expect(err).toMatchObject({ status: 503, code: 'store_unavailable' });
  });
});

describe('counter keys', () => {
  it('keys IPv4 as is, IPv4-mapped IPv6 as IPv4, and IPv6 by its /64', () => {
    expect(sourceKey('192.0.2.7')).toBe('rl:src:192.0.2.7');
    expect(sourceKey('::ffff:192.0.2.7')).toBe('rl:src:192.0.2.7');
    expect(sourceKey('2001:db8:1:2:aaaa::1')).toBe('rl:src:2001:0db8:0001:0002::/64');
    expect(sourceKey('2001:db8:1:2:bbbb:cccc:dddd:eeee')).toBe(sourceKey('2001:db8:1:2::9'));
    expect(sourceKey('2001:db8:1:3::1')).not.toBe(sourceKey('2001:db8:1:2::1'));
    expect(sourceKey('fe80::1%eth0')).toBe('rl:src:fe80:0000:0000:0000::/64');
    expect(sourceKey(undefined)).toBe('rl:src:unknown');
  });

  it('expands every IPv6 address the way its compressed form denotes', () => {
    const group = fc.integer({ min: 0, max: 0xffff });
    fc.assert(
      fc.property(fc.array(group, { minLength: 8, maxLength: 8 }), (groups) => {
        const full = groups.map((g) => g.toString(16).padStart(4, '0'));
        // WHATWG URL parsing gives the canonical compressed form (RFC 5952).
        const compressed = new URL(`http://[${groups.map((g) => g.toString(16)).join(':')}]/`).hostname.slice(1, -1);
        expect(expandIPv6(compressed)).toEqual(full);
      }),
      { numRuns: 300 },
    );
    expect(expandIPv6('10.0.0.1')).toBeUndefined();
    expect(expandIPv6('not an address')).toBeUndefined();
  });

  it('hashes SPIFFE IDs too long for a store key', () => {
    expect(identityKey('spiffe://example.org/ns/shop/sa/web')).toBe('rl:id:spiffe://example.org/ns/shop/sa/web');
    const long = `spiffe://example.org/${'a'.repeat(2000)}`;
    expect(identityKey(long)).toMatch(/^rl:id:sha256:[0-9a-f]{64}$/);
    expect(identityKey(long)).not.toBe(identityKey(`${long}b`));
  });
});

describe('limits: and metrics: config', () => {
  const load = async (yaml: string, env: Record<string, string> = {}) => {
    const { loadConfig } = await import('../config/load.js');
    const { writeFileSync } = await import('node:fs');
    const file = path.join(dir, 'tessera.yaml');
    writeFileSync(
      file,
      [
        'tls: { certFile: tls.pem, keyFile: tls.key }',
        'ca: { certFile: ca.pem, keyFile: ca.key, bundleFile: bundle.pem, jwtKeyFile: jwt.key }',
        'issuers: [{ issuer: https://k8s, jwksFile: jwks.json, audiences: [tessera] }]',
        'audit: { signingKeyFile: audit.key }',
        yaml,
      ].join('\n'),
    );
    return loadConfig({ file, env });
  };

  it('has defaults a fleet never meets, and a switch for benchmarks', async () => {
    const c = await load('');
    expect(c.limits).toEqual({ enabled: true, windowSeconds: 60, attemptsPerSource: 1200, issuancesPerIdentity: 600 });
    expect(c.metrics).toEqual({ enabled: false, host: '127.0.0.1', port: 9464 });
    expect((await load('', { TESSERA_RATE_LIMITS: 'off' })).limits.enabled).toBe(false);
    expect((await load('limits: { enabled: false }', { TESSERA_RATE_LIMITS: 'on' })).limits.enabled).toBe(true);
    expect((await load('', { TESSERA_METRICS_PORT: '0' })).metrics).toEqual({ enabled: true, host: '127.0.0.1', port: 0 });
  });

  it('reads every setting and names the bad one', async () => {
    const c = await load('limits: { windowSeconds: 10, attemptsPerSource: 0, issuancesPerIdentity: 5 }\nmetrics: { enabled: true, host: "::1", port: 9100 }');
    expect(c.limits).toEqual({ enabled: true, windowSeconds: 10, attemptsPerSource: 0, issuancesPerIdentity: 5 });
    expect(c.metrics).toEqual({ enabled: true, host: '::1', port: 9100 });
    await expect(load('limits: { windowSeconds: 0 }')).rejects.toThrow(/config\.limits\.windowSeconds/);
    await expect(load('limits: { perSource: 5 }')).rejects.toThrow(/config\.limits\.perSource: unknown setting/);
    await expect(load('metrics: { port: 70000 }')).rejects.toThrow(/config\.metrics\.port/);
    await expect(load('', { TESSERA_RATE_LIMITS: 'maybe' })).rejects.toThrow(/TESSERA_RATE_LIMITS/);
  });
});
