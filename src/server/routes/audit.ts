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
import type { TLSSocket } from 'node:tls';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { AdminAudit, type AdminCaller } from '../../admin/audit.js';
import { type AdminPrincipal, requireRole } from '../../admin/principals.js';
import { parseAuditEntry } from '../../audit/entry.js';
import type { Broker } from '../../broker.js';
import { BrokerError, badRequest } from '../../errors.js';
import { authenticate } from '../auth.js';
import { errorResponses } from '../schemas.js';

/** Entries or checkpoints per page, at most. */
export const AUDIT_PAGE_LIMIT = 1000;

const uint = { type: 'string', pattern: '^(0|[1-9][0-9]{0,15})$' } as const;
const hashList = { type: 'array', items: { type: 'string' } } as const;

function int(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw badRequest(`${name} is too large`);
  return n;
}

export function auditRoutes(app: FastifyInstance, broker: Broker): void {
  const { audit, checkpoints } = broker;
  const adminLog = new AdminAudit(broker.audit, broker.checkpoints, broker.clock, broker.config.replicaId);

  /**
   * Who may read entries: an admin certificate with the auditor role reads all; any other caller must
   * authenticate as a workload (authenticate() refuses no credential with 401) and reads its own.
   */
  const reader = async (request: FastifyRequest): Promise<{ scope: 'all'; admin: AdminPrincipal } | { scope: 'own'; spiffeId: string }> => {
    const peer = broker.mtls.peer(request.raw.socket as TLSSocket);
    if (peer.kind === 'admin') {
      // A refused admin read is recorded, as on /v1/admin/* (server/routes/admin.ts).
      let caller: AdminCaller = { spiffeId: peer.admin.spiffeId, source: 'admin' };
      try {
        const principal = await broker.admin.authority.authorize(peer.admin);
        caller = AdminAudit.callerOf(principal);
        requireRole(principal, ['auditor']);
        return { scope: 'all', admin: principal };
      } catch (err) {
        if (err instanceof BrokerError && err.status >= 400 && err.status < 500) await adminLog.deny(caller, 'audit.entries', err, request.id);
        throw err;
      }
    }
    const identity = await authenticate(broker, request);
    return { scope: 'own', spiffeId: identity.spiffeId };
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
  const pem = broker.checkpoints.publicKeyPem;

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

  app.get(
    '/v1/audit/checkpoint',
    { schema: { response: errorResponses } },
    async (_request, reply) => {
      const cp = checkpoints.latest;
      if (cp === undefined) throw new BrokerError('not_ready', 'no audit checkpoint has been signed yet');
      void reply.type('text/plain; charset=utf-8').header('cache-control', 'no-store');
      return cp.note;
    },
  );

  app.get<{ Querystring: { format?: 'vkey' | 'pem' } }>(
    '/v1/audit/key',
    {
      schema: {
        querystring: { type: 'object', additionalProperties: false, properties: { format: { type: 'string', enum: ['vkey', 'pem'] } } },
        response: errorResponses,
      },
    },
    async (request, reply) => {
      if (request.query.format === 'pem') {
        void reply.type('application/x-pem-file');
        return pem;
      }
      void reply.type('text/plain; charset=utf-8');
      return vkey;
    },
  );

  app.get<{ Querystring: { index: string; treeSize?: string } }>(
    '/v1/audit/proof/inclusion',
    {
      schema: {
        querystring: { type: 'object', additionalProperties: false, required: ['index'], properties: { index: uint, treeSize: uint } },
        response: {
          200: {
            type: 'object',
            required: ['index', 'treeSize', 'leafHash', 'rootHash', 'inclusionProof'],
            properties: { index: { type: 'integer' }, treeSize: { type: 'integer' }, leafHash: { type: 'string' }, rootHash: { type: 'string' }, inclusionProof: hashList },
          },
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

  app.get<{ Querystring: { from: string; to?: string } }>(
    '/v1/audit/proof/consistency',
    {
      schema: {
        querystring: { type: 'object', additionalProperties: false, required: ['from'], properties: { from: uint, to: uint } },
        response: {
          200: {
            type: 'object',
            required: ['from', 'to', 'fromRootHash', 'toRootHash', 'consistencyProof'],
            properties: { from: { type: 'integer' }, to: { type: 'integer' }, fromRootHash: { type: 'string' }, toRootHash: { type: 'string' }, consistencyProof: hashList },
          },
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

  const pageQuery = { type: 'object', additionalProperties: false, required: ['start'], properties: { start: uint, end: uint } } as const;

  app.get<{ Querystring: { start: string; end?: string } }>(
    '/v1/audit/leaves',
    {
      schema: {
        querystring: pageQuery,
        response: {
          200: {
            type: 'object',
            required: ['start', 'end', 'treeSize', 'leafHashes'],
            properties: { start: { type: 'integer' }, end: { type: 'integer' }, treeSize: { type: 'integer' }, leafHashes: hashList },
          },
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

  app.get<{ Querystring: { start: string; end?: string } }>(
    '/v1/audit/entries',
    {
      schema: {
        querystring: pageQuery,
        response: {
          200: {
            type: 'object',
            required: ['start', 'end', 'treeSize', 'scope', 'entries'],
            properties: {
              start: { type: 'integer' },
              end: { type: 'integer' },
              treeSize: { type: 'integer' },
              scope: { type: 'string', enum: ['all', 'own'] },
              entries: { type: 'array', items: { type: ['string', 'null'] } },
            },
          },
          ...errorResponses,
        },
      },
    },
    async (request) => {
      // Who first: a caller who may not read entries learns nothing, not even a range error.
      const who = await reader(request);
      const { start, end } = await page(request.query, 'entries');
      const entries = await audit.entries(start, end);
      if (who.scope === 'all') {
        // Reading the log is itself recorded, like an audit search.
        await adminLog.allow(who.admin, 'audit.entries', { reason: `entries [${start}, ${end})` }, request.id);
        // The exact canonical bytes as text: SHA-256(0x00 ‖ UTF-8 bytes) is the leaf hash.
        return { start, end, treeSize: audit.size, scope: 'all', entries: entries.map((e) => e.toString('utf8')) };
      }
      // A workload sees its own entries; every other one is withheld as null (its leaf hash is public).
      const own = (bytes: Buffer): boolean => {
        try {
          const e = parseAuditEntry(bytes);
          return e.actor === who.spiffeId || e.subject === who.spiffeId;
        } catch {
          return false; // a malformed entry is nobody's: an auditor sees it
        }
      };
      return { start, end, treeSize: audit.size, scope: 'own', entries: entries.map((e) => (own(e) ? e.toString('utf8') : null)) };
    },
  );

  app.get<{ Querystring: { start?: string; end?: string } }>(
    '/v1/audit/checkpoints',
    {
      schema: {
        querystring: { type: 'object', additionalProperties: false, properties: { start: uint, end: uint } },
        response: {
          200: {
            type: 'object',
            required: ['start', 'end', 'total', 'checkpoints'],
            properties: { start: { type: 'integer' }, end: { type: 'integer' }, total: { type: 'integer' }, checkpoints: { type: 'array', items: { type: 'string' } } },
          },
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const start = int(request.query.start, 'start') ?? 0;
      const all = await broker.store.listCheckpoints();
      const end = int(request.query.end, 'end') ?? Math.min(start + AUDIT_PAGE_LIMIT, all.length);
      if (start > end) throw badRequest(`start must not exceed end (start=${start}, end=${end})`);
      if (end - start > AUDIT_PAGE_LIMIT) throw badRequest(`at most ${AUDIT_PAGE_LIMIT} checkpoints per page`);
      if (end > all.length) throw badRequest(`end=${end} is beyond the ${all.length} stored checkpoints`);
      return { start, end, total: all.length, checkpoints: all.slice(start, end) };
    },
  );
}
