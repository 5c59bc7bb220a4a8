/**
 * TesseraClient: a workload's handle on its identity. It obtains an X.509-SVID from the broker
 * (service-account token the first time, its own SVID over mTLS afterwards, the token again if that
 * fails), keeps it fresh at half its remaining lifetime, and hands out TLS material that always
 * reflects the current SVID and trust bundle. Only node:https/tls/crypto and HTTP to the broker.
 */
import { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import type https from 'node:https';
import type { Socket } from 'node:net';
import tls from 'node:tls';
import { CheckpointWatch } from './checkpoints.js';
import { newKeyAndCsr } from './csr.js';
import { TesseraError } from './errors.js';
import { brokerUrl, callBroker, type BrokerCall, type BrokerEndpoint } from './http.js';
import { Refresher } from './refresher.js';
import { RotatingAgent, chainOf } from './rotating-agent.js';
import type { BackoffOptions } from './timing.js';
import { secretNameProblem } from '../secrets/names.js';
import { allowList, type BundleSet, parsePemCertificates, spiffeIdOf, splitPem, verifySvid, verifySvidInTrustDomain } from './x509.js';
import { parseTrustBundle } from '../spiffe/bundle-parse.js';
import { parseSpiffeId } from '../spiffe/id.js';

/**
 * What the TLS layer trusts: own and federated roots (so a federated peer's handshake can complete).
 * Which root may vouch for which SPIFFE ID is decided after the handshake, by the peer's trust domain
 * (verifyPeer, httpsAgent with allowedServerIds): authorise peers with those, never by TLS alone.
 */
function tlsCa(svid: X509Svid): string {
  return svid.bundlePem + svid.federatedBundles.map((b) => b.bundlePem).join('');
}

/** The federatedBundles of an X.509-SVID response, each parsed strictly for its own trust domain. */
function parseFederated(raw: unknown): FederatedBundle[] {
  if (raw === undefined) return [];
  const bad = (m: string): TesseraError => new TesseraError('bad_response', `POST /v1/svid/x509: federatedBundles: ${m}`);
  if (!Array.isArray(raw)) throw bad('expected a list');
  const seen = new Set<string>();
  return raw.map((b: unknown, i) => {
    if (typeof b !== 'object' || b === null) throw bad(`[${i}] is not an object`);
    const { trustDomain, spiffeBundle } = b as { trustDomain?: unknown; spiffeBundle?: unknown };
    if (typeof trustDomain !== 'string' || typeof spiffeBundle !== 'string') throw bad(`[${i}] needs trustDomain and spiffeBundle`);
    if (seen.has(trustDomain)) throw bad(`${trustDomain} is given twice`);
    seen.add(trustDomain);
    let parsed;
    try {
      parsed = parseTrustBundle(spiffeBundle, trustDomain);
    } catch (err) {
      throw bad(`the bundle of ${trustDomain}: ${(err as Error).message}`);
    }
    return {
      trustDomain,
      bundlePem: parsed.x509Authorities.map((c) => c.toString()).join(''),
      jwtKeys: parsed.jwtAuthorities.map((j) => ({ ...j.jwk })),
    };
  });
}

export const MAX_TOKEN_BYTES = 64 * 1024;
const JWT_CACHE_LIMIT = 64;

export interface TesseraClientOptions {
  /** Broker base URL, e.g. https://tessera.tessera.svc:8443. */
  readonly broker: string | URL;
  /** Trust bundle (PEM roots) to verify the broker with; or `bundleFile`. Updated from every response. */
  readonly bundle?: string;
  readonly bundleFile?: string;
  /** Service-account token, or a function returning the current one; or `tokenFile` (re-read on every use). */
  readonly token?: string | (() => string | Promise<string>);
  readonly tokenFile?: string;
  /** JWT-SVID audiences kept fresh in the background (one token per audience). */
  readonly jwtAudiences?: readonly string[];
  /** Per-request timeout, default 10 s. */
  readonly requestTimeoutMs?: number;
  readonly backoff?: BackoffOptions;
  /** Keep the process alive while waiting to renew (default false: the host process decides). */
  readonly keepProcessAlive?: boolean;
  /**
   * The newest audit checkpoint seen before (an agent's saved state), and where to keep each newer one.
   * Every receipt's checkpoint is checked to extend it (sdk/checkpoints.ts).
   */
  readonly auditCheckpoint?: { readonly initial?: string; readonly save?: (note: string) => void | Promise<void> };
}

export interface X509Svid {
  readonly spiffeId: string;
  readonly serial: string;
  /** PEM certificates, leaf first, then intermediates. */
  readonly certificates: readonly string[];
  /** The same chain as one PEM string. */
  readonly chainPem: string;
  /** PKCS#8 PEM; not enumerable, so logging or serialising the object does not leak it. */
  readonly privateKeyPem: string;
  /** PEM roots of the trust bundle that came with this SVID. */
  readonly bundlePem: string;
  /** Bundles of the foreign trust domains this workload federates with (its registration entry's federatesWith). */
  readonly federatedBundles: readonly FederatedBundle[];
  readonly notBefore: Date;
  readonly expiresAt: Date;
}

export interface JwtSvid {
  readonly spiffeId: string;
  /** Compact JWS; not enumerable, so logging or serialising the object does not leak it. */
  readonly token: string;
  readonly audience: readonly string[];
  readonly expiresAt: Date;
}

/** A static secret under a lease (GET /v1/secrets/<name>). */
export interface Secret {
  readonly name: string;
  /** The secret bytes; not enumerable, so logging or serialising the object does not leak it. */
  readonly value: Buffer;
  readonly leaseId: string;
  readonly expiresAt: Date;
  /** Renewals never go past this. */
  readonly maxExpiresAt: Date;
}

/** A foreign trust domain's bundle, delivered with the X.509-SVID: trust it only for SVIDs of that trust domain. */
export interface FederatedBundle {
  /** e.g. partner.test */
  readonly trustDomain: string;
  /** Its X.509 authorities as PEM. */
  readonly bundlePem: string;
  /** Its JWT-SVID keys (public JWKs with kid). */
  readonly jwtKeys: readonly Record<string, unknown>[];
}

/** A SPIFFE bundle as the broker publishes it: a JWKS whose keys carry `use` (x509-svid or jwt-svid). */
export interface SpiffeBundleDocument {
  readonly keys: readonly Record<string, unknown>[];
  readonly spiffe_sequence?: number;
  readonly spiffe_refresh_hint?: number;
}

export type CredentialPath = 'mtls' | 'token';

export type RotatedEvent =
  | { readonly kind: 'x509'; readonly svid: X509Svid; readonly via: CredentialPath; readonly bundleChanged: boolean }
  | { readonly kind: 'jwt'; readonly svid: JwtSvid; readonly via: CredentialPath };

export interface ClientStatus {
  readonly spiffeId?: string;
  readonly serial?: string;
  readonly expiresAt?: Date;
  /** Seconds until the current X.509-SVID expires (negative once expired); absent before the first. */
  readonly secondsToExpiry?: number;
  readonly lastRotation?: Date;
  readonly consecutiveFailures: number;
  readonly lastError?: { readonly code: string; readonly message: string; readonly at: Date };
  /** Size of the newest audit checkpoint seen (every later receipt is checked to extend it). */
  readonly auditCheckpointSize?: number;
  /** The last time a receipt showed a rolled-back or forked audit log, and how many times it did. */
  readonly auditInconsistency?: { readonly message: string; readonly at: Date; readonly count: number };
}

export type PeerCheck =
  | { readonly ok: true; readonly spiffeId: string; readonly serial: string; readonly expiresAt: Date }
  | { readonly ok: false; readonly reason: string };

export interface TesseraClientEvents {
  rotated: [RotatedEvent];
  error: [TesseraError];
  /** A receipt whose checkpoint does not extend the newest one seen: the audit log was rolled back or forked. */
  auditInconsistent: [TesseraError];
}

interface X509Response {
  audit?: { checkpoint?: unknown };
  spiffeId?: unknown;
  certificates?: unknown;
  bundle?: unknown;
  federatedBundles?: unknown;
}

interface JwtResponse {
  audit?: { checkpoint?: unknown };
  spiffeId?: unknown;
  token?: unknown;
  audience?: unknown;
  expiresAt?: unknown;
}

interface SecretResponse {
  name?: unknown;
  value?: unknown;
  encoding?: unknown;
  leaseId?: unknown;
  expiresAt?: unknown;
  maxExpiresAt?: unknown;
}

interface Issued<T> {
  readonly value: T;
  readonly via: CredentialPath;
}

interface CachedJwt {
  readonly svid: JwtSvid;
  readonly fetchedAt: number;
}

/** Adds `key` as a non-enumerable property: present for code, absent from logs and JSON. */
function withHidden<T, K extends keyof T & string>(obj: Omit<T, K>, key: K, value: T[K]): T {
  Object.defineProperty(obj, key, { value, enumerable: false, writable: false, configurable: false });
  return obj as T;
}

function asError(err: unknown): TesseraError {
  if (err instanceof TesseraError) return err;
  const e = err instanceof Error ? err : new Error(String(err));
  return new TesseraError('unavailable', e.message, { cause: e });
}

const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

/** `exp` of a JWT, in ms, read (not verified: it came from our broker over TLS) to schedule renewal. */
function jwtExpiry(token: string): number | undefined {
  try {
    const payload = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { exp?: unknown };
    return typeof payload.exp === 'number' ? payload.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

export class TesseraClient extends EventEmitter<TesseraClientEvents> {
  readonly #endpoint: BrokerEndpoint;
  /** The newest audit checkpoint seen in a receipt; every later one must extend it. */
  readonly checkpoints: CheckpointWatch;
  #auditInconsistency: { message: string; at: Date; count: number } | undefined;
  /** The receipt checks in flight (they never delay a credential). */
  #auditChecks: Promise<void> = Promise.resolve();
  readonly #opts: TesseraClientOptions;
  #bundlePem: string;
  #roots: X509Certificate[];
  /** Own trust domain's roots and federated ones, by trust domain; peers are verified against their own only. */
  #bundles: BundleSet = new Map();
  #svid: X509Svid | undefined;
  #context: tls.SecureContext | undefined;
  #generation = 0;
  #lastRotation: Date | undefined;
  #lastError: ClientStatus['lastError'];
  #closed = false;
  #startPromise: Promise<X509Svid> | undefined;
  readonly #x509: Refresher<Issued<X509Svid>>;
  readonly #jwtRefreshers = new Map<string, Refresher<Issued<JwtSvid>>>();
  readonly #jwtCache = new Map<string, CachedJwt>();
  readonly #jwtInFlight = new Map<string, Promise<JwtSvid>>();
  readonly #agents = new Set<RotatingAgent>();
  readonly #servers = new Set<tls.Server>();

  constructor(opts: TesseraClientOptions) {
    super();
    this.#opts = opts;
    const url = brokerUrl(opts.broker);
    if ((opts.bundle === undefined) === (opts.bundleFile === undefined)) {
      throw new TypeError('give exactly one of bundle (PEM) or bundleFile');
    }
    if (opts.token === undefined && opts.tokenFile === undefined) {
      throw new TypeError('give token or tokenFile: the first SVID is obtained with the service-account token');
    }
    const pem = opts.bundle ?? readFileSync(opts.bundleFile as string, 'utf8');
    this.#roots = parsePemCertificates(pem, 'the trust bundle');
    this.#bundlePem = splitPem(pem).join('');
    const timeoutMs = opts.requestTimeoutMs ?? 10_000;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1) throw new TypeError('requestTimeoutMs must be a positive integer');
    this.#endpoint = { url, ca: () => this.#bundlePem, timeoutMs };
    const save = opts.auditCheckpoint?.save;
    this.checkpoints = new CheckpointWatch({
      ...(opts.auditCheckpoint?.initial !== undefined ? { initial: opts.auditCheckpoint.initial } : {}),
      ...(save !== undefined ? { onNewer: (cp) => save(cp.note) } : {}),
    });
    for (const aud of opts.jwtAudiences ?? []) {
      if (typeof aud !== 'string' || aud.length === 0 || aud.length > 256) throw new TypeError('jwtAudiences: non-empty strings of at most 256 characters');
    }

    const common = {
      backoff: opts.backoff ?? {},
      keepAlive: opts.keepProcessAlive === true,
      onError: (err: unknown, retry: { attempt: number; delayMs: number }) => this.#fail(err, retry),
    };
    this.#x509 = new Refresher<Issued<X509Svid>>({
      ...common,
      fetch: () => this.#fetchX509(),
      expiresAt: (issued) => issued.value.expiresAt.getTime(),
      onValue: (issued) => this.#installX509(issued),
    });
    for (const aud of new Set(opts.jwtAudiences ?? [])) {
      this.#jwtRefreshers.set(
        aud,
        new Refresher<Issued<JwtSvid>>({
          ...common,
          fetch: () => this.#fetchJwt([aud]),
          expiresAt: (issued) => issued.value.expiresAt.getTime(),
          onValue: (issued) => {
            this.#jwtCache.set(aud, { svid: issued.value, fetchedAt: Date.now() });
            this.emit('rotated', { kind: 'jwt', svid: issued.value, via: issued.via });
          },
        }),
      );
    }
  }

  /**
   * Renews every credential now instead of at its timer (after a failure: without waiting out the
   * backoff). Without a valid SVID the service-account token is read from tokenFile again for it.
   */
  refreshNow(): void {
    this.#x509.refreshNow();
    for (const r of this.#jwtRefreshers.values()) r.refreshNow();
  }

  /**
   * Starts the rotation loops and resolves with the first X.509-SVID once it (and every background
   * JWT-SVID) is in hand. With `deadlineMs`, rejects if that has not happened in time; the loops keep
   * trying in the background until close().
   */
  start(opts: { deadlineMs?: number } = {}): Promise<X509Svid> {
    if (this.#closed) return Promise.reject(new TesseraError('closed', 'the client is closed'));
    if (this.#startPromise === undefined) {
      const ready = (async () => {
        const x509 = this.#x509.current !== undefined ? Promise.resolve(this.#x509.current) : this.#x509.next();
        const jwts = [...this.#jwtRefreshers.values()].map((r) => (r.current !== undefined ? Promise.resolve(r.current) : r.next()));
        this.#x509.start();
        for (const r of this.#jwtRefreshers.values()) r.start();
        const [first] = await Promise.all([x509, ...jwts]);
        return (first).value;
      })();
      ready.catch(() => undefined);
      this.#startPromise = ready;
    }
    const ready = this.#startPromise;
    const deadline = opts.deadlineMs;
    if (deadline === undefined || !Number.isFinite(deadline)) return ready.catch((err: unknown) => Promise.reject(this.#closedOr(err)));
    return new Promise<X509Svid>((resolve, reject) => {
      const timer = setTimeout(() => {
        const last = this.#lastError;
        reject(
          new TesseraError(
            last?.code ?? 'unavailable',
            `no SVID from ${this.#endpoint.url.origin} within ${Math.round(deadline / 1000)} s` +
              (last !== undefined ? `; last error: ${last.message}` : ''),
          ),
        );
      }, Math.max(0, deadline));
      ready.then(
        (svid) => {
          clearTimeout(timer);
          resolve(svid);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(this.#closedOr(err));
        },
      );
    });
  }

  /** The current X.509-SVID; starts the client if needed and waits (up to `waitMs`, default 30 s) for a valid one. */
  async x509Svid(opts: { waitMs?: number } = {}): Promise<X509Svid> {
    if (this.#closed) throw new TesseraError('closed', 'the client is closed');
    const svid = this.#svid;
    if (svid !== undefined && svid.expiresAt.getTime() > Date.now()) return svid;
    if (this.#startPromise === undefined) return this.start({ deadlineMs: opts.waitMs ?? 30_000 });
    const next = this.#x509.next().then((i) => i.value);
    return this.#within(next, opts.waitMs ?? 30_000, 'no valid X.509-SVID');
  }

  /**
   * A JWT-SVID for `audience` (one or several). Served from cache while more than half its lifetime
   * remains; concurrent calls for the same audiences share one request.
   */
  async jwtSvid(audience: string | readonly string[]): Promise<JwtSvid> {
    if (this.#closed) throw new TesseraError('closed', 'the client is closed');
    const audiences = [...new Set(typeof audience === 'string' ? [audience] : audience)].sort();
    if (audiences.length === 0 || audiences.length > 16 || audiences.some((a) => typeof a !== 'string' || a.length === 0 || a.length > 256)) {
      throw new TypeError('audience: 1 to 16 non-empty strings of at most 256 characters');
    }
    const key = audiences.join('\n');
    const cached = this.#jwtCache.get(key);
    const now = Date.now();
    if (cached !== undefined && now < cached.fetchedAt + (cached.svid.expiresAt.getTime() - cached.fetchedAt) / 2) return cached.svid;
    let pending = this.#jwtInFlight.get(key);
    if (pending === undefined) {
      pending = this.#fetchJwt(audiences)
        .then(({ value }) => {
          if (this.#jwtCache.size >= JWT_CACHE_LIMIT && !this.#jwtCache.has(key)) {
            const oldest = this.#jwtCache.keys().next().value;
            if (oldest !== undefined && !this.#jwtRefreshers.has(oldest)) this.#jwtCache.delete(oldest);
          }
          this.#jwtCache.set(key, { svid: value, fetchedAt: Date.now() });
          return value;
        })
        .finally(() => this.#jwtInFlight.delete(key));
      this.#jwtInFlight.set(key, pending);
    }
    return pending;
  }

  /**
   * Reads a static secret this workload is granted. Every call is a new lease and an audit entry on
   * the broker (nothing is cached here); authenticated with the SVID over mTLS, else the token.
   */
  async secret(name: string): Promise<Secret> {
    if (this.#closed) throw new TesseraError('closed', 'the client is closed');
    const problem = secretNameProblem(name);
    if (problem !== undefined) throw new TypeError(`secret name: ${problem}`);
    const { value: res } = await this.#issue<SecretResponse>({ method: 'GET', path: `/v1/secrets/${name}` });
    const expiresAt = typeof res.expiresAt === 'string' ? Date.parse(res.expiresAt) : Number.NaN;
    const maxExpiresAt = typeof res.maxExpiresAt === 'string' ? Date.parse(res.maxExpiresAt) : Number.NaN;
    if (
      res.name !== name ||
      typeof res.value !== 'string' ||
      (res.encoding !== 'utf8' && res.encoding !== 'base64') ||
      typeof res.leaseId !== 'string' ||
      !Number.isFinite(expiresAt) ||
      !Number.isFinite(maxExpiresAt)
    ) {
      throw new TesseraError('bad_response', `GET /v1/secrets/${name}: not the documented shape`);
    }
    const value = Buffer.from(res.value, res.encoding);
    return withHidden<Secret, 'value'>(
      { name, leaseId: res.leaseId, expiresAt: new Date(expiresAt), maxExpiresAt: new Date(maxExpiresAt) },
      'value',
      value,
    );
  }

  /**
   * The broker's SPIFFE bundle (GET /v1/bundle: a JWKS of x509-svid roots and jwt-svid keys, with
   * spiffe_sequence), fetched now over TLS verified against the current trust bundle. No caller auth.
   */
  async spiffeBundle(): Promise<SpiffeBundleDocument> {
    if (this.#closed) throw new TesseraError('closed', 'the client is closed');
    const res = await callBroker<{ keys?: unknown; spiffe_sequence?: unknown; spiffe_refresh_hint?: unknown }>(this.#endpoint, { method: 'GET', path: '/v1/bundle' });
    if (!Array.isArray(res.keys) || !res.keys.every((k) => typeof k === 'object' && k !== null && !Array.isArray(k))) {
      throw new TesseraError('bad_response', 'GET /v1/bundle: keys must be a list of JWKs');
    }
    return {
      keys: res.keys as Record<string, unknown>[],
      ...(typeof res.spiffe_sequence === 'number' ? { spiffe_sequence: res.spiffe_sequence } : {}),
      ...(typeof res.spiffe_refresh_hint === 'number' ? { spiffe_refresh_hint: res.spiffe_refresh_hint } : {}),
    };
  }

  /** The current trust bundle (PEM roots). */
  bundle(): string {
    return this.#bundlePem;
  }

  /** The bundles of the foreign trust domains this workload federates with, as of the current SVID. */
  federatedBundles(): readonly FederatedBundle[] {
    return this.#svid?.federatedBundles ?? [];
  }

  /** Own and federated X.509 authorities by trust domain (before the first SVID: the configured bundle, trust domain unknown). */
  #bundleSet(): BundleSet {
    if (this.#bundles.size > 0) return this.#bundles;
    // Before the first SVID the own trust domain is unknown: key the configured roots by the trust domain their SANs name.
    return new Map(this.#roots.flatMap((r) => {
      const td = /URI:spiffe:\/\/([a-z0-9._-]+)/.exec(r.subjectAltName ?? '')?.[1];
      return td !== undefined ? [[td, [r]] as const] : [];
    }));
  }

  /** The current TLS context (SVID, chain and bundle). Replaced on every rotation; call it per use. */
  tlsContext(): tls.SecureContext {
    if (this.#context === undefined) throw new TesseraError('not_ready', 'no X.509-SVID yet: await client.start() first');
    return this.#context;
  }

  /**
   * An https.Agent for calling other workloads with this workload's SVID. It rotates in place (see
   * RotatingAgent). With `allowedServerIds` the server is authorised by SPIFFE ID instead of host name.
   */
  httpsAgent(opts: https.AgentOptions & { allowedServerIds?: readonly string[] } = {}): https.Agent {
    const { allowedServerIds, ...agentOptions } = opts;
    const allowed = allowedServerIds === undefined ? undefined : allowList(allowedServerIds, 'allowedServerIds');
    const agent = new RotatingAgent(
      { context: () => this.tlsContext(), generation: () => this.#generation, bundles: () => this.#bundleSet(), roots: () => this.#roots },
      allowed,
      agentOptions,
      () => this.#agents.delete(agent),
    );
    this.#agents.add(agent);
    return agent;
  }

  /**
   * Options for https.createServer / tls.createServer: the current SVID and bundle, client
   * certificates required and verified. New connections that send SNI get the current context from
   * SNICallback; call attachServer(server) as well so that clients without SNI (IP addresses) do too.
   */
  serverOptions(): https.ServerOptions {
    const svid = this.#requireSvid();
    return {
      key: svid.privateKeyPem,
      cert: svid.chainPem,
      ca: tlsCa(svid),
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      SNICallback: (_servername, cb) => {
        try {
          cb(null, this.tlsContext());
        } catch (err) {
          cb(err as Error);
        }
      },
    };
  }

  /**
   * Keeps `server`'s default TLS context on the current SVID (server.setSecureContext on every
   * rotation). Existing connections are not interrupted. Returns a function that detaches it.
   */
  attachServer(server: tls.Server): () => void {
    this.#servers.add(server);
    const detach = (): void => {
      this.#servers.delete(server);
    };
    server.once('close', detach);
    if (this.#svid !== undefined) this.#updateServer(server, this.#svid);
    return detach;
  }

  /**
   * A check for servers that authorise callers by SPIFFE ID: the TLS layer must have accepted the
   * client certificate, and the chain is verified again here against the current bundle (at the time
   * of the call, so a long-lived connection whose certificate has expired is refused), exactly one
   * URI SAN, and the ID must be on the allow-list.
   */
  verifyPeer(allowedSpiffeIds: readonly string[]): (source: tls.TLSSocket | IncomingMessage | { readonly socket: Socket }) => PeerCheck {
    const allowed = allowList(allowedSpiffeIds, 'verifyPeer');
    return (source) => {
      const socket = ('socket' in source ? source.socket : source);
      if (!(socket instanceof tls.TLSSocket)) return { ok: false, reason: 'not a TLS connection' };
      if (!socket.authorized) {
        return { ok: false, reason: `client certificate not accepted by TLS: ${String(socket.authorizationError ?? 'none presented')}` };
      }
      try {
        const [leaf, ...intermediates] = chainOf(socket.getPeerCertificate(true));
        if (leaf === undefined) return { ok: false, reason: 'no client certificate' };
        const v = verifySvidInTrustDomain({ leaf, intermediates, bundles: this.#bundleSet(), allowed });
        return { ok: true, spiffeId: v.spiffeId, serial: v.serial, expiresAt: v.expiresAt };
      } catch (err) {
        return { ok: false, reason: err instanceof Error ? err.message : String(err) };
      }
    };
  }

  status(): ClientStatus {
    const svid = this.#svid;
    const failures = Math.max(this.#x509.failures, ...[...this.#jwtRefreshers.values()].map((r) => r.failures));
    return {
      ...(svid !== undefined
        ? {
            spiffeId: svid.spiffeId,
            serial: svid.serial,
            expiresAt: svid.expiresAt,
            secondsToExpiry: Math.floor((svid.expiresAt.getTime() - Date.now()) / 1000),
          }
        : {}),
      ...(this.#lastRotation !== undefined ? { lastRotation: this.#lastRotation } : {}),
      consecutiveFailures: failures,
      ...(this.#lastError !== undefined ? { lastError: this.#lastError } : {}),
      ...(this.checkpoints.latest !== undefined ? { auditCheckpointSize: this.checkpoints.latest.size } : {}),
      ...(this.#auditInconsistency !== undefined ? { auditInconsistency: { ...this.#auditInconsistency } } : {}),
    };
  }

  /** Resolves once every receipt seen so far has been checked against the newest checkpoint (agent --once). */
  async auditChecked(): Promise<void> {
    await this.#auditChecks;
  }

  #queueReceiptCheck(audit: { checkpoint?: unknown } | undefined): void {
    const check = this.#checkReceipt(audit);
    this.#auditChecks = Promise.all([this.#auditChecks, check]).then(() => {});
  }

  /**
   * Checks the receipt's checkpoint against the newest one seen. A rolled-back or forked log is an
   * `auditInconsistent` event and an `error` event; the credential itself is still delivered (it is
   * valid), and status() keeps the finding. A broker that cannot prove either way is tried again next time.
   */
  async #checkReceipt(audit: { checkpoint?: unknown } | undefined): Promise<void> {
    if (typeof audit?.checkpoint !== 'string') return;
    try {
      await this.checkpoints.observe(audit.checkpoint, this.#endpoint);
    } catch (err) {
      const e = asError(err);
      if (e.code !== 'audit_inconsistent') return;
      this.#auditInconsistency = { message: e.message, at: new Date(), count: (this.#auditInconsistency?.count ?? 0) + 1 };
      this.emit('auditInconsistent', e);
      this.#fail(e, { attempt: 0, delayMs: 0 });
    }
  }

  /** Stops every timer, closes pooled connections and detaches servers. The client cannot be restarted. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#x509.stop();
    for (const r of this.#jwtRefreshers.values()) r.stop();
    for (const agent of this.#agents) agent.destroy();
    this.#agents.clear();
    this.#servers.clear();
  }

  // ---- internals ----

  #closedOr(err: unknown): TesseraError {
    return this.#closed ? new TesseraError('closed', 'the client is closed') : asError(err);
  }

  #within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        const last = this.#lastError;
        reject(new TesseraError(last?.code ?? 'unavailable', `${what} within ${ms} ms` + (last ? `; last error: ${last.message}` : '')));
      }, ms);
      promise.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(this.#closedOr(err));
        },
      );
    });
  }

  #requireSvid(): X509Svid {
    if (this.#svid === undefined) throw new TesseraError('not_ready', 'no X.509-SVID yet: await client.start() first');
    return this.#svid;
  }

  #fail(err: unknown, retry: { attempt: number; delayMs: number }): void {
    const e = asError(err);
    this.#lastError = { code: e.code, message: e.message, at: new Date() };
    // An EventEmitter 'error' without a listener would throw out of a timer; background failures are
    // reported to those who listen and are otherwise visible through status().
    if (this.listenerCount('error') > 0) {
      const suffix = retry.attempt > 0 ? ` (attempt ${retry.attempt}, retrying in ${retry.delayMs} ms)` : '';
      const wrapped = new TesseraError(e.code, `${e.message}${suffix}`, {
        ...(e.status !== undefined ? { status: e.status } : {}),
        cause: e,
      });
      this.emit('error', wrapped);
    }
  }

  async #token(): Promise<string> {
    const source = this.#opts.token;
    let token: string;
    try {
      if (typeof source === 'string') token = source;
      else if (typeof source === 'function') token = await source();
      else {
        const buf = await readFile(this.#opts.tokenFile as string);
        if (buf.length > MAX_TOKEN_BYTES) throw new Error(`larger than ${MAX_TOKEN_BYTES} bytes`);
        token = buf.toString('utf8');
      }
    } catch (err) {
      const where = this.#opts.tokenFile !== undefined ? ` from ${this.#opts.tokenFile}` : '';
      throw new TesseraError('no_token', `cannot read the service-account token${where}: ${(err as Error).message}`, { cause: err });
    }
    token = token.trim();
    if (!COMPACT_JWS.test(token)) throw new TesseraError('no_token', 'the service-account token is empty or not a JWT');
    return token;
  }

  /** One authenticated call: mTLS with the current SVID while it is valid, then the token. */
  async #issue<T>(call: BrokerCall): Promise<Issued<T>> {
    const svid = this.#svid;
    let mtlsError: TesseraError | undefined;
    if (svid !== undefined && svid.expiresAt.getTime() > Date.now() + 1000) {
      try {
        return { value: await callBroker<T>(this.#endpoint, { ...call, cert: svid.chainPem, key: svid.privateKeyPem }), via: 'mtls' };
      } catch (err) {
        mtlsError = asError(err);
      }
    }
    try {
      return { value: await callBroker<T>(this.#endpoint, { ...call, token: await this.#token() }), via: 'token' };
    } catch (err) {
      const e = asError(err);
      if (mtlsError === undefined) throw e;
      throw new TesseraError(e.code, `${e.message} (after mTLS renewal failed: ${mtlsError.message})`, {
        ...(e.status !== undefined ? { status: e.status } : {}),
        cause: e,
      });
    }
  }

  async #fetchX509(): Promise<Issued<X509Svid>> {
    const { privateKey, privateKeyPem, csrPem } = await newKeyAndCsr();
    const { value: res, via } = await this.#issue<X509Response>({ method: 'POST', path: '/v1/svid/x509', body: { csr: csrPem } });
    const bad = (m: string): TesseraError => new TesseraError('bad_response', `POST /v1/svid/x509: ${m}`);
    if (typeof res.spiffeId !== 'string' || !Array.isArray(res.certificates) || typeof res.bundle !== 'string') {
      throw bad('missing spiffeId, certificates or bundle');
    }
    if (res.certificates.length === 0 || !res.certificates.every((c): c is string => typeof c === 'string')) {
      throw bad('certificates must be a non-empty list of PEM strings');
    }
    const chain = res.certificates.flatMap((c) => parsePemCertificates(c, 'the SVID'));
    const roots = parsePemCertificates(res.bundle, 'the trust bundle');
    const federatedBundles = parseFederated(res.federatedBundles);
    const [leaf, ...intermediates] = chain;
    if (leaf === undefined) throw bad('empty certificate chain');
    let spiffeId: string;
    try {
      spiffeId = spiffeIdOf(leaf);
      // The new SVID must chain to the bundle it came with: never install something unusable.
      verifySvid({ leaf, intermediates, roots });
    } catch (err) {
      throw bad(`the issued SVID does not verify: ${(err as Error).message}`);
    }
    if (spiffeId !== res.spiffeId) throw bad('the certificate SPIFFE ID differs from the response');
    if (!leaf.checkPrivateKey(privateKey)) throw bad('the certificate is not for the key we generated');
    this.#queueReceiptCheck(res.audit);
    const certificates = chain.map((c) => c.toString());
    const svid = withHidden<X509Svid, 'privateKeyPem'>(
      {
        spiffeId,
        serial: leaf.serialNumber.toLowerCase(),
        certificates,
        chainPem: certificates.join(''),
        bundlePem: roots.map((r) => r.toString()).join(''),
        federatedBundles,
        notBefore: new Date(Date.parse(leaf.validFrom)),
        expiresAt: new Date(Date.parse(leaf.validTo)),
      },
      'privateKeyPem',
      privateKeyPem,
    );
    return { value: svid, via };
  }

  #installX509(issued: Issued<X509Svid>): void {
    const svid = issued.value;
    const bundleChanged = svid.bundlePem !== this.#bundlePem;
    // Both contexts are built before anything is swapped: a bad SVID leaves the old one in place.
    const context = tls.createSecureContext({ key: svid.privateKeyPem, cert: svid.chainPem, ca: tlsCa(svid), minVersion: 'TLSv1.2' });
    this.#bundlePem = svid.bundlePem;
    this.#roots = parsePemCertificates(svid.bundlePem, 'the trust bundle');
    const own = parseSpiffeId(svid.spiffeId).trustDomain;
    this.#bundles = new Map([
      ...svid.federatedBundles.filter((b) => b.trustDomain !== own).map((b) => [b.trustDomain, parsePemCertificates(b.bundlePem, `the bundle of ${b.trustDomain}`)] as const),
      [own, this.#roots],
    ]);
    this.#svid = svid;
    this.#context = context;
    this.#generation += 1;
    this.#lastRotation = new Date();
    for (const server of this.#servers) this.#updateServer(server, svid);
    for (const agent of this.#agents) agent.rotate();
    this.emit('rotated', { kind: 'x509', svid, via: issued.via, bundleChanged });
  }

  #updateServer(server: tls.Server, svid: X509Svid): void {
    try {
      server.setSecureContext({ key: svid.privateKeyPem, cert: svid.chainPem, ca: tlsCa(svid) });
    } catch (err) {
      this.#fail(new TesseraError('bad_response', `cannot install the SVID on a server: ${(err as Error).message}`), { attempt: 0, delayMs: 0 });
    }
  }

  async #fetchJwt(audiences: readonly string[]): Promise<Issued<JwtSvid>> {
    const { value: res, via } = await this.#issue<JwtResponse>({ method: 'POST', path: '/v1/svid/jwt', body: { audience: audiences } });
    if (typeof res.token !== 'string' || !COMPACT_JWS.test(res.token) || typeof res.spiffeId !== 'string') {
      throw new TesseraError('bad_response', 'POST /v1/svid/jwt: missing or malformed token or spiffeId');
    }
    const exp = jwtExpiry(res.token) ?? (typeof res.expiresAt === 'string' ? Date.parse(res.expiresAt) : Number.NaN);
    if (!Number.isFinite(exp)) throw new TesseraError('bad_response', 'POST /v1/svid/jwt: no expiry');
    this.#queueReceiptCheck(res.audit);
    const audience = Array.isArray(res.audience) && res.audience.every((a) => typeof a === 'string') ? (res.audience) : [...audiences];
    const svid = withHidden<JwtSvid, 'token'>({ spiffeId: res.spiffeId, audience, expiresAt: new Date(exp) }, 'token', res.token);
    return { value: svid, via };
  }
}
