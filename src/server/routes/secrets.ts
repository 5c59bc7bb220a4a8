/**
 * Secrets, for workloads (SA token or SVID over mTLS):
 *   GET  /v1/secrets/<name…>                 a static secret under a new lease
 *   POST /v1/secrets/postgres/<role>/creds   fresh PostgreSQL credentials under a new lease
 *   POST /v1/secrets/mysql/<role>/creds      fresh MariaDB / MySQL credentials under a new lease
 *   POST /v1/secrets/redis/<role>/creds      a fresh Redis ACL user under a new lease
 *   POST /v1/secrets/rabbitmq/<role>/creds   a fresh RabbitMQ user under a new lease
 * Every refusal is audited; the kill switch (admin/freeze.ts) covers new leases like any issuance.
 */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import type { AccessGuard } from '../../admin/guard.js';
import type { AuditEventType } from '../../audit/entry.js';
import { secretNameProblem } from '../../secrets/names.js';
import type { EngineKind } from '../../secrets/engine.js';
import type { SecretsService } from '../../secrets/service.js';
import { identityOf } from '../auth.js';
import { refusedIdentity, routeParam, type RefusalRecorder } from '../refusals.js';
import { AuditReceipt, DateTime, described, encodeValue, errorResponses, iso, StringEnum } from '../schemas.js';

export interface SecretsOptions {
  readonly secrets: SecretsService;
  readonly guard: Pick<AccessGuard, 'assertNotFrozen'>;
}

export const TtlBody = Type.Object(
  {
    ttlSeconds: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 2_592_000, description: "Requested lifetime; capped by the role's (or lease's) max TTL." }),
    ),
  },
  { additionalProperties: false, title: 'TtlRequest', description: 'Optional; the body may be omitted.' },
);

/** A lease id: 128 random bits, hex. */
export const LeaseId = (description?: string) => Type.String({ pattern: '^[0-9a-f]{32}$', ...(description !== undefined ? { description } : {}) });

const Secret = Type.Object(
  {
    name: Type.String({ examples: ['db/reporting-api-key'] }),
    value: Type.String({ description: 'The secret: its exact bytes as UTF-8 text, or base64 when they are not valid UTF-8 (see encoding).' }),
    encoding: StringEnum(['utf8', 'base64']),
    leaseId: LeaseId('Renew or revoke the lease with it.'),
    expiresAt: DateTime('When the lease ends; fetch the secret again before then.'),
    maxExpiresAt: DateTime('Renewals never extend the lease beyond this.'),
    audit: AuditReceipt,
  },
  { title: 'SecretResponse' },
);

const Credentials = Type.Object(
  {
    role: Type.String({ description: 'The configured role template.' }),
    username: Type.String({
      examples: ['tessera_reporting_3f9a0c1b2d4e5f60'],
      description:
        'The database user created for this lease: <usernamePrefix><role>_<16 hex> (PostgreSQL), <usernamePrefix><role, shortened>_<16 hex> of at most 32 characters (MySQL).',
    }),
    password: Type.String({ description: '32 random bytes, base64url. Shown once; never stored or logged by the broker.' }),
    leaseId: LeaseId(),
    expiresAt: DateTime("The lease's end (PostgreSQL: the role's VALID UNTIL); the sweeper drops the user after it."),
    maxExpiresAt: DateTime(),
    audit: AuditReceipt,
  },
  { title: 'DbCredentials' },
);

/** The secret name: the rest of the path (a wildcard route). */
const SecretParams = Type.Object({ '*': Type.String({ examples: ['db/reporting-api-key'] }) });

const RoleParams = Type.Object({ role: Type.String({ minLength: 1, maxLength: 64 }) });

/** One credentials route per engine kind. */
const DYNAMIC_ROUTES: readonly { kind: EngineKind; operationId: string; summary: string; description: string }[] = [
  {
    kind: 'postgres',
    operationId: 'issuePostgresCredentials',
    summary: 'Create fresh PostgreSQL credentials for a role template this identity is granted.',
    description: `Creates a new LOGIN role \`<prefix><role>_<16 hex>\` with a random password and \`VALID UNTIL\` the
lease expiry, and runs the role template's grant statements, in one transaction. The lease is
renewable up to the role's max TTL; at expiry (or revoke) the broker terminates the role's
sessions and drops it. PostgreSQL unreachable → 503 \`engine_unavailable\` and no lease.
`,
  },
  {
    kind: 'mysql',
    operationId: 'issueMysqlCredentials',
    summary: 'Create fresh MariaDB / MySQL credentials for a role this identity is granted.',
    description: `Creates a new user (\`<prefix><role>_<16 hex>\`, at most 32 characters) with a random password by
running the role's creation statements and grants (a failure drops what was made). The lease is
renewable up to the role's max TTL; at expiry (or revoke) the broker drops the user and kills its
sessions. Server unreachable → 503 \`engine_unavailable\` and no lease.
`,
  },
  {
    kind: 'redis',
    operationId: 'issueRedisCredentials',
    summary: 'Create a fresh Redis ACL user for a role this identity is granted.',
    description: `Creates an ACL user (\`ACL SETUSER <prefix><role>_<16 hex> reset on >password …\`) with exactly the
role's key patterns, channels and command rules. The lease is renewable up to the role's max TTL;
at expiry (or revoke) the broker switches the user off, kills its connections and deletes it.
Redis unreachable → 503 \`engine_unavailable\` and no lease.
`,
  },
  {
    kind: 'rabbitmq',
    operationId: 'issueRabbitmqCredentials',
    summary: 'Create a fresh RabbitMQ user for a role this identity is granted.',
    description: `Creates a user through the management API with the role's tags and, per vhost, its configure /
write / read permission regexes. The lease is renewable up to the role's max TTL; at expiry (or
revoke) the broker deletes the user and closes its connections. API unreachable → 503
\`engine_unavailable\` and no lease.
`,
  },
];

/** What a secrets or lease refusal is about; only valid names go into the entry (a hostile one is not echoed). */
type About = (request: FastifyRequest) => { secret?: string; leaseId?: string };

/** A refusal recorder for secret and lease routes (secret_integrity_failed is also an error log line). */
export function secretRefusal(secrets: SecretsService, type: AuditEventType, about: About): RefusalRecorder {
  return async (err, request) => {
    const what = about(request);
    if (err.code === 'secret_integrity_failed') request.log.error({ code: err.code, secret: what.secret }, 'secret integrity check failed');
    await secrets.recordDenial(type, err, refusedIdentity(request, err), request.id, what);
  };
}

/** A POST may come without a body (curl -X POST): treat it as {}. */
export async function emptyBodyIsObject(request: FastifyRequest): Promise<void> {
  if (request.body === undefined || request.body === null) request.body = {};
}

export const secretsRoutes: FastifyPluginAsyncTypebox<SecretsOptions> = async (app, { secrets, guard }) => {
  app.get(
    '/v1/secrets/*',
    {
      // No automatic HEAD: every read creates a lease and an audit entry, so it must return the value.
      exposeHeadRoute: false,
      schema: {
        operationId: 'readSecret',
        summary: 'Read a static secret this identity is granted, under a new lease.',
        description: `\`name\` may contain "/" and is sent unencoded: \`GET /v1/secrets/db/reporting-api-key\`. Names are
lowercase segments of \`a-z 0-9 . _ -\` (each starting with a letter or digit), at most 256
characters, no \`..\`; anything else is 400. The grant is checked before the store is read, so an
identity that is not granted a name gets 403 whether or not it exists. Secrets are stored
encrypted (AES-256-GCM envelope); see docs/secrets.md. Responses carry \`Cache-Control: no-store\`.
`,
        params: SecretParams,
        response: {
          200: described('The value and its lease.', Secret),
          ...errorResponses('BadRequest', 'Unauthenticated', 'Forbidden', 'NotFound', 'SecretIntegrity', 'RateLimited', 'SecretsUnavailable'),
        },
      },
      config: {
        auth: 'workload',
        refusal: secretRefusal(secrets, 'secret.issued', (request) => {
          const name = routeParam(request, '*');
          return secretNameProblem(name) === undefined ? { secret: name } : {};
        }),
      },
    },
    async (request, reply) => {
      const identity = identityOf(request);
      await guard.assertNotFrozen(identity);
      const read = await secrets.readSecret(identity, request.params['*'], request.id);
      void reply.header('cache-control', 'no-store');
      try {
        return {
          name: read.name,
          ...encodeValue(read.value),
          leaseId: read.lease.id,
          expiresAt: iso(read.lease.expiresAt),
          maxExpiresAt: iso(read.lease.maxExpiresAt),
          audit: read.audit,
        };
      } finally {
        read.value.fill(0);
      }
    },
  );

  for (const r of DYNAMIC_ROUTES) {
    app.post(
      `/v1/secrets/${r.kind}/:role/creds`,
      {
        preValidation: emptyBodyIsObject,
        schema: {
          operationId: r.operationId,
          summary: r.summary,
          description: r.description,
          params: RoleParams,
          body: TtlBody,
          response: {
            200: described('The credentials and their lease.', Credentials),
            ...errorResponses('BadRequest', 'Unauthenticated', 'Forbidden', 'NotFound', 'UnsupportedMediaType', 'RateLimited', 'SecretsUnavailable'),
          },
        },
        config: {
          auth: 'workload',
          refusal: secretRefusal(secrets, 'secret.issued', (request) => {
            const role = routeParam(request, 'role');
            return /^[a-z][a-z0-9_]{0,30}$/.test(role) ? { secret: `${r.kind}/${role}` } : {};
          }),
        },
      },
      async (request, reply) => {
        const identity = identityOf(request);
        await guard.assertNotFrozen(identity);
        const creds = await secrets.credentials(r.kind, identity, request.params.role, request.body.ttlSeconds, request.id);
        void reply.header('cache-control', 'no-store');
        return {
          role: creds.role,
          username: creds.username,
          password: creds.password,
          leaseId: creds.lease.id,
          expiresAt: iso(creds.lease.expiresAt),
          maxExpiresAt: iso(creds.lease.maxExpiresAt),
          audit: creds.audit,
        };
      },
    );
  }
};
