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
import { ADMIN_ERRORS, AuditReceipt, DateTime, described, errorResponses, iso, StringEnum } from '../../schemas.js';
import { LeaseId } from '../secrets.js';
import { adminCall, READERS } from './access.js';

export interface RevocationsOptions {
  readonly log: AdminAudit;
  readonly revocations: Revocations;
  readonly secrets: Pick<SecretsService, 'revokeIdentity' | 'leases'>;
}

export const Reason = Type.String({ minLength: 1, maxLength: 500, title: 'AdminReason', description: 'Why — goes into the audit entry with your identity.' });

const Revocation = Type.Object(
  {
    kind: StringEnum(REVOCATION_KINDS),
    value: Type.String({ description: 'Canonical form (serials lowercase hex without leading zeros).' }),
    reason: Type.String(),
    by: Type.String({ description: 'SPIFFE ID of the admin who revoked it.' }),
    at: DateTime(),
  },
  { title: 'Revocation' },
);

const RevokeBody = Type.Object(
  {
    kind: StringEnum(REVOCATION_KINDS, { description: 'What to cut off — one SPIFFE ID, every identity in a namespace, or one certificate serial.' }),
    value: Type.String({
      minLength: 1,
      maxLength: 2048,
      description: 'A SPIFFE ID (spiffe://example.org/ns/shop/sa/web), a namespace (shop), or a serial (hex; colons allowed).',
      examples: ['spiffe://example.org/ns/shop/sa/web'],
    }),
    reason: Reason,
  },
  { additionalProperties: false, title: 'RevocationRequest' },
);

const RevokeResponse = Type.Object(
  {
    revocation: Revocation,
    leases: Type.Object(
      { revoked: Type.Array(Type.String()), pending: Type.Array(Type.String()) },
      { description: 'Secret leases ended by this revocation (pending ones are retried by the broker).' },
    ),
    audit: AuditReceipt,
  },
  { title: 'RevokeResponse' },
);

const FailedLease = Type.Object({
  leaseId: LeaseId(),
  identity: Type.String({ description: 'SPIFFE ID holding the lease.' }),
  secret: Type.String({ description: 'Static secret name, or postgres/<role>.' }),
  engine: Type.Optional(Type.String()),
  username: Type.Optional(Type.String({ description: 'The database role that still exists.' })),
  state: StringEnum(['revoking', 'revoke_failed']),
  attempts: Type.Integer({ minimum: 1 }),
  lastError: Type.Optional(Type.String()),
  nextAttemptAt: Type.Optional(DateTime()),
  expiresAt: DateTime(),
  revokeReason: Type.Optional(Type.String()),
});

const ERRORS = errorResponses(...ADMIN_ERRORS);
const WITH_BODY_ERRORS = errorResponses('BadRequest', ...ADMIN_ERRORS);

function revocationOut(r: { kind: RevocationKind; value: string; reason: string; by: string; at: number }): { kind: RevocationKind; value: string; reason: string; by: string; at: string } {
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
        summary: 'List revoked SPIFFE IDs, namespaces and certificate serials. Role auditor or operator.',
        response: { 200: described('Every revocation, oldest first.', Type.Object({ revocations: Type.Array(Revocation), audit: AuditReceipt })), ...ERRORS },
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
        summary: 'Revoke a SPIFFE ID, a whole namespace, or a certificate serial — at once, on every replica. Role operator.',
        description: `From the next request on, on every replica (the list lives in the shared store, read per request,
no cache): renewals with the SVID, new X.509/JWT-SVIDs and secret reads are refused with 403
\`revoked\`, and the identity's secret leases are revoked (PostgreSQL roles dropped). Survives
restarts. Recorded in the audit log before it takes effect.
`,
        body: RevokeBody,
        response: { 200: described('Revoked.', RevokeResponse), ...WITH_BODY_ERRORS },
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
        summary: 'Lift a revocation. Role operator.',
        body: RevokeBody,
        response: { 200: described('`removed` is false if there was no such revocation.', Type.Object({ removed: Type.Boolean(), audit: AuditReceipt })), ...WITH_BODY_ERRORS },
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
        summary: 'Leases whose credential could not be revoked yet. Role auditor or operator.',
        description: `\`revoking\`: the engine was unavailable; retried with backoff (at most every 5 minutes).
\`revoke_failed\`: the engine refused for a reason retrying cannot fix; retried hourly until an
operator fixes the cause (docs/secrets.md). Audited like every admin call.
`,
        response: { 200: described('Every lease with at least one failed revoke.', Type.Object({ leases: Type.Array(FailedLease), audit: AuditReceipt })), ...ERRORS },
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
