/** POST /v1/svid/x509 and POST /v1/svid/jwt: attest the caller, then issue through the audited path. */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Identity } from '../../attest/identity.js';
import type { AuditEventType } from '../../audit/entry.js';
import type { Broker } from '../../broker.js';
import { BrokerError, badRequest } from '../../errors.js';
import type { JwtRequest, X509Request } from '../../issue/issuer.js';
import { authenticate } from '../auth.js';
import { isRepeatedRateLimit, RateLimitedError } from '../limits.js';
import { auditReceiptSchema, errorResponses } from '../schemas.js';

const x509Body = {
  type: 'object',
  additionalProperties: false,
  properties: {
    csr: { type: 'string', minLength: 1, maxLength: 16_384 },
    keyType: { type: 'string', enum: ['ec-p256'] },
    ttlSeconds: { type: 'integer', minimum: 60, maximum: 2_592_000 },
  },
} as const;

const x509Response = {
  type: 'object',
  required: ['spiffeId', 'serial', 'certificates', 'svid', 'expiresAt', 'bundle', 'audit'],
  properties: {
    spiffeId: { type: 'string' },
    serial: { type: 'string' },
    certificates: { type: 'array', items: { type: 'string' } },
    svid: { type: 'string' },
    privateKey: { type: 'string' },
    notBefore: { type: 'string' },
    expiresAt: { type: 'string' },
    bundle: { type: 'string' },
    audit: auditReceiptSchema,
  },
} as const;

const jwtBody = {
  type: 'object',
  additionalProperties: false,
  required: ['audience'],
  properties: {
    audience: { type: 'array', minItems: 1, maxItems: 16, uniqueItems: true, items: { type: 'string', minLength: 1, maxLength: 256 } },
    ttlSeconds: { type: 'integer', minimum: 30, maximum: 86_400 },
  },
} as const;

const jwtResponse = {
  type: 'object',
  required: ['spiffeId', 'token', 'jti', 'audience', 'expiresAt', 'audit'],
  properties: {
    spiffeId: { type: 'string' },
    token: { type: 'string' },
    jti: { type: 'string' },
    audience: { type: 'array', items: { type: 'string' } },
    expiresAt: { type: 'string' },
    audit: auditReceiptSchema,
  },
} as const;

/**
 * Runs an issuance; a refusal (bad token, bad certificate, policy, bad CSR) is recorded in the audit
 * log before the error goes back, so denials are as visible as grants.
 */
async function audited<T>(
  broker: Broker,
  request: FastifyRequest,
  type: AuditEventType,
  issue: (identity: Identity) => Promise<T>,
): Promise<T> {
  let identity: Identity | undefined;
  try {
    identity = await authenticate(broker, request);
    return await issue(identity);
  } catch (err) {
    // A flood of 429s leaves one entry per key and window, not one per request.
    if (err instanceof BrokerError && err.status >= 400 && err.status < 500 && !isRepeatedRateLimit(err)) {
      await broker.issuer.recordDenial(type, err, identity ?? (err instanceof RateLimitedError ? err.identity : undefined), request.id);
    }
    throw err;
  }
}

export function svidRoutes(app: FastifyInstance, broker: Broker): void {
  app.post<{ Body: X509Request }>(
    '/v1/svid/x509',
    { schema: { body: x509Body, response: { 200: x509Response, ...errorResponses } } },
    async (request) => {
      const body = request.body;
      if ((body.csr === undefined) === (body.keyType === undefined)) {
        throw badRequest('send exactly one of "csr" (PEM CSR) or "keyType" ("ec-p256" for a server-made key)');
      }
      const issued = await audited(broker, request, 'x509-svid.issued', (id) => broker.issuer.x509(id, body, request.id));
      return {
        spiffeId: issued.spiffeId,
        serial: issued.serial,
        certificates: issued.certificates,
        svid: issued.certificates.join(''),
        ...(issued.privateKey !== undefined ? { privateKey: issued.privateKey } : {}),
        notBefore: new Date(issued.notBefore).toISOString(),
        expiresAt: new Date(issued.expiresAt).toISOString(),
        bundle: broker.ca.rootsPem,
        audit: issued.audit,
      };
    },
  );

  app.post<{ Body: JwtRequest }>(
    '/v1/svid/jwt',
    { schema: { body: jwtBody, response: { 200: jwtResponse, ...errorResponses } } },
    async (request) => {
      const issued = await audited(broker, request, 'jwt-svid.issued', (id) => broker.issuer.jwt(id, request.body, request.id));
      return { ...issued, expiresAt: new Date(issued.expiresAt).toISOString() };
    },
  );
}
