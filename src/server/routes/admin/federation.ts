/**
 * Federation relationships (role operator; auditors may read):
 *   GET    /v1/admin/federation                        list, with each bundle's age and last error
 *   POST   /v1/admin/federation                        add (the first fetch starts in the background) → 201
 *   GET    /v1/admin/federation/{trustDomain}          show
 *   DELETE /v1/admin/federation/{trustDomain}          delete (config relationships: 409)
 *   POST   /v1/admin/federation/{trustDomain}/refresh  fetch the bundle now (502 if it fails; the last good one stays)
 * Every call is audited with the admin's identity; a change is recorded before it is made.
 */
import { type FastifyPluginAsyncTypebox, type Static, Type } from '@fastify/type-provider-typebox';
import type { AdminAudit } from '../../../admin/audit.js';
import type { FederationManager, RelationshipStatus } from '../../../spiffe/federation.js';
import { RelationshipInputSchema } from '../../../spiffe/relationship.js';
import { BrokerError } from '../../../errors.js';
import { adminOf } from '../../auth.js';
import { ADMIN_ERRORS, AuditReceipt, described, errorResponses, iso } from '../../schemas.js';
import { adminCall, READERS } from './access.js';

export interface FederationRoutesOptions {
  readonly log: AdminAudit;
  readonly federation: FederationManager;
}

const Params = Type.Object({ trustDomain: Type.String({ minLength: 1, maxLength: 255, description: 'The foreign trust domain, e.g. partner.test.' }) });

const RelationshipView = Type.Object(
  {
    trustDomain: Type.String(),
    bundleEndpointUrl: Type.String(),
    profile: Type.String({ description: 'https_web or https_spiffe.' }),
    endpointSpiffeId: Type.Optional(Type.String()),
    source: Type.String({ description: 'config (read-only) or api.' }),
    minRefreshSeconds: Type.Integer(),
    maxRefreshSeconds: Type.Integer(),
    staleAfterSeconds: Type.Integer(),
    bundle: Type.Union([
      Type.Object({
        sequence: Type.Optional(Type.Integer()),
        refreshHintSeconds: Type.Optional(Type.Integer()),
        x509Authorities: Type.Integer({ description: 'How many X.509 authorities it holds.' }),
        jwtKeyIds: Type.Array(Type.String()),
        fetchedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()], { description: 'null: the bootstrap bundle, never fetched yet.' }),
        nextRefreshAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
      }),
      Type.Null(),
    ]),
    ageSeconds: Type.Integer({ description: 'Seconds since the bundle was last fetched and authenticated.' }),
    stale: Type.Boolean({ description: 'ageSeconds is past staleAfterSeconds.' }),
    lastError: Type.Optional(Type.Object({ message: Type.String(), at: Type.String({ format: 'date-time' }) })),
  },
  { title: 'FederationRelationship' },
);

function viewOf(s: RelationshipStatus): Static<typeof RelationshipView> {
  const r = s.relationship;
  const b = s.bundle;
  return {
    trustDomain: r.trustDomain,
    bundleEndpointUrl: r.bundleEndpointUrl,
    profile: r.profile,
    ...(r.endpointSpiffeId !== undefined ? { endpointSpiffeId: r.endpointSpiffeId } : {}),
    source: r.source,
    minRefreshSeconds: r.minRefreshSeconds,
    maxRefreshSeconds: r.maxRefreshSeconds,
    staleAfterSeconds: r.staleAfterSeconds,
    bundle:
      b === undefined
        ? null
        : {
            ...(b.bundle.sequence !== undefined ? { sequence: b.bundle.sequence } : {}),
            ...(b.bundle.refreshHintSeconds !== undefined ? { refreshHintSeconds: b.bundle.refreshHintSeconds } : {}),
            x509Authorities: b.bundle.x509Authorities.length,
            jwtKeyIds: b.bundle.jwtAuthorities.map((j) => j.kid),
            fetchedAt: b.fetchedAt > 0 ? iso(b.fetchedAt) : null,
            nextRefreshAt: b.fetchedAt > 0 ? iso(b.nextRefreshAt) : null,
          },
    ageSeconds: s.ageSeconds,
    stale: s.ageSeconds > r.staleAfterSeconds,
    ...(s.lastError !== undefined ? { lastError: { message: s.lastError.message, at: iso(s.lastError.at) } } : {}),
  };
}

const OPERATOR = ['operator'] as const;

export const federationRoutes: FastifyPluginAsyncTypebox<FederationRoutesOptions> = async (app, { log, federation }) => {
  const find = (td: string): RelationshipStatus => {
    const s = federation.status().find((x) => x.relationship.trustDomain === td);
    if (s === undefined) throw new BrokerError('not_found', `trust domain ${JSON.stringify(td)} is not federated`);
    return s;
  };

  app.get(
    '/v1/admin/federation',
    {
      schema: {
        operationId: 'listFederation',
        summary: 'Federated trust domains, their bundle endpoints and the age of each last good bundle. Role auditor or operator.',
        response: { 200: described('Relationships.', Type.Object({ relationships: Type.Array(RelationshipView), audit: AuditReceipt })), ...errorResponses(...ADMIN_ERRORS) },
      },
      config: adminCall(log, READERS, 'federation.list'),
    },
    async (request) => {
      const audit = await log.allow(adminOf(request), 'federation.list', {}, request.id);
      return { relationships: federation.status().map(viewOf), audit };
    },
  );

  app.post(
    '/v1/admin/federation',
    {
      schema: {
        operationId: 'addFederation',
        summary: 'Federate with a foreign trust domain through its bundle endpoint. Role operator.',
        description: `https_web: the endpoint is authenticated as WebPKI (system CAs, or \`caPem\`). https_spiffe: the endpoint
presents an SVID \`endpointSpiffeId\` that must chain to the foreign trust domain's current bundle, starting
from \`bootstrapBundle\` (required). The first fetch starts in the background; workloads whose registration
entry lists the trust domain in \`federatesWith\` receive its bundle with their next X.509-SVID.
`,
        body: RelationshipInputSchema,
        response: { 201: described('Added.', Type.Object({ relationship: RelationshipView, audit: AuditReceipt })), ...errorResponses('BadRequest', ...ADMIN_ERRORS) },
      },
      config: adminCall(log, OPERATOR, 'federation.add'),
    },
    async (request, reply) => {
      const p = adminOf(request);
      const prepared = federation.prepareAdd(request.body, p.spiffeId);
      const audit = await log.allow(
        p,
        'federation.add',
        { subject: `spiffe://${prepared.trustDomain}`, reason: `${prepared.profile} ${prepared.bundleEndpointUrl}${prepared.endpointSpiffeId !== undefined ? ` as ${prepared.endpointSpiffeId}` : ''}` },
        request.id,
      );
      await federation.add(prepared);
      void reply.code(201);
      return { relationship: viewOf(find(prepared.trustDomain)), audit };
    },
  );

  app.get(
    '/v1/admin/federation/:trustDomain',
    {
      schema: {
        operationId: 'getFederation',
        summary: 'One federated trust domain. Role auditor or operator.',
        params: Params,
        response: { 200: described('The relationship.', Type.Object({ relationship: RelationshipView, audit: AuditReceipt })), ...errorResponses(...ADMIN_ERRORS) },
      },
      config: adminCall(log, READERS, 'federation.show'),
    },
    async (request) => {
      const s = find(request.params.trustDomain);
      const audit = await log.allow(adminOf(request), 'federation.show', { subject: `spiffe://${s.relationship.trustDomain}` }, request.id);
      return { relationship: viewOf(s), audit };
    },
  );

  app.delete(
    '/v1/admin/federation/:trustDomain',
    {
      schema: {
        operationId: 'deleteFederation',
        summary: 'Stop federating with a trust domain (its bundle is no longer delivered). Role operator.',
        params: Params,
        response: { 200: described('Deleted.', Type.Object({ deleted: Type.Boolean(), audit: AuditReceipt })), ...errorResponses(...ADMIN_ERRORS) },
      },
      config: adminCall(log, OPERATOR, 'federation.delete'),
    },
    async (request) => {
      const r = federation.prepareDelete(request.params.trustDomain);
      const audit = await log.allow(adminOf(request), 'federation.delete', { subject: `spiffe://${r.trustDomain}`, reason: r.bundleEndpointUrl }, request.id);
      await federation.remove(r.trustDomain);
      return { deleted: true, audit };
    },
  );

  app.post(
    '/v1/admin/federation/:trustDomain/refresh',
    {
      schema: {
        operationId: 'refreshFederation',
        summary: "Fetch a federated trust domain's bundle now. Role operator.",
        description: 'A fetch that fails or does not authenticate answers 502 `federation_fetch_failed`; the last good bundle stays in use.',
        params: Params,
        response: { 200: described('Fetched.', Type.Object({ relationship: RelationshipView, audit: AuditReceipt })), ...errorResponses(...ADMIN_ERRORS) },
      },
      config: adminCall(log, OPERATOR, 'federation.refresh'),
    },
    async (request) => {
      const td = find(request.params.trustDomain).relationship.trustDomain;
      const audit = await log.allow(adminOf(request), 'federation.refresh', { subject: `spiffe://${td}` }, request.id);
      await federation.refresh(td);
      return { relationship: viewOf(find(td)), audit };
    },
  );
};
