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
import { ADMIN_ERRORS, AuditReceipt, DateTime, described, encodeValue, ErrorBody, errorResponses, iso, LimitString, StringEnum, Strings } from '../../schemas.js';
import { adminCall, READERS } from './access.js';

export interface BreakGlassOptions {
  readonly log: AdminAudit;
  readonly breakGlass: Pick<BreakGlassService, 'redeem' | 'events'>;
  readonly limits: Pick<RateLimiter, 'failedAttempt'>;
  /** The admin CA roots, sent with a break-glass admin certificate ('' without an admin CA). */
  readonly adminRootsPem: string;
}

const Jws = Type.Object(
  {
    payload: Type.String({ maxLength: 8192 }),
    signatures: Type.Array(Type.Object({ protected: Type.String({ maxLength: 2048 }), signature: Type.String({ maxLength: 512 }) }), {
      minItems: 1,
      maxItems: 16,
    }),
  },
  {
    title: 'GeneralJws',
    description: `RFC 7515 General JSON serialization, one signature per break-glass key (Ed25519, \`alg: EdDSA\`,
\`kid\` = RFC 7638 thumbprint, \`typ: tessera-break-glass+jws\`; no unprotected headers). The payload
is \`{v: 1, aud: <trust domain>, jti, iat, exp, reason, ticket, grant, ttlSeconds}\`.
Made by \`tessera break-glass request\` (and \`cosign\`).
`,
  },
);

const BreakGlassBody = Type.Object(
  {
    request: Jws,
    csr: Type.Optional(
      Type.String({ minLength: 1, maxLength: 16_384, description: 'Optional PEM CSR for an admin-role grant; without it the broker makes the key.' }),
    ),
  },
  { additionalProperties: false, title: 'BreakGlassRequest' },
);

const BreakGlassGrant = Type.Object(
  {
    grant: Type.String({ examples: ['operator'] }),
    spiffeId: Type.String({ examples: ['spiffe://example.org/admin/break-glass/3q2-7w…'] }),
    ticket: Type.String(),
    keyIds: Type.Immutable(Type.Array(Type.String(), { description: 'Config ids of the keys that signed.' })),
    ttlSeconds: Type.Integer({ description: 'The granted lifetime after the cap (breakGlass.maxTtlSeconds, ≤ 900).' }),
    expiresAt: DateTime(),
    serial: Type.Optional(Type.String({ description: 'Admin-role grants; serial of the admin certificate.' })),
    certificates: Type.Optional(Strings),
    svid: Type.Optional(Type.String({ description: 'The admin certificate chain (PEM), for curl --cert.' })),
    privateKey: Type.Optional(Type.String({ description: 'PKCS#8 PEM, when no CSR was sent.' })),
    notBefore: Type.Optional(DateTime()),
    adminBundle: Type.Optional(Type.String({ description: 'The admin CA roots (PEM).' })),
    secret: Type.Optional(
      Type.Object(
        { name: Type.String(), value: Type.String(), encoding: StringEnum(['utf8', 'base64']), leaseId: Type.String() },
        { description: 'Secret grants; the value under a lease held by the break-glass ID.' },
      ),
    ),
    audit: AuditReceipt,
  },
  { title: 'BreakGlassResponse' },
);

const BreakGlassEvent = Type.Object({
  ts: DateTime(),
  requestId: Type.String(),
  decision: StringEnum(['allow', 'deny']),
  code: Type.Optional(Type.String({ description: 'Error code of a failed attempt.' })),
  message: Type.Optional(Type.String()),
  grant: Type.Optional(Type.String()),
  ticket: Type.Optional(Type.String()),
  reason: Type.Optional(Type.String()),
  jti: Type.Optional(Type.String()),
  keyIds: Strings,
  spiffeId: Type.Optional(Type.String()),
  serial: Type.Optional(Type.String()),
  leaseId: Type.Optional(Type.String()),
  expiresAt: Type.Optional(DateTime()),
  auditIndex: Type.Optional(Type.Integer({ description: 'Index of the critical audit entry.' })),
}, { title: 'BreakGlassEvent' });

export const breakGlassRoutes: FastifyPluginAsyncTypebox<BreakGlassOptions> = async (app, { log, breakGlass, limits, adminRootsPem }) => {
  app.get(
    '/v1/admin/break-glass/events',
    {
      schema: {
        operationId: 'listBreakGlassEvents',
        summary: 'Every break-glass use and failed attempt (failures for 24 h; the audit log keeps all), newest first. Role auditor or operator.',
        querystring: Type.Object({ limit: Type.Optional({ ...LimitString, description: 'At most this many (default 100, max 1000).' }) }, { additionalProperties: false }),
        response: {
          200: described('Events.', Type.Object({ events: Type.Array(BreakGlassEvent), audit: AuditReceipt })),
          ...errorResponses('BadRequest', ...ADMIN_ERRORS),
        },
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
    {
      schema: {
        operationId: 'redeemBreakGlass',
        summary: 'Redeem a break-glass request for a short-lived admin certificate or one secret. No mTLS — the signed request is the credential.',
        description: `Checks: every signature verifies (EdDSA, by a configured break-glass key), at least
breakGlass.requiredSignatures distinct keys signed (two-person rule), \`aud\` is this trust domain,
the grant is in breakGlass.allowedGrants, the request was signed ≤ 5 minutes ago and has not
expired, and its \`jti\` has never been used (consumed atomically in the shared store: a replay
fails on every replica). The credential's TTL is capped at breakGlass.maxTtlSeconds (≤ 15 min).
Before anything is returned a critical audit entry (type \`break-glass\`: reason, ticket, grant,
key ids — never the request) is durable; it fires the break-glass alert. Failed attempts are
audited and alerted too, and listed at GET /v1/admin/break-glass/events.
`,
        body: BreakGlassBody,
        response: {
          200: described("The elevated credential (admin certificate + key, or the secret) and the critical entry's receipt.", BreakGlassGrant),
          ...errorResponses('BadRequest', 'NotFound', 'RateLimited', 'Unavailable'),
          401: described(
            '`break_glass_denied` (unknown key, bad signature, too few distinct signers, other deployment) or `break_glass_stale` (older than 5 min, expired, signed in the future). Audited and alerted.',
            ErrorBody,
          ),
          403: described('The grant is not in breakGlass.allowedGrants. Audited and alerted.', ErrorBody),
          409: described('`break_glass_replayed`: this request was already used (on any replica). Audited and alerted.', ErrorBody),
        },
      },
    },
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
