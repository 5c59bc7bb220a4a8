/** POST /v1/svid/x509 and POST /v1/svid/jwt: the attested caller's SVIDs, issued through the audited path. */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import type { AuditEventType } from '../../audit/entry.js';
import { badRequest } from '../../errors.js';
import type { Issuer } from '../../issue/issuer.js';
import { identityOf } from '../auth.js';
import { refusedIdentity, type RefusalRecorder } from '../refusals.js';
import { AuditReceipt, errorResponses, iso, StringEnum, Strings } from '../schemas.js';

const X509Body = Type.Object(
  {
    csr: Type.Optional(Type.String({ minLength: 1, maxLength: 16_384 })),
    keyType: Type.Optional(StringEnum(['ec-p256'])),
    ttlSeconds: Type.Optional(Type.Integer({ minimum: 60, maximum: 2_592_000 })),
  },
  { additionalProperties: false },
);

const X509Svid = Type.Object({
  spiffeId: Type.String(),
  serial: Type.String(),
  certificates: Strings,
  svid: Type.String(),
  privateKey: Type.Optional(Type.String()),
  notBefore: Type.String(),
  expiresAt: Type.String(),
  bundle: Type.String(),
  audit: AuditReceipt,
});

const JwtBody = Type.Object(
  {
    audience: Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { minItems: 1, maxItems: 16, uniqueItems: true }),
    ttlSeconds: Type.Optional(Type.Integer({ minimum: 30, maximum: 86_400 })),
  },
  { additionalProperties: false },
);

const JwtSvid = Type.Object({
  spiffeId: Type.String(),
  token: Type.String(),
  jti: Type.String(),
  audience: Strings,
  expiresAt: Type.String(),
  audit: AuditReceipt,
});

export interface SvidOptions {
  readonly issuer: Issuer;
  /** The trust bundle sent with every X.509-SVID. */
  readonly rootsPem: string;
}

/**
 * Exactly one key source, checked before authentication like the schema (a malformed request is not a
 * caller's refusal, so it is neither audited nor counted).
 */
async function oneKeySource(request: FastifyRequest): Promise<void> {
  const body = request.body as { csr?: unknown; keyType?: unknown } | null | undefined;
  if (typeof body === 'object' && body !== null && !Array.isArray(body) && (body.csr === undefined) === (body.keyType === undefined)) {
    throw badRequest('send exactly one of "csr" (PEM CSR) or "keyType" ("ec-p256" for a server-made key)');
  }
}

export const svidRoutes: FastifyPluginAsyncTypebox<SvidOptions> = async (app, { issuer, rootsPem }) => {
  // A refusal (bad token, bad certificate, policy, bad CSR) is as visible as a grant.
  const refusal = (type: AuditEventType): RefusalRecorder => (err, request) => issuer.recordDenial(type, err, refusedIdentity(request, err), request.id);

  app.post(
    '/v1/svid/x509',
    {
      schema: { operationId: 'issueX509Svid', body: X509Body, response: { 200: X509Svid, ...errorResponses } },
      config: { auth: 'workload', refusal: refusal('x509-svid.issued') },
      preValidation: oneKeySource,
    },
    async (request) => {
      const issued = await issuer.x509(identityOf(request), request.body, request.id);
      return {
        spiffeId: issued.spiffeId,
        serial: issued.serial,
        certificates: issued.certificates,
        svid: issued.certificates.join(''),
        ...(issued.privateKey !== undefined ? { privateKey: issued.privateKey } : {}),
        notBefore: iso(issued.notBefore),
        expiresAt: iso(issued.expiresAt),
        bundle: rootsPem,
        audit: issued.audit,
      };
    },
  );

  app.post(
    '/v1/svid/jwt',
    {
      schema: { operationId: 'issueJwtSvid', body: JwtBody, response: { 200: JwtSvid, ...errorResponses } },
      config: { auth: 'workload', refusal: refusal('jwt-svid.issued') },
    },
    async (request) => {
      const issued = await issuer.jwt(identityOf(request), request.body, request.id);
      return { ...issued, expiresAt: iso(issued.expiresAt) };
    },
  );
};
