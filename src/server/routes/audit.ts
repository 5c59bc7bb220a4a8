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
import type { SignedCheckpoint } from '../../audit/note.js';
import type { WitnessCollector } from '../../audit/witnesses.js';
import { BrokerError, badRequest } from '../../errors.js';
import type { Store } from '../../store/store.js';
import { identityOf } from '../auth.js';
import type { RefusalRecorder } from '../refusals.js';
import { DecimalString, described, errorResponses, StringEnum } from '../schemas.js';

/** Entries or checkpoints per page, at most. */
export const AUDIT_PAGE_LIMIT = 1000;

const HashList = (description: string) => Type.Array(Type.String(), { description });

const Size = (description?: string) => Type.Integer({ minimum: 0, ...(description !== undefined ? { description } : {}) });

const PageQuery = Type.Object({ start: DecimalString, end: Type.Optional(DecimalString) }, { additionalProperties: false });

const InclusionProof = Type.Object(
  {
    index: Size(),
    treeSize: Type.Integer({ minimum: 1 }),
    leafHash: Type.String({ description: 'Base64 leaf hash of entry `index`.' }),
    rootHash: Type.String({ description: 'Base64 root of the tree of size treeSize.' }),
    inclusionProof: HashList("RFC 9162 PATH(index, D[0:treeSize]), leaf's sibling first."),
    checkpoint: Type.Optional(Type.String({ description: 'With `cosigned=k`: the cosigned checkpoint (size treeSize) the proof is for.' })),
  },
  { title: 'InclusionProof' },
);

const ConsistencyProof = Type.Object(
  { from: Size(), to: Size(), fromRootHash: Type.String(), toRootHash: Type.String(), consistencyProof: HashList('RFC 9162 PROOF(from, D[0:to]).') },
  { title: 'ConsistencyProof' },
);

const AuditLeaves = Type.Object(
  {
    start: Size(),
    end: Size('Exclusive.'),
    treeSize: Size('Entries in the log when answered.'),
    leafHashes: Type.Array(Type.String(), { maxItems: AUDIT_PAGE_LIMIT, description: 'Base64 leaf hash of entry `start + i`, SHA-256(0x00 ‖ entry bytes).' }),
  },
  { title: 'AuditLeaves' },
);

const AuditEntries = Type.Object(
  {
    start: Size(),
    end: Size('Exclusive.'),
    treeSize: Size('Entries in the log when answered.'),
    scope: StringEnum(['all', 'own'], {
      description: '`all` for an auditor; `own` for a workload: only entries whose actor or subject is its SPIFFE ID, every other one `null`.',
    }),
    entries: Type.Array(Type.Unsafe<string | null>({ type: ['string', 'null'] }), {
      maxItems: AUDIT_PAGE_LIMIT,
      description: `Entry \`start + i\` as its exact canonical JSON text (sorted keys, no whitespace), or \`null\`
when withheld from this caller (its leaf hash is public: GET /v1/audit/leaves). The leaf
hash is SHA-256(0x00 ‖ UTF-8 bytes of the text); JSON.parse it to read the fields.
`,
    }),
  },
  { title: 'AuditEntries' },
);

const AuditCheckpoints = Type.Object(
  {
    start: Size(),
    end: Size(),
    total: Size('Checkpoints stored in all.'),
    checkpoints: Type.Array(Type.String(), { maxItems: AUDIT_PAGE_LIMIT, description: 'Signed checkpoint notes, in the order they were stored.' }),
  },
  { title: 'AuditCheckpoints' },
);

/** A checkpoint note as the API shows it. */
const CHECKPOINT_EXAMPLE = 'example.org/tessera/audit\n12\nq3u…=\n\n— example.org/tessera/audit v76w…=\n';

const PUBLIC_ERRORS = errorResponses('BadRange', 'Unavailable');

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
  /** Cosigned checkpoints (absent when no witnesses are configured). */
  readonly witnesses?: Pick<WitnessCollector, 'newest' | 'witnessCount'>;
}

export const auditRoutes: FastifyPluginAsyncTypebox<AuditOptions> = async (app, { audit, checkpoints, store, adminLog, witnesses }) => {
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

  const latestCheckpoint = (): SignedCheckpoint => {
    const cp = checkpoints.latest;
    if (cp === undefined) throw new BrokerError('not_ready', 'no audit checkpoint has been signed yet');
    return cp;
  };
  const latestSize = (): number => latestCheckpoint().size;

  /** The newest checkpoint at least `k` (≥ 1) configured witnesses cosigned. */
  const cosignedCheckpoint = async (k: number): Promise<SignedCheckpoint> => {
    const n = witnesses?.witnessCount ?? 0;
    if (witnesses === undefined || k > n) throw badRequest(`cosigned=${k}: ${n === 0 ? 'no witnesses are configured (audit.witnesses)' : `only ${n} witness(es) are configured`}`);
    const cp = await witnesses.newest(k);
    if (cp === undefined) throw new BrokerError('not_ready', `no audit checkpoint has been cosigned by ${k} witness(es) yet`);
    return cp;
  };

  /** `size` must be a size of the log; catches up with other replicas before refusing. */
  const ensureSize = async (size: number, name: string): Promise<void> => {
    if (size > audit.size) await audit.refresh();
    if (size > audit.size) throw badRequest(`${name}=${size} is beyond the log (it has ${audit.size} entries)`);
  };

  app.get(
    '/v1/audit/checkpoint',
    {
      schema: {
        operationId: 'getAuditCheckpoint',
        summary: 'The latest signed checkpoint of the audit log (C2SP tlog-checkpoint).',
        description: `A signed note: origin line, decimal tree size, base64 root hash, an empty line, then
\`— <origin> <base64(4-byte key ID ‖ Ed25519 signature)>\`. Verify it with GET /v1/audit/key.
A new checkpoint is signed at most every \`audit.checkpointIntervalMs\` while the log grows,
on demand for issuance receipts, and on shutdown.
With \`cosigned=k\` (k ≥ 1): the newest checkpoint that at least k of the configured witnesses
(\`audit.witnesses\`) have cosigned, with their cosignature lines (C2SP tlog-cosignature) after the
log's signature; 503 \`not_ready\` until there is one.
`,
        querystring: Type.Object(
          { cosigned: Type.Optional({ ...DecimalString, description: 'Least number of witness cosignatures (default 0: the latest signed checkpoint).' }) },
          { additionalProperties: false },
        ),
        produces: ['text/plain'],
        response: { 200: described('The checkpoint note.', Type.String({ examples: [CHECKPOINT_EXAMPLE] })), ...errorResponses('BadRange', 'Unavailable') },
      },
    },
    async (request, reply) => {
      const k = int(request.query.cosigned, 'cosigned') ?? 0;
      const note = k > 0 ? (await cosignedCheckpoint(k)).note : latestCheckpoint().note;
      return reply.type('text/plain; charset=utf-8').header('cache-control', 'no-store').send(note);
    },
  );

  app.get(
    '/v1/audit/key',
    {
      schema: {
        operationId: 'getAuditKey',
        summary: "The audit log's Ed25519 public key (kept apart from every CA key).",
        description: `Default (\`format=vkey\`): the C2SP/Go-note verifier key \`<origin>+<8 hex key ID>+<base64(0x01 ‖ 32-byte key)>\`,
one line, the same text as \`certs-dev/audit.pub\` in dev; \`tessera audit verify --key\` reads it.
\`format=pem\`: the same key as an SPKI PEM public key.
`,
        querystring: Type.Object({ format: Type.Optional(StringEnum(['vkey', 'pem'], { default: 'vkey' })) }, { additionalProperties: false }),
        produces: ['text/plain', 'application/x-pem-file'],
        response: { 200: described('The public key.', Type.String()), ...errorResponses('BadRange') },
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
        summary: 'RFC 9162 inclusion proof of entry `index` in the tree of size `treeSize`.',
        description: `With \`cosigned=k\` instead of treeSize: the proof against the newest checkpoint that k witnesses
cosigned, returned with it — how a receipt issued before its entry was witnessed gets a cosigned
checkpoint later (400 while none covers the entry yet).
`,
        querystring: Type.Object(
          {
            index: DecimalString,
            treeSize: Type.Optional({ ...DecimalString, description: "Default the latest checkpoint's size." }),
            cosigned: Type.Optional({ ...DecimalString, description: 'Prove against the newest checkpoint with at least this many witness cosignatures.' }),
          },
          { additionalProperties: false },
        ),
        response: { 200: described('The proof, the leaf hash and the root it leads to.', InclusionProof), ...PUBLIC_ERRORS },
      },
    },
    async (request) => {
      const index = int(request.query.index, 'index') as number;
      const k = int(request.query.cosigned, 'cosigned') ?? 0;
      if (k > 0) {
        if (request.query.treeSize !== undefined) throw badRequest('give treeSize or cosigned, not both');
        const cp = await cosignedCheckpoint(k);
        if (index >= cp.size) throw badRequest(`no checkpoint cosigned by ${k} witness(es) covers entry ${index} yet (the newest has size ${cp.size})`);
        await ensureSize(cp.size, 'treeSize');
        return {
          index,
          treeSize: cp.size,
          leafHash: audit.leafHash(index).toString('base64'),
          rootHash: cp.rootHash.toString('base64'),
          inclusionProof: audit.inclusionProof(index, cp.size).map((h) => h.toString('base64')),
          checkpoint: cp.note,
        };
      }
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
        summary: 'RFC 9162 consistency proof between the trees of sizes `from` and `to`.',
        querystring: Type.Object(
          { from: DecimalString, to: Type.Optional({ ...DecimalString, description: "Default the latest checkpoint's size." }) },
          { additionalProperties: false },
        ),
        response: { 200: described('The proof and both roots.', ConsistencyProof), ...PUBLIC_ERRORS },
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
        summary: 'Leaf hashes of entries [start, end), at most 1000 per page. Public.',
        description: `Without \`end\`, up to 1000 from \`start\`. With the checkpoints and proofs, enough to verify every
receipt and every checkpoint (\`tessera audit verify --log URL\` without credentials), and to name
the exact first bad entry of an export; a leaf hash says nothing about what the entry says.
`,
        querystring: PageQuery,
        response: { 200: described('The leaf hashes.', AuditLeaves), ...PUBLIC_ERRORS },
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
        summary: 'Audit entries [start, end), at most 1000 per page. Role auditor (all), or a workload (its own).',
        description: `Not public: entries name workloads, pods, secrets, leases and admins. An admin certificate with
the role auditor reads every entry (each read is itself audited); a workload (token or SVID) reads
the entries whose actor or subject is its own SPIFFE ID, the others are \`null\`. Without \`end\`, up
to 1000 entries from \`start\` (fewer at the end of the log).
`,
        querystring: PageQuery,
        response: { 200: described('The entries.', AuditEntries), ...errorResponses('BadRange', 'Unauthenticated', 'AdminForbidden', 'RateLimited', 'Unavailable') },
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
        summary: 'Every stored signed checkpoint, in stored order, at most 1000 per page.',
        description: 'The verifier reads these to check that each later checkpoint is consistent with each earlier one.',
        querystring: Type.Object({ start: Type.Optional({ ...DecimalString, default: '0' }), end: Type.Optional(DecimalString) }, { additionalProperties: false }),
        response: { 200: described('The checkpoint notes.', AuditCheckpoints), ...PUBLIC_ERRORS },
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
