/**
 * Revocations (the leases of a revoked identity or namespace end with it):
 *   GET  /v1/admin/revocations     list                                                 (auditor, operator)
 *   POST /v1/admin/revoke          {kind, value, reason} — also revokes leases          (operator)
 *   POST /v1/admin/unrevoke        {kind, value, reason}                                (operator)
 *   GET  /v1/admin/leases/failed   leases whose revoke failed (revoking, revoke_failed)  (auditor, operator)
 */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { AdminAudit } from '../../../admin/audit.js';
import { namespaceOfSpiffeId } from '../../../admin/guard.js';
import { normalizeTarget, REVOCATION_KINDS, type Revocations, type RevocationKind } from '../../../admin/revocation.js';
import type { SecretsService } from '../../../secrets/service.js';
import { adminOf } from '../../auth.js';
import { AuditReceipt, errorResponses, iso, StringEnum } from '../../schemas.js';
import { adminCall, READERS } from './access.js';

export interface RevocationsOptions {
  readonly log: AdminAudit;
  readonly revocations: Revocations;
  readonly secrets: Pick<SecretsService, 'revokeIdentity' | 'leases'>;
}

export const Reason = Type.String({ minLength: 1, maxLength: 500 });

const Revocation = Type.Object({ kind: Type.String(), value: Type.String(), reason: Type.String(), by: Type.String(), at: Type.String() });

const RevokeBody = Type.Object(
  { kind: StringEnum(REVOCATION_KINDS), value: Type.String({ minLength: 1, maxLength: 2048 }), reason: Reason },
  { additionalProperties: false },
);

const FailedLease = Type.Object({
  leaseId: Type.String(),
  identity: Type.String(),
  secret: Type.String(),
  engine: Type.Optional(Type.String()),
  username: Type.Optional(Type.String()),
  state: StringEnum(['revoking', 'revoke_failed']),
  attempts: Type.Integer(),
  lastError: Type.Optional(Type.String()),
  nextAttemptAt: Type.Optional(Type.String()),
  expiresAt: Type.String(),
  revokeReason: Type.Optional(Type.String()),
});

function revocationOut(r: { kind: string; value: string; reason: string; by: string; at: number }): { kind: string; value: string; reason: string; by: string; at: string } {
  return { kind: r.kind, value: r.value, reason: r.reason, by: r.by, at: iso(r.at) };
}

const targetFields = (kind: RevocationKind, value: string): { subject?: string; namespace?: string; serial?: string } =>
  kind === 'spiffeId' ? { subject: value } : kind === 'namespace' ? { namespace: value } : { serial: value };

export const revocationRoutes: FastifyPluginAsyncTypebox<RevocationsOptions> = async (app, { log, revocations, secrets }) => {
  app.get(
    '/v1/admin/revocations',
    {
      schema: {
        operationId: 'listRevocations',
        response: { 200: Type.Object({ revocations: Type.Array(Revocation), audit: AuditReceipt }), ...errorResponses },
      },
      config: adminCall(log, READERS, 'revocations.list'),
    },
    async (request) => {
      const list = await revocations.list();
      const audit = await log.allow(adminOf(request), 'revocations.list', {}, request.id);
      return { revocations: list.map(revocationOut), audit };
    },
  );

  app.post(
    '/v1/admin/revoke',
    {
      schema: {
        operationId: 'revoke',
        body: RevokeBody,
        response: {
          200: Type.Object({
            revocation: Revocation,
            leases: Type.Object({ revoked: Type.Array(Type.String()), pending: Type.Array(Type.String()) }),
            audit: AuditReceipt,
          }),
          ...errorResponses,
        },
      },
      config: adminCall(log, ['operator'], 'revoke'),
    },
    async (request) => {
      const p = adminOf(request);
      const { kind, reason: why } = request.body;
      const value = normalizeTarget(kind, request.body.value);
      // Recorded first: a revocation never takes effect unaudited.
      const audit = await log.allow(p, 'revoke', { ...targetFields(kind, value), reason: why }, request.id);
      const revocation = await revocations.add({ kind, value, reason: why, by: p.spiffeId, requestId: request.id });
      // Leases of a revoked identity (or of every identity in a revoked namespace) end now.
      const ctx = { actor: p.spiffeId, requestId: request.id, reason: `revoked by ${p.spiffeId}: ${why}` };
      const leases =
        kind === 'spiffeId'
          ? await secrets.revokeIdentity(value, ctx)
          : kind === 'namespace'
            ? await secrets.leases.revokeMatching((l) => namespaceOfSpiffeId(l.identity) === value, ctx)
            : { revoked: [], pending: [] };
      return { revocation: revocationOut(revocation), leases: { revoked: leases.revoked, pending: leases.pending.map((x) => x.id) }, audit };
    },
  );

  app.post(
    '/v1/admin/unrevoke',
    {
      schema: {
        operationId: 'unrevoke',
        body: RevokeBody,
        response: { 200: Type.Object({ removed: Type.Boolean(), audit: AuditReceipt }), ...errorResponses },
      },
      config: adminCall(log, ['operator'], 'unrevoke'),
    },
    async (request) => {
      const { kind, reason: why } = request.body;
      const value = normalizeTarget(kind, request.body.value);
      const audit = await log.allow(adminOf(request), 'unrevoke', { ...targetFields(kind, value), reason: why }, request.id);
      return { removed: await revocations.remove(kind, value), audit };
    },
  );

  // Leases whose credential could not be dropped yet: revoking (transient, retried with backoff) or
  // revoke_failed (the engine refused; retried hourly until an operator fixes the cause).
  app.get(
    '/v1/admin/leases/failed',
    {
      schema: {
        operationId: 'listFailedLeaseRevocations',
        response: { 200: Type.Object({ leases: Type.Array(FailedLease), audit: AuditReceipt }), ...errorResponses },
      },
      config: adminCall(log, READERS, 'leases.failed'),
    },
    async (request) => {
      const failed = await secrets.leases.failedRevocations();
      const audit = await log.allow(adminOf(request), 'leases.failed', {}, request.id);
      return {
        leases: failed.map((l) => ({
          leaseId: l.id,
          identity: l.identity,
          secret: l.secret,
          ...(l.engine !== undefined ? { engine: l.engine } : {}),
          ...(l.username !== undefined ? { username: l.username } : {}),
          state: l.state as 'revoking' | 'revoke_failed', // failedRevocations() returns only these
          attempts: l.attempts,
          ...(l.lastError !== undefined ? { lastError: l.lastError } : {}),
          ...(l.nextAttemptAt !== undefined ? { nextAttemptAt: iso(l.nextAttemptAt) } : {}),
          expiresAt: iso(l.expiresAt),
          ...(l.revokeReason !== undefined ? { revokeReason: l.revokeReason } : {}),
        })),
        audit,
      };
    },
  );
};
