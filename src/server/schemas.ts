/**
 * Schemas and helpers shared by several routes (response serialization is schema-driven for speed).
 * The prose in them (title, description, examples) is what openapi.yaml says: it is generated from
 * the route schemas (src/server/openapi.ts), where a schema with a `title` becomes a named component.
 */
import { Type, type TSchema, type TUnsafe } from 'typebox';
import { ERROR_STATUS } from '../errors.js';

declare module 'fastify' {
  interface FastifySchema {
    /** The route's name in openapi.yaml (test/integration/openapi.test.ts checks they agree). */
    operationId?: string;
    /** openapi.yaml: one line on what the route does. */
    summary?: string;
    /** openapi.yaml: the details. */
    description?: string;
    /** openapi.yaml: the media types of the answer, when it is not JSON. */
    produces?: readonly string[];
  }
}

/** A string with one of `values` (`{type: string, enum}`, as JSON Schema users expect it). */
export function StringEnum<const T extends readonly string[]>(values: T, options: { description?: string; default?: T[number] } = {}): TUnsafe<T[number]> {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options });
}

export const ErrorBody = Type.Object(
  { error: StringEnum(Object.keys(ERROR_STATUS) as (keyof typeof ERROR_STATUS)[]), message: Type.String() },
  { title: 'Error' },
);

/** The refusals several routes share, by name (components.responses in openapi.yaml), each with its one status. */
export const SHARED_ERRORS = {
  BadRequest: { status: 400, description: 'Malformed JSON, schema violation, bad CSR (`invalid_csr`) or weak key (`weak_key`).' },
  BadRange: { status: 400, description: 'A malformed number, an unknown parameter, or a range outside the log (`bad_request`).' },
  Unauthenticated: { status: 401, description: 'No credential, or a token/client certificate that failed verification. Audited as a denial.' },
  AdminUnauthenticated: {
    status: 401,
    description: 'No admin client certificate, or one that failed verification, expired, or was revoked (`invalid_client_certificate`, `unauthenticated`). Audited.',
  },
  Forbidden: { status: 403, description: 'Policy grants this identity no such credential. Audited as a denial.' },
  AdminForbidden: {
    status: 403,
    description: 'A workload SVID (never accepted here), an admin ID not in admin.principals, a missing role, or a revoked admin (`forbidden`, `revoked`). Audited.',
  },
  NotFound: { status: 404, description: 'No such secret, role or lease (unknown, expired or revoked). Audited as a denial.' },
  SecretIntegrity: {
    status: 409,
    description: `\`secret_integrity_failed\`: the stored secret failed its AES-GCM integrity check (ciphertext, tag or
wrapped data key modified or corrupt). Nothing is returned; the failure is audited and logged.
Retrying does not help: an operator must write the secret again.
`,
  },
  AmbiguousRegistration: {
    status: 409,
    description: `\`ambiguous_registration\`: several registration entries match the caller equally well (same number of
selectors). The message lists the matching SPIFFE IDs; ask for one with \`spiffeId\`, or make one entry more specific.
Audited as a denial.
`,
  },
  TooLarge: { status: 413, description: 'Body over the limit (64 KiB by default).' },
  UnsupportedMediaType: { status: 415, description: 'The body is not `application/json`.' },
  RateLimited: {
    status: 429,
    description: `\`rate_limited\`: too many unauthenticated attempts from this client address, or too many requests by
this SPIFFE ID, in the current window (config \`limits:\`; see docs/operations.md). Retry after the
number of seconds in \`Retry-After\`. The first refusal of a window is audited as a denial.
`,
    headers: { 'Retry-After': { description: 'Seconds until the window resets.', schema: { type: 'integer', minimum: 1 } } },
  },
  RevokeFailed: {
    status: 502,
    description: `\`revoke_failed\`: the engine refused to drop the credential for a reason retrying cannot fix (e.g. the
broker's PostgreSQL admin role lacks a privilege; see docs/secrets.md). The lease is kept in state
\`revoke_failed\`, counted (\`tessera_lease_revoke_failures_total{kind="permanent"}\`), audited as
\`lease.revoke-failed\` (which the \`revoke-failed\` alert rule fires on), listed by
\`GET /v1/admin/leases/failed\`, and retried hourly until an operator fixes the cause.
`,
  },
  Unavailable: {
    status: 503,
    description: `The audit log or store cannot record the request (fail closed); nothing was issued. Has Retry-After.
\`audit_history_lost\`: the store no longer holds the audit history this replica knows (e.g. Redis
restarted without its data); it stays refused until an operator recovers (docs/redis.md, "Data loss").
\`witness_quorum_unavailable\`: \`audit.requireWitnesses\` is set and no quorum of witnesses has cosigned the
log within \`audit.maxWitnessLagSeconds\` (docs/audit.md, "Witnesses").
`,
  },
  SecretsUnavailable: {
    status: 503,
    description: `Fail closed, nothing issued, no lease recorded (has Retry-After): \`audit_unavailable\` / \`store_unavailable\`,
\`engine_unavailable\` (PostgreSQL unreachable or refused), or \`kek_unavailable\` (the secret is wrapped
by a KEK this replica does not have, e.g. mid-rotation).
`,
  },
} as const;

export type SharedError = keyof typeof SHARED_ERRORS;

/** A response schema carrying the response's description (for openapi.yaml; serialization ignores it). */
export function described<T extends TSchema>(description: string, schema: T): T {
  return { ...schema, description };
}

/**
 * The error responses of a route: the shared refusals it documents, each under its status, and any
 * other 4xx/5xx serialized the same way (`{error, message}`).
 */
export function errorResponses(...shared: SharedError[]): Record<string, typeof ErrorBody> {
  return {
    '4xx': ErrorBody,
    '5xx': ErrorBody,
    ...Object.fromEntries(shared.map((name) => [SHARED_ERRORS[name].status, described(SHARED_ERRORS[name].description, ErrorBody)])),
  };
}

/** The refusals of every admin route. */
export const ADMIN_ERRORS: readonly SharedError[] = ['AdminUnauthenticated', 'AdminForbidden', 'RateLimited', 'Unavailable'];

/** A list the handler may hand over as it got it (readonly arrays from the services). */
export const Strings = Type.Immutable(Type.Array(Type.String()));

/** A timestamp as the API writes it (ISO 8601, UTC, ms). */
export const DateTime = (description?: string) =>
  Type.String({ format: 'date-time', ...(description !== undefined ? { description } : {}) });

export const AuditReceipt = Type.Object(
  {
    index: Type.Integer({ minimum: 0, description: 'Index of the entry in the log.' }),
    treeSize: Type.Integer({ minimum: 1, description: "Size of the tree the root and proof are for (the checkpoint's size)." }),
    rootHash: Type.String({ description: 'Base64 SHA-256 root of the tree of size treeSize.' }),
    leafHash: Type.String({ description: 'Base64 SHA-256(0x00 ‖ canonical entry JSON).' }),
    inclusionProof: Type.Immutable(
      Type.Array(Type.String(), { description: 'RFC 9162 inclusion proof of leafHash at index in the tree of size treeSize.' }),
    ),
    checkpoint: Type.String({
      description: `The signed checkpoint (C2SP tlog-checkpoint note, Ed25519 signed-note signature) whose
tree size is treeSize and whose root is rootHash. Verify it with GET /v1/audit/key.
`,
      examples: ['example.org/tessera/audit\n12\nq3u…=\n\n— example.org/tessera/audit v76w…=\n'],
    }),
    cosignedCheckpoint: Type.Optional(
      Type.String({
        description: `Once a quorum of witnesses (audit.witnesses) has cosigned a checkpoint covering this entry: the newest
such checkpoint, with the log's signature and each witness's cosignature (C2SP tlog-cosignature).
`,
      }),
    ),
    cosignedInclusionProof: Type.Optional(
      Type.Immutable(Type.Array(Type.String(), { description: 'RFC 9162 inclusion proof of leafHash at index in the tree of cosignedCheckpoint.' })),
    ),
  },
  {
    title: 'AuditReceipt',
    description: `Where this request's audit entry sits in the Merkle log (RFC 6962 hashing, base64), proven
against a signed checkpoint: treeSize and rootHash are the checkpoint's, and the inclusion
proof leads from leafHash to that root. Keep it to prove later what you were given.
`,
  },
);

/** A decimal query parameter (the app does not coerce types): checked by pattern, range-checked by the route. */
export const DecimalString = Type.String({ pattern: '^(0|[1-9][0-9]{0,15})$' });

/** A page size of 1 to 9999 as a decimal query parameter. */
export const LimitString = Type.String({ pattern: '^[1-9][0-9]{0,3}$' });

/** The rest of a path matched by a wildcard route: a secret name "a/b/c" (the `name` parameter in openapi.yaml). */
export const WildcardParams = Type.Object({ '*': Type.String() });

export const iso = (ms: number): string => new Date(ms).toISOString();

/** Returns text as-is when it is valid UTF-8, else base64 (binary secrets survive JSON unharmed). */
export function encodeValue(value: Buffer): { value: string; encoding: 'utf8' | 'base64' } {
  const text = value.toString('utf8');
  return Buffer.from(text, 'utf8').equals(value) ? { value: text, encoding: 'utf8' } : { value: value.toString('base64'), encoding: 'base64' };
}
