/**
 * Leases, for the workload that holds them:
 *   POST /v1/leases/<id>/renew    extend one's own lease (up to its max TTL); frozen issuance refuses it
 *   POST /v1/leases/<id>/revoke   end one's own lease now
 */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import type { AccessGuard } from '../../admin/guard.js';
import type { SecretsService } from '../../secrets/service.js';
import { identityOf } from '../auth.js';
import { routeParam } from '../refusals.js';
import { AuditReceipt, DateTime, described, errorResponses, iso } from '../schemas.js';
import { emptyBodyIsObject, LeaseId, secretRefusal, TtlBody } from './secrets.js';

export interface LeasesOptions {
  readonly secrets: SecretsService;
  readonly guard: Pick<AccessGuard, 'assertNotFrozen'>;
}

const LeaseParams = Type.Object({ leaseId: LeaseId() });

const Renewed = Type.Object(
  {
    leaseId: Type.String(),
    expiresAt: DateTime('now + ttl, capped at maxExpiresAt (equal to it once the cap is reached).'),
    maxExpiresAt: DateTime(),
    audit: AuditReceipt,
  },
  { title: 'LeaseRenewed' },
);

const Revoked = Type.Object({ leaseId: Type.String(), revoked: Type.Unsafe<true>({ type: 'boolean', enum: [true] }), audit: AuditReceipt }, { title: 'LeaseRevoked' });

const leaseOf = (request: FastifyRequest): { leaseId: string } => ({ leaseId: routeParam(request, 'leaseId') });

export const leasesRoutes: FastifyPluginAsyncTypebox<LeasesOptions> = async (app, { secrets, guard }) => {
  app.post(
    '/v1/leases/:leaseId/renew',
    {
      preValidation: emptyBodyIsObject,
      schema: {
        operationId: 'renewLease',
        summary: "Extend one's own lease to now + ttl, never beyond its maxExpiresAt.",
        description: "Only the identity that holds the lease may renew it (others get 403, audited). A dynamic credential's VALID UNTIL moves with it.",
        params: LeaseParams,
        body: TtlBody,
        response: {
          200: described('The new expiry.', Renewed),
          ...errorResponses('BadRequest', 'Unauthenticated', 'Forbidden', 'NotFound', 'RateLimited', 'SecretsUnavailable'),
        },
      },
      config: { auth: 'workload', refusal: secretRefusal(secrets, 'lease.renewed', leaseOf) },
    },
    async (request) => {
      const identity = identityOf(request);
      await guard.assertNotFrozen(identity);
      const { leaseId } = request.params;
      const r = await secrets.renewLease(identity, leaseId, request.body.ttlSeconds, request.id);
      return { leaseId, expiresAt: iso(r.lease.expiresAt), maxExpiresAt: iso(r.lease.maxExpiresAt), audit: r.audit };
    },
  );

  app.post(
    '/v1/leases/:leaseId/revoke',
    {
      preValidation: emptyBodyIsObject,
      schema: {
        operationId: 'revokeLease',
        summary: "End one's own lease now (PostgreSQL credentials are dropped and their sessions terminated).",
        description: `Only the holder may revoke (others get 403, audited). If the engine cannot drop the credential
right now the answer is 503 \`engine_unavailable\`; the lease stays marked for revocation and the
broker retries until it succeeds. If the engine refuses for a reason retrying cannot fix, the
answer is 502 \`revoke_failed\` and the lease is kept as \`revoke_failed\` (operators are alerted).
`,
        params: LeaseParams,
        response: {
          200: described('Revoked.', Revoked),
          ...errorResponses('BadRequest', 'Unauthenticated', 'Forbidden', 'NotFound', 'RateLimited', 'RevokeFailed', 'SecretsUnavailable'),
        },
      },
      config: { auth: 'workload', refusal: secretRefusal(secrets, 'lease.revoked', leaseOf) },
    },
    async (request) => {
      const { leaseId } = request.params;
      const r = await secrets.revokeLease(identityOf(request), leaseId, request.id);
      return { leaseId, revoked: true as const, audit: r.audit };
    },
  );
};
