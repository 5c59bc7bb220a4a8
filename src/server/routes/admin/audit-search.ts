/** GET /v1/audit/search: audit search by identity metadata (auditor); every search is itself recorded. */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { AdminAudit } from '../../../admin/audit.js';
import { parseSearchFilter, searchLog } from '../../../audit/search.js';
import { storeSource } from '../../../audit/source.js';
import type { Clock } from '../../../clock.js';
import type { Store } from '../../../store/store.js';
import { adminOf } from '../../auth.js';
import { ADMIN_ERRORS, AuditReceipt, DecimalString, described, errorResponses, LimitString } from '../../schemas.js';
import { adminCall } from './access.js';

export interface AuditSearchOptions {
  readonly log: AdminAudit;
  readonly store: Store;
  readonly clock: Clock;
}

const SearchQuery = Type.Object(
  {
    spiffeId: Type.Optional(Type.String({ maxLength: 2048, description: 'Actor or subject; a trailing /* matches a prefix.' })),
    serial: Type.Optional(Type.String({ maxLength: 256, description: 'Certificate serial, JWT jti or lease id.' })),
    since: Type.Optional(Type.String({ maxLength: 64, description: 'ISO-8601, UTC ms, or a duration ago (15m, 2h, 7d).' })),
    until: Type.Optional(Type.String({ maxLength: 64 })),
    type: Type.Optional(Type.String({ maxLength: 64 })),
    decision: Type.Optional(Type.String({ maxLength: 8, description: '`allow` or `deny`.' })),
    namespace: Type.Optional(Type.String({ maxLength: 253 })),
    limit: Type.Optional(LimitString),
    start: Type.Optional(DecimalString),
  },
  { additionalProperties: false },
);

const SearchResult = Type.Object(
  {
    hits: Type.Immutable(
      Type.Array(Type.Object({ index: Type.Integer(), entry: Type.Object({}, { additionalProperties: true, description: 'The audit entry (canonical JSON fields).' }) })),
    ),
    scanned: Type.Integer(),
    malformed: Type.Optional(Type.Integer()),
    truncated: Type.Boolean(),
    next: Type.Optional(Type.Integer({ description: 'Pass as `start` to continue when truncated.' })),
    audit: AuditReceipt,
  },
  { title: 'AuditSearchResult' },
);

export const auditSearchRoutes: FastifyPluginAsyncTypebox<AuditSearchOptions> = async (app, { log, store, clock }) => {
  app.get(
    '/v1/audit/search',
    {
      schema: {
        operationId: 'searchAuditLog',
        summary: 'Find audit entries by identity metadata (SPIFFE ID, serial/jti/lease id, time, type, decision, namespace). Role auditor.',
        description: 'The same filter as `tessera audit search`. A linear scan from `start`; at most `limit` hits (default 100). The search itself is audited.',
        querystring: SearchQuery,
        response: { 200: described('Matching entries, oldest first.', SearchResult), ...errorResponses('BadRequest', ...ADMIN_ERRORS) },
      },
      config: adminCall(log, ['auditor'], 'audit.search'),
    },
    async (request) => {
      const { limit, start, ...filterInput } = request.query;
      const filter = parseSearchFilter(filterInput, clock.now());
      const result = await searchLog(storeSource(store), filter, { limit: Number(limit ?? '100'), start: Number(start ?? '0') });
      const audit = await log.allow(adminOf(request), 'audit.search', { reason: `filter ${JSON.stringify(filterInput)}` }, request.id);
      return { ...result, audit };
    },
  );
};
