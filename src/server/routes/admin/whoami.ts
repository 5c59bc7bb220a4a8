/** GET /v1/admin/whoami: who the broker thinks you are, and your roles (any role). */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { AdminAudit } from '../../../admin/audit.js';
import { adminOf } from '../../auth.js';
import { ADMIN_ERRORS, AuditReceipt, DateTime, described, errorResponses, iso, StringEnum } from '../../schemas.js';
import { adminCall, ANY_ROLE } from './access.js';

const WhoAmI = Type.Object(
  {
    spiffeId: Type.String({ examples: ['spiffe://example.org/admin/alice'] }),
    roles: Type.Array(StringEnum(ANY_ROLE)),
    via: StringEnum(['certificate', 'break-glass']),
    ticket: Type.Optional(Type.String({ description: 'Break-glass certificates only.' })),
    serial: Type.Optional(Type.String()),
    expiresAt: DateTime(),
    audit: AuditReceipt,
  },
  { title: 'AdminWhoami' },
);

export const whoamiRoutes: FastifyPluginAsyncTypebox<{ readonly log: AdminAudit }> = async (app, { log }) => {
  app.get(
    '/v1/admin/whoami',
    {
      schema: {
        operationId: 'adminWhoami',
        summary: 'Who the broker thinks you are (admin ID, roles, certificate expiry). Any admin role.',
        description: 'A cheap way to check an admin or break-glass certificate works. Audited like every admin call.',
        response: { 200: described('The admin principal.', WhoAmI), ...errorResponses(...ADMIN_ERRORS) },
      },
      config: adminCall(log, ANY_ROLE, 'whoami'),
    },
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
