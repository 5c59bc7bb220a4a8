/**
 * The audit log's public read API: the latest signed checkpoint, the audit public key, RFC 9162
 * inclusion and consistency proofs, and paged entries and checkpoints. Nothing here needs the
 * signing key or can change the log; what a reader gets is checkable against the public key alone.
 *
 * Query parameters are decimal strings checked by pattern (the app does not coerce types), then
 * range-checked here: every bad range is a 400 bad_request, never a 500.
 */
import type { FastifyInstance } from 'fastify';
import type { Broker } from '../../broker.js';
import { BrokerError, badRequest } from '../../errors.js';
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
  const vkey = `${checkpoints.verifierKey}\n`;
  const pem = broker.checkpoints.publicKeyPem;

  const latestSize = (): number => {
    const cp = checkpoints.latest;
    if (cp === undefined) throw new BrokerError('not_ready', 503, 'no audit checkpoint has been signed yet');
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
      if (cp === undefined) throw new BrokerError('not_ready', 503, 'no audit checkpoint has been signed yet');
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

  app.get<{ Querystring: { start: string; end?: string } }>(
    '/v1/audit/entries',
    {
      schema: {
        querystring: { type: 'object', additionalProperties: false, required: ['start'], properties: { start: uint, end: uint } },
        response: {
          200: {
            type: 'object',
            required: ['start', 'end', 'treeSize', 'entries'],
            properties: { start: { type: 'integer' }, end: { type: 'integer' }, treeSize: { type: 'integer' }, entries: { type: 'array', items: { type: 'string' } } },
          },
          ...errorResponses,
        },
      },
    },
    async (request) => {
      const start = int(request.query.start, 'start') as number;
      let end = int(request.query.end, 'end');
      // treeSize must be the log's size, not this replica's last view of it: another replica may have
      // appended (and signed a checkpoint over) entries this one has not read yet.
      await audit.refresh();
      if (end === undefined) {
        end = Math.min(start + AUDIT_PAGE_LIMIT, audit.size);
        if (start > end) throw badRequest(`start=${start} is beyond the log (it has ${audit.size} entries)`);
      }
      if (start > end) throw badRequest(`start must not exceed end (start=${start}, end=${end})`);
      if (end - start > AUDIT_PAGE_LIMIT) throw badRequest(`at most ${AUDIT_PAGE_LIMIT} entries per page (end - start = ${end - start})`);
      await ensureSize(end, 'end');
      const entries = await audit.entries(start, end);
      // The exact canonical bytes as text: SHA-256(0x00 ‖ UTF-8 bytes) is the leaf hash.
      return { start, end, treeSize: audit.size, entries: entries.map((e) => e.toString('utf8')) };
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
