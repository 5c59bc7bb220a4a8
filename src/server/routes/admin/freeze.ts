/**
 * The kill switch:
 *   GET  /v1/admin/freeze   freeze status                  (auditor, operator)
 *   POST /v1/admin/freeze   {namespace?, reason}           (operator)
 *   POST /v1/admin/thaw     {namespace?, reason}           (operator)
 */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { AdminAudit } from '../../../admin/audit.js';
import { checkNamespace, type IssuanceFreeze } from '../../../admin/freeze.js';
import { adminOf } from '../../auth.js';
import { ADMIN_ERRORS, AuditReceipt, DateTime, described, errorResponses, iso } from '../../schemas.js';
import { adminCall, READERS } from './access.js';
import { Reason } from './revocations.js';

export interface FreezeOptions {
  readonly log: AdminAudit;
  readonly freeze: IssuanceFreeze;
}

const Freeze = Type.Object(
  { namespace: Type.Optional(Type.String({ description: 'Absent for the global freeze.' })), reason: Type.String(), by: Type.String(), at: DateTime() },
  { title: 'Freeze' },
);

const FreezeBody = Type.Object(
  {
    namespace: Type.Optional(Type.String({ minLength: 1, maxLength: 253, description: 'Freeze (or thaw) only this namespace; omit for everything.' })),
    reason: Reason,
  },
  { additionalProperties: false, title: 'FreezeRequest' },
);

const WITH_BODY_ERRORS = errorResponses('BadRequest', ...ADMIN_ERRORS);

function freezeOut(r: { namespace?: string; reason: string; by: string; at: number }): { namespace?: string; reason: string; by: string; at: string } {
  return { ...(r.namespace !== undefined ? { namespace: r.namespace } : {}), reason: r.reason, by: r.by, at: iso(r.at) };
}

export const freezeRoutes: FastifyPluginAsyncTypebox<FreezeOptions> = async (app, { log, freeze }) => {
  app.get(
    '/v1/admin/freeze',
    {
      schema: {
        operationId: 'getFreezeStatus',
        summary: 'Is issuance frozen (globally, per namespace)? Role auditor or operator.',
        response: {
          200: described(
            'Freeze status.',
            Type.Object({ frozen: Type.Boolean(), global: Type.Union([Freeze, Type.Null()]), namespaces: Type.Array(Freeze), audit: AuditReceipt }),
          ),
          ...errorResponses(...ADMIN_ERRORS),
        },
      },
      config: adminCall(log, READERS, 'freeze.status'),
    },
    async (request) => {
      const s = await freeze.status();
      const audit = await log.allow(adminOf(request), 'freeze.status', {}, request.id);
      return {
        frozen: s.global !== null || s.namespaces.length > 0,
        global: s.global !== null ? freezeOut(s.global) : null,
        namespaces: s.namespaces.map(freezeOut),
        audit,
      };
    },
  );

  app.post(
    '/v1/admin/freeze',
    {
      schema: {
        operationId: 'freeze',
        summary: 'The kill switch — freeze issuance globally or for one namespace. Role operator.',
        description: `While frozen, new X.509-SVIDs, JWT-SVIDs and secret leases get 503 \`issuance_frozen\` (on every
replica, read per request). The state is in the store and survives restarts. Break-glass is not
blocked by a freeze.
`,
        body: FreezeBody,
        response: { 200: described('Frozen.', Type.Object({ freeze: Freeze, audit: AuditReceipt })), ...WITH_BODY_ERRORS },
      },
      config: adminCall(log, ['operator'], 'freeze'),
    },
    async (request) => {
      const p = adminOf(request);
      const { namespace, reason: why } = request.body;
      if (namespace !== undefined) checkNamespace(namespace);
      const audit = await log.allow(p, 'freeze', { ...(namespace !== undefined ? { namespace } : {}), reason: why }, request.id);
      const record = await freeze.freeze({ ...(namespace !== undefined ? { namespace } : {}), reason: why, by: p.spiffeId, requestId: request.id });
      return { freeze: freezeOut(record), audit };
    },
  );

  app.post(
    '/v1/admin/thaw',
    {
      schema: {
        operationId: 'thaw',
        summary: "Lift the global freeze, or one namespace's. Role operator.",
        body: FreezeBody,
        response: { 200: described('`thawed` is false if it was not frozen.', Type.Object({ thawed: Type.Boolean(), audit: AuditReceipt })), ...WITH_BODY_ERRORS },
      },
      config: adminCall(log, ['operator'], 'thaw'),
    },
    async (request) => {
      const { namespace, reason: why } = request.body;
      if (namespace !== undefined) checkNamespace(namespace);
      const audit = await log.allow(adminOf(request), 'thaw', { ...(namespace !== undefined ? { namespace } : {}), reason: why }, request.id);
      return { thawed: await freeze.thaw(namespace), audit };
    },
  );
};
