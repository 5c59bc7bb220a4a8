/** GET /v1/admin/whoami: who the broker thinks you are, and your roles (any role). */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { AdminAudit } from '../../../admin/audit.js';
import { adminOf } from '../../auth.js';
import { AuditReceipt, errorResponses, iso } from '../../schemas.js';
import { adminCall, ANY_ROLE } from './access.js';

const WhoAmI = Type.Object({
  spiffeId: Type.String(),
  roles: Type.Array(Type.String()),
  via: Type.String(),
  ticket: Type.Optional(Type.String()),
  serial: Type.Optional(Type.String()),
  expiresAt: Type.String(),
  audit: AuditReceipt,
});

export const whoamiRoutes: FastifyPluginAsyncTypebox<{ readonly log: AdminAudit }> = async (app, { log }) => {
  app.get(
    '/v1/admin/whoami',
    { schema: { operationId: 'adminWhoami', response: { 200: WhoAmI, ...errorResponses } }, config: adminCall(log, ANY_ROLE, 'whoami') },
    async (request) => {
      const p = adminOf(request);
      const audit = await log.allow(p, 'whoami', {}, request.id);
      return {
        spiffeId: p.spiffeId,
        roles: [...p.roles].sort(),
        via: p.via,
        ...(p.ticket !== undefined ? { ticket: p.ticket } : {}),
        serial: p.serial,
        expiresAt: iso(p.expiresAt),
        audit,
      };
    },
  );
};
