/**
 * Writing secrets (secrets-admin):
 *   PUT    /v1/admin/secrets/<name…>   {value | valueBase64}
 *   DELETE /v1/admin/secrets/<name…>
 * Rotating an engine's admin password (secrets-admin or operator; the password is never returned or audited):
 *   POST   /v1/admin/secrets-engines/<engine>/rotate-root
 */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { AdminAudit } from '../../../admin/audit.js';
import { BrokerError, badRequest } from '../../../errors.js';
import type { SecretKv } from '../../../secrets/kv.js';
import { secretNameProblem } from '../../../secrets/names.js';
import { adminOf } from '../../auth.js';
import { ADMIN_ERRORS, AuditReceipt, DateTime, described, errorResponses, WildcardParams } from '../../schemas.js';
import { adminCall } from './access.js';

export interface SecretsAdminOptions {
  readonly log: AdminAudit;
  readonly kv: Pick<SecretKv, 'put' | 'delete'>;
  /** SecretsService.rotateRoot; absent: the route answers 404 for every engine. */
  readonly rotateRoot?: (engine: string) => Promise<{ engine: string; kind: string }>;
}

const EngineParams = Type.Object({ engine: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.-]+$' }) });

const SecretBody = Type.Object(
  { value: Type.Optional(Type.String({ minLength: 1, maxLength: 65_536 })), valueBase64: Type.Optional(Type.String({ minLength: 1, maxLength: 87_384 })) },
  { additionalProperties: false, description: 'Exactly one of value (text) or valueBase64 (bytes).' },
);

function checkedName(name: string): string {
  const problem = secretNameProblem(name);
  if (problem !== undefined) throw badRequest(`secret name: ${problem}`);
  return name;
}

export const secretsAdminRoutes: FastifyPluginAsyncTypebox<SecretsAdminOptions> = async (app, { log, kv, rotateRoot }) => {
  app.post(
    '/v1/admin/secrets-engines/:engine/rotate-root',
    {
      schema: {
        operationId: 'rotateEngineRoot',
        summary: "Rotate a secrets engine's admin password. Role secrets-admin or operator.",
        description:
          'The broker sets a new random password for the engine\'s admin user on the backend, stores it encrypted under the secrets KEK, and ' +
          'connects with it from then on (every replica). The old password stops working; the new one is never returned or audited.',
        params: EngineParams,
        response: {
          200: described(
            'Rotated.',
            Type.Object({ engine: Type.String(), kind: Type.String({ description: 'postgres, mysql, redis or rabbitmq.' }), rotatedAt: DateTime(), audit: AuditReceipt }),
          ),
          ...errorResponses('BadRequest', ...ADMIN_ERRORS),
        },
      },
      config: adminCall(log, ['secrets-admin', 'operator'], 'secret.rotate-root'),
    },
    async (request) => {
      const name = request.params.engine;
      if (rotateRoot === undefined) throw new BrokerError('not_found', `no secrets engine named "${name}" is configured`);
      // Recorded before anything changes (fail closed); a failure that follows is recorded as a refusal.
      const audit = await log.allow(adminOf(request), 'secret.rotate-root', { secret: `engine/${name}` }, request.id);
      const done = await rotateRoot(name);
      return { engine: done.engine, kind: done.kind, rotatedAt: new Date().toISOString(), audit };
    },
  );

  app.put(
    '/v1/admin/secrets/*',
    {
      schema: {
        operationId: 'writeSecret',
        summary: 'Store (or replace) a static secret, encrypted at rest. Role secrets-admin.',
        description: '`name` may contain "/" (`PUT /v1/admin/secrets/db/reporting-api-key`). The value never enters the audit log.',
        params: WildcardParams,
        body: SecretBody,
        response: {
          200: described(
            'Stored.',
            Type.Object({ name: Type.String(), kek: Type.String({ description: 'Id of the key-encryption key that wraps it.' }), audit: AuditReceipt }),
          ),
          ...errorResponses('BadRequest', 'AdminUnauthenticated', 'AdminForbidden', 'RateLimited', 'SecretsUnavailable'),
        },
      },
      config: adminCall(log, ['secrets-admin'], 'secret.write'),
    },
    async (request) => {
      const name = checkedName(request.params['*']);
      const { value, valueBase64 } = request.body;
      if ((value === undefined) === (valueBase64 === undefined)) throw badRequest('send exactly one of "value" (text) or "valueBase64"');
      if (valueBase64 !== undefined && !/^[A-Za-z0-9+/]*={0,2}$/.test(valueBase64)) throw badRequest('valueBase64 is not base64');
      const bytes = value !== undefined ? Buffer.from(value, 'utf8') : Buffer.from(valueBase64 ?? '', 'base64');
      try {
        const audit = await log.allow(adminOf(request), 'secret.write', { secret: name }, request.id);
        const { kek } = await kv.put(name, bytes);
        return { name, kek, audit };
      } finally {
        bytes.fill(0);
      }
    },
  );

  app.delete(
    '/v1/admin/secrets/*',
    {
      schema: {
        operationId: 'deleteSecret',
        summary: 'Delete a static secret. Role secrets-admin.',
        params: WildcardParams,
        response: {
          200: described('`deleted` is false if there was no such secret.', Type.Object({ name: Type.String(), deleted: Type.Boolean(), audit: AuditReceipt })),
          ...errorResponses('BadRequest', ...ADMIN_ERRORS),
        },
      },
      config: adminCall(log, ['secrets-admin'], 'secret.delete'),
    },
    async (request) => {
      const name = checkedName(request.params['*']);
      const audit = await log.allow(adminOf(request), 'secret.delete', { secret: name }, request.id);
      return { name, deleted: await kv.delete(name), audit };
    },
  );
};
