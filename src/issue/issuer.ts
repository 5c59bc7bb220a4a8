/**
 * The issuance path: policy decides, the CA mints, the audit log records, and only then does the
 * credential leave. Denials are recorded too. Nothing here knows about HTTP.
 */
import type { Identity } from '../attest/identity.js';
import type { JwtSvidSigner } from '../ca/jwt-svid.js';
import type { ServerKeyType, X509Minter } from '../ca/minter.js';
import type { Clock } from '../clock.js';
import { BrokerError, auditedOrUnavailable } from '../errors.js';
import { identityFields, type AuditEntry, type AuditEventType } from '../audit/entry.js';
import type { CheckpointedReceipt, Checkpointer } from '../audit/checkpointer.js';
import type { AppendCondition, AuditLog } from '../audit/log.js';
import type { RegistrationPolicy } from '../policy/registration.js';

export type { ServerKeyType } from '../ca/minter.js';

export interface X509Request {
  readonly csr?: string;
  readonly keyType?: ServerKeyType;
  readonly ttlSeconds?: number;
  /** Which SPIFFE ID, when several registration entries match the caller. */
  readonly spiffeId?: string;
}

export interface X509Issued {
  readonly spiffeId: string;
  readonly serial: string;
  readonly certificates: readonly string[];
  readonly notBefore: number;
  readonly expiresAt: number;
  readonly privateKey?: string;
  /** Foreign trust domains whose bundles go with this SVID (its registration entry's federatesWith). */
  readonly federatesWith: readonly string[];
  readonly audit: CheckpointedReceipt;
}

export interface JwtRequest {
  readonly audience: readonly string[];
  readonly ttlSeconds?: number;
  /** Which SPIFFE ID, when several registration entries match the caller. */
  readonly spiffeId?: string;
}

export interface JwtIssued {
  readonly spiffeId: string;
  readonly token: string;
  readonly jti: string;
  readonly audience: readonly string[];
  readonly expiresAt: number;
  readonly audit: CheckpointedReceipt;
}

export interface IssuerDeps {
  /** Verifies the CSR (or makes the key), mints and signs: on minting threads in the broker. */
  readonly minter: X509Minter;
  /** Signs with the JWT-SVID key active at the moment (CA rotation may switch it). */
  readonly jwt: Pick<JwtSvidSigner, 'sign'>;
  readonly policy: RegistrationPolicy;
  readonly audit: AuditLog;
  /** Signs (or finds) the checkpoint each issuance receipt is proven against. */
  readonly checkpoints: Checkpointer;
  readonly clock: Clock;
  readonly replicaId: string;
  /**
   * Revocations and the issuance freeze (admin/guard.ts), checked for the credential about to be
   * minted. Optional only so the issuer can be built alone in benchmarks; the broker always sets it.
   */
  readonly guard?: IssuanceGuard;
  /** audit.requireWitnesses: throws 503 witness_quorum_unavailable while the witnesses lag (audit/witnesses.ts). */
  readonly witnessGate?: { assertWitnessed(): void };
}

/**
 * What must hold for a credential to leave: the condition on its audit append (no revocation, no
 * freeze), whose refusal is 403 `revoked` or 503 `issuance_frozen` (admin/guard.ts).
 */
export interface IssuanceGuard {
  issuanceCondition(subject: { spiffeId: string; namespace?: string }): AppendCondition;
}

export class Issuer {
  /** X.509 and JWT issuances between their start and their answer (a lone one mints inline). */
  #issuing = 0;

  constructor(private readonly deps: IssuerDeps) {}

  private async record(entry: AuditEntry, condition: AppendCondition | undefined): Promise<CheckpointedReceipt> {
    // The condition's own refusal (revoked, frozen) passes through as it is; every other failure is a 503.
    let refused: BrokerError | undefined;
    const watched: AppendCondition | undefined =
      condition === undefined ? undefined : { unless: condition.unless, refusal: (values) => (refused = condition.refusal(values)) };
    try {
      return await auditedOrUnavailable(
        async () => this.deps.checkpoints.appendForReceipt(entry, watched),
        'the audit log could not record this request; nothing was issued',
      );
    } catch (err) {
      if (refused !== undefined && err instanceof BrokerError && err.cause === refused) throw refused;
      throw err;
    }
  }

  /** Records without waiting for a checkpoint: a denial returns no receipt, so it need not wait. */
  private async recordOnly(entry: AuditEntry): Promise<void> {
    await auditedOrUnavailable(async () => this.deps.audit.append(entry), 'the audit log could not record this request; nothing was issued');
  }

  /**
   * Kill switch and revocations for the ID being issued, in the namespace policy resolved for it: a
   * condition the store checks in the same atomic step as the audit append (after minting, before the
   * credential leaves), so nothing is handed out for an ID revoked or frozen before its entry.
   */
  private guarded(grant: { spiffeId: string; namespace: string }): AppendCondition | undefined {
    this.deps.witnessGate?.assertWitnessed();
    return this.deps.guard?.issuanceCondition({ spiffeId: grant.spiffeId, namespace: grant.namespace });
  }

  async x509(identity: Identity, req: X509Request, requestId: string): Promise<X509Issued> {
    this.#issuing++;
    try {
      return await this.#x509(identity, req, requestId);
    } finally {
      this.#issuing--;
    }
  }

  async #x509(identity: Identity, req: X509Request, requestId: string): Promise<X509Issued> {
    const grant = this.deps.policy.x509(identity, req.ttlSeconds, req.spiffeId);
    const condition = this.guarded(grant);
    const now = this.deps.clock.now();
    const svid = await this.deps.minter.mint({
      key: req.csr !== undefined ? { csrPem: req.csr } : { generate: req.keyType ?? 'ec-p256' },
      spiffeId: grant.spiffeId,
      dnsNames: grant.dnsNames,
      ttlMs: grant.ttlMs,
      now,
    }, { alone: this.#issuing === 1 });
    const receipt = await this.record({
      ts: now,
      type: 'x509-svid.issued',
      decision: 'allow',
      actor: null,
      ...identityFields(identity),
      subject: svid.spiffeId,
      serial: svid.serialHex,
      ttlMs: svid.notAfter - now,
      expiresAt: svid.notAfter,
      keyFingerprint: svid.keyFingerprint,
      ...(svid.privateKeyPem !== undefined ? { reason: 'server-generated key' } : {}),
      entryId: grant.entryId,
      selectors: [...grant.selectors],
      requestId,
      replica: this.deps.replicaId,
    }, condition);
    return {
      spiffeId: svid.spiffeId,
      serial: svid.serialHex,
      certificates: svid.chainPem,
      notBefore: svid.notBefore,
      expiresAt: svid.notAfter,
      ...(svid.privateKeyPem !== undefined ? { privateKey: svid.privateKeyPem } : {}),
      federatesWith: grant.federatesWith,
      audit: receipt,
    };
  }

  async jwt(identity: Identity, req: JwtRequest, requestId: string): Promise<JwtIssued> {
    this.#issuing++;
    try {
      return await this.#jwt(identity, req, requestId);
    } finally {
      this.#issuing--;
    }
  }

  async #jwt(identity: Identity, req: JwtRequest, requestId: string): Promise<JwtIssued> {
    const grant = this.deps.policy.jwt(identity, req.audience, req.ttlSeconds, req.spiffeId);
    const condition = this.guarded(grant);
    const now = this.deps.clock.now();
    const svid = await this.deps.jwt.sign({ spiffeId: grant.spiffeId, audiences: grant.audiences, ttlMs: grant.ttlMs, now });
    const receipt = await this.record({
      ts: now,
      type: 'jwt-svid.issued',
      decision: 'allow',
      actor: null,
      ...identityFields(identity),
      subject: grant.spiffeId,
      jti: svid.jti,
      audience: [...grant.audiences],
      entryId: grant.entryId,
      selectors: [...grant.selectors],
      ttlMs: svid.expiresAt - now,
      expiresAt: svid.expiresAt,
      requestId,
      replica: this.deps.replicaId,
    }, condition);
    return {
      spiffeId: grant.spiffeId,
      token: svid.token,
      jti: svid.jti,
      audience: grant.audiences,
      expiresAt: svid.expiresAt,
      audit: receipt,
    };
  }

  /** Records a refused request. The error's message goes in as the reason; it never holds secrets. */
  async recordDenial(
    requested: AuditEventType,
    error: BrokerError,
    identity: Identity | undefined,
    requestId: string,
  ): Promise<void> {
    await this.recordOnly({
      ts: this.deps.clock.now(),
      type: 'denial',
      decision: 'deny',
      actor: null,
      ...(identity !== undefined ? identityFields(identity) : {}),
      subject: null,
      code: error.code,
      reason: `${requested}: ${error.message}`,
      requestId,
      replica: this.deps.replicaId,
    });
  }
}
