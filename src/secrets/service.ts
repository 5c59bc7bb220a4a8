/**
 * The secrets path, in the same order as the issuance path: resolve the caller's registered identity,
 * refuse revoked identities, check the grant (default deny), produce the credential under a lease, audit
 * (fail closed: no entry → 503, nothing returned, the credential is rolled back), and only then return.
 * Audit entries carry secret names, lease ids, identities and TTLs — never values or passwords.
 * Nothing here knows about HTTP.
 */
import type { Identity } from '../attest/identity.js';
import { identityFields, type AuditEntry, type AuditEventType } from '../audit/entry.js';
import type { CheckpointedReceipt } from '../audit/checkpointer.js';
import type { AuditLog, AuditReceipt } from '../audit/log.js';
import type { Clock } from '../clock.js';
import type { SecretsConfig } from '../config/config.js';
import { BrokerError, auditUnavailable, auditedOrUnavailable, forbidden } from '../errors.js';
import type { RegistrationPolicy } from '../policy/registration.js';
import type { Store } from '../store/store.js';
import { ENGINE_LABEL, type EngineKind, type EngineLeases, SecretEngines } from './engine.js';
import { EnvelopeError, type KeyRing } from './envelope.js';
import { SecretGrants, type Workload } from './grants.js';
import { SecretKv } from './kv.js';
import { type Lease, type LeaseLogger, LeaseManager, type RevokeContext } from './leases.js';
import { validateRoleName, validateSecretName } from './names.js';
import { RootPasswords } from './root.js';
import { type IdentityRevocations, StoreRevocations } from './revocations.js';

export interface SecretsServiceDeps {
  readonly config: SecretsConfig;
  readonly store: Store;
  readonly clock: Clock;
  readonly audit: AuditLog;
  /** Proves a receipt against a signed checkpoint (the broker's Checkpointer). */
  readonly checkpoint: (receipt: AuditReceipt) => Promise<CheckpointedReceipt>;
  readonly policy: RegistrationPolicy;
  /** The admin revocation list; default StoreRevocations (the same records, read directly). */
  readonly revocations?: IdentityRevocations;
  readonly replicaId: string;
  /** Absent when no KEK is configured: static secrets then answer 503 kek_unavailable. */
  readonly ring?: KeyRing;
  readonly log?: LeaseLogger;
  /** Every failed backend revoke, permanent (revoke_failed) or not: the broker counts them. */
  readonly onRevokeFailure?: (lease: Lease, permanent: boolean) => void;
}

export interface SecretRead {
  readonly name: string;
  /** The plaintext; the caller should zero it once the response is written. */
  readonly value: Buffer;
  readonly lease: Lease;
  readonly audit: CheckpointedReceipt;
}

export interface DbCredentials {
  readonly role: string;
  readonly engine: string;
  readonly username: string;
  readonly password: string;
  readonly lease: Lease;
  readonly audit: CheckpointedReceipt;
}

export interface LeaseChange {
  readonly lease: Lease;
  readonly audit: CheckpointedReceipt;
}

export class SecretsService {
  readonly kv: SecretKv;
  readonly leases: LeaseManager;
  readonly grants: SecretGrants;
  readonly engines: SecretEngines;
  /** Rotated admin passwords of the engines (secrets rotate-root). */
  readonly roots: RootPasswords;
  readonly #d: SecretsServiceDeps;
  readonly #revocations: IdentityRevocations;
  #log: LeaseLogger | undefined;

  constructor(deps: SecretsServiceDeps) {
    this.#d = deps;
    this.#revocations = deps.revocations ?? new StoreRevocations(deps.store);
    this.#log = deps.log;
    this.kv = new SecretKv(deps.store, deps.ring);
    this.grants = new SecretGrants(deps.config.grants);
    // Engines issue under this service's leases (created just below; used only once a request comes).
    const leases: EngineLeases = {
      create: (n) => this.leases.create(n),
      discard: (id) =>
        this.leases.discard(id).catch((e: unknown) => {
          this.#log?.error({ leaseId: id, err: (e as Error).message }, 'could not discard the lease of a failed creation; the sweeper will clear it');
        }),
    };
    this.roots = new RootPasswords(deps.store, deps.ring, deps.replicaId);
    this.engines = SecretEngines.fromConfig(
      deps.config,
      leases,
      (engine, err) => this.#log?.warn({ engine, err: err.message }, 'secrets engine connection error'),
      (engine) => this.roots.source(engine),
    );
    this.leases = new LeaseManager({
      store: deps.store,
      clock: deps.clock,
      record: (entry) => this.#append(entry),
      replicaId: deps.replicaId,
      backends: { postgres: this.engines, mysql: this.engines, redis: this.engines, rabbitmq: this.engines },
      sweepIntervalMs: deps.config.sweepIntervalSeconds * 1000,
      ...(deps.log !== undefined ? { log: deps.log } : {}),
      ...(deps.onRevokeFailure !== undefined ? { onRevokeFailure: deps.onRevokeFailure } : {}),
    });
  }

  setLogger(log: LeaseLogger): void {
    this.#log = log;
    this.leases.setLogger(log);
  }

  /** Starts the lease sweeper (one replica at a time sweeps, through the store lock). */
  start(): void {
    this.leases.start();
    void this.settleRoots();
  }

  /**
   * Resolves admin passwords a crash left pending (root.ts): each is tried, then kept or dropped.
   * Never throws; what it did is logged (never the password).
   */
  async settleRoots(): Promise<void> {
    for (const engine of this.engines.list()) {
      try {
        const outcome = await this.roots.settle(engine);
        if (outcome === 'promoted' || outcome === 'dropped') {
          this.#log?.warn({ engine: engine.name, outcome }, 'a pending admin password rotation was resolved');
        }
      } catch (err) {
        this.#log?.error({ engine: engine.name, err: (err as Error).message }, 'could not check the stored admin password of a secrets engine');
      }
    }
  }

  /** `secrets rotate-root`: a new random admin password for `engineName`, set on the backend and stored sealed. */
  async rotateRoot(engineName: string): Promise<{ engine: string; kind: EngineKind }> {
    const engine = this.engines.get(engineName);
    if (engine === undefined) throw new BrokerError('not_found', `no secrets engine named "${engineName}" is configured`);
    await this.roots.rotate(engine);
    return { engine: engine.name, kind: engine.kind };
  }

  async close(): Promise<void> {
    await this.leases.stop();
    await this.engines.close();
  }

  async #append(entry: AuditEntry): Promise<AuditReceipt> {
    return auditedOrUnavailable(async () => this.#d.audit.append(entry), 'the audit log could not record this request; nothing was issued');
  }

  async #record(entry: AuditEntry): Promise<CheckpointedReceipt> {
    const receipt = await this.#append(entry);
    return auditedOrUnavailable(async () => this.#d.checkpoint(receipt), 'the audit log could not prove this entry; nothing was issued');
  }

  /** Registered and not revoked (under its registered and its presented SPIFFE ID), or a 403. */
  async #authorize(identity: Identity): Promise<Workload> {
    const w = this.#d.policy.workload(identity);
    const ids = identity.spiffeId === w.spiffeId ? [w.spiffeId] : [w.spiffeId, identity.spiffeId];
    const revoked = await Promise.all(ids.map((id) => this.#revocations.isRevoked(id)));
    if (revoked.some(Boolean)) throw forbidden(`identity ${w.spiffeId} has been revoked`);
    return w;
  }

  #entry(identity: Identity, w: Workload, lease: Lease, type: AuditEventType, requestId: string): AuditEntry {
    const now = this.#d.clock.now();
    return {
      ts: now,
      type,
      decision: 'allow',
      actor: null,
      ...identityFields(identity),
      subject: w.spiffeId,
      leaseId: lease.id,
      secret: lease.secret,
      ...(lease.username !== undefined ? { dbUsername: lease.username } : {}),
      ttlMs: Math.max(0, lease.expiresAt - now),
      expiresAt: lease.expiresAt,
      requestId,
      replica: this.#d.replicaId,
    };
  }

  /** GET /v1/secrets/<name>: the decrypted value under a new lease. */
  async readSecret(identity: Identity, name: string, requestId: string): Promise<SecretRead> {
    validateSecretName(name);
    const w = await this.#authorize(identity);
    // The grant is checked before the store is touched: an ungranted caller cannot probe which names exist.
    if (!this.grants.maySecret(w, name)) throw forbidden(`${w.spiffeId} is not granted secret "${name}"`);
    let value: Buffer | undefined;
    try {
      value = await this.kv.get(name);
    } catch (err) {
      if (!(err instanceof EnvelopeError)) throw err;
      if (err.reason === 'unknown-kek') {
        throw new BrokerError('kek_unavailable', `${err.message}; add it to secrets.oldKekFiles or finish the KEK rotation`, { cause: err });
      }
      this.#log?.error({ secret: name, requestId }, `secret integrity check FAILED: ${err.message}`);
      throw new BrokerError(
        'secret_integrity_failed',
        `secret "${name}" failed its integrity check and is not served: the stored ciphertext was modified or is corrupt; an operator must write it again`,
        { cause: err },
      );
    }
    if (value === undefined) throw new BrokerError('not_found', `no secret named "${name}"`);
    const cfg = this.#d.config;
    try {
      const lease = await this.leases.create({
        kind: 'kv',
        identity: w.spiffeId,
        secret: name,
        ttlMs: cfg.leaseDefaultTtlSeconds * 1000,
        maxTtlMs: cfg.leaseMaxTtlSeconds * 1000,
      });
      let audit: CheckpointedReceipt;
      try {
        audit = await this.#record(this.#entry(identity, w, lease, 'secret.issued', requestId));
      } catch (err) {
        await this.leases.discard(lease.id).catch(() => undefined);
        throw err;
      }
      return { name, value, lease, audit };
    } catch (err) {
      value.fill(0);
      throw err;
    }
  }

  /** POST /v1/secrets/postgres/<role>/creds: a fresh PostgreSQL role under a new lease. */
  async postgresCredentials(identity: Identity, role: string, ttlSeconds: number | undefined, requestId: string): Promise<DbCredentials> {
    return this.credentials('postgres', identity, role, ttlSeconds, requestId);
  }

  /** POST /v1/secrets/<kind>/<role>/creds: a fresh credential from an engine of `kind` under a new lease. */
  async credentials(kind: EngineKind, identity: Identity, role: string, ttlSeconds: number | undefined, requestId: string): Promise<DbCredentials> {
    validateRoleName(role);
    const label = ENGINE_LABEL[kind];
    const w = await this.#authorize(identity);
    if (!this.grants.mayRole(w, kind, role)) throw forbidden(`${w.spiffeId} is not granted ${label} role "${role}"`);
    const engine = this.engines.forRole(role, kind);
    const cfg = engine?.role(role);
    if (engine === undefined || cfg === undefined) throw new BrokerError('not_found', `no ${label} role "${role}" is configured`);
    const ttl = Math.min(ttlSeconds ?? cfg.ttlSeconds, cfg.maxTtlSeconds);
    const { credential, lease } = await engine.issue(role, w.spiffeId, ttl);
    let audit: CheckpointedReceipt;
    try {
      audit = await this.#record(this.#entry(identity, w, lease, 'secret.issued', requestId));
    } catch (err) {
      // Unaudited credentials must not exist: drop the role now, or leave the lease to the sweeper.
      try {
        await engine.revoke(lease);
        await this.leases.discard(lease.id);
      } catch (e) {
        this.#log?.error({ leaseId: lease.id, err: (e as Error).message }, 'could not roll back unaudited credentials; the sweeper drops them at expiry');
      }
      throw err;
    }
    return { role, engine: engine.name, ...credential, lease, audit };
  }

  /** The caller's own lease, or 404 / 403. */
  async #ownLease(w: Workload, leaseId: string): Promise<Lease> {
    const lease = await this.leases.get(leaseId);
    if (lease === undefined) throw new BrokerError('not_found', `no lease ${leaseId} (unknown, expired or revoked)`);
    if (lease.identity !== w.spiffeId) throw forbidden(`lease ${leaseId} is held by another identity`);
    return lease;
  }

  /** POST /v1/leases/<id>/renew: extends the caller's lease, never beyond its max TTL. */
  async renewLease(identity: Identity, leaseId: string, ttlSeconds: number | undefined, requestId: string): Promise<LeaseChange> {
    const w = await this.#authorize(identity);
    const lease = await this.#ownLease(w, leaseId);
    const cfg = this.#d.config;
    const roleTtl = lease.role !== undefined ? this.engines.forRole(lease.role)?.role(lease.role)?.ttlSeconds : undefined;
    const ttl = ttlSeconds ?? roleTtl ?? cfg.leaseDefaultTtlSeconds;
    const renewed = await this.leases.renew(lease, ttl * 1000);
    const audit = await this.#record(this.#entry(identity, w, renewed, 'lease.renewed', requestId));
    return { lease: renewed, audit };
  }

  /**
   * POST /v1/leases/<id>/revoke: the holder ends its lease (a revoked identity may still do this: it
   * only takes access away). If the engine cannot drop the credential now, the broker keeps retrying
   * and the caller gets 503; if the engine refused for a reason retrying cannot fix, the lease is
   * revoke_failed (operators are alerted) and the caller gets 502 revoke_failed.
   */
  async revokeLease(identity: Identity, leaseId: string, requestId: string): Promise<LeaseChange> {
    const w = this.#d.policy.workload(identity);
    const lease = await this.#ownLease(w, leaseId);
    const outcome = await this.leases.revoke(lease, { actor: identity.spiffeId, requestId, reason: 'revoked by holder' });
    if (!outcome.revoked && outcome.lease.state === 'revoke_failed') {
      throw new BrokerError(
        'revoke_failed',
        `lease ${leaseId} could not be revoked (${outcome.error}); the lease is kept as revoke_failed, operators are alerted, and the broker tries again hourly`,
      );
    }
    if (!outcome.revoked) {
      throw new BrokerError(
        'engine_unavailable',
        `lease ${leaseId} could not be revoked right now (${outcome.error}); the broker keeps retrying until it is`,
      );
    }
    if (outcome.audit === undefined) throw auditUnavailable('the revocation was not recorded');
    return { lease: outcome.lease, audit: await this.#d.checkpoint(outcome.audit) };
  }

  /**
   * Revokes every lease an identity holds — what the admin API calls when it revokes a SPIFFE ID.
   * Leases the engine cannot drop right now are listed in `pending` and retried by the sweeper.
   */
  async revokeIdentity(spiffeId: string, ctx: RevokeContext): Promise<{ revoked: string[]; pending: { id: string; error: string }[] }> {
    return this.leases.revokeIdentity(spiffeId, ctx);
  }

  /** Revokes every lease held by an identity in namespace `ns` (default-shaped IDs: spiffe://td/ns/<ns>/…). */
  async revokeNamespace(ns: string, ctx: RevokeContext): Promise<{ revoked: string[]; pending: { id: string; error: string }[] }> {
    return this.leases.revokeMatching((l) => /^spiffe:\/\/[^/]+\/ns\/([^/]+)(\/|$)/.exec(l.identity)?.[1] === ns, ctx);
  }

  /** Records a refused secrets request (with the secret name or lease id, never a value). */
  async recordDenial(
    requested: AuditEventType,
    error: BrokerError,
    identity: Identity | undefined,
    requestId: string,
    about: { secret?: string; leaseId?: string } = {},
  ): Promise<void> {
    await this.#append({
      ts: this.#d.clock.now(),
      type: 'denial',
      decision: 'deny',
      actor: null,
      ...(identity !== undefined ? identityFields(identity) : {}),
      subject: null,
      ...(about.secret !== undefined ? { secret: about.secret } : {}),
      ...(about.leaseId !== undefined ? { leaseId: about.leaseId } : {}),
      code: error.code,
      reason: `${requested}: ${error.message}`,
      requestId,
      replica: this.#d.replicaId,
    });
  }
}
