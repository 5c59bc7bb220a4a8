/**
 * Who an admin is and what they may do. An admin presents a client certificate from the admin CA
 * (attest/mtls.ts classified the chain); its URI SAN must be an allow-listed principal in config, or a
 * break-glass certificate this broker minted (its serial is registered in the store with the role the
 * break-glass request was granted, until it expires). Revocations apply to admins too.
 */
import type { AdminPeer } from '../attest/mtls.js';
import type { Clock } from '../clock.js';
import type { AdminPrincipalConfig, AdminRole } from '../config/config.js';
import { forbidden } from '../errors.js';
import type { Store } from '../store/store.js';
import { normalizeSerial, type Revocations } from './revocation.js';

export const ADMIN_ROLES: readonly AdminRole[] = ['auditor', 'operator', 'secrets-admin', 'registrar'];

export interface AdminPrincipal {
  readonly spiffeId: string;
  readonly roles: ReadonlySet<AdminRole>;
  readonly serial: string;
  readonly expiresAt: number;
  /** 'certificate': a configured admin; 'break-glass': an emergency certificate from POST /v1/admin/break-glass. */
  readonly via: 'certificate' | 'break-glass';
  /** Break-glass only: the incident ticket the request named. */
  readonly ticket?: string;
}

/** What the store keeps per break-glass certificate (space 'break-glass-grant', key = serial). */
export interface BreakGlassGrantRecord {
  readonly spiffeId: string;
  readonly role: AdminRole;
  readonly jti: string;
  readonly ticket: string;
  readonly expiresAt: number;
}

export const BREAK_GLASS_GRANT_SPACE = 'break-glass-grant';

export class AdminAuthority {
  readonly #principals: ReadonlyMap<string, ReadonlySet<AdminRole>>;

  constructor(
    principals: readonly AdminPrincipalConfig[],
    private readonly store: Store,
    private readonly revocations: Revocations,
    private readonly clock: Clock,
  ) {
    this.#principals = new Map(principals.map((p) => [p.id, new Set(p.roles)]));
  }

  /** The principal behind a verified admin certificate, or 401/403. */
  async authorize(peer: AdminPeer): Promise<AdminPrincipal> {
    // The certificate's validity window was checked for this request by MtlsAttestor.peer.
    const now = this.clock.now();
    const serial = normalizeSerial(peer.serial) ?? peer.serial;
    await this.revocations.assertNotRevoked({ spiffeIds: [peer.spiffeId], serials: [serial] });
    const roles = this.#principals.get(peer.spiffeId);
    if (roles !== undefined) return { spiffeId: peer.spiffeId, roles, serial, expiresAt: peer.expiresAt, via: 'certificate' };
    if (/^spiffe:\/\/[^/]+\/admin\/break-glass\//.test(peer.spiffeId)) {
      const raw = await this.store.kvGet(BREAK_GLASS_GRANT_SPACE, serial);
      const grant = raw !== undefined ? parseGrant(raw) : undefined;
      if (grant !== undefined && grant.spiffeId === peer.spiffeId && grant.expiresAt > now && ADMIN_ROLES.includes(grant.role)) {
        return {
          spiffeId: peer.spiffeId,
          roles: new Set([grant.role]),
          serial,
          expiresAt: Math.min(grant.expiresAt, peer.expiresAt),
          via: 'break-glass',
          ticket: grant.ticket,
        };
      }
      throw forbidden('this break-glass certificate is expired or unknown to the broker');
    }
    throw forbidden(`${peer.spiffeId} is not a configured admin (config admin.principals)`);
  }
}

function parseGrant(raw: string): BreakGlassGrantRecord | undefined {
  try {
    const g = JSON.parse(raw) as BreakGlassGrantRecord;
    return typeof g === 'object' && g !== null && typeof g.spiffeId === 'string' && typeof g.expiresAt === 'number' ? g : undefined;
  } catch {
    return undefined;
  }
}

/** 403 unless the principal holds one of `roles`. */
export function requireRole(principal: AdminPrincipal, roles: readonly AdminRole[]): void {
  if (!roles.some((r) => principal.roles.has(r))) {
    throw forbidden(`${principal.spiffeId} lacks the role for this call (needs ${roles.join(' or ')})`);
  }
}
