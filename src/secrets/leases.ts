/**
 * Leases: every secret handed out is tied to a lease in the Store (space "lease", key = lease id), so
 * leases survive restarts and every replica sees the same ones.
 *
 *   create → (renew …) → revoke  (by its holder, by revokeIdentity, or by the sweeper once expired)
 *
 * A revoke first marks the lease "revoking", then asks the backend (PostgreSQL: drop the role), then
 * deletes the record and audits it. If the backend fails, the lease is kept with the error and a
 * next-attempt time, and every failure is audited, logged and counted — a lease is never dropped while
 * its credential may still work:
 *   - a transient failure (engine_unavailable: unreachable, timeout) keeps it "revoking"; the sweeper
 *     retries with exponential backoff up to MAX_RETRY_DELAY_MS;
 *   - a permanent one (BrokerError revoke_failed: e.g. the admin lacks a privilege) marks it
 *     "revoke_failed": retrying every few minutes cannot help, so the sweeper only tries again every
 *     PERMANENT_RETRY_DELAY_MS (it heals itself once an operator fixes the cause), and the failure
 *     entry ('lease.revoke-failed', code revoke_failed) is what the alert rule kind 'revoke-failed' fires on.
 *
 * The sweeper runs on one replica at a time (Store.tryLock), looks for expired and failed leases
 * every interval, and handles at most SWEEP_BATCH per run so one run stays short.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { AuditEntry } from '../audit/entry.js';
import type { AuditReceipt } from '../audit/log.js';
import type { Clock } from '../clock.js';
import Type, { type Static } from 'typebox';
import { BrokerError } from '../errors.js';
import { recordParser, SafeInteger } from '../records.js';
import type { Store } from '../store/store.js';

export const LEASE_SPACE = 'lease';
export const SWEEPER_LOCK = 'secrets.lease-sweeper';
/** Leases handled per sweep run; the rest wait for the next run. */
export const SWEEP_BATCH = 100;
/** Longest wait between two revoke attempts of one lease. */
export const MAX_RETRY_DELAY_MS = 5 * 60_000;
/** Wait between two attempts of a lease whose revoke failed permanently (state revoke_failed). */
export const PERMANENT_RETRY_DELAY_MS = 60 * 60_000;

const LEASE_ID_PATTERN = '^[0-9a-f]{32}$';
const Str = Type.Optional(Type.String());

/** A lease as stored (space "lease", JSON). */
const LeaseSchema = Type.Object({
  v: Type.Literal(1),
  /** 128 random bits, hex. */
  id: Type.String({ pattern: LEASE_ID_PATTERN }),
  kind: Type.Enum(['kv', 'postgres', 'mysql', 'redis', 'rabbitmq']),
  /** Registered SPIFFE ID holding the lease: the only identity that may renew or revoke it. */
  identity: Type.String(),
  /** Static secret name, or "<engine kind>/<role>" (postgres/reporting, mysql/reporting). */
  secret: Type.String(),
  /** Dynamic credentials: the engine, its role template and the database role that was created. */
  engine: Str,
  role: Str,
  username: Str,
  issuedAt: SafeInteger(),
  expiresAt: SafeInteger(),
  /** expiresAt can be renewed up to here, never beyond. */
  maxExpiresAt: SafeInteger(),
  /** revoke_failed: the backend refused the revoke for a reason retrying cannot fix (see the header). */
  state: Type.Enum(['active', 'revoking', 'revoke_failed']),
  /** Failed revoke attempts, the last failure (never secret material) and when to try again. */
  attempts: SafeInteger(),
  lastError: Str,
  nextAttemptAt: Type.Optional(SafeInteger()),
  revokeReason: Str,
});
export type Lease = Readonly<Static<typeof LeaseSchema>>;
export type LeaseKind = Lease['kind'];
export type LeaseState = Lease['state'];

/** What renewing and revoking a lease means outside the store (dynamic engines). */
export interface LeaseBackend {
  renew(lease: Lease, expiresAt: number): Promise<void>;
  revoke(lease: Lease): Promise<void>;
}

export interface LeaseLogger {
  warn(obj: Record<string, unknown>, msg: string): void;
  error(obj: Record<string, unknown>, msg: string): void;
}

/** Who asked for a revoke and why (for the audit entry). `actor` is a SPIFFE ID, or null for the broker itself. */
export interface RevokeContext {
  readonly actor: string | null;
  readonly requestId: string;
  readonly reason: string;
}

export type RevokeOutcome =
  | { readonly revoked: true; readonly lease: Lease; readonly audit?: AuditReceipt }
  | { readonly revoked: false; readonly lease: Lease; readonly error: string };

export interface SweepReport {
  /** False when another replica holds the sweeper lock (nothing was done). */
  readonly ran: boolean;
  readonly revoked: readonly string[];
  readonly failed: readonly { readonly id: string; readonly error: string }[];
}

export interface LeaseManagerDeps {
  readonly store: Store;
  readonly clock: Clock;
  /** Appends an audit entry (fail closed: rejects with a 503 BrokerError if it cannot). */
  readonly record: (entry: AuditEntry) => Promise<AuditReceipt>;
  readonly replicaId: string;
  readonly backends: Partial<Record<LeaseKind, LeaseBackend>>;
  readonly sweepIntervalMs: number;
  readonly log?: LeaseLogger;
  /** Called for every failed backend revoke (the broker counts them in a metric). */
  readonly onRevokeFailure?: (lease: Lease, permanent: boolean) => void;
}

const LEASE_ID = new RegExp(LEASE_ID_PATTERN);

export function isLeaseId(id: string): boolean {
  return typeof id === 'string' && LEASE_ID.test(id);
}

const parseLeaseRecord = recordParser(LeaseSchema);

/** Parses a stored lease, or undefined if the record is not one (reported by the caller). */
export function parseLease(text: string): Lease | undefined {
  const parsed = parseLeaseRecord(text);
  if (!parsed.ok) return undefined;
  const lease = parsed.value;
  // Dynamic credentials cannot be revoked without knowing where and which role.
  if (lease.kind !== 'kv' && (lease.engine === undefined || lease.username === undefined)) return undefined;
  return lease;
}

export interface NewLease {
  readonly kind: LeaseKind;
  readonly identity: string;
  readonly secret: string;
  readonly engine?: string;
  readonly role?: string;
  readonly username?: string;
  readonly ttlMs: number;
  readonly maxTtlMs: number;
}

export class LeaseManager {
  readonly #d: LeaseManagerDeps;
  /** Unique per process, so two replicas configured with the same replicaId still exclude each other. */
  readonly #owner: string;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<unknown> | undefined;
  #stopped = false;
  #log: LeaseLogger | undefined;

  constructor(deps: LeaseManagerDeps) {
    this.#d = deps;
    this.#owner = `${deps.replicaId}/${randomUUID()}`;
    this.#log = deps.log;
  }

  /** Where sweeper failures are logged (the server attaches its logger). */
  setLogger(log: LeaseLogger): void {
    this.#log = log;
  }

  async get(id: string): Promise<Lease | undefined> {
    if (!isLeaseId(id)) return undefined;
    const text = await this.#d.store.kvGet(LEASE_SPACE, id);
    if (text === undefined) return undefined;
    const lease = parseLease(text);
    if (lease === undefined || lease.id !== id) {
      this.#log?.error({ leaseId: id }, 'lease record is unreadable');
      throw new BrokerError('internal', `lease ${id} is unreadable`);
    }
    return lease;
  }

  /** Every lease in the store (unreadable records are logged and left alone). */
  async list(): Promise<Lease[]> {
    const out: Lease[] = [];
    for (const { key, value } of await this.#d.store.kvList(LEASE_SPACE)) {
      const lease = parseLease(value);
      if (lease === undefined || lease.id !== key) this.#log?.error({ leaseId: key }, 'lease record is unreadable');
      else out.push(lease);
    }
    return out;
  }

  /** Leases whose revocation has failed at least once (state revoking or revoke_failed). */
  async failedRevocations(): Promise<Lease[]> {
    return (await this.list()).filter((l) => l.state !== 'active' && l.attempts > 0);
  }

  async #put(lease: Lease): Promise<void> {
    // Static-secret leases need no action at expiry, so the store may forget them then; dynamic ones
    // stay until the sweeper has revoked their credential.
    const storeExpiry = lease.kind === 'kv' && lease.state === 'active' ? lease.expiresAt : undefined;
    await this.#d.store.kvPut(LEASE_SPACE, lease.id, JSON.stringify(lease), storeExpiry);
  }

  /** Records a new active lease (before the credential exists, so a crash never leaves one untracked). */
  async create(n: NewLease): Promise<Lease> {
    const now = this.#d.clock.now();
    const maxExpiresAt = now + n.maxTtlMs;
    const lease: Lease = {
      v: 1,
      id: randomBytes(16).toString('hex'),
      kind: n.kind,
      identity: n.identity,
      secret: n.secret,
      ...(n.engine !== undefined ? { engine: n.engine } : {}),
      ...(n.role !== undefined ? { role: n.role } : {}),
      ...(n.username !== undefined ? { username: n.username } : {}),
      issuedAt: now,
      expiresAt: Math.min(now + n.ttlMs, maxExpiresAt),
      maxExpiresAt,
      state: 'active',
      attempts: 0,
    };
    await this.#put(lease);
    return lease;
  }

  /** Forgets a lease whose credential was never handed out (creation failed and was rolled back). */
  async discard(id: string): Promise<void> {
    await this.#d.store.kvDelete(LEASE_SPACE, id);
  }

  /**
   * Extends an active, unexpired lease to now + ttl, capped at its maxExpiresAt; the backend first
   * (so the credential never outlives what the store says), then the record.
   */
  async renew(lease: Lease, ttlMs: number): Promise<Lease> {
    const now = this.#d.clock.now();
    if (lease.state !== 'active') throw new BrokerError('not_found', `lease ${lease.id} is being revoked`);
    if (lease.expiresAt <= now) throw new BrokerError('not_found', `lease ${lease.id} has expired; request a new credential`);
    const expiresAt = Math.min(now + ttlMs, lease.maxExpiresAt);
    await this.#d.backends[lease.kind]?.renew(lease, expiresAt);
    const renewed: Lease = { ...lease, expiresAt };
    await this.#put(renewed);
    return renewed;
  }

  /**
   * Revokes one lease. Store errors reject (nothing changed, or the lease stays "revoking" for the
   * sweeper); a backend failure resolves `{revoked: false}` after recording the attempt — the sweeper
   * retries it. On success the lease is deleted and a 'lease.revoked' entry is appended.
   */
  async revoke(lease: Lease, ctx: RevokeContext): Promise<RevokeOutcome> {
    const marked: Lease = lease.state !== 'active' ? lease : { ...lease, state: 'revoking', revokeReason: ctx.reason };
    if (marked !== lease) await this.#put(marked);
    try {
      await this.#d.backends[lease.kind]?.revoke(marked);
    } catch (err) {
      return this.#revokeFailed(marked, ctx, err);
    }
    await this.#d.store.kvDelete(LEASE_SPACE, lease.id);
    const now = this.#d.clock.now();
    const audit = await this.#d.record({
      ts: now,
      type: 'lease.revoked',
      decision: 'allow',
      actor: ctx.actor,
      subject: lease.identity,
      leaseId: lease.id,
      secret: lease.secret,
      ...(lease.username !== undefined ? { dbUsername: lease.username } : {}),
      ttlMs: Math.max(0, lease.expiresAt - lease.issuedAt),
      expiresAt: lease.expiresAt,
      reason: ctx.reason,
      requestId: ctx.requestId,
      replica: this.#d.replicaId,
    });
    return { revoked: true, lease: marked, audit };
  }

  async #revokeFailed(lease: Lease, ctx: RevokeContext, err: unknown): Promise<RevokeOutcome> {
    const now = this.#d.clock.now();
    const attempts = lease.attempts + 1;
    const permanent = err instanceof BrokerError && err.code === 'revoke_failed';
    const delay = permanent
      ? PERMANENT_RETRY_DELAY_MS
      : Math.min(MAX_RETRY_DELAY_MS, this.#d.sweepIntervalMs * 2 ** Math.min(attempts - 1, 16));
    const error = err instanceof Error ? err.message : String(err);
    const failed: Lease = { ...lease, state: permanent ? 'revoke_failed' : 'revoking', attempts, lastError: error, nextAttemptAt: now + delay };
    try {
      this.#d.onRevokeFailure?.(failed, permanent);
    } catch {
      // A metrics hook must never change the outcome of a revoke.
    }
    if (permanent) {
      this.#log?.error(
        { leaseId: lease.id, secret: lease.secret, attempts, error, retryInMs: delay },
        'lease revoke failed permanently (revoke_failed); an operator must fix the cause',
      );
    } else {
      this.#log?.warn({ leaseId: lease.id, secret: lease.secret, attempts, error, retryInMs: delay }, 'lease revoke failed; it will be retried');
    }
    try {
      await this.#put(failed);
    } catch (putErr) {
      this.#log?.error({ leaseId: lease.id, err: (putErr as Error).message }, 'could not record a failed revoke; the sweeper will retry');
    }
    try {
      await this.#d.record({
        ts: now,
        type: 'lease.revoke-failed',
        decision: 'allow',
        actor: ctx.actor,
        subject: lease.identity,
        leaseId: lease.id,
        secret: lease.secret,
        ...(lease.username !== undefined ? { dbUsername: lease.username } : {}),
        expiresAt: lease.expiresAt,
        code: err instanceof BrokerError ? err.code : 'engine_unavailable',
        reason: `${ctx.reason}: attempt ${attempts} failed${permanent ? ' permanently' : ''} (${error}); retrying in ${Math.round(delay / 1000)} s`,
        requestId: ctx.requestId,
        replica: this.#d.replicaId,
      });
    } catch (auditErr) {
      this.#log?.error({ leaseId: lease.id, err: (auditErr as Error).message }, 'could not audit a failed revoke');
    }
    return { revoked: false, lease: failed, error };
  }

  /**
   * Revokes every lease one identity holds (the admin API calls this when it revokes an identity).
   * Leases whose backend refuses stay "revoking" and are retried by the sweeper; they are listed in
   * `pending` so the caller can report them.
   */
  async revokeIdentity(spiffeId: string, ctx: RevokeContext): Promise<{ revoked: string[]; pending: { id: string; error: string }[] }> {
    return this.revokeMatching((l) => l.identity === spiffeId, ctx);
  }

  /** Like revokeIdentity, for any selection (e.g. every SPIFFE ID below a namespace). */
  async revokeMatching(
    match: (lease: Lease) => boolean,
    ctx: RevokeContext,
  ): Promise<{ revoked: string[]; pending: { id: string; error: string }[] }> {
    const revoked: string[] = [];
    const pending: { id: string; error: string }[] = [];
    for (const lease of (await this.list()).filter(match)) {
      let outcome: RevokeOutcome;
      try {
        outcome = await this.revoke(lease, ctx);
      } catch (err) {
        // The backend revoke may have happened; the record says "revoking", so the sweeper finishes it.
        pending.push({ id: lease.id, error: (err as Error).message });
        continue;
      }
      if (outcome.revoked) revoked.push(lease.id);
      else pending.push({ id: lease.id, error: outcome.error });
    }
    return { revoked, pending };
  }

  /** One sweeper pass: revokes expired leases and retries failed revokes that are due. */
  async sweepOnce(): Promise<SweepReport> {
    const lockTtl = Math.max(3 * this.#d.sweepIntervalMs, 30_000);
    if (!(await this.#d.store.tryLock(SWEEPER_LOCK, this.#owner, lockTtl))) return { ran: false, revoked: [], failed: [] };
    const now = this.#d.clock.now();
    const due = (await this.list())
      .filter((l) => (l.state === 'active' ? l.expiresAt <= now : (l.nextAttemptAt ?? 0) <= now))
      .sort((a, b) => a.expiresAt - b.expiresAt)
      .slice(0, SWEEP_BATCH);
    const revoked: string[] = [];
    const failed: { id: string; error: string }[] = [];
    for (const lease of due) {
      if (this.#stopped) break;
      const ctx: RevokeContext = {
        actor: null,
        requestId: `sweep-${randomUUID()}`,
        reason: lease.state === 'active' ? 'expired' : `retry: ${lease.revokeReason ?? 'revoke'}`,
      };
      try {
        const outcome = await this.revoke(lease, ctx);
        if (outcome.revoked) revoked.push(lease.id);
        else failed.push({ id: lease.id, error: outcome.error });
      } catch (err) {
        // Store or audit trouble: the lease is still there (or already gone); the next pass looks again.
        this.#log?.error({ leaseId: lease.id, err: (err as Error).message }, 'sweeper could not finish a revoke');
        failed.push({ id: lease.id, error: (err as Error).message });
      }
    }
    return { ran: true, revoked, failed };
  }

  /** Starts the periodic sweeper (one pass at a time; the timer does not keep the process alive). */
  start(): void {
    if (this.#timer !== undefined || this.#stopped) return;
    const tick = (): void => {
      this.#running = this.sweepOnce()
        .catch((err: unknown) => this.#log?.error({ err: (err as Error).message }, 'lease sweep failed'))
        .finally(() => {
          this.#running = undefined;
          if (!this.#stopped) this.#timer = setTimeout(tick, this.#d.sweepIntervalMs).unref();
        });
    };
    this.#timer = setTimeout(tick, this.#d.sweepIntervalMs).unref();
  }

  /** Stops the sweeper, waits for a running pass, and releases the lock for another replica. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running;
    try {
      await this.#d.store.unlock(SWEEPER_LOCK, this.#owner);
    } catch {
      // The lock expires on its own.
    }
  }
}
