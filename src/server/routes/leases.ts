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
import { AuditReceipt, errorResponses, iso } from '../schemas.js';
import { emptyBodyIsObject, secretRefusal, TtlBody } from './secrets.js';

export interface LeasesOptions {
  readonly secrets: SecretsService;
  readonly guard: Pick<AccessGuard, 'assertNotFrozen'>;
}

const LeaseParams = Type.Object({ leaseId: Type.String({ pattern: '^[0-9a-f]{32}$' }) });

const Renewed = Type.Object({ leaseId: Type.String(), expiresAt: Type.String(), maxExpiresAt: Type.String(), audit: AuditReceipt });

const Revoked = Type.Object({ leaseId: Type.String(), revoked: Type.Boolean(), audit: AuditReceipt });

const leaseOf = (request: FastifyRequest): { leaseId: string } => ({ leaseId: routeParam(request, 'leaseId') });

export const leasesRoutes: FastifyPluginAsyncTypebox<LeasesOptions> = async (app, { secrets, guard }) => {
  app.post(
    '/v1/leases/:leaseId/renew',
    {
      preValidation: emptyBodyIsObject,
      schema: { operationId: 'renewLease', params: LeaseParams, body: TtlBody, response: { 200: Renewed, ...errorResponses } },
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
      schema: { operationId: 'revokeLease', params: LeaseParams, response: { 200: Revoked, ...errorResponses } },
      config: { auth: 'workload', refusal: secretRefusal(secrets, 'lease.revoked', leaseOf) },
    },
    async (request) => {
      const { leaseId } = request.params;
      const r = await secrets.revokeLease(identityOf(request), leaseId, request.id);
      return { leaseId, revoked: true, audit: r.audit };
    },
  );
};
