/**
 * Break-glass:
 *   POST /v1/admin/break-glass          {request: JWS, csr?} — no mTLS: the signed request is the credential
 *   GET  /v1/admin/break-glass/events   uses and failed attempts          (auditor, operator)
 */
import type { TLSSocket } from 'node:tls';
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { AdminAudit } from '../../../admin/audit.js';
import type { BreakGlassService } from '../../../admin/breakglass.js';
import { BrokerError } from '../../../errors.js';
import { adminOf } from '../../auth.js';
import type { RateLimiter } from '../../limits.js';
import { AuditReceipt, encodeValue, errorResponses, iso, LimitString, Strings } from '../../schemas.js';
import { adminCall, READERS } from './access.js';

export interface BreakGlassOptions {
  readonly log: AdminAudit;
  readonly breakGlass: Pick<BreakGlassService, 'redeem' | 'events'>;
  readonly limits: Pick<RateLimiter, 'failedAttempt'>;
  /** The admin CA roots, sent with a break-glass admin certificate ('' without an admin CA). */
  readonly adminRootsPem: string;
}

const Jws = Type.Object({
  payload: Type.String({ maxLength: 8192 }),
  signatures: Type.Array(Type.Object({ protected: Type.String({ maxLength: 2048 }), signature: Type.String({ maxLength: 512 }) }), {
    minItems: 1,
    maxItems: 16,
  }),
});

const BreakGlassBody = Type.Object({ request: Jws, csr: Type.Optional(Type.String({ minLength: 1, maxLength: 16_384 })) }, { additionalProperties: false });

const BreakGlassGrant = Type.Object({
  grant: Type.String(),
  spiffeId: Type.String(),
  ticket: Type.String(),
  keyIds: Strings,
  ttlSeconds: Type.Integer(),
  expiresAt: Type.String(),
  serial: Type.Optional(Type.String()),
  certificates: Type.Optional(Strings),
  svid: Type.Optional(Type.String()),
  privateKey: Type.Optional(Type.String()),
  notBefore: Type.Optional(Type.String()),
  adminBundle: Type.Optional(Type.String()),
  secret: Type.Optional(Type.Object({ name: Type.String(), value: Type.String(), encoding: Type.String(), leaseId: Type.String() })),
  audit: AuditReceipt,
});

const BreakGlassEvent = Type.Object({
  ts: Type.String(),
  requestId: Type.String(),
  decision: Type.String(),
  code: Type.Optional(Type.String()),
  message: Type.Optional(Type.String()),
  grant: Type.Optional(Type.String()),
  ticket: Type.Optional(Type.String()),
  reason: Type.Optional(Type.String()),
  jti: Type.Optional(Type.String()),
  keyIds: Strings,
  spiffeId: Type.Optional(Type.String()),
  serial: Type.Optional(Type.String()),
  leaseId: Type.Optional(Type.String()),
  expiresAt: Type.Optional(Type.String()),
  auditIndex: Type.Optional(Type.Integer()),
});

export const breakGlassRoutes: FastifyPluginAsyncTypebox<BreakGlassOptions> = async (app, { log, breakGlass, limits, adminRootsPem }) => {
  app.get(
    '/v1/admin/break-glass/events',
    {
      schema: {
        operationId: 'listBreakGlassEvents',
        querystring: Type.Object({ limit: Type.Optional(LimitString) }, { additionalProperties: false }),
        response: { 200: Type.Object({ events: Type.Array(BreakGlassEvent), audit: AuditReceipt }), ...errorResponses },
      },
      config: adminCall(log, READERS, 'break-glass.events'),
    },
    async (request) => {
      const limit = Math.min(Number(request.query.limit ?? '100'), 1000);
      const events = await breakGlass.events(limit);
      const audit = await log.allow(adminOf(request), 'break-glass.events', {}, request.id);
      return {
        events: events.map(({ ts, expiresAt, ...e }) => ({ ...e, ts: iso(ts), ...(expiresAt !== undefined ? { expiresAt: iso(expiresAt) } : {}) })),
        audit,
      };
    },
  );

  // No mTLS here (a public route): the request, signed offline by M of N break-glass keys, is the credential.
  app.post(
    '/v1/admin/break-glass',
    { schema: { operationId: 'redeemBreakGlass', body: BreakGlassBody, response: { 200: BreakGlassGrant, ...errorResponses } } },
    async (request, reply) => {
      // A refused request counts against the client address like any failed attestation; a genuine
      // break-glass request is never locked out by junk sent from the same address before it.
      const issued = await breakGlass.redeem(request.body.request, request.body.csr, request.id).catch(async (err: unknown) => {
        if (err instanceof BrokerError && err.status >= 400 && err.status < 500) {
          await limits.failedAttempt((request.raw.socket as TLSSocket).remoteAddress);
        }
        throw err;
      });
      void reply.header('cache-control', 'no-store');
      const base = {
        grant: issued.grant,
        spiffeId: issued.spiffeId,
        ticket: issued.ticket,
        keyIds: issued.keyIds,
        ttlSeconds: issued.ttlSeconds,
        expiresAt: iso(issued.expiresAt),
        audit: issued.audit,
      };
      if (issued.certificate !== undefined) {
        const c = issued.certificate;
        return {
          ...base,
          serial: c.serial,
          certificates: c.chainPem,
          svid: c.chainPem.join(''),
          ...(c.privateKey !== undefined ? { privateKey: c.privateKey } : {}),
          notBefore: iso(c.notBefore),
          adminBundle: adminRootsPem,
        };
      }
      const s = issued.secret;
      if (s === undefined) throw new BrokerError('internal', 'break-glass issued nothing');
      try {
        return { ...base, secret: { name: s.name, ...encodeValue(s.value), leaseId: s.leaseId } };
      } finally {
        s.value.fill(0);
      }
    },
  );
};
