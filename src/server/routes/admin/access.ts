/**
 * What every /v1/admin/* route shares: mutual TLS with an admin certificate holding one of the route's
 * roles (auditor: read and search; operator: revoke, freeze; secrets-admin: write secrets; registrar:
 * registration entries), and an audit
 * entry for every call (type 'admin', actor = the admin's SPIFFE ID) — refused ones too.
 * A state change is recorded before it is made, so nothing changes unaudited.
 */
import type { FastifyContextConfig } from 'fastify';
import type { AdminAudit } from '../../../admin/audit.js';
import type { AdminRole } from '../../../config/config.js';

export const ANY_ROLE: readonly AdminRole[] = ['auditor', 'operator', 'secrets-admin', 'registrar'];
/** Who may manage registration entries. */
export const REGISTRARS: readonly AdminRole[] = ['registrar', 'operator'];
export const READERS: readonly AdminRole[] = ['auditor', 'operator'];

/** The route config of an admin call: who may make it, and how a refusal of it is recorded. */
export function adminCall(log: AdminAudit, roles: readonly AdminRole[], action: string): FastifyContextConfig {
  return {
    auth: { admin: roles },
    refusal: (err, request) => log.deny(request.caller?.adminCaller ?? { spiffeId: null, source: 'none' }, action, err, request.id),
  };
}
