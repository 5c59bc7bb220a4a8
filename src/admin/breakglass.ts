/**
 * Break-glass: the emergency way in. A request (breakglass-jws.ts) signed offline by M of this
 * deployment's N break-glass keys is redeemed once for a short-lived credential — an admin-role
 * X.509 certificate from the admin CA, or one secret under a lease — and can never be used quietly:
 *
 *   verify signatures (M of N, EdDSA) → claims → freshness (≤ 5 min old) → consume the jti in the
 *   Store (atomic: a replay fails on every replica) → mint, capped at breakGlass.maxTtlSeconds (≤ 15
 *   min) → critical audit entry (type 'break-glass'; the alert rule fires on it) → event record → return.
 *
 * Failed attempts are audited and recorded as events too (they also fire the alert). Failures with no
 * valid deployment-key signature (junk anyone can send) are capped per minute across the fleet
 * (breakGlass.maxFailuresPerMinute) so they cannot flood the log: past the cap one summary entry is
 * written and further junk that minute is refused without an entry each. An attempt carrying at least
 * one valid deployment-key signature is never capped (nor counted): a genuine key in use must not hide
 * in noise, so it always gets its own entry and alert. A valid request is never held back by the cap.
 *
 * The request itself (the JWS) is never stored or logged: entries carry reason, ticket, grant and key ids.
 */
import type { KeyObject } from 'node:crypto';
import type { AuditEntry } from '../audit/entry.js';
import type { CheckpointedReceipt, Checkpointer } from '../audit/checkpointer.js';
import type { AuditLog } from '../audit/log.js';
import type { CertificateAuthority } from '../ca/authority.js';
import { parseCsrPem } from '../ca/csr.js';
import type { Clock } from '../clock.js';
import type { AdminRole, BreakGlassConfig } from '../config/config.js';
import { BrokerError, auditedOrUnavailable, badRequest } from '../errors.js';
import type { Store } from '../store/store.js';
import {
  type BreakGlassClaims,
  type BreakGlassKey,
  loadBreakGlassKeys,
  MAX_GRANT_TTL_SECONDS,
  MAX_REQUEST_AGE_SECONDS,
  verifyBreakGlassRequest,
} from './breakglass-jws.js';
import { ADMIN_ROLES, BREAK_GLASS_GRANT_SPACE, type BreakGlassGrantRecord } from './principals.js';
import { normalizeSerial } from './revocation.js';

export const BREAK_GLASS_EVENT_SPACE = 'break-glass-event';
/** Failed attempts stay listed this long (the audit log keeps them for good). */
const FAILURE_EVENT_TTL_MS = 24 * 3600_000;

/** Hands out one secret under a lease for break-glass (adapter over the secrets module). */
export interface BreakGlassSecrets {
  issue(name: string, holder: string, ttlMs: number): Promise<{ value: Buffer; leaseId: string; expiresAt: number }>;
  /** Forgets a lease whose secret was never returned (the audit entry could not be written). */
  discard(leaseId: string): Promise<void>;
}

export interface BreakGlassDeps {
  readonly config: BreakGlassConfig;
  readonly trustDomain: string;
  readonly store: Store;
  readonly audit: AuditLog;
  readonly checkpoints: Checkpointer;
  readonly clock: Clock;
  readonly replicaId: string;
  /** The admin CA signer (admin-role grants). */
  readonly adminCa?: CertificateAuthority;
  readonly secrets?: BreakGlassSecrets;
  /** Makes a key pair when the request sends no CSR. */
  readonly generateKey: () => Promise<{ publicKey: KeyObject; privateKeyPem: string }>;
}

/** One use or failed attempt, as GET /v1/admin/break-glass/events lists it. */
export interface BreakGlassEvent {
  readonly ts: number;
  readonly requestId: string;
  readonly decision: 'allow' | 'deny';
  /** Error code of a failed attempt. */
  readonly code?: string;
  readonly message?: string;
  readonly grant?: string;
  readonly ticket?: string;
  readonly reason?: string;
  readonly jti?: string;
  readonly keyIds: readonly string[];
  /** The credential's holder ID (admin grants), serial, lease and expiry. */
  readonly spiffeId?: string;
  readonly serial?: string;
  readonly leaseId?: string;
  readonly expiresAt?: number;
  readonly auditIndex?: number;
}

export interface BreakGlassIssued {
  readonly grant: string;
  readonly spiffeId: string;
  readonly ticket: string;
  readonly keyIds: readonly string[];
  readonly expiresAt: number;
  readonly ttlSeconds: number;
  readonly certificate?: {
    readonly serial: string;
    readonly chainPem: readonly string[];
    readonly notBefore: number;
    readonly privateKey?: string;
  };
  readonly secret?: { readonly name: string; readonly value: Buffer; readonly leaseId: string };
  readonly audit: CheckpointedReceipt;
}

export class BreakGlassService {
  readonly #d: BreakGlassDeps;
  readonly #keys: readonly BreakGlassKey[];

  constructor(deps: BreakGlassDeps) {
    this.#d = deps;
    this.#keys = loadBreakGlassKeys(deps.config.keys);
  }

  get enabled(): boolean {
    return this.#keys.length > 0;
  }

  /** Verifies and redeems a request (body of POST /v1/admin/break-glass). Throws a BrokerError on refusal. */
  async redeem(request: unknown, csr: string | undefined, requestId: string): Promise<BreakGlassIssued> {
    const partial: { keyIds?: string[]; claims?: BreakGlassClaims } = {};
    let verified;
    try {
      verified = await verifyBreakGlassRequest(request, {
        keys: this.#keys,
        requiredSignatures: this.#d.config.requiredSignatures,
        trustDomain: this.#d.trustDomain,
        allowedGrants: this.#d.config.allowedGrants,
        now: this.#d.clock.now(),
      }, partial);
      const { claims } = verified;
      if (csr !== undefined && claims.grant.startsWith('secret:')) throw badRequest('a CSR goes with an admin-role grant, not a secret grant');
      // Only a verified request may burn its jti (nobody else can pick it), and only once, fleet-wide.
      const fresh = await this.#d.store.consumeOnce(`break-glass:${claims.jti}`, (claims.iat + MAX_REQUEST_AGE_SECONDS + 120) * 1000);
      if (!fresh) throw new BrokerError('break_glass_replayed', `break-glass request ${claims.jti} was already used; sign a new one`);
    } catch (err) {
      if (err instanceof BrokerError && err.status >= 400 && err.status < 500) await this.#recordFailure(err, partial, requestId);
      throw err;
    }
    const { claims, keyIds } = verified;
    const ttlSeconds = Math.min(claims.ttlSeconds, this.#d.config.maxTtlSeconds, MAX_GRANT_TTL_SECONDS);
    try {
      return claims.grant.startsWith('secret:')
        ? await this.#issueSecret(claims, keyIds, ttlSeconds, requestId)
        : await this.#issueAdmin(claims, keyIds, ttlSeconds, csr, requestId);
    } catch (err) {
      // e.g. a bad CSR or a missing secret: the request was genuine, and is now used up; say so loudly.
      if (err instanceof BrokerError && err.status >= 400 && err.status < 500) await this.#recordFailure(err, partial, requestId);
      throw err;
    }
  }

  /** Every recorded use and failed attempt (failures for 24 h), newest first. */
  async events(limit: number): Promise<BreakGlassEvent[]> {
    const out: BreakGlassEvent[] = [];
    for (const { value } of await this.#d.store.kvList(BREAK_GLASS_EVENT_SPACE)) {
      try {
        out.push(JSON.parse(value) as BreakGlassEvent);
      } catch {
        // an unreadable record is skipped here; the audit log has the entry
      }
    }
    return out.sort((a, b) => b.ts - a.ts || a.requestId.localeCompare(b.requestId)).slice(0, limit);
  }

  #holderId(claims: BreakGlassClaims): string {
    return `spiffe://${this.#d.trustDomain}/admin/break-glass/${claims.jti}`;
  }

  #describe(claims: BreakGlassClaims, keyIds: readonly string[]): string {
    return `BREAK-GLASS ticket ${claims.ticket}; grant ${claims.grant}; keys ${keyIds.join(',')}; reason: ${claims.reason}`;
  }

  async #issueAdmin(claims: BreakGlassClaims, keyIds: readonly string[], ttlSeconds: number, csr: string | undefined, requestId: string): Promise<BreakGlassIssued> {
    const ca = this.#d.adminCa;
    const role = claims.grant as AdminRole;
    if (!ADMIN_ROLES.includes(role)) throw badRequest(`unknown grant "${claims.grant}"`);
    if (ca === undefined) throw new BrokerError('not_ready', 'admin-role grants need the admin CA key (admin.caCertFile, admin.caKeyFile)');
    let publicKey: KeyObject;
    let privateKey: string | undefined;
    if (csr !== undefined) {
      publicKey = parseCsrPem(csr).publicKey;
    } else {
      const made = await this.#d.generateKey();
      publicKey = made.publicKey;
      privateKey = made.privateKeyPem;
    }
    const now = this.#d.clock.now();
    const spiffeId = this.#holderId(claims);
    const cert = ca.issueX509Svid({ spiffeId, dnsNames: [], publicKey, ttlMs: ttlSeconds * 1000, now });
    const grant: BreakGlassGrantRecord = { spiffeId, role, jti: claims.jti, ticket: claims.ticket, expiresAt: cert.notAfter };
    // The serial → role record is what makes this certificate an admin; it expires with the certificate.
    // Keyed as principals.ts looks it up: the normalized serial (a minted serial is always valid hex).
    const grantKey = normalizeSerial(cert.serialHex) ?? cert.serialHex;
    await this.#d.store.kvPut(BREAK_GLASS_GRANT_SPACE, grantKey, JSON.stringify(grant), cert.notAfter);
    let audit: CheckpointedReceipt;
    try {
      audit = await this.#recordUse(claims, keyIds, requestId, now, {
        actor: spiffeId,
        subject: spiffeId,
        serial: cert.serialHex,
        ttlMs: cert.notAfter - now,
        expiresAt: cert.notAfter,
      });
    } catch (err) {
      await this.#d.store.kvDelete(BREAK_GLASS_GRANT_SPACE, grantKey).catch(() => undefined);
      throw err;
    }
    return {
      grant: claims.grant,
      spiffeId,
      ticket: claims.ticket,
      keyIds,
      expiresAt: cert.notAfter,
      ttlSeconds,
      certificate: { serial: cert.serialHex, chainPem: cert.chainPem, notBefore: cert.notBefore, ...(privateKey !== undefined ? { privateKey } : {}) },
      audit,
    };
  }

  async #issueSecret(claims: BreakGlassClaims, keyIds: readonly string[], ttlSeconds: number, requestId: string): Promise<BreakGlassIssued> {
    const secrets = this.#d.secrets;
    if (secrets === undefined) throw new BrokerError('not_ready', 'secret grants need the secrets module (secrets.kekFile)');
    const name = claims.grant.slice('secret:'.length);
    const now = this.#d.clock.now();
    const spiffeId = this.#holderId(claims);
    const issued = await secrets.issue(name, spiffeId, ttlSeconds * 1000);
    let audit: CheckpointedReceipt;
    try {
      audit = await this.#recordUse(claims, keyIds, requestId, now, {
        actor: spiffeId,
        subject: spiffeId,
        secret: name,
        leaseId: issued.leaseId,
        ttlMs: issued.expiresAt - now,
        expiresAt: issued.expiresAt,
      });
    } catch (err) {
      issued.value.fill(0);
      await secrets.discard(issued.leaseId).catch(() => undefined);
      throw err;
    }
    return {
      grant: claims.grant,
      spiffeId,
      ticket: claims.ticket,
      keyIds,
      expiresAt: issued.expiresAt,
      ttlSeconds,
      secret: { name, value: issued.value, leaseId: issued.leaseId },
      audit,
    };
  }

  /** The critical entry, durable and checkpointed before anything is returned; then the event record. */
  async #recordUse(
    claims: BreakGlassClaims,
    keyIds: readonly string[],
    requestId: string,
    now: number,
    fields: Pick<AuditEntry, 'actor' | 'subject' | 'serial' | 'secret' | 'leaseId' | 'ttlMs' | 'expiresAt'>,
  ): Promise<CheckpointedReceipt> {
    const entry: AuditEntry = {
      ts: now,
      type: 'break-glass',
      decision: 'allow',
      source: 'break-glass',
      severity: 'critical',
      ...fields,
      jti: claims.jti,
      ticket: claims.ticket,
      grant: claims.grant,
      keyIds: [...keyIds],
      reason: this.#describe(claims, keyIds),
      requestId,
      replica: this.#d.replicaId,
    };
    const receipt: CheckpointedReceipt = await auditedOrUnavailable(async () => this.#d.checkpoints.appendForReceipt(entry), 'the audit log could not record this break-glass use; nothing was issued');
    const event: BreakGlassEvent = {
      ts: now,
      requestId,
      decision: 'allow',
      grant: claims.grant,
      ticket: claims.ticket,
      reason: claims.reason,
      jti: claims.jti,
      keyIds,
      ...(fields.actor !== null ? { spiffeId: fields.actor } : {}),
      ...(fields.serial !== undefined ? { serial: fields.serial } : {}),
      ...(fields.leaseId !== undefined ? { leaseId: fields.leaseId } : {}),
      ...(fields.expiresAt !== undefined ? { expiresAt: fields.expiresAt } : {}),
      auditIndex: receipt.index,
    };
    await this.#d.store.kvPut(BREAK_GLASS_EVENT_SPACE, eventKey(now, requestId), JSON.stringify(event));
    return receipt;
  }

  async #recordFailure(err: BrokerError, partial: { keyIds?: string[]; claims?: BreakGlassClaims }, requestId: string): Promise<void> {
    const now = this.#d.clock.now();
    const max = this.#d.config.maxFailuresPerMinute;
    const keyIds = partial.keyIds ?? [];
    // Only junk (no valid deployment-key signature) is capped; a genuine key always gets its own entry.
    let capped = false;
    if (keyIds.length === 0) {
      const { count } = await this.#d.store.hit('break-glass-failures', 60_000);
      if (count > max + 1) return;
      capped = count === max + 1;
    }
    // Claims are only recorded once a deployment key's signature over them verified.
    const c = keyIds.length > 0 ? partial.claims : undefined;
    const message = capped
      ? `more than ${max} failed break-glass attempts this minute; further failures this minute are refused without an entry each (last: ${err.code})`
      : err.message;
    const receipt = await auditedOrUnavailable(
      async () =>
        this.#d.audit.append({
            ts: now,
            type: 'break-glass',
            decision: 'deny',
            actor: null,
            subject: null,
            source: 'break-glass',
            severity: 'critical',
            code: err.code,
            ...(c !== undefined ? { jti: c.jti, ticket: c.ticket, grant: c.grant } : {}),
            ...(keyIds.length > 0 ? { keyIds: [...keyIds] } : {}),
            reason: `BREAK-GLASS REFUSED: ${message}${c !== undefined ? ` (${this.#describe(c, keyIds)})` : ''}`,
            requestId,
            replica: this.#d.replicaId,
        }),
      'the audit log could not record this break-glass attempt',
    );
    const event: BreakGlassEvent = {
      ts: now,
      requestId,
      decision: 'deny',
      code: err.code,
      message,
      keyIds,
      ...(c !== undefined ? { grant: c.grant, ticket: c.ticket, reason: c.reason, jti: c.jti } : {}),
      auditIndex: receipt.index,
    };
    await this.#d.store.kvPut(BREAK_GLASS_EVENT_SPACE, eventKey(now, requestId), JSON.stringify(event), now + FAILURE_EVENT_TTL_MS);
  }
}

const eventKey = (ts: number, requestId: string): string => `${String(ts).padStart(15, '0')}-${requestId}`;
