/**
 * Secrets and leases:
 *   GET  /v1/secrets/<name…>                 a static secret under a new lease
 *   POST /v1/secrets/postgres/<role>/creds   fresh PostgreSQL credentials under a new lease
 *   POST /v1/leases/<id>/renew               extend one's own lease (up to its max TTL)
 *   POST /v1/leases/<id>/revoke              end one's own lease now
 * Callers authenticate like for SVIDs (SA token or SVID over mTLS); every refusal is audited.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Identity } from '../../attest/identity.js';
import type { AuditEventType } from '../../audit/entry.js';
import type { Broker } from '../../broker.js';
import { BrokerError } from '../../errors.js';
import { secretNameProblem } from '../../secrets/names.js';
import { authenticate } from '../auth.js';
import { isRepeatedRateLimit, RateLimitedError } from '../limits.js';
import { auditReceiptSchema, errorResponses } from '../schemas.js';

const leaseIdPattern = '^[0-9a-f]{32}$';

const ttlBody = {
  type: 'object',
  additionalProperties: false,
  properties: { ttlSeconds: { type: 'integer', minimum: 1, maximum: 2_592_000 } },
} as const;

const secretResponse = {
  type: 'object',
  required: ['name', 'value', 'encoding', 'leaseId', 'expiresAt', 'maxExpiresAt', 'audit'],
  properties: {
    name: { type: 'string' },
    value: { type: 'string' },
    encoding: { type: 'string', enum: ['utf8', 'base64'] },
    leaseId: { type: 'string' },
    expiresAt: { type: 'string' },
    maxExpiresAt: { type: 'string' },
    audit: auditReceiptSchema,
  },
} as const;

const credsResponse = {
  type: 'object',
  required: ['role', 'username', 'password', 'leaseId', 'expiresAt', 'maxExpiresAt', 'audit'],
  properties: {
    role: { type: 'string' },
    username: { type: 'string' },
    password: { type: 'string' },
    leaseId: { type: 'string' },
    expiresAt: { type: 'string' },
    maxExpiresAt: { type: 'string' },
    audit: auditReceiptSchema,
  },
} as const;

const renewResponse = {
  type: 'object',
  required: ['leaseId', 'expiresAt', 'maxExpiresAt', 'audit'],
  properties: {
    leaseId: { type: 'string' },
    expiresAt: { type: 'string' },
    maxExpiresAt: { type: 'string' },
    audit: auditReceiptSchema,
  },
} as const;

const revokeResponse = {
  type: 'object',
  required: ['leaseId', 'revoked', 'audit'],
  properties: { leaseId: { type: 'string' }, revoked: { type: 'boolean' }, audit: auditReceiptSchema },
} as const;

const leaseParams = {
  type: 'object',
  required: ['leaseId'],
  properties: { leaseId: { type: 'string', pattern: leaseIdPattern } },
} as const;

const roleParams = {
  type: 'object',
  required: ['role'],
  properties: { role: { type: 'string', minLength: 1, maxLength: 64 } },
} as const;

const iso = (ms: number): string => new Date(ms).toISOString();

/** Returns text as-is when it is valid UTF-8, else base64 (binary secrets survive JSON unharmed). */
function encodeValue(value: Buffer): { value: string; encoding: 'utf8' | 'base64' } {
  const text = value.toString('utf8');
  return Buffer.from(text, 'utf8').equals(value) ? { value: text, encoding: 'utf8' } : { value: value.toString('base64'), encoding: 'base64' };
}

/** A POST may come without a body (curl -X POST): treat it as {}. */
async function emptyBodyIsObject(request: FastifyRequest): Promise<void> {
  if (request.body === undefined || request.body === null) request.body = {};
}

/** Runs a secrets operation; a refusal (4xx) is recorded in the audit log before the error goes back. */
async function audited<T>(
  broker: Broker,
  request: FastifyRequest,
  type: AuditEventType,
  about: { secret?: string; leaseId?: string },
  run: (identity: Identity) => Promise<T>,
): Promise<T> {
  let identity: Identity | undefined;
  try {
    identity = await authenticate(broker, request);
    // The kill switch (admin/freeze.ts) covers new secret leases and renewals like any issuance.
    if (type === 'secret.issued' || type === 'lease.renewed') await broker.guard.assertNotFrozen(identity);
    return await run(identity);
  } catch (err) {
    // A flood of 429s (server/limits.ts) leaves one entry per key and window, not one per request.
    if (err instanceof BrokerError && err.status >= 400 && err.status < 500 && !isRepeatedRateLimit(err)) {
      if (err.code === 'secret_integrity_failed') request.log.error({ code: err.code, secret: about.secret }, 'secret integrity check failed');
      await broker.secrets.recordDenial(type, err, identity ?? (err instanceof RateLimitedError ? err.identity : undefined), request.id, about);
    }
    throw err;
  }
}

export function secretsRoutes(app: FastifyInstance, broker: Broker): void {
  broker.secrets.setLogger(app.log);

  app.get<{ Params: { '*': string } }>(
    '/v1/secrets/*',
    // No automatic HEAD: every read creates a lease and an audit entry, so it must return the value.
    { exposeHeadRoute: false, schema: { response: { 200: secretResponse, ...errorResponses } } },
    async (request, reply) => {
      const name = request.params['*'];
      // Only a valid name goes into the audit entry; a hostile one is refused without being echoed.
      const about = secretNameProblem(name) === undefined ? { secret: name } : {};
      const read = await audited(broker, request, 'secret.issued', about, (id) => broker.secrets.readSecret(id, name, request.id));
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

  app.post<{ Params: { role: string }; Body: { ttlSeconds?: number } }>(
    '/v1/secrets/postgres/:role/creds',
    { preValidation: emptyBodyIsObject, schema: { params: roleParams, body: ttlBody, response: { 200: credsResponse, ...errorResponses } } },
    async (request, reply) => {
      const { role } = request.params;
      const about = /^[a-z][a-z0-9_]{0,30}$/.test(role) ? { secret: `postgres/${role}` } : {};
      const creds = await audited(broker, request, 'secret.issued', about, (id) =>
        broker.secrets.postgresCredentials(id, role, request.body.ttlSeconds, request.id),
      );
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

  app.post<{ Params: { leaseId: string }; Body: { ttlSeconds?: number } }>(
    '/v1/leases/:leaseId/renew',
    { preValidation: emptyBodyIsObject, schema: { params: leaseParams, body: ttlBody, response: { 200: renewResponse, ...errorResponses } } },
    async (request) => {
      const { leaseId } = request.params;
      const r = await audited(broker, request, 'lease.renewed', { leaseId }, (id) =>
        broker.secrets.renewLease(id, leaseId, request.body.ttlSeconds, request.id),
      );
      return { leaseId, expiresAt: iso(r.lease.expiresAt), maxExpiresAt: iso(r.lease.maxExpiresAt), audit: r.audit };
    },
  );

  app.post<{ Params: { leaseId: string } }>(
    '/v1/leases/:leaseId/revoke',
    { preValidation: emptyBodyIsObject, schema: { params: leaseParams, response: { 200: revokeResponse, ...errorResponses } } },
    async (request) => {
      const { leaseId } = request.params;
      const r = await audited(broker, request, 'lease.revoked', { leaseId }, (id) => broker.secrets.revokeLease(id, leaseId, request.id));
      return { leaseId, revoked: true, audit: r.audit };
    },
  );
}
