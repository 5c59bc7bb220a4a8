/**
 * Federation: the foreign trust domains this broker trusts, and their last good bundles.
 *
 * Relationships come from the config file (read-only) and from the admin API (space
 * 'federation-relationship' in the Store). Bundles live in the Store too (space 'federation-bundle'), so
 * every replica serves the same ones: each replica re-reads both spaces on every tick (1 s), and the one
 * replica holding the store lock `federation-refresh:<td>` fetches a bundle that is due.
 *
 * A fetch (bundle-fetch.ts) is authenticated per profile; the new bundle must also not carry any of our
 * own trust domain's keys (a foreign bundle never widens trust into our trust domain, nor ours into its).
 * When a fetch fails the last good bundle stays; its age is a metric and, past `staleAfterSeconds`, an
 * alert. Nothing here is on the issuance path: issuance reads the bundles held in memory.
 */
import { X509Certificate } from 'node:crypto';
import type { Clock } from '../clock.js';
import { BrokerError } from '../errors.js';
import type { Store } from '../store/store.js';
import type { SpiffeBundle } from './bundle.js';
import { fetchTrustBundle, type FetchBundleOptions } from './bundle-fetch.js';
import { BundleError, parseTrustBundle, type TrustBundle, trustBundleJson } from './bundle-parse.js';
import {
  parseStoredBundle,
  parseStoredRelationship,
  type Relationship,
  type RelationshipInput,
  relationshipProblem,
  type StoredBundle,
  type StoredRelationship,
} from './relationship.js';

export const RELATIONSHIP_SPACE = 'federation-relationship';
export const BUNDLE_SPACE = 'federation-bundle';
export const DEFAULT_TICK_MS = 1000;
export const FETCH_TIMEOUT_MS = 10_000;

/** A bootstrap bundle: SPIFFE bundle JSON, or PEM roots. Throws BundleError. */
export function parseBootstrapBundle(text: string, trustDomain: string): TrustBundle {
  if (text.trimStart().startsWith('-----BEGIN')) {
    const blocks = text.match(/-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----/g) ?? [];
    if (blocks.length === 0) throw new BundleError('the bootstrap PEM holds no certificate');
    let certs: X509Certificate[];
    try {
      certs = blocks.map((b) => new X509Certificate(b));
    } catch {
      throw new BundleError('the bootstrap PEM holds a certificate that does not parse');
    }
    return parseTrustBundle(JSON.stringify({ keys: certs.map((c) => ({ kty: c.publicKey.export({ format: 'jwk' }).kty, use: 'x509-svid', x5c: [c.raw.toString('base64')] })) }), trustDomain);
  }
  return parseTrustBundle(text, trustDomain);
}

export interface FederatedBundle {
  readonly trustDomain: string;
  readonly bundle: TrustBundle;
  /** The SPIFFE bundle JSON. */
  readonly json: string;
  /** When it was last fetched and authenticated (0: the bootstrap bundle, never fetched). */
  readonly fetchedAt: number;
  readonly nextRefreshAt: number;
}

export interface RelationshipStatus {
  readonly relationship: Relationship;
  readonly bundle?: FederatedBundle;
  /** Seconds since the bundle was last fetched (or since this replica started following the relationship). */
  readonly ageSeconds: number;
  readonly lastError?: { readonly message: string; readonly at: number };
}

export interface FederationOptions {
  readonly store: Store;
  readonly clock: Clock;
  readonly trustDomain: string;
  /** Relationships of the config file (bootstrap files already read). */
  readonly configured: readonly Relationship[];
  /** Our own bundle as of now: a foreign bundle carrying any of its keys is refused. */
  readonly ownBundle: () => SpiffeBundle;
  /** The holder of refresh locks (replica id + random). */
  readonly owner: string;
  readonly tickMs?: number;
  readonly fetchTimeoutMs?: number;
  /** Seam for tests; defaults to fetchTrustBundle. */
  readonly fetch?: (o: FetchBundleOptions) => Promise<TrustBundle>;
  /** A bundle older than its relationship's staleAfterSeconds (called on every tick while stale; the alert mutes). */
  readonly onStale?: (trustDomain: string, ageSeconds: number) => void;
  /** A fetch outcome: 'updated', 'unchanged' or 'failed' (with the error). */
  readonly onFetch?: (trustDomain: string, outcome: 'updated' | 'unchanged' | 'failed', err?: unknown) => void;
  readonly onError?: (err: unknown, what: string) => void;
}

const clamp = (v: number, lo: number, hi: number): number => Math.min(Math.max(v, lo), hi);

export class FederationManager {
  readonly #o: FederationOptions;
  #stored = new Map<string, Relationship>();
  #bundles = new Map<string, FederatedBundle>();
  readonly #bootstraps = new Map<string, TrustBundle>();
  readonly #since = new Map<string, number>();
  readonly #errors = new Map<string, { message: string; at: number }>();
  readonly #retryAt = new Map<string, number>();
  readonly #inFlight = new Map<string, Promise<FederatedBundle>>();
  #timer: NodeJS.Timeout | undefined;
  #ticking: Promise<void> | undefined;
  #closed = false;

  constructor(opts: FederationOptions) {
    this.#o = opts;
  }

  /** Loads relationships and stored bundles (a store that cannot answer fails the start), then ticks. */
  async start(): Promise<void> {
    await this.#load();
    const ms = this.#o.tickMs ?? DEFAULT_TICK_MS;
    this.#timer = setInterval(() => {
      if (this.#ticking !== undefined || this.#closed) return;
      this.#ticking = this.tick()
        .catch((err: unknown) => this.#o.onError?.(err, 'federation: tick failed (the last good bundles stay)'))
        .finally(() => {
          this.#ticking = undefined;
        });
    }, ms);
    this.#timer.unref();
    // The first fetches start now, in the background: never holding up the start or issuance.
    void this.tick().catch((err: unknown) => this.#o.onError?.(err, 'federation: first refresh failed'));
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    await this.#ticking;
    await Promise.allSettled([...this.#inFlight.values()]);
  }

  /** Every relationship in force: config first, then those added at run time (by trust domain). */
  relationships(): Relationship[] {
    const stored = [...this.#stored.values()].sort((a, b) => a.trustDomain.localeCompare(b.trustDomain));
    return [...this.#o.configured, ...stored.filter((r) => !this.#o.configured.some((c) => c.trustDomain === r.trustDomain))];
  }

  relationship(trustDomain: string): Relationship | undefined {
    return this.relationships().find((r) => r.trustDomain === trustDomain);
  }

  /** The bundles in force for these trust domains (those without a bundle, or not federated, are left out). */
  bundlesFor(trustDomains: readonly string[]): FederatedBundle[] {
    const out: FederatedBundle[] = [];
    for (const td of new Set(trustDomains)) {
      if (this.relationship(td) === undefined) continue;
      const b = this.#bundles.get(td);
      if (b !== undefined) out.push(b);
    }
    return out;
  }

  status(): RelationshipStatus[] {
    const now = this.#o.clock.now();
    return this.relationships().map((r) => {
      const b = this.#bundles.get(r.trustDomain);
      const since = b !== undefined && b.fetchedAt > 0 ? b.fetchedAt : (this.#since.get(r.trustDomain) ?? now);
      const lastError = this.#errors.get(r.trustDomain);
      return {
        relationship: r,
        ...(b !== undefined ? { bundle: b } : {}),
        ageSeconds: Math.max(0, Math.floor((now - since) / 1000)),
        ...(lastError !== undefined ? { lastError } : {}),
      };
    });
  }

  /** A relationship from an admin's request, checked (400 naming the field); not yet stored. */
  prepareAdd(input: RelationshipInput, by: string): StoredRelationship {
    const problem = relationshipProblem({ ...input, ownTrustDomain: this.#o.trustDomain, hasBootstrap: input.bootstrapBundle !== undefined });
    if (problem !== undefined) throw new BrokerError('bad_request', problem);
    if (this.relationship(input.trustDomain) !== undefined) {
      throw new BrokerError('federation_conflict', `trust domain ${input.trustDomain} is already federated${this.#o.configured.some((c) => c.trustDomain === input.trustDomain) ? ' (in the config file)' : ''}`);
    }
    if (input.bootstrapBundle !== undefined) {
      try {
        this.#checkForeign(parseBootstrapBundle(input.bootstrapBundle, input.trustDomain));
      } catch (err) {
        throw new BrokerError('bad_request', `bootstrapBundle: ${(err as Error).message}`);
      }
    }
    const min = input.minRefreshSeconds ?? 30;
    const max = input.maxRefreshSeconds ?? 3600;
    if (min > max) throw new BrokerError('bad_request', 'minRefreshSeconds: exceeds maxRefreshSeconds');
    return {
      trustDomain: input.trustDomain,
      bundleEndpointUrl: input.bundleEndpointUrl,
      profile: input.profile,
      ...(input.endpointSpiffeId !== undefined ? { endpointSpiffeId: input.endpointSpiffeId } : {}),
      ...(input.bootstrapBundle !== undefined ? { bootstrapBundle: input.bootstrapBundle } : {}),
      ...(input.caPem !== undefined ? { caPem: input.caPem } : {}),
      minRefreshSeconds: min,
      maxRefreshSeconds: max,
      staleAfterSeconds: input.staleAfterSeconds ?? 3600,
      createdAt: this.#o.clock.now(),
      createdBy: by,
    };
  }

  /** Stores a prepared relationship and starts following it here (other replicas within a tick). */
  async add(r: StoredRelationship): Promise<Relationship> {
    await this.#o.store.kvPut(RELATIONSHIP_SPACE, r.trustDomain, JSON.stringify(r));
    await this.#load();
    void this.refresh(r.trustDomain).catch(() => undefined);
    return this.relationship(r.trustDomain) as Relationship;
  }

  /** The relationship a delete would remove: 404 if none, 409 for a config one. */
  prepareDelete(trustDomain: string): Relationship {
    const r = this.relationship(trustDomain);
    if (r === undefined) throw new BrokerError('not_found', `trust domain ${JSON.stringify(trustDomain.slice(0, 255))} is not federated`);
    if (r.source === 'config') throw new BrokerError('federation_conflict', `trust domain ${trustDomain} is federated in the config file; remove it there and reload`);
    return r;
  }

  /** Stops federating: the relationship and its bundle leave the store; workloads stop receiving it. */
  async remove(trustDomain: string): Promise<void> {
    await this.#o.store.kvDelete(RELATIONSHIP_SPACE, trustDomain);
    await this.#o.store.kvDelete(BUNDLE_SPACE, trustDomain);
    await this.#load();
  }

  /** Fetches the bundle of `trustDomain` now; 404 if not federated, 502 when the fetch fails (the last good bundle stays). */
  async refresh(trustDomain: string): Promise<FederatedBundle> {
    const r = this.relationship(trustDomain);
    if (r === undefined) throw new BrokerError('not_found', `trust domain ${JSON.stringify(trustDomain.slice(0, 255))} is not federated`);
    let p = this.#inFlight.get(trustDomain);
    if (p === undefined) {
      p = this.#fetch(r).finally(() => this.#inFlight.delete(trustDomain));
      this.#inFlight.set(trustDomain, p);
    }
    return p;
  }

  /** One round: re-read the store, fetch what is due (under the fleet-wide lock), raise stale alerts. */
  async tick(): Promise<void> {
    await this.#load();
    const now = this.#o.clock.now();
    const due: Promise<unknown>[] = [];
    for (const r of this.relationships()) {
      const b = this.#bundles.get(r.trustDomain);
      const at = Math.max(b !== undefined && b.fetchedAt > 0 ? b.nextRefreshAt : 0, this.#retryAt.get(r.trustDomain) ?? 0);
      if (at <= now && !this.#inFlight.has(r.trustDomain)) {
        const lock = `federation-refresh:${r.trustDomain}`;
        const ttl = (this.#o.fetchTimeoutMs ?? FETCH_TIMEOUT_MS) * 2;
        due.push(
          this.#o.store.tryLock(lock, this.#o.owner, ttl).then(async (held) => {
            if (!held) return;
            try {
              await this.refresh(r.trustDomain);
            } catch {
              // Recorded by #fetch (lastError, onFetch); the last good bundle stays.
            } finally {
              await this.#o.store.unlock(lock, this.#o.owner).catch(() => undefined);
            }
          }),
        );
      }
    }
    await Promise.allSettled(due);
    for (const s of this.status()) {
      if (s.ageSeconds > s.relationship.staleAfterSeconds) this.#o.onStale?.(s.relationship.trustDomain, s.ageSeconds);
    }
  }

  async #fetch(r: Relationship): Promise<FederatedBundle> {
    const current = this.#bundles.get(r.trustDomain)?.bundle ?? this.#bootstraps.get(r.trustDomain);
    const started = this.#o.clock.now();
    let fetched: TrustBundle;
    try {
      fetched = await (this.#o.fetch ?? fetchTrustBundle)({
        url: r.bundleEndpointUrl,
        trustDomain: r.trustDomain,
        profile: r.profile,
        endpointSpiffeId: r.endpointSpiffeId,
        currentRoots: current?.x509Authorities ?? [],
        caPem: r.caPem,
        timeoutMs: this.#o.fetchTimeoutMs ?? FETCH_TIMEOUT_MS,
        now: () => this.#o.clock.now(),
      });
      this.#checkForeign(fetched);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.#errors.set(r.trustDomain, { message, at: started });
      this.#retryAt.set(r.trustDomain, started + r.minRefreshSeconds * 1000);
      this.#o.onFetch?.(r.trustDomain, 'failed', err);
      throw new BrokerError('federation_fetch_failed', `bundle of ${r.trustDomain} from ${r.bundleEndpointUrl}: ${message}`);
    }
    const now = this.#o.clock.now();
    const hint = fetched.refreshHintSeconds ?? r.minRefreshSeconds;
    const record: StoredBundle = {
      json: trustBundleJson(fetched),
      fetchedAt: now,
      nextRefreshAt: now + clamp(hint, r.minRefreshSeconds, r.maxRefreshSeconds) * 1000,
    };
    const previous = this.#bundles.get(r.trustDomain);
    // Still federated? (a delete may have raced the fetch)
    if (this.relationship(r.trustDomain) === undefined) throw new BrokerError('not_found', `trust domain ${r.trustDomain} is no longer federated`);
    await this.#o.store.kvPut(BUNDLE_SPACE, r.trustDomain, JSON.stringify(record));
    this.#errors.delete(r.trustDomain);
    this.#retryAt.delete(r.trustDomain);
    const b: FederatedBundle = { trustDomain: r.trustDomain, bundle: fetched, json: record.json, fetchedAt: record.fetchedAt, nextRefreshAt: record.nextRefreshAt };
    this.#bundles.set(r.trustDomain, b);
    this.#o.onFetch?.(r.trustDomain, previous?.json === b.json ? 'unchanged' : 'updated');
    return b;
  }

  /** A foreign bundle may carry none of our own keys (no key of ours vouches for a foreign ID, nor one of theirs for ours). */
  #checkForeign(b: TrustBundle): void {
    const own = this.#o.ownBundle();
    const ownX5c = new Set<string>(own.keys.flatMap((k): string[] => (k.use === 'x509-svid' && Array.isArray(k.x5c) ? (k.x5c as string[]) : [])));
    const ownKeys = own.keys.map((k) => JSON.stringify([k.kty, k.crv, k.x, k.y, k.n, k.e]));
    for (const c of b.x509Authorities) {
      const jwk = c.publicKey.export({ format: 'jwk' });
      if (ownX5c.has(c.raw.toString('base64')) || ownKeys.includes(JSON.stringify([jwk.kty, jwk.crv, jwk.x, jwk.y, jwk.n, jwk.e]))) {
        throw new BundleError(`the bundle of ${b.trustDomain} carries a key of our own trust domain ${this.#o.trustDomain}`);
      }
    }
    for (const j of b.jwtAuthorities) {
      if (ownKeys.includes(JSON.stringify([j.jwk.kty, j.jwk.crv, j.jwk.x, j.jwk.y, j.jwk.n, j.jwk.e]))) {
        throw new BundleError(`the bundle of ${b.trustDomain} carries a JWT key of our own trust domain ${this.#o.trustDomain}`);
      }
    }
  }

  /** Re-reads relationships and bundles from the store (a malformed record is reported and ignored). */
  async #load(): Promise<void> {
    const stored = new Map<string, Relationship>();
    for (const { key, value } of await this.#o.store.kvList(RELATIONSHIP_SPACE)) {
      const parsed = parseStoredRelationship(value);
      if (!parsed.ok || parsed.value.trustDomain !== key) {
        this.#o.onError?.(new Error(`stored federation relationship ${key} is malformed; it is ignored`), 'federation');
        continue;
      }
      stored.set(key, { ...parsed.value, source: 'api' });
    }
    this.#stored = stored;
    const now = this.#o.clock.now();
    const bundles = new Map<string, FederatedBundle>();
    const records = new Map((await this.#o.store.kvList(BUNDLE_SPACE)).map(({ key, value }) => [key, value]));
    for (const r of this.relationships()) {
      const td = r.trustDomain;
      if (!this.#since.has(td)) this.#since.set(td, now);
      const raw = records.get(td);
      const mine = this.#bundles.get(td);
      if (raw !== undefined) {
        const parsed = parseStoredBundle(raw);
        if (parsed.ok) {
          if (mine !== undefined && mine.json === parsed.value.json && mine.fetchedAt === parsed.value.fetchedAt) {
            bundles.set(td, mine);
            continue;
          }
          try {
            // Checked again: a record edited in the store cannot widen trust either.
            const bundle = parseTrustBundle(parsed.value.json, td);
            this.#checkForeign(bundle);
            bundles.set(td, { trustDomain: td, bundle, json: parsed.value.json, fetchedAt: parsed.value.fetchedAt, nextRefreshAt: parsed.value.nextRefreshAt });
            continue;
          } catch (err) {
            this.#o.onError?.(new Error(`stored bundle of ${td} is refused: ${(err as Error).message}`), 'federation');
          }
        } else {
          this.#o.onError?.(new Error(`stored bundle of ${td} is malformed (${parsed.why}); it is ignored`), 'federation');
        }
      }
      if (mine !== undefined && mine.fetchedAt > 0 && raw === undefined) {
        bundles.set(td, mine);
        continue;
      }
      const boot = this.#bootstrap(r);
      if (boot !== undefined) bundles.set(td, { trustDomain: td, bundle: boot, json: trustBundleJson(boot), fetchedAt: 0, nextRefreshAt: 0 });
    }
    this.#bundles = bundles;
  }

  #bootstrap(r: Relationship): TrustBundle | undefined {
    if (r.bootstrapBundle === undefined) return undefined;
    let b = this.#bootstraps.get(r.trustDomain);
    if (b === undefined) {
      try {
        b = parseBootstrapBundle(r.bootstrapBundle, r.trustDomain);
        this.#checkForeign(b);
      } catch (err) {
        this.#o.onError?.(new Error(`bootstrap bundle of ${r.trustDomain} is refused: ${(err as Error).message}`), 'federation');
        return undefined;
      }
      this.#bootstraps.set(r.trustDomain, b);
    }
    return b;
  }
}
