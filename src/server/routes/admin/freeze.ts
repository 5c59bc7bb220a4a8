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
import { AuditReceipt, errorResponses, iso } from '../../schemas.js';
import { adminCall, READERS } from './access.js';
import { Reason } from './revocations.js';

export interface FreezeOptions {
  readonly log: AdminAudit;
  readonly freeze: IssuanceFreeze;
}

const Freeze = Type.Object({ namespace: Type.Optional(Type.String()), reason: Type.String(), by: Type.String(), at: Type.String() });

const FreezeBody = Type.Object({ namespace: Type.Optional(Type.String({ minLength: 1, maxLength: 253 })), reason: Reason }, { additionalProperties: false });

function freezeOut(r: { namespace?: string; reason: string; by: string; at: number }): { namespace?: string; reason: string; by: string; at: string } {
  return { ...(r.namespace !== undefined ? { namespace: r.namespace } : {}), reason: r.reason, by: r.by, at: iso(r.at) };
}

export const freezeRoutes: FastifyPluginAsyncTypebox<FreezeOptions> = async (app, { log, freeze }) => {
  app.get(
    '/v1/admin/freeze',
    {
      schema: {
        operationId: 'getFreezeStatus',
        response: {
          200: Type.Object({ frozen: Type.Boolean(), global: Type.Union([Freeze, Type.Null()]), namespaces: Type.Array(Freeze), audit: AuditReceipt }),
          ...errorResponses,
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
      schema: { operationId: 'freeze', body: FreezeBody, response: { 200: Type.Object({ freeze: Freeze, audit: AuditReceipt }), ...errorResponses } },
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
      schema: { operationId: 'thaw', body: FreezeBody, response: { 200: Type.Object({ thawed: Type.Boolean(), audit: AuditReceipt }), ...errorResponses } },
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
