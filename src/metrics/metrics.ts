/**
 * The broker's Prometheus metrics (prom-client). One registry per broker (tests run several brokers in
 * one process), plus the standard process metrics, collected once per process. Everything the hot path
 * touches is created up front: label children per (type, decision), per store operation, per limit
 * scope, so a request costs a couple of increments and one histogram observation.
 *
 * Names and labels are part of the operations contract: docs/operations.md lists them.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import { readFileSync } from 'node:fs';
import type { Clock } from '../clock.js';

/** This build's version (package.json, two folders up from src/metrics or dist/metrics). */
export const TESSERA_VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** What an issuance route hands out. */
export type IssuanceType = 'x509-svid' | 'jwt-svid' | 'secret' | 'db-credentials' | 'break-glass';
/** allow: a credential left; deny: a 4xx refusal (audited); error: a 5xx (fail closed, nothing issued). */
export type Decision = 'allow' | 'deny' | 'error';
export type LimitScope = 'source' | 'identity';
/** Connections refused before routing (see server/errors.ts clientErrorHandler); tls: handshake failed or timed out. */
export type ClientErrorReason = 'timeout' | 'header_too_large' | 'malformed' | 'tls';
/** Why a minting thread was replaced (ca/minter-pool.ts): it exited, or it held a job past the timeout. */
export type MintThreadFailure = 'exited' | 'stuck';
/** A failed lease revoke: transient (engine unavailable, retried with backoff) or permanent (lease revoke_failed). */
export type RevokeFailureKind = 'transient' | 'permanent';

export const ISSUANCE_TYPES: readonly IssuanceType[] = ['x509-svid', 'jwt-svid', 'secret', 'db-credentials', 'break-glass'];
const DECISIONS: readonly Decision[] = ['allow', 'deny', 'error'];
const LIMIT_SCOPES: readonly LimitScope[] = ['source', 'identity'];
const CLIENT_ERROR_REASONS: readonly ClientErrorReason[] = ['timeout', 'header_too_large', 'malformed', 'tls'];
const MINT_THREAD_FAILURES: readonly MintThreadFailure[] = ['exited', 'stuck'];
const REVOKE_FAILURE_KINDS: readonly RevokeFailureKind[] = ['transient', 'permanent'];

/** Store operations whose failures are counted (the Store interface's methods). */
export const STORE_OPS = [
  'appendAuditEntries', 'auditSize', 'readAuditEntries', 'appendCheckpoint', 'listCheckpoints', 'consumeOnce',
  'kvPut', 'kvGet', 'kvDelete', 'kvList', 'hit', 'tryLock', 'unlock', 'checkWritable', 'auditCursor', 'advanceAuditCursor',
] as const;
export type StoreOp = (typeof STORE_OPS)[number];

/** Latency buckets (seconds) from sub-millisecond crypto to a multi-second fail-closed timeout. */
const REQUEST_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const APPEND_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** Pre-bound recorders for one issuance type and decision. */
export interface IssuanceRecorder {
  /** Counts one request and observes its latency in milliseconds. */
  record(elapsedMs: number): void;
}

export interface MetricsSources {
  readonly clock: Clock;
  /** notAfter (ms) of the X.509 signing CA: the gauge shows how long until it expires. */
  readonly caNotAfterMs: number;
  /** Which signing CA (its subject key identifier, hex): the gauge's `authority` label. */
  readonly caAuthority: string;
  /** With CA rotation: every authority in the bundle (prepared, active, old), instead of the one above. */
  readonly caAuthorities?: () => readonly { readonly authority: string; readonly notAfterMs: number }[];
}

let processRegistry: Registry | undefined;

/** Process metrics (CPU, memory, event loop lag, GC, handles) are per process: registered once. */
function processMetrics(): Registry {
  if (processRegistry === undefined) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

export class BrokerMetrics {
  readonly registry = new Registry();
  #federationFetches: Counter<'trust_domain' | 'outcome'> | undefined;
  readonly #issuance = new Map<IssuanceType, Readonly<Record<Decision, IssuanceRecorder>>>();
  readonly #storeErrors = new Map<string, { inc(): void }>();
  readonly #rateLimited: Readonly<Record<LimitScope, { inc(): void }>>;
  readonly #clientErrors: Readonly<Record<ClientErrorReason, { inc(): void }>>;
  readonly #auditAppend: Histogram;
  readonly #mintThreadFailures: Readonly<Record<MintThreadFailure, { inc(): void }>>;
  readonly #revokeFailures: Readonly<Record<RevokeFailureKind, { inc(): void }>>;
  #witnessCalls: Counter<'witness' | 'outcome'> | undefined;
  #auditSize: () => number = () => 0;
  #devices: () => readonly { name: string; lagEntries: number; lagSeconds: number }[] = () => [];
  readonly #deviceDelivered: Counter<'device'>;
  readonly #deviceFailed: Counter<'device'>;
  #mintJobs: () => number = () => 0;

  constructor(sources: MetricsSources) {
    const register = [this.registry];
    const requests = new Counter({
      name: 'tessera_issuance_requests_total',
      help: 'Issuance requests by credential type and decision (allow, deny = 4xx refusal, error = 5xx, nothing issued).',
      labelNames: ['type', 'decision'] as const,
      registers: register,
    });
    const latency = new Histogram({
      name: 'tessera_issuance_duration_seconds',
      help: 'Time from request arrival to response, by credential type and decision.',
      labelNames: ['type', 'decision'] as const,
      buckets: REQUEST_BUCKETS,
      registers: register,
    });
    for (const type of ISSUANCE_TYPES) {
      const byDecision = {} as Record<Decision, IssuanceRecorder>;
      for (const decision of DECISIONS) {
        const count = requests.labels(type, decision);
        const observe = latency.labels(type, decision);
        count.inc(0);
        latency.zero({ type, decision });
        byDecision[decision] = {
          record: (elapsedMs) => {
            count.inc();
            observe.observe(elapsedMs / 1000);
          },
        };
      }
      this.#issuance.set(type, byDecision);
    }

    this.#auditAppend = new Histogram({
      name: 'tessera_audit_append_duration_seconds',
      help: 'Time for the store to make audit entries durable (fsync or Redis ack, group commit included).',
      buckets: APPEND_BUCKETS,
      registers: register,
    });

    const storeErrors = new Counter({
      name: 'tessera_store_errors_total',
      help: 'Store operations that failed (store unavailable, I/O error, timeout), by operation.',
      labelNames: ['op'] as const,
      registers: register,
    });
    for (const op of STORE_OPS) {
      const child = storeErrors.labels(op);
      child.inc(0);
      this.#storeErrors.set(op, { inc: () => child.inc() });
    }

    const rateLimited = new Counter({
      name: 'tessera_rate_limited_total',
      help: 'Requests refused with 429 by scope (source: failed attestations per client address; identity: per SPIFFE ID).',
      labelNames: ['scope'] as const,
      registers: register,
    });
    this.#rateLimited = bindChildren(LIMIT_SCOPES, (scope) => rateLimited.labels(scope));

    const clientErrors = new Counter({
      name: 'tessera_http_client_errors_total',
      help: 'Connections refused before routing: slow headers (timeout), oversized headers, malformed HTTP, failed or slow TLS handshakes.',
      labelNames: ['reason'] as const,
      registers: register,
    });
    this.#clientErrors = bindChildren(CLIENT_ERROR_REASONS, (reason) => clientErrors.labels(reason));

    const { clock, caNotAfterMs, caAuthority, caAuthorities } = sources;
    new Gauge({
      name: 'tessera_ca_expiry_seconds',
      help: 'Seconds until the X.509 signing CA certificate expires (negative once expired), per authority (subject key identifier).',
      labelNames: ['authority'] as const,
      registers: register,
      collect() {
        if (caAuthorities === undefined) {
          this.labels(caAuthority).set(Math.round((caNotAfterMs - clock.now()) / 1000));
          return;
        }
        // A dropped authority's series goes with it.
        this.reset();
        for (const a of caAuthorities()) this.labels(a.authority).set(Math.round((a.notAfterMs - clock.now()) / 1000));
      },
    });
    const mintThreadFailures = new Counter({
      name: 'tessera_ca_thread_failures_total',
      help: 'Minting threads replaced because they exited or held a job past the timeout (their jobs failed with 503, nothing issued).',
      labelNames: ['reason'] as const,
      registers: register,
    });
    this.#mintThreadFailures = bindChildren(MINT_THREAD_FAILURES, (reason) => mintThreadFailures.labels(reason));
    const revokeFailures = new Counter({
      name: 'tessera_lease_revoke_failures_total',
      help: 'Failed lease revokes (dynamic credentials): transient = engine unavailable, retried with backoff; permanent = engine refused, lease marked revoke_failed.',
      labelNames: ['kind'] as const,
      registers: register,
    });
    this.#revokeFailures = bindChildren(REVOKE_FAILURE_KINDS, (kind) => revokeFailures.labels(kind));
    const mintJobs = (): number => this.#mintJobs();
    new Gauge({
      name: 'tessera_ca_jobs_in_flight',
      help: 'X.509 minting jobs handed to minting threads and not yet answered.',
      registers: register,
      collect() {
        this.set(mintJobs());
      },
    });
    new Gauge({
      name: 'tessera_build_info',
      help: 'Always 1; the labels name the Tessera version and the Node.js version this broker runs.',
      labelNames: ['version', 'node'] as const,
      registers: register,
    })
      .labels(TESSERA_VERSION, process.version)
      .set(1);
    const devices = (): readonly { name: string; lagEntries: number; lagSeconds: number }[] => this.#devices();
    new Gauge({
      name: 'tessera_audit_device_lag_entries',
      help: 'Audit entries an audit device has not yet delivered (log size minus its stored position).',
      labelNames: ['device'] as const,
      registers: register,
      collect() {
        for (const d of devices()) this.set({ device: d.name }, d.lagEntries);
      },
    });
    new Gauge({
      name: 'tessera_audit_device_lag_seconds',
      help: 'How long the oldest audit entry an audit device has not yet delivered has been waiting.',
      labelNames: ['device'] as const,
      registers: register,
      collect() {
        for (const d of devices()) this.set({ device: d.name }, d.lagSeconds);
      },
    });
    this.#deviceDelivered = new Counter({
      name: 'tessera_audit_device_delivered_total',
      help: 'Audit records written to an audit device (a record sent again after a failure counts again).',
      labelNames: ['device'] as const,
      registers: register,
    });
    this.#deviceFailed = new Counter({
      name: 'tessera_audit_device_failed_total',
      help: 'Failed attempts to write to an audit device (connect, write, timeout, store); each is retried with backoff.',
      labelNames: ['device'] as const,
      registers: register,
    });
    const size = (): number => this.#auditSize();
    new Gauge({
      name: 'tessera_audit_log_entries',
      help: 'Entries in the audit log as this replica sees it.',
      registers: register,
      collect() {
        this.set(size());
      },
    });
  }

  /** The recorders of one issuance type, one per decision. */
  issuance(type: IssuanceType): Readonly<Record<Decision, IssuanceRecorder>> {
    const r = this.#issuance.get(type);
    if (r === undefined) throw new Error(`unknown issuance type ${type}`);
    return r;
  }

  auditAppended(elapsedMs: number): void {
    this.#auditAppend.observe(elapsedMs / 1000);
  }

  storeError(op: string): void {
    this.#storeErrors.get(op)?.inc();
  }

  rateLimited(scope: LimitScope): void {
    this.#rateLimited[scope].inc();
  }

  clientError(reason: ClientErrorReason): void {
    this.#clientErrors[reason].inc();
  }

  mintThreadFailed(reason: MintThreadFailure): void {
    this.#mintThreadFailures[reason].inc();
  }

  leaseRevokeFailed(kind: RevokeFailureKind): void {
    this.#revokeFailures[kind].inc();
  }

  /**
   * Counts one add-checkpoint call to a witness by outcome (cosigned, conflict, inconsistent, refused,
   * error): conflict and inconsistent mean the witness saw a history this log no longer has.
   */
  witnessCall(witness: string, outcome: string): void {
    this.#witnessCalls ??= new Counter({
      name: 'tessera_audit_witness_calls_total',
      help: 'add-checkpoint calls to audit witnesses by outcome; conflict/inconsistent: the log was rolled back or forked.',
      labelNames: ['witness', 'outcome'] as const,
      registers: [this.registry],
    });
    this.#witnessCalls.labels(witness, outcome).inc();
  }

  /** Where the minting-jobs gauge reads from (the pool starts after the metrics exist). */
  watchMintJobs(inFlight: () => number): void {
    this.#mintJobs = inFlight;
  }

  /** Where the audit device gauges read from; creates each device's counters at 0. */
  /** Federation (spiffe/federation.ts): the age of each foreign trust domain's last good bundle. */
  watchFederation(status: () => readonly { trustDomain: string; ageSeconds: number }[]): void {
    new Gauge({
      name: 'tessera_federation_bundle_age_seconds',
      help: "Seconds since each federated trust domain's bundle was last fetched and authenticated (the last good bundle stays in use while its endpoint fails).",
      labelNames: ['trust_domain'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of status()) this.labels(s.trustDomain).set(s.ageSeconds);
      },
    });
    this.#federationFetches = new Counter({
      name: 'tessera_federation_fetches_total',
      help: 'Bundle endpoint fetches per federated trust domain: updated, unchanged, failed (the last good bundle stays).',
      labelNames: ['trust_domain', 'outcome'] as const,
      registers: [this.registry],
    });
  }

  federationFetch(trustDomain: string, outcome: 'updated' | 'unchanged' | 'failed'): void {
    this.#federationFetches?.labels(trustDomain, outcome).inc();
  }

  watchAuditDevices(status: () => readonly { name: string; lagEntries: number; lagSeconds: number }[]): void {
    this.#devices = status;
    for (const d of status()) {
      this.#deviceDelivered.labels(d.name).inc(0);
      this.#deviceFailed.labels(d.name).inc(0);
    }
  }

  auditDeviceDelivered(device: string, count: number): void {
    this.#deviceDelivered.labels(device).inc(count);
  }

  auditDeviceFailed(device: string): void {
    this.#deviceFailed.labels(device).inc();
  }

  /** Where the audit-size gauge reads from (the log is opened after the metrics exist). */
  watchAuditSize(size: () => number): void {
    this.#auditSize = size;
  }

  readonly contentType = this.registry.contentType;

  /** The Prometheus text exposition: process metrics, then the broker's own. */
  async text(): Promise<string> {
    const [proc, own] = await Promise.all([processMetrics().metrics(), this.registry.metrics()]);
    return `${proc}\n${own}`;
  }

  /** The same metrics as JSON: a cluster worker sends this to the primary, which sums the workers (cli/cluster.ts). */
  async json(): Promise<MetricObjectWithValues<MetricValue<string>>[]> {
    const [proc, own] = await Promise.all([processMetrics().getMetricsAsJSON(), this.registry.getMetricsAsJSON()]);
    return [...proc, ...own];
  }
}

function bindChildren<K extends string>(keys: readonly K[], child: (key: K) => { inc(n?: number): void }): Record<K, { inc(): void }> {
  const out = {} as Record<K, { inc(): void }>;
  for (const key of keys) {
    const c = child(key);
    c.inc(0);
    out[key] = { inc: () => c.inc() };
  }
  return out;
}
