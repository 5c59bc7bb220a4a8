/**
 * Signing keys of one token issuer, from a JWKS file (read once, at start), an https URL, or OpenID
 * discovery (discovery.ts: the issuer's openid-configuration names the JWKS URL). Fetched keys are
 * cached, refetched when older than cacheMaxAgeMs and on an unknown `kid`, at most once per refresh
 * interval; a failed refetch keeps the last good keys. This constructor is the one place that picks
 * where an issuer's keys come from.
 *
 * Only keys we are willing to verify with are kept: RSA of at least 2048 bits (pinned to RS256)
 * and EC P-256 (pinned to ES256). Each key is imported for exactly one algorithm, so an RSA key can
 * never verify an ES256 signature and vice versa.
 */
import type { ReadableStreamReadResult } from 'node:stream/web';
import { readFileSync } from 'node:fs';
import { createPublicKey } from 'node:crypto';
import { importJWK, type CryptoKey, type JWK, type JWSHeaderParameters } from 'jose';
import { BrokerError } from '../errors.js';
import { systemClock, type Clock } from '../clock.js';
import { isRecord } from '../is-record.js';
import { fetchJwksByDiscovery } from './discovery.js';

export type VerificationAlgorithm = 'RS256' | 'ES256';
export const VERIFICATION_ALGORITHMS: readonly VerificationAlgorithm[] = ['RS256', 'ES256'];

export const DEFAULT_JWKS_REFRESH_INTERVAL_MS = 30_000;
export const DEFAULT_JWKS_CACHE_MAX_AGE_MS = 5 * 60_000;
export const DEFAULT_JWKS_FETCH_TIMEOUT_MS = 5_000;
export const DEFAULT_JWKS_MAX_RESPONSE_BYTES = 1024 * 1024;
/** Bounds the work one JWKS can cause; real issuers publish a handful of keys. */
export const MAX_JWKS_KEYS = 100;
const MIN_RSA_BITS = 2048;
/** Verification cost grows with the modulus; nothing legitimate is larger. */
const MAX_RSA_BITS = 16384;
const MAX_KID_LENGTH = 1024;

export interface JwksSourceOptions {
  /** Used only in error messages. */
  readonly issuer: string;
  readonly jwksFile?: string | undefined;
  readonly jwksUrl?: string | undefined;
  /** Find the JWKS by OpenID discovery at `<issuer>/.well-known/openid-configuration` (https only). */
  readonly discovery?: boolean | undefined;
  /** PEM CA bundle for discovery's TLS (the discovery document and the JWKS); default: the system's. */
  readonly caFile?: string | undefined;
  /** Permit http: URLs (tests only). */
  readonly allowInsecureHttp?: boolean | undefined;
  /** Minimum time between two fetches, whatever triggers them. */
  readonly refreshIntervalMs?: number;
  /** Cached keys older than this are refetched before use, so a removed key stops verifying. */
  readonly cacheMaxAgeMs?: number;
  readonly fetchTimeoutMs?: number;
  readonly maxResponseBytes?: number;
  readonly clock?: Clock;
}

interface KeyEntry {
  readonly kid: string | undefined;
  readonly alg: VerificationAlgorithm;
  /** Public members only: private material in a JWKS is never carried along. */
  readonly jwk: JWK;
  imported?: Promise<CryptoKey>;
}

type Lookup =
  | { readonly kind: 'match'; readonly entry: KeyEntry }
  | { readonly kind: 'none' }
  | { readonly kind: 'wrong-type' }
  | { readonly kind: 'ambiguous' };

const invalidToken = (message: string): BrokerError => new BrokerError('invalid_token', message);

/**
 * Validates one JWK and reduces it to its public members, or returns undefined when we do not use
 * it (wrong type, size, curve, `use`, `alg` or `key_ops`, or not a parseable key).
 */
function toEntry(raw: unknown): KeyEntry | undefined {
  if (!isRecord(raw)) return undefined;
  if (raw.use !== undefined && raw.use !== 'sig') return undefined;
  if (raw.key_ops !== undefined && !(Array.isArray(raw.key_ops) && raw.key_ops.includes('verify'))) {
    return undefined;
  }
  let kid: string | undefined;
  if (raw.kid !== undefined) {
    if (typeof raw.kid !== 'string' || raw.kid.length === 0 || raw.kid.length > MAX_KID_LENGTH) return undefined;
    kid = raw.kid;
  }

  let alg: VerificationAlgorithm;
  let jwk: JWK;
  if (raw.kty === 'RSA') {
    if (raw.alg !== undefined && raw.alg !== 'RS256') return undefined;
    if (typeof raw.n !== 'string' || typeof raw.e !== 'string') return undefined;
    alg = 'RS256';
    jwk = { kty: 'RSA', n: raw.n, e: raw.e };
  } else if (raw.kty === 'EC') {
    if (raw.alg !== undefined && raw.alg !== 'ES256') return undefined;
    if (raw.crv !== 'P-256' || typeof raw.x !== 'string' || typeof raw.y !== 'string') return undefined;
    alg = 'ES256';
    jwk = { kty: 'EC', crv: 'P-256', x: raw.x, y: raw.y };
  } else {
    return undefined;
  }

  // Parse with node:crypto now so a malformed key is dropped here, not at verification time.
  try {
    const key = createPublicKey({ key: { ...jwk }, format: 'jwk' });
    const details = key.asymmetricKeyDetails;
    if (alg === 'RS256') {
      const bits = details?.modulusLength ?? 0;
      if (key.asymmetricKeyType !== 'rsa' || bits < MIN_RSA_BITS || bits > MAX_RSA_BITS) return undefined;
    } else if (key.asymmetricKeyType !== 'ec' || details?.namedCurve !== 'prime256v1') {
      return undefined;
    }
  } catch {
    return undefined;
  }
  return { kid, alg, jwk };
}

/** Parses a JWK Set document; throws a plain Error (a configuration or upstream fault, not a token fault). */
function parseJwks(document: unknown, what: string): KeyEntry[] {
  if (!isRecord(document) || !Array.isArray(document.keys)) {
    throw new Error(`${what} is not a JWK Set (expected an object with a "keys" array)`);
  }
  const entries: KeyEntry[] = [];
  const seen = new Set<string>();
  for (const raw of document.keys.slice(0, MAX_JWKS_KEYS)) {
    const entry = toEntry(raw);
    if (!entry) continue;
    // A repeated kid of the same type would make selection ambiguous; the first one wins.
    if (entry.kid !== undefined) {
      const id = `${entry.alg}:${entry.kid}`;
      if (seen.has(id)) continue;
      seen.add(id);
    }
    entries.push(entry);
  }
  return entries;
}

/** The keys of one issuer, with lookup by header `alg` + `kid`. */
export class JwksKeySource {
  readonly issuer: string;

  private readonly url: URL | undefined;
  /** Discovery: the CA (PEM, or undefined for the system's) both fetches are verified against. */
  private readonly discovery: { readonly ca: string | undefined } | undefined;
  private lastFailure: string | undefined;
  /** Where fetched keys come from (URL, or issuer + CA for discovery); undefined for a file. */
  private readonly origin: string | undefined;
  private readonly clock: Clock;
  private readonly refreshIntervalMs: number;
  private readonly cacheMaxAgeMs: number;
  private readonly fetchTimeoutMs: number;
  private readonly maxResponseBytes: number;

  private keys: KeyEntry[] = [];
  private loadedAt: number | undefined;
  private lastAttemptAt = Number.NEGATIVE_INFINITY;
  private inFlight: Promise<boolean> | undefined;
  private fetchCount = 0;

  constructor(opts: JwksSourceOptions) {
    this.issuer = opts.issuer;
    this.clock = opts.clock ?? systemClock;
    this.refreshIntervalMs = nonNegative(opts.refreshIntervalMs, DEFAULT_JWKS_REFRESH_INTERVAL_MS, 'refreshIntervalMs');
    this.cacheMaxAgeMs = nonNegative(opts.cacheMaxAgeMs, DEFAULT_JWKS_CACHE_MAX_AGE_MS, 'cacheMaxAgeMs');
    this.fetchTimeoutMs = nonNegative(opts.fetchTimeoutMs, DEFAULT_JWKS_FETCH_TIMEOUT_MS, 'fetchTimeoutMs');
    this.maxResponseBytes = nonNegative(opts.maxResponseBytes, DEFAULT_JWKS_MAX_RESPONSE_BYTES, 'maxResponseBytes');

    const sources = [opts.jwksFile !== undefined, opts.jwksUrl !== undefined, opts.discovery === true].filter(Boolean).length;
    if (sources !== 1) {
      throw new Error(`issuer ${opts.issuer}: configure exactly one of jwksFile, jwksUrl and discovery`);
    }
    if (opts.discovery === true) {
      this.url = undefined;
      let ca: string | undefined;
      if (opts.caFile !== undefined) {
        try {
          ca = readFileSync(opts.caFile, 'utf8');
        } catch (cause) {
          throw new Error(`issuer ${opts.issuer}: caFile ${opts.caFile} could not be read`, { cause });
        }
      }
      this.discovery = { ca };
      this.origin = JSON.stringify(['discovery', opts.issuer, ca ?? null]);
    } else if (opts.jwksFile !== undefined) {
      this.url = undefined;
      this.discovery = undefined;
      this.origin = undefined;
      const what = `JWKS file ${opts.jwksFile} for issuer ${opts.issuer}`;
      let document: unknown;
      try {
        document = JSON.parse(readFileSync(opts.jwksFile, 'utf8'));
      } catch (cause) {
        throw new Error(`${what} could not be read as JSON`, { cause });
      }
      this.keys = parseJwks(document, what);
      if (this.keys.length === 0) {
        throw new Error(`${what} holds no usable key (RSA >= 2048 bits or EC P-256, use "sig")`);
      }
      this.loadedAt = this.clock.now();
    } else {
      this.discovery = undefined;
      this.url = parseJwksUrl(opts.jwksUrl ?? '', opts.allowInsecureHttp === true, opts.issuer);
      this.origin = JSON.stringify(['url', this.url.href]);
    }
  }

  /** Number of fetches started so far (for tests and metrics). */
  get fetches(): number {
    return this.fetchCount;
  }

  /** Why the last fetch failed (undefined after a success): for logs and diagnostics, never for clients. */
  get lastError(): string | undefined {
    return this.lastFailure;
  }

  /**
   * On reload: takes over the fetched keys of the source this one replaces, when both fetch from the
   * same place (same URL, or same issuer and CA), so a reload while the issuer is down keeps the last
   * good keys. The refresh schedule carries over too.
   */
  adoptKeysFrom(previous: JwksKeySource): void {
    if (this.origin === undefined || previous.origin !== this.origin || previous.loadedAt === undefined) return;
    this.keys = previous.keys;
    this.loadedAt = previous.loadedAt;
    this.lastAttemptAt = previous.lastAttemptAt;
  }

  /** Whether the keys are fetched (jwksUrl, discovery) rather than read from a file. */
  private get remote(): boolean {
    return this.url !== undefined || this.discovery !== undefined;
  }

  /** Fetches the URL now if the refresh interval allows; a startup warm-up. Never throws. */
  async refresh(): Promise<boolean> {
    return this.refreshIfAllowed();
  }

  /** Picks the key for `alg` + `kid`; every failure is a 401 BrokerError. */
  async resolve(header: JWSHeaderParameters): Promise<CryptoKey> {
    const alg: unknown = header.alg;
    if (alg !== 'RS256' && alg !== 'ES256') throw invalidToken('token algorithm is not allowed');
    const kid: unknown = header.kid;
    if (kid !== undefined && (typeof kid !== 'string' || kid.length === 0 || kid.length > MAX_KID_LENGTH)) {
      throw invalidToken('token key id is malformed');
    }
    return this.getKey(alg, kid);
  }

  async getKey(alg: VerificationAlgorithm, kid: string | undefined): Promise<CryptoKey> {
    if (this.remote && (this.loadedAt === undefined || this.clock.now() - this.loadedAt >= this.cacheMaxAgeMs)) {
      await this.refreshIfAllowed();
    }
    let found = this.lookup(alg, kid);
    // Only a missing key can be fixed by refetching (rotation); the refresh interval bounds how
    // often unknown key ids can make us fetch.
    if (found.kind === 'none' && this.remote && (await this.refreshIfAllowed())) {
      found = this.lookup(alg, kid);
    }
    switch (found.kind) {
      case 'match':
        return this.importKey(found.entry);
      case 'wrong-type':
        throw invalidToken("token algorithm does not match the type of the issuer's key");
      case 'ambiguous':
        throw invalidToken('token has no key id and the issuer publishes several keys');
      case 'none':
        if (this.loadedAt === undefined) {
          throw invalidToken(
            this.discovery !== undefined
              ? "the token issuer's signing keys are not available: discovery has not succeeded yet"
              : "the token issuer's signing keys could not be fetched",
          );
        }
        throw invalidToken(kid === undefined ? 'no issuer key matches the token' : 'token key id is unknown');
    }
  }

  private lookup(alg: VerificationAlgorithm, kid: string | undefined): Lookup {
    if (kid === undefined) {
      const candidates = this.keys.filter((k) => k.alg === alg);
      const only = candidates[0];
      if (only === undefined) return { kind: 'none' };
      return candidates.length === 1 ? { kind: 'match', entry: only } : { kind: 'ambiguous' };
    }
    const sameKid = this.keys.filter((k) => k.kid === kid);
    const entry = sameKid.find((k) => k.alg === alg);
    if (entry) return { kind: 'match', entry };
    return sameKid.length > 0 ? { kind: 'wrong-type' } : { kind: 'none' };
  }

  private importKey(entry: KeyEntry): Promise<CryptoKey> {
    if (!entry.imported) {
      entry.imported = importJWK(entry.jwk, entry.alg).then((key) => {
        if (key instanceof Uint8Array) throw new Error('unexpected symmetric key');
        return key;
      });
      // A failed import is not cached: the next lookup tries again.
      entry.imported.catch(() => {
        delete entry.imported;
      });
    }
    return entry.imported.catch(() => {
      throw invalidToken("the issuer's key could not be used");
    });
  }

  /** Resolves true when a fetch completed successfully (possibly one another caller started). */
  private refreshIfAllowed(): Promise<boolean> {
    if (!this.remote) return Promise.resolve(false);
    if (this.inFlight) return this.inFlight;
    const now = this.clock.now();
    if (now - this.lastAttemptAt < this.refreshIntervalMs) return Promise.resolve(false);
    this.lastAttemptAt = now;
    this.fetchCount += 1;
    this.inFlight = (this.url !== undefined ? this.fetchKeys(this.url) : this.discoverKeys())
      .then((keys) => {
        this.keys = keys;
        this.loadedAt = this.clock.now();
        this.lastFailure = undefined;
        return true;
      })
      // A failed refetch keeps the keys we have: an unreachable endpoint should not revoke them.
      .catch((err: unknown) => {
        this.lastFailure = err instanceof Error ? err.message : String(err);
        return false;
      })
      .finally(() => {
        this.inFlight = undefined;
      });
    return this.inFlight;
  }

  /**
   * Discovery, then the JWKS it names. A set with no usable key is a failed fetch (the last good keys
   * stay): a rotation adds a key before it removes one, never leaves none.
   */
  private async discoverKeys(): Promise<KeyEntry[]> {
    const { jwksUri, document } = await fetchJwksByDiscovery(this.issuer, {
      ca: this.discovery?.ca,
      timeoutMs: this.fetchTimeoutMs,
      maxBytes: this.maxResponseBytes,
    });
    const keys = parseJwks(document, `JWKS at ${jwksUri.href}`);
    if (keys.length === 0) throw new Error(`the JWKS at ${jwksUri.href} holds no usable key`);
    return keys;
  }

  private async fetchKeys(url: URL): Promise<KeyEntry[]> {
    const signal = AbortSignal.timeout(this.fetchTimeoutMs);
    // No redirects: a redirect could leave https or the configured host.
    const response = await fetch(url, { redirect: 'error', signal, headers: { accept: 'application/json' } });
    if (response.status !== 200) {
      await response.body?.cancel().catch(() => undefined);
      throw new Error(`JWKS fetch returned HTTP ${response.status}`);
    }
    const declared = Number(response.headers.get('content-length') ?? '0');
    if (declared > this.maxResponseBytes) {
      await response.body?.cancel().catch(() => undefined);
      throw new Error('JWKS response is too large');
    }
    const body = await readLimited(response, this.maxResponseBytes);
    const document: unknown = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
    return parseJwks(document, `JWKS at ${url.href}`);
  }
}

async function readLimited(response: Response, limit: number): Promise<Uint8Array> {
  if (!response.body) return new Uint8Array();
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = (await reader.read()) as ReadableStreamReadResult<Uint8Array>;
    if (done) break;
    total += value.byteLength;
    if (total > limit) {
      await reader.cancel().catch(() => undefined);
      throw new Error('JWKS response is too large');
    }
    chunks.push(value);
  }
  const out = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

function parseJwksUrl(raw: string, allowInsecureHttp: boolean, issuer: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`issuer ${issuer}: jwksUrl is not a valid URL`);
  }
  if (url.protocol !== 'https:' && !(allowInsecureHttp && url.protocol === 'http:')) {
    throw new Error(`issuer ${issuer}: jwksUrl must use https:`);
  }
  if (url.username !== '' || url.password !== '') {
    throw new Error(`issuer ${issuer}: jwksUrl may not carry credentials`);
  }
  return url;
}

function nonNegative(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a non-negative number`);
  return value;
}
