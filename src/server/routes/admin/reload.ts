/**
 * POST /v1/admin/reload (operator): re-read the config file and apply its live settings, as SIGHUP does.
 * Audited either way: applied (with what changed and what needs a restart) or refused (the error; the
 * running config is kept).
 */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { AdminAudit } from '../../../admin/audit.js';
import { badRequest } from '../../../errors.js';
import { type ConfigReloader, describeReload, LIVE_SETTINGS } from '../../../reload.js';
import { adminOf } from '../../auth.js';
import { ADMIN_ERRORS, AuditReceipt, described, errorResponses } from '../../schemas.js';
import { adminCall } from './access.js';

export interface ReloadOptions {
  readonly log: AdminAudit;
  readonly reloader: ConfigReloader;
}

const ReloadResponse = Type.Object(
  {
    applied: Type.Array(Type.String(), { description: `Live settings that changed and are now in force (of ${LIVE_SETTINGS.join(', ')}).` }),
    needsRestart: Type.Array(Type.String(), { description: 'Settings that changed in the file but keep their running value until a restart (listen, tls, ca, store, …).' }),
    audit: AuditReceipt,
  },
  { title: 'ReloadResponse' },
);

export const reloadRoutes: FastifyPluginAsyncTypebox<ReloadOptions> = async (app, { log, reloader }) => {
  app.post(
    '/v1/admin/reload',
    {
      schema: {
        operationId: 'reloadConfig',
        summary: 'Re-read the config file and apply issuers, registration entries, rate limits, alert rules and log level (as SIGHUP). Role operator.',
        description: `A config that does not load is refused (400, the error says which setting) and the running config is kept.
Requests in flight finish on the config they started with.
`,
        response: { 200: described('Reloaded.', ReloadResponse), ...errorResponses('BadRequest', ...ADMIN_ERRORS) },
      },
      config: adminCall(log, ['operator'], 'config.reload'),
    },
    async (request) => {
      let report;
      try {
        report = await reloader.reload();
      } catch (err) {
        // The refusal hook records it (deny, with this message).
        throw badRequest(describeReload(err instanceof Error ? err : new Error(String(err))));
      }
      const audit = await log.allow(adminOf(request), 'config.reload', { reason: describeReload(report) }, request.id);
      request.log.info({ applied: report.applied, needsRestart: report.needsRestart }, 'config reloaded');
      return { applied: [...report.applied], needsRestart: [...report.needsRestart], audit };
    },
  );
};
