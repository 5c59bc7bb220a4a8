/**
 * Who may have which secret. Default deny: a workload gets a static secret or a database role only if
 * some grant names its registered SPIFFE ID or matches its namespace / service account. Grants add up.
 * The caller's identity must first be resolved by the registration policy (an unregistered caller
 * gets nothing), so a token caller and the same workload's SVID are judged alike.
 */
import type { SecretGrantConfig } from '../config/config.js';
import type { EngineKind } from './engine.js';
import { grantCovers } from './names.js';

export interface Workload {
  readonly spiffeId: string;
  readonly namespace: string;
  readonly serviceAccount: string;
}

function applies(grant: SecretGrantConfig, w: Workload): boolean {
  if (grant.spiffeIds !== undefined) return grant.spiffeIds.includes(w.spiffeId);
  const sel = grant.selector;
  if (sel === undefined) return false;
  // A workload whose namespace or service account is unknown ("" or "*" from a custom SPIFFE path)
  // matches only a wildcard, never an exact selector.
  const ok = (want: string, have: string): boolean => want === '*' || (have !== '' && have !== '*' && want === have);
  return ok(sel.namespace, w.namespace) && ok(sel.serviceAccount, w.serviceAccount);
}

/** The grant list of each engine kind. */
const ROLES_OF: Readonly<Record<EngineKind, (g: SecretGrantConfig) => readonly string[]>> = {
  postgres: (g) => g.postgresRoles,
  mysql: (g) => g.mysqlRoles ?? [],
  redis: (g) => g.redisRoles ?? [],
  rabbitmq: (g) => g.rabbitmqRoles ?? [],
};

export class SecretGrants {
  constructor(private readonly grants: readonly SecretGrantConfig[]) {}

  maySecret(w: Workload, name: string): boolean {
    return this.grants.some((g) => applies(g, w) && g.secrets.some((p) => grantCovers(p, name)));
  }

  mayPostgresRole(w: Workload, role: string): boolean {
    return this.mayRole(w, 'postgres', role);
  }

  /** May `w` have credentials of `role` from an engine of `kind` (grant lists postgresRoles, mysqlRoles)? */
  mayRole(w: Workload, kind: EngineKind, role: string): boolean {
    return this.grants.some((g) => applies(g, w) && ROLES_OF[kind](g).includes(role));
  }
}
