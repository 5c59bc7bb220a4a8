/**
 * Audit entries for admin calls: every call, allowed or refused, read or write, is one entry of type
 * 'admin' with the admin's SPIFFE ID as actor and what they did as `action`. Calls made with a
 * break-glass certificate carry source 'break-glass', so the break-glass alert rule fires on them too.
 * Entries never carry secret values, keys or requests — only names, IDs and serials.
 */
import type { AuditEntry } from '../audit/entry.js';
import type { CheckpointedReceipt, Checkpointer } from '../audit/checkpointer.js';
import type { AuditLog } from '../audit/log.js';
import type { Clock } from '../clock.js';
import { type BrokerError, auditedOrUnavailable } from '../errors.js';
import type { AdminPrincipal } from './principals.js';

/** The caller of a refused admin call, as far as it is known. */
export interface AdminCaller {
  readonly spiffeId: string | null;
  readonly source: string;
  readonly ticket?: string;
}

export type AdminEntryFields = Pick<AuditEntry, 'subject' | 'namespace' | 'serial' | 'secret' | 'reason' | 'leaseId' | 'entryId' | 'selectors' | 'before' | 'after'>;

export class AdminAudit {
  constructor(
    private readonly audit: AuditLog,
    private readonly checkpoints: Checkpointer,
    private readonly clock: Clock,
    private readonly replicaId: string,
  ) {}

  static callerOf(p: AdminPrincipal): AdminCaller {
    return { spiffeId: p.spiffeId, source: p.via === 'break-glass' ? 'break-glass' : 'admin', ...(p.ticket !== undefined ? { ticket: p.ticket } : {}) };
  }

  /** Records an allowed call; resolves once durable and checkpointed (its receipt goes in the response). */
  async allow(p: AdminPrincipal, action: string, fields: Partial<AdminEntryFields>, requestId: string): Promise<CheckpointedReceipt> {
    const c = AdminAudit.callerOf(p);
    return auditedOrUnavailable(async () => this.checkpoints.appendForReceipt(this.#entry(c, action, 'allow', fields, requestId, p.serial)), 'the audit log could not record this admin call; nothing was done');
  }

  /** Records a refused call (no checkpoint wait: a refusal returns no receipt). */
  async deny(c: AdminCaller, action: string, error: BrokerError, requestId: string, fields: Partial<AdminEntryFields> = {}): Promise<void> {
    await auditedOrUnavailable(async () => this.audit.append({ ...this.#entry(c, action, 'deny', fields, requestId), code: error.code, reason: error.message }), 'the audit log could not record this admin call');
  }

  #entry(c: AdminCaller, action: string, decision: 'allow' | 'deny', fields: Partial<AdminEntryFields>, requestId: string, serial?: string): AuditEntry {
    return {
      ts: this.clock.now(),
      type: 'admin',
      decision,
      actor: c.spiffeId,
      subject: fields.subject ?? null,
      source: c.source,
      action,
      ...(c.ticket !== undefined ? { ticket: c.ticket } : {}),
      ...(fields.namespace !== undefined ? { namespace: fields.namespace } : {}),
      // The target serial of a revocation, else the serial of the admin's own certificate.
      ...(fields.serial !== undefined ? { serial: fields.serial } : serial !== undefined ? { serial } : {}),
      ...(fields.secret !== undefined ? { secret: fields.secret } : {}),
      ...(fields.leaseId !== undefined ? { leaseId: fields.leaseId } : {}),
      ...(fields.reason !== undefined ? { reason: fields.reason } : {}),
      ...(fields.entryId !== undefined ? { entryId: fields.entryId } : {}),
      ...(fields.selectors !== undefined ? { selectors: fields.selectors } : {}),
      ...(fields.before !== undefined ? { before: fields.before } : {}),
      ...(fields.after !== undefined ? { after: fields.after } : {}),
      requestId,
      replica: this.replicaId,
    };
  }
}
