/**
 * The audit log's read API. Public: the latest signed checkpoint, the audit public key, RFC 9162
 * inclusion and consistency proofs, paged checkpoints and paged leaf hashes — enough to verify every
 * receipt and that every checkpoint extends the last, and nothing that says who did what.
 * Not public: the entries themselves (SPIFFE IDs, pods, secret names, lease ids, admin reasons,
 * break-glass tickets). They go to an admin with the auditor role (admin mTLS; each read is audited)
 * and, for a workload (token or SVID), to the entries whose actor or subject is its own SPIFFE ID.
 *
 * Query parameters are decimal strings checked by pattern (the app does not coerce types), then
 * range-checked here: every bad range is a 400 bad_request, never a 500.
 */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { AdminAudit } from '../../admin/audit.js';
import type { Checkpointer } from '../../audit/checkpointer.js';
import { parseAuditEntry } from '../../audit/entry.js';
import type { AuditLog } from '../../audit/log.js';
import { BrokerError, badRequest } from '../../errors.js';
import type { Store } from '../../store/store.js';
import { identityOf } from '../auth.js';
import type { RefusalRecorder } from '../refusals.js';
import { DecimalString, errorResponses, StringEnum } from '../schemas.js';

/** Entries or checkpoints per page, at most. */
export const AUDIT_PAGE_LIMIT = 1000;

const HashList = Type.Array(Type.String());

const PageQuery = Type.Object({ start: DecimalString, end: Type.Optional(DecimalString) }, { additionalProperties: false });

function int(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw badRequest(`${name} is too large`);
  return n;
}

export interface AuditOptions {
  readonly audit: AuditLog;
  readonly checkpoints: Checkpointer;
  readonly store: Pick<Store, 'listCheckpoints'>;
  /** Records admin reads of the entries. */
  readonly adminLog: AdminAudit;
}

export const auditRoutes: FastifyPluginAsyncTypebox<AuditOptions> = async (app, { audit, checkpoints, store, adminLog }) => {
  /** A refused admin read is recorded, as on /v1/admin/*; a workload's is not (it reads only its own). */
  const entriesRefusal: RefusalRecorder = async (err, request) => {
    const caller = request.caller;
    if (caller?.adminCaller !== undefined && caller.admin === undefined) await adminLog.deny(caller.adminCaller, 'audit.entries', err, request.id);
  };
  /** The page [start, end) of the log as it is now (refreshed: another replica may have appended). */
  const page = async (q: { start: string; end?: string }, what: string): Promise<{ start: number; end: number }> => {
    const start = int(q.start, 'start') as number;
    let end = int(q.end, 'end');
    // treeSize must be the log's size, not this replica's last view of it: another replica may have
    // appended (and signed a checkpoint over) entries this one has not read yet.
    await audit.refresh();
    if (end === undefined) {
      end = Math.min(start + AUDIT_PAGE_LIMIT, audit.size);
      if (start > end) throw badRequest(`start=${start} is beyond the log (it has ${audit.size} entries)`);
    }
    if (start > end) throw badRequest(`start must not exceed end (start=${start}, end=${end})`);
    if (end - start > AUDIT_PAGE_LIMIT) throw badRequest(`at most ${AUDIT_PAGE_LIMIT} ${what} per page (end - start = ${end - start})`);
    await ensureSize(end, 'end');
    return { start, end };
  };
  const vkey = `${checkpoints.verifierKey}\n`;
  const pem = checkpoints.publicKeyPem;

  const latestSize = (): number => {
    const cp = checkpoints.latest;
    if (cp === undefined) throw new BrokerError('not_ready', 'no audit checkpoint has been signed yet');
    return cp.size;
  };

  /** `size` must be a size of the log; catches up with other replicas before refusing. */
  const ensureSize = async (size: number, name: string): Promise<void> => {
    if (size > audit.size) await audit.refresh();
    if (size > audit.size) throw badRequest(`${name}=${size} is beyond the log (it has ${audit.size} entries)`);
  };

  app.get('/v1/audit/checkpoint', { schema: { operationId: 'getAuditCheckpoint', response: { 200: Type.String(), ...errorResponses } } }, async (_request, reply) => {
    const cp = checkpoints.latest;
    if (cp === undefined) throw new BrokerError('not_ready', 'no audit checkpoint has been signed yet');
    return reply.type('text/plain; charset=utf-8').header('cache-control', 'no-store').send(cp.note);
  });

  app.get(
    '/v1/audit/key',
    {
      schema: {
        operationId: 'getAuditKey',
        querystring: Type.Object({ format: Type.Optional(StringEnum(['vkey', 'pem'])) }, { additionalProperties: false }),
        response: { 200: Type.String(), ...errorResponses },
      },
    },
    async (request, reply) => {
      if (request.query.format === 'pem') return reply.type('application/x-pem-file').send(pem);
      return reply.type('text/plain; charset=utf-8').send(vkey);
    },
  );

  app.get(
    '/v1/audit/proof/inclusion',
    {
      schema: {
        operationId: 'getInclusionProof',
        querystring: Type.Object({ index: DecimalString, treeSize: Type.Optional(DecimalString) }, { additionalProperties: false }),
        response: {
          200: Type.Object({ index: Type.Integer(), treeSize: Type.Integer(), leafHash: Type.String(), rootHash: Type.String(), inclusionProof: HashList }),
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const index = int(request.query.index, 'index') as number;
      const treeSize = int(request.query.treeSize, 'treeSize') ?? latestSize();
      await ensureSize(treeSize, 'treeSize');
      if (index >= treeSize) throw badRequest(`index must be below treeSize (index=${index}, treeSize=${treeSize})`);
      return {
        index,
        treeSize,
        leafHash: audit.leafHash(index).toString('base64'),
        rootHash: audit.root(treeSize).toString('base64'),
        inclusionProof: audit.inclusionProof(index, treeSize).map((h) => h.toString('base64')),
      };
    },
  );

  app.get(
    '/v1/audit/proof/consistency',
    {
      schema: {
        operationId: 'getConsistencyProof',
        querystring: Type.Object({ from: DecimalString, to: Type.Optional(DecimalString) }, { additionalProperties: false }),
        response: {
          200: Type.Object({ from: Type.Integer(), to: Type.Integer(), fromRootHash: Type.String(), toRootHash: Type.String(), consistencyProof: HashList }),
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const from = int(request.query.from, 'from') as number;
      const to = int(request.query.to, 'to') ?? latestSize();
      if (from > to) throw badRequest(`from must not exceed to (from=${from}, to=${to})`);
      await ensureSize(to, 'to');
      return {
        from,
        to,
        fromRootHash: audit.root(from).toString('base64'),
        toRootHash: audit.root(to).toString('base64'),
        consistencyProof: audit.consistencyProof(from, to).map((h) => h.toString('base64')),
      };
    },
  );

  app.get(
    '/v1/audit/leaves',
    {
      schema: {
        operationId: 'listLeafHashes',
        querystring: PageQuery,
        response: {
          200: Type.Object({ start: Type.Integer(), end: Type.Integer(), treeSize: Type.Integer(), leafHashes: HashList }),
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const { start, end } = await page(request.query, 'leaf hashes');
      const leafHashes: string[] = [];
      for (let i = start; i < end; i++) leafHashes.push(audit.leafHash(i).toString('base64'));
      return { start, end, treeSize: audit.size, leafHashes };
    },
  );

  app.get(
    '/v1/audit/entries',
    {
      schema: {
        operationId: 'listAuditEntries',
        querystring: PageQuery,
        response: {
          200: Type.Object({
            start: Type.Integer(),
            end: Type.Integer(),
            treeSize: Type.Integer(),
            scope: StringEnum(['all', 'own']),
            entries: Type.Array(Type.Unsafe<string | null>({ type: ['string', 'null'] })),
          }),
          ...errorResponses,
        },
      },
      // Who first (the auth hook): a caller who may not read entries learns nothing, not even a range error.
      config: { auth: 'auditor-or-workload', refusal: entriesRefusal },
    },
    async (request) => {
      const { start, end } = await page(request.query, 'entries');
      const entries = await audit.entries(start, end);
      const admin = request.caller?.admin;
      if (admin !== undefined) {
        // Reading the log is itself recorded, like an audit search.
        await adminLog.allow(admin, 'audit.entries', { reason: `entries [${start}, ${end})` }, request.id);
        // The exact canonical bytes as text: SHA-256(0x00 ‖ UTF-8 bytes) is the leaf hash.
        return { start, end, treeSize: audit.size, scope: 'all' as const, entries: entries.map((e) => e.toString('utf8')) };
      }
      // A workload sees its own entries; every other one is withheld as null (its leaf hash is public).
      const { spiffeId } = identityOf(request);
      const own = (bytes: Buffer): boolean => {
        try {
          const e = parseAuditEntry(bytes);
          return e.actor === spiffeId || e.subject === spiffeId;
        } catch {
          return false; // a malformed entry is nobody's: an auditor sees it
        }
      };
      return { start, end, treeSize: audit.size, scope: 'own' as const, entries: entries.map((e) => (own(e) ? e.toString('utf8') : null)) };
    },
  );

  app.get(
    '/v1/audit/checkpoints',
    {
      schema: {
        operationId: 'listAuditCheckpoints',
        querystring: Type.Object({ start: Type.Optional(DecimalString), end: Type.Optional(DecimalString) }, { additionalProperties: false }),
        response: {
          200: Type.Object({ start: Type.Integer(), end: Type.Integer(), total: Type.Integer(), checkpoints: Type.Array(Type.String()) }),
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const start = int(request.query.start, 'start') ?? 0;
      const all = await store.listCheckpoints();
      const end = int(request.query.end, 'end') ?? Math.min(start + AUDIT_PAGE_LIMIT, all.length);
      if (start > end) throw badRequest(`start must not exceed end (start=${start}, end=${end})`);
      if (end - start > AUDIT_PAGE_LIMIT) throw badRequest(`at most ${AUDIT_PAGE_LIMIT} checkpoints per page`);
      if (end > all.length) throw badRequest(`end=${end} is beyond the ${all.length} stored checkpoints`);
      return { start, end, total: all.length, checkpoints: all.slice(start, end) };
    },
  );
};
