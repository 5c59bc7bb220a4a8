/**
 * Threshold alerts over the audit log.
 *
 * Rules (config audit.alerts.rules):
 *   - denials:     more than `threshold` denials for one SPIFFE ID (per: spiffeId, the caller) or one
 *                  namespace (per: namespace) within a fixed window of `windowSeconds`;
 *   - break-glass: any break-glass use (an entry of type 'break-glass' or from source 'break-glass').
 *                  An entry naming verified break-glass keys (keyIds) is never muted;
 *   - revoke-failed: a lease whose credential the engine refused to drop for good (an entry of type
 *                  'lease.revoke-failed' with code 'revoke_failed'; muted per lease).
 *
 * Counting goes through the store's shared fixed-window counter (`hit`) and muting through its lock
 * (`tryLock` with the mute window as TTL), so N replicas agree: a threshold is crossed once for the
 * whole fleet, and a firing is muted fleet-wide. Muting is per rule and key (one noisy workload does
 * not hide another one).
 *
 * Nothing here is on the issuance path: `observe` only queues. A firing is appended to the audit log
 * (type 'alert'), then POSTed as JSON to the webhook by a small pool of senders that retry with
 * exponential backoff (5xx, 408, 429 and network errors; other 4xx are permanent). Queues are bounded:
 * past the limit the oldest waiting alert is dropped and counted.
 *
 *   - device-lag:  an audit device (audit/devices/) went further behind than its maxLagEntries or
 *                  maxLagSeconds (muted per device; `deviceLagging`, called by audit/devices/devices.ts).
 *
 * One alert needs no rule: `historyLost` (kind 'audit-history-lost') fires once per process when the
 * store is found not to hold the audit history this replica knows. It is not appended to the log (the
 * log is what is lost) and not muted (it happens once, then the replica stays closed).
 *
 * Nor does `caExpiring` (kind 'ca-expiring'): the signing CA entered a warning window (ca/expiry.ts).
 * It is appended to the log and muted fleet-wide per CA and window, so N replicas raise it once.
 */
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AlertRuleConfig, AlertsConfig } from '../config/config.js';
import { type Clock, systemClock } from '../clock.js';
import type { Store } from '../store/store.js';
import type { AuditEntry } from './entry.js';
import type { AuditReceipt } from './log.js';

/** The JSON body POSTed to the webhook (stable: receivers parse it). */
export interface Alert {
  readonly type: 'tessera.alert';
  readonly id: string;
  readonly rule: string;
  readonly kind: AlertRuleConfig['kind'] | 'audit-history-lost' | 'ca-expiring' | 'federation-bundle-stale';
  /** What the rule counted against. */
  readonly key: { readonly spiffeId?: string; readonly namespace?: string; readonly leaseId?: string; readonly device?: string; readonly trustDomain?: string };
  /** Denials in the current window when it fired (denials rules). */
  readonly count?: number;
  readonly threshold?: number;
  readonly windowSeconds?: number;
  /** Further firings of this rule for this key are muted this long. */
  readonly mutedForSeconds: number;
  readonly firedAt: string;
  /** The log (checkpoint origin) and replica that raised it. */
  readonly origin: string;
  readonly replica: string;
  readonly summary: string;
  /** The audit entry that crossed the threshold. */
  readonly trigger: {
    readonly index: number;
    readonly ts: string;
    readonly type: string;
    readonly actor: string | null;
    readonly subject: string | null;
    readonly namespace?: string;
    readonly serviceAccount?: string;
    readonly code?: string;
    readonly reason?: string;
    readonly requestId: string;
  };
  /** Index of the 'alert' entry recording this firing (absent if the log could not record it). */
  readonly auditIndex?: number;
}

export interface AlertStats {
  readonly evaluated: number;
  readonly fired: number;
  readonly muted: number;
  readonly delivered: number;
  /** Attempts that failed and were retried. */
  readonly retries: number;
  /** Alerts given up on (permanent 4xx, or attempts exhausted). */
  readonly failed: number;
  /** Dropped because a queue was full, or still queued at close. */
  readonly dropped: number;
}

export interface AlertEngineOptions {
  readonly store: Store;
  /** Appends the firing to the audit log (AuditLog.append). */
  readonly append: (entry: AuditEntry) => Promise<AuditReceipt>;
  readonly config: AlertsConfig;
  readonly origin: string;
  readonly replicaId: string;
  readonly clock?: Clock;
  readonly onError?: (err: unknown, what: string) => void;
}

/** Entries waiting to be evaluated; beyond this the oldest is dropped (the log itself has them all). */
const EVAL_QUEUE_LIMIT = 10_000;
/** Webhook deliveries in flight at once. */
const SENDERS = 4;
const MAX_BACKOFF_MS = 60_000;
const CLOSE_TIMEOUT_MS = 3_000;

interface Observed {
  readonly entry: AuditEntry;
  readonly index: number;
}

/** A failed revoke retrying cannot fix (leases.ts marks the lease revoke_failed). */
const isPermanentRevokeFailure = (entry: AuditEntry): boolean => entry.type === 'lease.revoke-failed' && entry.code === 'revoke_failed';

const digest = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex').slice(0, 32);

/** Thrown by a delivery attempt; `retry` says whether trying again can help. */
class DeliveryError extends Error {
  constructor(
    message: string,
    readonly retry: boolean,
  ) {
    super(message);
  }
}

export class AlertEngine {
  readonly #store: Store;
  readonly #append: (entry: AuditEntry) => Promise<AuditReceipt>;
  #config: AlertsConfig;
  readonly #origin: string;
  readonly #replica: string;
  readonly #clock: Clock;
  readonly #onError: (err: unknown, what: string) => void;
  #ca: string | undefined;
  readonly #evalQueue: Observed[] = [];
  #evaluating = false;
  readonly #sendQueue: Alert[] = [];
  #sending = 0;
  #closed = false;
  /** Set when close() stops waiting: deliveries stop retrying. */
  #abandoned = false;
  /** Resolves every pending backoff sleep at close. */
  #wake: Array<() => void> = [];
  #idleWaiters: Array<() => void> = [];
  #stats = { evaluated: 0, fired: 0, muted: 0, delivered: 0, retries: 0, failed: 0, dropped: 0 };

  constructor(opts: AlertEngineOptions) {
    this.#store = opts.store;
    this.#append = opts.append;
    this.#config = opts.config;
    this.#origin = opts.origin;
    this.#replica = opts.replicaId;
    this.#clock = opts.clock ?? systemClock;
    this.#onError = opts.onError ?? (() => {});
    this.#ca = opts.config.webhookCaFile !== undefined ? readFileSync(opts.config.webhookCaFile, 'utf8') : undefined;
  }

  /** New rules, mutes and webhook settings (config reload); alerts already queued are still sent. */
  reconfigure(config: AlertsConfig): void {
    const ca = config.webhookCaFile !== undefined ? readFileSync(config.webhookCaFile, 'utf8') : undefined;
    this.#config = config;
    this.#ca = ca;
  }

  get stats(): AlertStats {
    return { ...this.#stats };
  }

  /** Called for every entry this replica appended (AuditLog.onAppend). Never blocks, never throws. */
  observe(entry: AuditEntry, receipt: AuditReceipt): void {
    if (this.#closed || this.#config.rules.length === 0 || !this.#mayMatch(entry)) return;
    if (this.#evalQueue.length >= EVAL_QUEUE_LIMIT) {
      this.#evalQueue.shift();
      this.#stats.dropped++;
    }
    this.#evalQueue.push({ entry, index: receipt.index });
    if (!this.#evaluating) void this.#evaluateLoop();
  }

  /** Resolves once nothing is queued or in flight (tests, and close). */
  idle(): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /**
   * Stops taking new entries, finishes evaluating queued ones, and gives deliveries in flight up to a
   * few seconds (backoff sleeps are cut short); whatever is still queued after that is dropped.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const deadline = new Promise<void>((r) => setTimeout(r, CLOSE_TIMEOUT_MS).unref());
    await Promise.race([this.idle(), deadline]);
    this.#abandoned = true;
    for (const wake of this.#wake.splice(0)) wake();
    if (this.#sendQueue.length > 0) {
      this.#stats.dropped += this.#sendQueue.length;
      this.#onError(new Error(`${this.#sendQueue.length} alert(s) not delivered before shutdown`), 'alert webhook');
      this.#sendQueue.length = 0;
    }
  }

  #mayMatch(entry: AuditEntry): boolean {
    return entry.type === 'denial' || entry.type === 'break-glass' || entry.source === 'break-glass' || isPermanentRevokeFailure(entry);
  }

  #isIdle(): boolean {
    return this.#evalQueue.length === 0 && !this.#evaluating && this.#sendQueue.length === 0 && this.#sending === 0;
  }

  #checkIdle(): void {
    if (!this.#isIdle()) return;
    for (const resolve of this.#idleWaiters.splice(0)) resolve();
  }

  async #evaluateLoop(): Promise<void> {
    this.#evaluating = true;
    try {
      for (let next = this.#evalQueue.shift(); next !== undefined; next = this.#evalQueue.shift()) {
        this.#stats.evaluated++;
        for (const rule of this.#config.rules) {
          try {
            await this.#evaluate(rule, next);
          } catch (err) {
            this.#onError(err, `alert rule ${rule.name}`);
          }
        }
      }
    } finally {
      this.#evaluating = false;
      this.#checkIdle();
    }
  }

  async #evaluate(rule: AlertRuleConfig, { entry, index }: Observed): Promise<void> {
    if (rule.kind === 'break-glass') {
      if (entry.type !== 'break-glass' && entry.source !== 'break-glass') return;
      const key = entry.actor !== null ? { spiffeId: entry.actor } : {};
      // An entry naming verified deployment keys (a use, or a refused attempt with a genuine key) is
      // never muted: junk attempts share one mute key, and must not silence a real key in use.
      const genuine = entry.keyIds !== undefined && entry.keyIds.length > 0;
      await this.#fire(rule, key, entry.actor ?? '-', entry, index, undefined, !genuine);
      return;
    }
    if (rule.kind === 'revoke-failed') {
      if (!isPermanentRevokeFailure(entry) || typeof entry.leaseId !== 'string') return;
      // Muted per lease: the hourly retries of one stuck lease do not page again within the window.
      await this.#fire(rule, { leaseId: entry.leaseId }, entry.leaseId, entry, index, undefined);
      return;
    }
    if (entry.type !== 'denial') return;
    const per = rule.per ?? 'spiffeId';
    const value = per === 'spiffeId' ? entry.actor : entry.namespace;
    // Unauthenticated denials have no identity to count against.
    if (value === null || value === undefined || value === '') return;
    const windowMs = (rule.windowSeconds ?? 60) * 1000;
    const { count } = await this.#store.hit(`alert:${rule.name}:${digest(value)}`, windowMs);
    if (count <= (rule.threshold ?? 0)) return;
    const key = per === 'spiffeId' ? { spiffeId: value } : { namespace: value };
    await this.#fire(rule, key, value, entry, index, count);
  }

  async #fire(
    rule: AlertRuleConfig,
    key: Alert['key'],
    keyText: string,
    entry: AuditEntry,
    index: number,
    count: number | undefined,
    mutable = true,
  ): Promise<void> {
    const id = randomUUID();
    const muteSeconds = mutable ? (rule.muteSeconds ?? this.#config.muteSeconds) : 0;
    // The lock is the fleet-wide mute: whoever takes it fires; it expires by itself after the window.
    if (muteSeconds > 0 && !(await this.#store.tryLock(`alert-mute:${rule.name}:${digest(keyText)}`, id, muteSeconds * 1000))) {
      this.#stats.muted++;
      return;
    }
    this.#stats.fired++;
    const summary =
      rule.kind === 'break-glass'
        ? entry.decision === 'deny' && !mutable
          ? `break-glass attempt refused (${entry.code ?? 'deny'}) carrying valid signature(s) of deployment key(s) ${(entry.keyIds ?? []).join(', ')}`
          : `break-glass use by ${keyText}`
        : rule.kind === 'revoke-failed'
          ? `lease ${keyText} (${entry.subject ?? '-'}, ${entry.secret ?? '-'}) could not be revoked: the engine refused; an operator must act`
          : `${count ?? 0} denials for ${key.spiffeId !== undefined ? 'SPIFFE ID' : 'namespace'} ${keyText} within ${rule.windowSeconds ?? 0}s (more than ${rule.threshold ?? 0})`;
    const now = this.#clock.now();
    let auditIndex: number | undefined;
    try {
      const receipt = await this.#append({
        ts: now,
        type: 'alert',
        decision: entry.decision,
        actor: null,
        subject: key.spiffeId ?? entry.subject,
        ...(key.namespace !== undefined ? { namespace: key.namespace } : entry.namespace !== undefined ? { namespace: entry.namespace } : {}),
        code: 'alert',
        reason: `rule ${rule.name}: ${summary} (trigger: audit entry ${index})`,
        requestId: id,
        replica: this.#replica,
      });
      auditIndex = receipt.index;
    } catch (err) {
      // The webhook still goes out: an alert must not be lost because the log is struggling.
      this.#onError(err, `recording alert ${rule.name}`);
    }
    if (this.#config.webhookUrl === undefined) return;
    this.#enqueue({
      type: 'tessera.alert',
      id,
      rule: rule.name,
      kind: rule.kind,
      key,
      ...(count !== undefined ? { count, threshold: rule.threshold ?? 0, windowSeconds: rule.windowSeconds ?? 0 } : {}),
      mutedForSeconds: muteSeconds,
      firedAt: new Date(now).toISOString(),
      origin: this.#origin,
      replica: this.#replica,
      summary,
      trigger: {
        index,
        ts: new Date(entry.ts).toISOString(),
        type: entry.type,
        actor: entry.actor,
        subject: entry.subject,
        ...(entry.namespace !== undefined ? { namespace: entry.namespace } : {}),
        ...(entry.serviceAccount !== undefined ? { serviceAccount: entry.serviceAccount } : {}),
        ...(entry.code !== undefined ? { code: entry.code } : {}),
        ...(entry.reason !== undefined ? { reason: entry.reason } : {}),
        requestId: entry.requestId,
      },
      ...(auditIndex !== undefined ? { auditIndex } : {}),
    });
  }

  /**
   * An audit device went past one of its lag bounds: every `device-lag` rule fires (muted per device),
   * recorded in the log as an 'alert' entry and POSTed like any other alert. Never blocks, never throws.
   */
  deviceLagging(lag: { name: string; required: boolean; position: number; lagEntries: number; lagSeconds: number }, bounds: { maxLagEntries: number; maxLagSeconds: number }): void {
    if (this.#closed) return;
    for (const rule of this.#config.rules) {
      if (rule.kind !== 'device-lag') continue;
      void this.#fireDeviceLag(rule, lag, bounds).catch((err: unknown) => this.#onError(err, `alert rule ${rule.name}`));
    }
  }

  async #fireDeviceLag(
    rule: AlertRuleConfig,
    lag: { name: string; required: boolean; position: number; lagEntries: number; lagSeconds: number },
    bounds: { maxLagEntries: number; maxLagSeconds: number },
  ): Promise<void> {
    const id = randomUUID();
    const muteSeconds = rule.muteSeconds ?? this.#config.muteSeconds;
    if (muteSeconds > 0 && !(await this.#store.tryLock(`alert-mute:${rule.name}:${digest(`device:${lag.name}`)}`, id, muteSeconds * 1000))) {
      this.#stats.muted++;
      return;
    }
    this.#stats.fired++;
    const summary =
      `audit device ${lag.name} is ${lag.lagEntries} entries / ${lag.lagSeconds} s behind (bounds ${bounds.maxLagEntries} entries, ${bounds.maxLagSeconds} s)` +
      (lag.required ? '; it is required: issuance is refused until it catches up' : '');
    const now = this.#clock.now();
    let auditIndex: number | undefined;
    try {
      auditIndex = (
        await this.#append({ ts: now, type: 'alert', decision: lag.required ? 'deny' : 'allow', actor: null, subject: null, code: 'alert', reason: `rule ${rule.name}: ${summary}`, requestId: id, replica: this.#replica })
      ).index;
    } catch (err) {
      this.#onError(err, `recording alert ${rule.name}`);
    }
    if (this.#config.webhookUrl === undefined) return;
    const firedAt = new Date(now).toISOString();
    this.#enqueue({
      type: 'tessera.alert',
      id,
      rule: rule.name,
      kind: 'device-lag',
      key: { device: lag.name },
      mutedForSeconds: muteSeconds,
      firedAt,
      origin: this.#origin,
      replica: this.#replica,
      summary,
      trigger: { index: lag.position, ts: firedAt, type: 'audit-device-lag', actor: null, subject: null, code: 'audit_device_lagging', reason: summary, requestId: id },
      ...(auditIndex !== undefined ? { auditIndex } : {}),
    });
  }

  /**
   * The store lost (or changed) audit history this replica knows (AuditLog.onHistoryLost): POSTs an
   * 'audit-history-lost' alert if a webhook is configured. `knownSize` is the size of the log this
   * replica knows; the trigger names it.
   */
  historyLost(message: string, knownSize: number): void {
    this.#stats.fired++;
    if (this.#closed || this.#config.webhookUrl === undefined) return;
    const id = randomUUID();
    const now = new Date(this.#clock.now()).toISOString();
    this.#enqueue({
      type: 'tessera.alert',
      id,
      rule: 'audit-history-lost',
      kind: 'audit-history-lost',
      key: {},
      mutedForSeconds: 0,
      firedAt: now,
      origin: this.#origin,
      replica: this.#replica,
      summary: message,
      trigger: { index: knownSize, ts: now, type: 'audit-history-lost', actor: null, subject: null, code: 'audit_history_lost', reason: message, requestId: id },
    });
  }

  /**
   * The signing CA `authority` (notAfter `notAfter`) entered the warning window of `windowSeconds`
   * (0: it expired). One firing per CA and window for the whole fleet (the store lock outlives the window).
   */
  async caExpiring(message: string, authority: string, notAfter: number, windowSeconds: number): Promise<void> {
    if (this.#closed) return;
    const id = randomUUID();
    const now = this.#clock.now();
    const muteMs = Math.max(notAfter - now, 0) + 86_400_000;
    if (!(await this.#store.tryLock(`alert-mute:ca-expiring:${authority}:${notAfter}:${windowSeconds}`, id, muteMs))) {
      this.#stats.muted++;
      return;
    }
    this.#stats.fired++;
    let index = -1;
    try {
      const receipt = await this.#append({
        ts: now,
        type: 'alert',
        decision: 'allow',
        actor: null,
        subject: null,
        code: 'ca-expiring',
        reason: message,
        requestId: id,
        replica: this.#replica,
      });
      index = receipt.index;
    } catch (err) {
      this.#onError(err, 'recording the ca-expiring alert');
    }
    if (this.#config.webhookUrl === undefined) return;
    const firedAt = new Date(now).toISOString();
    this.#enqueue({
      type: 'tessera.alert',
      id,
      rule: 'ca-expiring',
      kind: 'ca-expiring',
      key: {},
      mutedForSeconds: Math.ceil(muteMs / 1000),
      firedAt,
      origin: this.#origin,
      replica: this.#replica,
      summary: message,
      trigger: { index, ts: firedAt, type: 'alert', actor: null, subject: null, code: 'ca-expiring', reason: message, requestId: id },
      ...(index >= 0 ? { auditIndex: index } : {}),
    });
  }

  /**
   * The last good bundle of federated trust domain `trustDomain` is `ageSeconds` old, past its
   * relationship's staleAfterSeconds (spiffe/federation.ts). Muted fleet-wide per trust domain for muteSeconds.
   */
  async federationStale(trustDomain: string, ageSeconds: number): Promise<void> {
    if (this.#closed) return;
    const id = randomUUID();
    const now = this.#clock.now();
    const muteMs = Math.max(this.#config.muteSeconds, 1) * 1000;
    if (!(await this.#store.tryLock(`alert-mute:federation-bundle-stale:${trustDomain}`, id, muteMs))) {
      this.#stats.muted++;
      return;
    }
    this.#stats.fired++;
    const message = `the bundle of federated trust domain ${trustDomain} was last refreshed ${ageSeconds} s ago (its endpoint cannot be fetched or does not authenticate); the last good bundle stays in use`;
    let index = -1;
    try {
      const receipt = await this.#append({
        ts: now, type: 'alert', decision: 'allow', actor: null, subject: `spiffe://${trustDomain}`, code: 'federation-bundle-stale', reason: message, requestId: id, replica: this.#replica,
      });
      index = receipt.index;
    } catch (err) {
      this.#onError(err, 'recording the federation-bundle-stale alert');
    }
    if (this.#config.webhookUrl === undefined) return;
    const firedAt = new Date(now).toISOString();
    this.#enqueue({
      type: 'tessera.alert',
      id,
      rule: 'federation-bundle-stale',
      kind: 'federation-bundle-stale',
      key: { trustDomain },
      mutedForSeconds: Math.ceil(muteMs / 1000),
      firedAt,
      origin: this.#origin,
      replica: this.#replica,
      summary: message,
      trigger: { index, ts: firedAt, type: 'alert', actor: null, subject: `spiffe://${trustDomain}`, code: 'federation-bundle-stale', reason: message, requestId: id },
      ...(index >= 0 ? { auditIndex: index } : {}),
    });
  }

  #enqueue(alert: Alert): void {
    if (this.#sendQueue.length >= this.#config.queueLimit) {
      this.#sendQueue.shift();
      this.#stats.dropped++;
      this.#onError(new Error('alert queue full; dropped the oldest alert'), 'alert webhook');
    }
    this.#sendQueue.push(alert);
    this.#pump();
  }

  #pump(): void {
    while (this.#sending < SENDERS && this.#sendQueue.length > 0) {
      const alert = this.#sendQueue.shift() as Alert;
      this.#sending++;
      void this.#deliver(alert).finally(() => {
        this.#sending--;
        this.#pump();
        this.#checkIdle();
      });
    }
  }

  async #deliver(alert: Alert): Promise<void> {
    const body = JSON.stringify(alert);
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#post(body, alert.id);
        this.#stats.delivered++;
        return;
      } catch (err) {
        const retry = err instanceof DeliveryError ? err.retry : true;
        if (!retry || attempt >= this.#config.maxAttempts || this.#abandoned) {
          this.#stats.failed++;
          this.#onError(err, `alert ${alert.id} (${alert.rule}) not delivered after ${attempt} attempt(s)`);
          return;
        }
        this.#stats.retries++;
        const base = Math.min(MAX_BACKOFF_MS, this.#config.retryInitialMs * 2 ** (attempt - 1));
        // Half fixed, half random: replicas retrying the same outage do not stay in lockstep.
        await this.#sleep(base / 2 + Math.random() * (base / 2));
        if (this.#abandoned) {
          this.#stats.failed++;
          this.#onError(err, `alert ${alert.id} (${alert.rule}) not delivered before shutdown`);
          return;
        }
      }
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#wake = this.#wake.filter((w) => w !== done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wake.push(done);
    });
  }

  #post(body: string, id: string): Promise<void> {
    const url = new URL(this.#config.webhookUrl as string);
    const client = url.protocol === 'https:' ? https : http;
    return new Promise<void>((resolve, reject) => {
      const req = client.request(
        url,
        {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(body),
            'user-agent': 'tessera-alerts/1',
            'x-tessera-alert-id': id,
          },
          timeout: this.#config.timeoutMs,
          agent: false,
          ...(url.protocol === 'https:' && this.#ca !== undefined ? { ca: this.#ca } : {}),
        },
        (res) => {
          res.resume();
          const status = res.statusCode ?? 0;
          res.on('end', () => {
            if (status >= 200 && status < 300) resolve();
            else reject(new DeliveryError(`webhook answered ${status}`, status >= 500 || status === 408 || status === 429));
          });
          res.on('error', (err) => reject(new DeliveryError(err.message, true)));
        },
      );
      req.on('timeout', () => req.destroy(new DeliveryError(`webhook did not answer within ${this.#config.timeoutMs} ms`, true)));
      req.on('error', (err) => reject(err instanceof DeliveryError ? err : new DeliveryError(err.message, true)));
      req.end(body);
    });
  }
}
