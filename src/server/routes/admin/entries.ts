/**
 * Registration entries (role registrar or operator):
 *   POST   /v1/admin/entries          create                      → 201
 *   GET    /v1/admin/entries          list [?spiffeId=…&selector=…]
 *   GET    /v1/admin/entries/{id}     show
 *   PATCH  /v1/admin/entries/{id}     update (each field given replaces the stored one)
 *   DELETE /v1/admin/entries/{id}     delete
 * Every call is audited with the admin's identity; a change carries the entry before and after, and is
 * recorded before it is made. Config-file entries (source: config) are listed but read-only.
 */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { AdminAudit } from '../../../admin/audit.js';
import { EntryInputSchema, EntryPatchSchema, EntryViewSchema } from '../../../policy/entry.js';
import type { EntryRegistry } from '../../../policy/registry.js';
import { adminOf } from '../../auth.js';
import { ADMIN_ERRORS, AuditReceipt, described, errorResponses } from '../../schemas.js';
import { adminCall, REGISTRARS } from './access.js';

export interface EntriesOptions {
  readonly log: AdminAudit;
  readonly registry: EntryRegistry;
}

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64, description: 'Entry id (a UUID, or config-<n>).' }) });
const EntryResponse = Type.Object({ entry: EntryViewSchema, audit: AuditReceipt }, { title: 'RegistrationEntryResponse' });
const ListQuery = Type.Object(
  {
    spiffeId: Type.Optional(Type.String({ minLength: 1, maxLength: 2048, description: 'Only entries with this SPIFFE ID.' })),
    selector: Type.Optional(
      Type.Union([Type.String({ minLength: 1, maxLength: 1024 }), Type.Array(Type.String({ minLength: 1, maxLength: 1024 }), { maxItems: 32 })], {
        description: 'Only entries that have this selector (repeat for several: entries that have all of them).',
      }),
    ),
  },
  { additionalProperties: false },
);

const READ_ERRORS = errorResponses(...ADMIN_ERRORS);
const WRITE_ERRORS = errorResponses('BadRequest', ...ADMIN_ERRORS);

export const entriesRoutes: FastifyPluginAsyncTypebox<EntriesOptions> = async (app, { log, registry }) => {
  app.post(
    '/v1/admin/entries',
    {
      schema: {
        operationId: 'createEntry',
        summary: 'Register a workload: selectors → SPIFFE ID, DNS names, TTLs, JWT audiences. Role registrar or operator.',
        description: `Selectors are SPIRE-style \`type:key:value\`: \`k8s:ns\`, \`k8s:sa\`, \`k8s:pod-name\`, \`k8s:pod-uid\`,
\`k8s:pod-label:<key>:<value>\`, \`k8s:pod-annotation:<key>:<value>\`, \`k8s:node-name\`, \`k8s:container-image\`.
An entry matches a workload that has all of them. The entry is in force on every replica within a second.
Refused with 400 (naming the field): an unknown type or key, an empty key or value, a control character,
more than 32 selectors, or selectors that name neither a namespace nor a pod uid without \`allowBroad\`.
`,
        body: EntryInputSchema,
        response: { 201: described('Created; the audit entry holds it as `after`.', EntryResponse), ...WRITE_ERRORS },
      },
      config: adminCall(log, REGISTRARS, 'entry.create'),
    },
    async (request, reply) => {
      const p = adminOf(request);
      const entry = registry.prepareCreate(request.body, p.spiffeId);
      const audit = await log.allow(p, 'entry.create', { subject: entry.spiffeId, entryId: entry.id, after: entry }, request.id);
      const stored = await registry.put(entry);
      return reply.code(201).send({ entry: stored, audit });
    },
  );

  app.get(
    '/v1/admin/entries',
    {
      schema: {
        operationId: 'listEntries',
        summary: 'Registration entries: the config seed (source config) and those created through this API. Role registrar or operator.',
        querystring: ListQuery,
        response: { 200: described('The entries.', Type.Object({ entries: Type.Array(EntryViewSchema), audit: AuditReceipt })), ...READ_ERRORS },
      },
      config: adminCall(log, REGISTRARS, 'entry.list'),
    },
    async (request) => {
      const { spiffeId, selector } = request.query;
      const selectors = selector === undefined ? undefined : typeof selector === 'string' ? [selector] : selector;
      const entries = registry.list({ spiffeId, selectors });
      const audit = await log.allow(adminOf(request), 'entry.list', {}, request.id);
      return { entries, audit };
    },
  );

  app.get(
    '/v1/admin/entries/:id',
    {
      schema: {
        operationId: 'getEntry',
        summary: 'One registration entry. Role registrar or operator.',
        params: IdParams,
        response: { 200: described('The entry.', EntryResponse), ...errorResponses('NotFound', ...ADMIN_ERRORS) },
      },
      config: adminCall(log, REGISTRARS, 'entry.show'),
    },
    async (request) => {
      const entry = await registry.get(request.params.id);
      const audit = await log.allow(adminOf(request), 'entry.show', { entryId: entry.id }, request.id);
      return { entry, audit };
    },
  );

  app.patch(
    '/v1/admin/entries/:id',
    {
      schema: {
        operationId: 'updateEntry',
        summary: 'Change a registration entry (each field given replaces the stored one). Role registrar or operator.',
        description: 'Checked like a new entry. Config entries are read-only (403). The audit entry holds `before` and `after`.',
        params: IdParams,
        body: EntryPatchSchema,
        response: { 200: described('The updated entry.', EntryResponse), ...errorResponses('BadRequest', 'NotFound', ...ADMIN_ERRORS) },
      },
      config: adminCall(log, REGISTRARS, 'entry.update'),
    },
    async (request) => {
      const p = adminOf(request);
      const { before, after } = await registry.prepareUpdate(request.params.id, request.body, p.spiffeId);
      const audit = await log.allow(p, 'entry.update', { subject: after.spiffeId, entryId: after.id, before, after }, request.id);
      return { entry: await registry.put(after), audit };
    },
  );

  app.delete(
    '/v1/admin/entries/:id',
    {
      schema: {
        operationId: 'deleteEntry',
        summary: 'Delete a registration entry: no new credentials from it, on every replica within a second. Role registrar or operator.',
        description: 'Credentials already issued stay valid until they expire (revoke them with POST /v1/admin/revoke). Config entries are read-only (403).',
        params: IdParams,
        response: {
          200: described('Deleted; the audit entry holds it as `before`.', Type.Object({ deleted: Type.Boolean(), audit: AuditReceipt })),
          ...errorResponses('NotFound', ...ADMIN_ERRORS),
        },
      },
      config: adminCall(log, REGISTRARS, 'entry.delete'),
    },
    async (request) => {
      const before = await registry.prepareDelete(request.params.id);
      const audit = await log.allow(adminOf(request), 'entry.delete', { subject: before.spiffeId, entryId: before.id, before }, request.id);
      return { deleted: await registry.remove(before.id), audit };
    },
  );
};
