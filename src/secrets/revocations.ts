/**
 * Is a workload identity revoked? Secret reads, credential creation and lease renewals ask first.
 * The broker passes the admin module's revocation list (SPIFFE ID or its namespace); without one the
 * service falls back to StoreRevocations, which reads the same records (store space "revocation",
 * keys "spiffeId:<id>" and "namespace:<ns>"), so a revoked identity is refused either way.
 */
import type { Store } from '../store/store.js';

export const REVOCATION_SPACE = 'revocation';

export interface IdentityRevocations {
  isRevoked(spiffeId: string): Promise<boolean>;
}

export class StoreRevocations implements IdentityRevocations {
  constructor(private readonly store: Store) {}

  async isRevoked(spiffeId: string): Promise<boolean> {
    const keys = [`spiffeId:${spiffeId}`];
    const ns = /^spiffe:\/\/[^/]+\/ns\/([A-Za-z0-9._-]+)(\/|$)/.exec(spiffeId)?.[1];
    if (ns !== undefined) keys.push(`namespace:${ns}`);
    const found = await Promise.all(keys.map((k) => this.store.kvGet(REVOCATION_SPACE, k)));
    return found.some((v) => v !== undefined);
  }
}
