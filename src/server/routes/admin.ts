/**
 * The admin API, /v1/admin/*: mutual TLS with a certificate from the admin CA (never a workload SVID),
 * roles from config (auditor: read and search; operator: revoke, freeze; secrets-admin: write secrets).
 *
 *   GET  /v1/admin/whoami                 who the broker thinks you are, and your roles      (any role)
 *   GET  /v1/admin/revocations            list                                                (auditor, operator)
 *   POST /v1/admin/revoke                 {kind, value, reason} — also revokes leases         (operator)
 *   POST /v1/admin/unrevoke               {kind, value, reason}                               (operator)
 *   GET  /v1/admin/leases/failed          leases whose revoke failed (revoking, revoke_failed) (auditor, operator)
 *   GET  /v1/admin/freeze                 freeze status                                       (auditor, operator)
 *   POST /v1/admin/freeze                 {namespace?, reason} — the kill switch              (operator)
 *   POST /v1/admin/thaw                   {namespace?, reason}                                (operator)
 *   PUT  /v1/admin/secrets/<name…>        {value | valueBase64}                               (secrets-admin)
 *   DELETE /v1/admin/secrets/<name…>                                                          (secrets-admin)
 *   GET  /v1/admin/break-glass/events     uses and failed attempts                            (auditor, operator)
 *   POST /v1/admin/break-glass            {request: JWS, csr?} — no mTLS: the signed request is the credential
 *   GET  /v1/audit/search                 audit search by identity metadata                   (auditor)
 *
 * Every call is an audit entry (type 'admin', actor = the admin's SPIFFE ID) — refused ones too.
 * A state change is recorded before it is made, so nothing changes unaudited.
 */
import type { TLSSocket } from 'node:tls';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { AdminAudit, type AdminCaller } from '../../admin/audit.js';
import { type AdminPrincipal, requireRole } from '../../admin/principals.js';
import { REVOCATION_KINDS, type RevocationKind, normalizeTarget } from '../../admin/revocation.js';
import { checkNamespace } from '../../admin/freeze.js';
import { namespaceOfSpiffeId } from '../../admin/guard.js';
import { parseSearchFilter, searchLog, type SearchFilterInput } from '../../audit/search.js';
import { storeSource } from '../../audit/source.js';
import type { Broker } from '../../broker.js';
import type { AdminRole } from '../../config/config.js';
import { BrokerError, badRequest, forbidden, unauthenticated } from '../../errors.js';
import { secretNameProblem } from '../../secrets/names.js';
import { isRepeatedRateLimit } from '../limits.js';
import { auditReceiptSchema, errorResponses } from '../schemas.js';

const iso = (ms: number): string => new Date(ms).toISOString();
const ANY_ROLE: readonly AdminRole[] = ['auditor', 'operator', 'secrets-admin'];
const READERS: readonly AdminRole[] = ['auditor', 'operator'];

const reason = { type: 'string', minLength: 1, maxLength: 500 } as const;

const revocationSchema = {
  type: 'object',
  required: ['kind', 'value', 'reason', 'by', 'at'],
  properties: {
    kind: { type: 'string' },
    value: { type: 'string' },
    reason: { type: 'string' },
    by: { type: 'string' },
    at: { type: 'string' },
  },
} as const;

const freezeSchema = {
  type: 'object',
  required: ['reason', 'by', 'at'],
  properties: { namespace: { type: 'string' }, reason: { type: 'string' }, by: { type: 'string' }, at: { type: 'string' } },
} as const;

const revokeBody = {
  type: 'object',
  additionalProperties: false,
  required: ['kind', 'value', 'reason'],
  properties: { kind: { type: 'string', enum: REVOCATION_KINDS }, value: { type: 'string', minLength: 1, maxLength: 2048 }, reason },
} as const;

const freezeBody = {
  type: 'object',
  additionalProperties: false,
  required: ['reason'],
  properties: { namespace: { type: 'string', minLength: 1, maxLength: 253 }, reason },
} as const;

const secretBody = {
  type: 'object',
  additionalProperties: false,
  properties: { value: { type: 'string', minLength: 1, maxLength: 65_536 }, valueBase64: { type: 'string', minLength: 1, maxLength: 87_384 } },
} as const;

const jwsSchema = {
  type: 'object',
  required: ['payload', 'signatures'],
  properties: {
    payload: { type: 'string', maxLength: 8192 },
    signatures: {
      type: 'array',
      minItems: 1,
      maxItems: 16,
      items: {
        type: 'object',
        required: ['protected', 'signature'],
        properties: { protected: { type: 'string', maxLength: 2048 }, signature: { type: 'string', maxLength: 512 } },
      },
    },
  },
} as const;

const breakGlassBody = {
  type: 'object',
  additionalProperties: false,
  required: ['request'],
  properties: { request: jwsSchema, csr: { type: 'string', minLength: 1, maxLength: 16_384 } },
} as const;

const breakGlassResponse = {
  type: 'object',
  required: ['grant', 'spiffeId', 'ticket', 'keyIds', 'ttlSeconds', 'expiresAt', 'audit'],
  properties: {
    grant: { type: 'string' },
    spiffeId: { type: 'string' },
    ticket: { type: 'string' },
    keyIds: { type: 'array', items: { type: 'string' } },
    ttlSeconds: { type: 'integer' },
    expiresAt: { type: 'string' },
    serial: { type: 'string' },
    certificates: { type: 'array', items: { type: 'string' } },
    svid: { type: 'string' },
    privateKey: { type: 'string' },
    notBefore: { type: 'string' },
    adminBundle: { type: 'string' },
    secret: {
      type: 'object',
      required: ['name', 'value', 'encoding', 'leaseId'],
      properties: { name: { type: 'string' }, value: { type: 'string' }, encoding: { type: 'string' }, leaseId: { type: 'string' } },
    },
    audit: auditReceiptSchema,
  },
} as const;

const eventSchema = {
  type: 'object',
  required: ['ts', 'requestId', 'decision', 'keyIds'],
  properties: {
    ts: { type: 'string' },
    requestId: { type: 'string' },
    decision: { type: 'string' },
    code: { type: 'string' },
    message: { type: 'string' },
    grant: { type: 'string' },
    ticket: { type: 'string' },
    reason: { type: 'string' },
    jti: { type: 'string' },
    keyIds: { type: 'array', items: { type: 'string' } },
    spiffeId: { type: 'string' },
    serial: { type: 'string' },
    leaseId: { type: 'string' },
    expiresAt: { type: 'string' },
    auditIndex: { type: 'integer' },
  },
} as const;

const searchQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    spiffeId: { type: 'string', maxLength: 2048 },
    serial: { type: 'string', maxLength: 256 },
    since: { type: 'string', maxLength: 64 },
    until: { type: 'string', maxLength: 64 },
    type: { type: 'string', maxLength: 64 },
    decision: { type: 'string', maxLength: 8 },
    namespace: { type: 'string', maxLength: 253 },
    limit: { type: 'string', pattern: '^[1-9][0-9]{0,3}$' },
    start: { type: 'string', pattern: '^(0|[1-9][0-9]{0,15})$' },
  },
} as const;

/** Returns text as-is when it is valid UTF-8, else base64. */
function encodeValue(value: Buffer): { value: string; encoding: 'utf8' | 'base64' } {
  const text = value.toString('utf8');
  return Buffer.from(text, 'utf8').equals(value) ? { value: text, encoding: 'utf8' } : { value: value.toString('base64'), encoding: 'base64' };
}

function revocationOut(r: { kind: string; value: string; reason: string; by: string; at: number }): Record<string, unknown> {
  return { kind: r.kind, value: r.value, reason: r.reason, by: r.by, at: iso(r.at) };
}

function freezeOut(r: { namespace?: string; reason: string; by: string; at: number }): Record<string, unknown> {
  return { ...(r.namespace !== undefined ? { namespace: r.namespace } : {}), reason: r.reason, by: r.by, at: iso(r.at) };
}

export function adminRoutes(app: FastifyInstance, broker: Broker): void {
  const log = new AdminAudit(broker.audit, broker.checkpoints, broker.clock, broker.config.replicaId);
  const { guard, admin } = broker;

  /** The admin behind this connection: a verified admin-CA certificate of a configured principal (or a live break-glass one). */
  async function admit(request: FastifyRequest, roles: readonly AdminRole[], caller: { value: AdminCaller }): Promise<AdminPrincipal> {
    const socket = request.raw.socket as TLSSocket;
    const peer = broker.mtls.peer(socket);
    // Like server/auth.ts: a caller that does not attest as an admin counts against the client address.
    if (peer.kind !== 'admin') await broker.limits.failedAttempt(socket.remoteAddress);
    if (peer.kind === 'rejected') throw peer.error;
    if (peer.kind === 'identity') {
      caller.value = { spiffeId: peer.identity.spiffeId, source: 'mtls' };
      throw forbidden('a workload SVID cannot call the admin API; present an admin certificate from the admin CA');
    }
    if (peer.kind === 'none') {
      throw unauthenticated('the admin API needs mutual TLS with an admin certificate (curl --cert admin.pem --key admin.key)');
    }
    caller.value = { spiffeId: peer.admin.spiffeId, source: 'admin' };
    const principal = await admin.authority.authorize(peer.admin);
    caller.value = AdminAudit.callerOf(principal);
    requireRole(principal, roles);
    return principal;
  }

  /** Runs an admin call; a refusal (4xx) is recorded before the error goes back. */
  async function run<T>(
    request: FastifyRequest,
    roles: readonly AdminRole[],
    action: string,
    body: (p: AdminPrincipal) => Promise<T>,
  ): Promise<T> {
    const caller = { value: { spiffeId: null, source: 'none' } as AdminCaller };
    try {
      return await body(await admit(request, roles, caller));
    } catch (err) {
      // A flood of 429s leaves one entry per client and window, not one per request.
      if (err instanceof BrokerError && err.status >= 400 && err.status < 500 && !isRepeatedRateLimit(err)) {
        await log.deny(caller.value, action, err, request.id);
      }
      throw err;
    }
  }

  app.get('/v1/admin/whoami', { schema: { response: { 200: {
    type: 'object',
    required: ['spiffeId', 'roles', 'via', 'expiresAt', 'audit'],
    properties: {
      spiffeId: { type: 'string' },
      roles: { type: 'array', items: { type: 'string' } },
      via: { type: 'string' },
      ticket: { type: 'string' },
      serial: { type: 'string' },
      expiresAt: { type: 'string' },
      audit: auditReceiptSchema,
    },
  }, ...errorResponses } } }, async (request) =>
    run(request, ANY_ROLE, 'whoami', async (p) => {
      const audit = await log.allow(p, 'whoami', {}, request.id);
      return {
        spiffeId: p.spiffeId,
        roles: [...p.roles].sort(),
        via: p.via,
        ...(p.ticket !== undefined ? { ticket: p.ticket } : {}),
        serial: p.serial,
        expiresAt: iso(p.expiresAt),
        audit,
      };
    }),
  );

  app.get('/v1/admin/revocations', { schema: { response: { 200: {
    type: 'object',
    required: ['revocations', 'audit'],
    properties: { revocations: { type: 'array', items: revocationSchema }, audit: auditReceiptSchema },
  }, ...errorResponses } } }, async (request) =>
    run(request, READERS, 'revocations.list', async (p) => {
      const list = await guard.revocations.list();
      const audit = await log.allow(p, 'revocations.list', {}, request.id);
      return { revocations: list.map(revocationOut), audit };
    }),
  );

  // Leases whose credential could not be dropped yet: revoking (transient, retried with backoff) or
  // revoke_failed (the engine refused; retried hourly until an operator fixes the cause).
  app.get('/v1/admin/leases/failed', { schema: { response: { 200: {
    type: 'object',
    required: ['leases', 'audit'],
    properties: {
      leases: {
        type: 'array',
        items: {
          type: 'object',
          required: ['leaseId', 'identity', 'secret', 'state', 'attempts', 'expiresAt'],
          properties: {
            leaseId: { type: 'string' },
            identity: { type: 'string' },
            secret: { type: 'string' },
            engine: { type: 'string' },
            username: { type: 'string' },
            state: { type: 'string', enum: ['revoking', 'revoke_failed'] },
            attempts: { type: 'integer' },
            lastError: { type: 'string' },
            nextAttemptAt: { type: 'string' },
            expiresAt: { type: 'string' },
            revokeReason: { type: 'string' },
          },
        },
      },
      audit: auditReceiptSchema,
    },
  }, ...errorResponses } } }, async (request) =>
    run(request, READERS, 'leases.failed', async (p) => {
      const failed = await broker.secrets.leases.failedRevocations();
      const audit = await log.allow(p, 'leases.failed', {}, request.id);
      return {
        leases: failed.map((l) => ({
          leaseId: l.id,
          identity: l.identity,
          secret: l.secret,
          ...(l.engine !== undefined ? { engine: l.engine } : {}),
          ...(l.username !== undefined ? { username: l.username } : {}),
          state: l.state,
          attempts: l.attempts,
          ...(l.lastError !== undefined ? { lastError: l.lastError } : {}),
          ...(l.nextAttemptAt !== undefined ? { nextAttemptAt: iso(l.nextAttemptAt) } : {}),
          expiresAt: iso(l.expiresAt),
          ...(l.revokeReason !== undefined ? { revokeReason: l.revokeReason } : {}),
        })),
        audit,
      };
    }),
  );

  const targetFields = (kind: RevocationKind, value: string): { subject?: string; namespace?: string; serial?: string } =>
    kind === 'spiffeId' ? { subject: value } : kind === 'namespace' ? { namespace: value } : { serial: value };

  app.post<{ Body: { kind: RevocationKind; value: string; reason: string } }>('/v1/admin/revoke', { schema: { body: revokeBody, response: { 200: {
    type: 'object',
    required: ['revocation', 'leases', 'audit'],
    properties: {
      revocation: revocationSchema,
      leases: {
        type: 'object',
        required: ['revoked', 'pending'],
        properties: { revoked: { type: 'array', items: { type: 'string' } }, pending: { type: 'array', items: { type: 'string' } } },
      },
      audit: auditReceiptSchema,
    },
  }, ...errorResponses } } }, async (request) =>
    run(request, ['operator'], 'revoke', async (p) => {
      const { kind, reason: why } = request.body;
      const value = normalizeTarget(kind, request.body.value);
      // Recorded first: a revocation never takes effect unaudited.
      const audit = await log.allow(p, 'revoke', { ...targetFields(kind, value), reason: why }, request.id);
      const revocation = await guard.revocations.add({ kind, value, reason: why, by: p.spiffeId, requestId: request.id });
      // Leases of a revoked identity (or of every identity in a revoked namespace) end now.
      const ctx = { actor: p.spiffeId, requestId: request.id, reason: `revoked by ${p.spiffeId}: ${why}` };
      const leases =
        kind === 'spiffeId'
          ? await broker.secrets.revokeIdentity(value, ctx)
          : kind === 'namespace'
            ? await broker.secrets.leases.revokeMatching((l) => namespaceOfSpiffeId(l.identity) === value, ctx)
            : { revoked: [], pending: [] };
      return { revocation: revocationOut(revocation), leases: { revoked: leases.revoked, pending: leases.pending.map((x) => x.id) }, audit };
    }),
  );

  app.post<{ Body: { kind: RevocationKind; value: string; reason: string } }>('/v1/admin/unrevoke', { schema: { body: revokeBody, response: { 200: {
    type: 'object',
    required: ['removed', 'audit'],
    properties: { removed: { type: 'boolean' }, audit: auditReceiptSchema },
  }, ...errorResponses } } }, async (request) =>
    run(request, ['operator'], 'unrevoke', async (p) => {
      const { kind, reason: why } = request.body;
      const value = normalizeTarget(kind, request.body.value);
      const audit = await log.allow(p, 'unrevoke', { ...targetFields(kind, value), reason: why }, request.id);
      return { removed: await guard.revocations.remove(kind, value), audit };
    }),
  );

  app.get('/v1/admin/freeze', { schema: { response: { 200: {
    type: 'object',
    required: ['frozen', 'global', 'namespaces', 'audit'],
    properties: {
      frozen: { type: 'boolean' },
      global: { anyOf: [freezeSchema, { type: 'null' }] },
      namespaces: { type: 'array', items: freezeSchema },
      audit: auditReceiptSchema,
    },
  }, ...errorResponses } } }, async (request) =>
    run(request, READERS, 'freeze.status', async (p) => {
      const s = await guard.freeze.status();
      const audit = await log.allow(p, 'freeze.status', {}, request.id);
      return {
        frozen: s.global !== null || s.namespaces.length > 0,
        global: s.global !== null ? freezeOut(s.global) : null,
        namespaces: s.namespaces.map(freezeOut),
        audit,
      };
    }),
  );

  app.post<{ Body: { namespace?: string; reason: string } }>('/v1/admin/freeze', { schema: { body: freezeBody, response: { 200: {
    type: 'object',
    required: ['freeze', 'audit'],
    properties: { freeze: freezeSchema, audit: auditReceiptSchema },
  }, ...errorResponses } } }, async (request) =>
    run(request, ['operator'], 'freeze', async (p) => {
      const { namespace, reason: why } = request.body;
      if (namespace !== undefined) checkNamespace(namespace);
      const audit = await log.allow(p, 'freeze', { ...(namespace !== undefined ? { namespace } : {}), reason: why }, request.id);
      const record = await guard.freeze.freeze({ ...(namespace !== undefined ? { namespace } : {}), reason: why, by: p.spiffeId, requestId: request.id });
      return { freeze: freezeOut(record), audit };
    }),
  );

  app.post<{ Body: { namespace?: string; reason: string } }>('/v1/admin/thaw', { schema: { body: freezeBody, response: { 200: {
    type: 'object',
    required: ['thawed', 'audit'],
    properties: { thawed: { type: 'boolean' }, audit: auditReceiptSchema },
  }, ...errorResponses } } }, async (request) =>
    run(request, ['operator'], 'thaw', async (p) => {
      const { namespace, reason: why } = request.body;
      if (namespace !== undefined) checkNamespace(namespace);
      const audit = await log.allow(p, 'thaw', { ...(namespace !== undefined ? { namespace } : {}), reason: why }, request.id);
      return { thawed: await guard.freeze.thaw(namespace), audit };
    }),
  );

  app.put<{ Params: { '*': string }; Body: { value?: string; valueBase64?: string } }>('/v1/admin/secrets/*', { schema: { body: secretBody, response: { 200: {
    type: 'object',
    required: ['name', 'kek', 'audit'],
    properties: { name: { type: 'string' }, kek: { type: 'string' }, audit: auditReceiptSchema },
  }, ...errorResponses } } }, async (request) =>
    run(request, ['secrets-admin'], 'secret.write', async (p) => {
      const name = request.params['*'];
      const problem = secretNameProblem(name);
      if (problem !== undefined) throw badRequest(`secret name: ${problem}`);
      const { value, valueBase64 } = request.body;
      if ((value === undefined) === (valueBase64 === undefined)) throw badRequest('send exactly one of "value" (text) or "valueBase64"');
      if (valueBase64 !== undefined && !/^[A-Za-z0-9+/]*={0,2}$/.test(valueBase64)) throw badRequest('valueBase64 is not base64');
      const bytes = value !== undefined ? Buffer.from(value, 'utf8') : Buffer.from(valueBase64 ?? '', 'base64');
      try {
        const audit = await log.allow(p, 'secret.write', { secret: name }, request.id);
        const { kek } = await broker.secrets.kv.put(name, bytes);
        return { name, kek, audit };
      } finally {
        bytes.fill(0);
      }
    }),
  );

  app.delete<{ Params: { '*': string } }>('/v1/admin/secrets/*', { schema: { response: { 200: {
    type: 'object',
    required: ['name', 'deleted', 'audit'],
    properties: { name: { type: 'string' }, deleted: { type: 'boolean' }, audit: auditReceiptSchema },
  }, ...errorResponses } } }, async (request) =>
    run(request, ['secrets-admin'], 'secret.delete', async (p) => {
      const name = request.params['*'];
      const problem = secretNameProblem(name);
      if (problem !== undefined) throw badRequest(`secret name: ${problem}`);
      const audit = await log.allow(p, 'secret.delete', { secret: name }, request.id);
      return { name, deleted: await broker.secrets.kv.delete(name), audit };
    }),
  );

  app.get<{ Querystring: { limit?: string } }>('/v1/admin/break-glass/events', { schema: {
    querystring: { type: 'object', additionalProperties: false, properties: { limit: { type: 'string', pattern: '^[1-9][0-9]{0,3}$' } } },
    response: { 200: {
      type: 'object',
      required: ['events', 'audit'],
      properties: { events: { type: 'array', items: eventSchema }, audit: auditReceiptSchema },
    }, ...errorResponses },
  } }, async (request) =>
    run(request, READERS, 'break-glass.events', async (p) => {
      const limit = Math.min(Number(request.query.limit ?? '100'), 1000);
      const events = await broker.breakGlass.events(limit);
      const audit = await log.allow(p, 'break-glass.events', {}, request.id);
      return {
        events: events.map((e) => ({ ...e, ts: iso(e.ts), ...(e.expiresAt !== undefined ? { expiresAt: iso(e.expiresAt) } : {}) })),
        audit,
      };
    }),
  );

  // No mTLS here: the request, signed offline by M of N break-glass keys, is the credential.
  app.post<{ Body: { request: unknown; csr?: string } }>('/v1/admin/break-glass', { schema: { body: breakGlassBody, response: { 200: breakGlassResponse, ...errorResponses } } }, async (request, reply) => {
    // A refused request counts against the client address like any failed attestation; a genuine
    // break-glass request is never locked out by junk sent from the same address before it.
    const issued = await broker.breakGlass.redeem(request.body.request, request.body.csr, request.id).catch(async (err: unknown) => {
      if (err instanceof BrokerError && err.status >= 400 && err.status < 500) {
        await broker.limits.failedAttempt((request.raw.socket as TLSSocket).remoteAddress);
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
        adminBundle: broker.admin.pki?.rootsPem ?? '',
      };
    }
    const s = issued.secret;
    if (s === undefined) throw new BrokerError('internal', 'break-glass issued nothing');
    try {
      return { ...base, secret: { name: s.name, ...encodeValue(s.value), leaseId: s.leaseId } };
    } finally {
      s.value.fill(0);
    }
  });

  app.get<{ Querystring: SearchFilterInput & { limit?: string; start?: string } }>('/v1/audit/search', { schema: {
    querystring: searchQuery,
    response: { 200: {
      type: 'object',
      required: ['hits', 'scanned', 'truncated', 'audit'],
      properties: {
        hits: {
          type: 'array',
          items: { type: 'object', required: ['index', 'entry'], properties: { index: { type: 'integer' }, entry: { type: 'object', additionalProperties: true } } },
        },
        scanned: { type: 'integer' },
        malformed: { type: 'integer' },
        truncated: { type: 'boolean' },
        next: { type: 'integer' },
        audit: auditReceiptSchema,
      },
    }, ...errorResponses },
  } }, async (request) =>
    run(request, ['auditor'], 'audit.search', async (p) => {
      const { limit, start, ...filterInput } = request.query;
      const filter = parseSearchFilter(filterInput, broker.clock.now());
      const source = storeSource(broker.store);
      const result = await searchLog(source, filter, { limit: Number(limit ?? '100'), start: Number(start ?? '0') });
      const audit = await log.allow(p, 'audit.search', { reason: `filter ${JSON.stringify(filterInput)}` }, request.id);
      return { ...result, audit };
    }),
  );
}
