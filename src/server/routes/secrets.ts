/**
 * Secrets, for workloads (SA token or SVID over mTLS):
 *   GET  /v1/secrets/<name…>                 a static secret under a new lease
 *   POST /v1/secrets/postgres/<role>/creds   fresh PostgreSQL credentials under a new lease
 * Every refusal is audited; the kill switch (admin/freeze.ts) covers new leases like any issuance.
 */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import type { AccessGuard } from '../../admin/guard.js';
import type { AuditEventType } from '../../audit/entry.js';
import { secretNameProblem } from '../../secrets/names.js';
import type { SecretsService } from '../../secrets/service.js';
import { identityOf } from '../auth.js';
import { refusedIdentity, routeParam, type RefusalRecorder } from '../refusals.js';
import { AuditReceipt, encodeValue, errorResponses, iso, StringEnum, WildcardParams } from '../schemas.js';

export interface SecretsOptions {
  readonly secrets: SecretsService;
  readonly guard: Pick<AccessGuard, 'assertNotFrozen'>;
}

export const TtlBody = Type.Object({ ttlSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 2_592_000 })) }, { additionalProperties: false });

const Secret = Type.Object({
  name: Type.String(),
  value: Type.String(),
  encoding: StringEnum(['utf8', 'base64']),
  leaseId: Type.String(),
  expiresAt: Type.String(),
  maxExpiresAt: Type.String(),
  audit: AuditReceipt,
});

const Credentials = Type.Object({
  role: Type.String(),
  username: Type.String(),
  password: Type.String(),
  leaseId: Type.String(),
  expiresAt: Type.String(),
  maxExpiresAt: Type.String(),
  audit: AuditReceipt,
});

const RoleParams = Type.Object({ role: Type.String({ minLength: 1, maxLength: 64 }) });

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
      schema: { operationId: 'readSecret', params: WildcardParams, response: { 200: Secret, ...errorResponses } },
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

  app.post(
    '/v1/secrets/postgres/:role/creds',
    {
      preValidation: emptyBodyIsObject,
      schema: { operationId: 'issuePostgresCredentials', params: RoleParams, body: TtlBody, response: { 200: Credentials, ...errorResponses } },
      config: {
        auth: 'workload',
        refusal: secretRefusal(secrets, 'secret.issued', (request) => {
          const role = routeParam(request, 'role');
          return /^[a-z][a-z0-9_]{0,30}$/.test(role) ? { secret: `postgres/${role}` } : {};
        }),
      },
    },
    async (request, reply) => {
      const identity = identityOf(request);
      await guard.assertNotFrozen(identity);
      const creds = await secrets.postgresCredentials(identity, request.params.role, request.body.ttlSeconds, request.id);
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
};
