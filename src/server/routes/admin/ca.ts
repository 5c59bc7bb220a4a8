/**
 * The CA lifecycle (docs/ca.md):
 *   GET  /v1/admin/ca            the authorities (prepared / active / old), their dates, the bundle sequence   (auditor, operator)
 *   POST /v1/admin/ca/activate   {reason}: the prepared authority signs from now on                          (operator)
 */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { AdminAudit } from '../../../admin/audit.js';
import type { CertificateAuthority } from '../../../ca/authority.js';
import { preparedOf, type AuthorityRecord, type CaRotation } from '../../../ca/rotation.js';
import { BrokerError } from '../../../errors.js';
import type { SpiffeBundle } from '../../../spiffe/bundle.js';
import { adminOf } from '../../auth.js';
import { ADMIN_ERRORS, AuditReceipt, DateTime, described, errorResponses, iso } from '../../schemas.js';
import { adminCall, READERS } from './access.js';
import { Reason } from './revocations.js';

export interface CaAdminOptions {
  readonly log: AdminAudit;
  /** Absent without `ca.rotation`: the status then shows the one CA of the config files. */
  readonly rotation?: CaRotation;
  readonly ca: () => CertificateAuthority;
  readonly jwtKid: () => string;
  readonly bundle: () => SpiffeBundle;
}

const Authority = Type.Object(
  {
    id: Type.String({ description: "The signing certificate's subject key identifier (hex)." }),
    state: Type.Union([Type.Literal('prepared'), Type.Literal('active'), Type.Literal('old')]),
    jwtKid: Type.String({ description: 'The `kid` of its JWT-SVID key in the bundle.' }),
    notBefore: DateTime(),
    notAfter: DateTime(),
    activatedAt: Type.Optional(DateTime()),
    dependentsUntil: Type.Optional(DateTime('Old authorities: SVIDs it signed may be in use until then; it leaves the bundle at that time.')),
  },
  { title: 'CaAuthority' },
);

const CaStatus = Type.Object(
  {
    rotation: Type.Boolean({ description: 'Whether Tessera rotates the CA by itself (config ca.rotation).' }),
    sequence: Type.Integer({ description: "The trust bundle's spiffe_sequence." }),
    authorities: Type.Array(Authority),
    audit: AuditReceipt,
  },
  { title: 'CaStatus' },
);

function authorityOut(a: AuthorityRecord): { id: string; state: AuthorityRecord['state']; jwtKid: string; notBefore: string; notAfter: string; activatedAt?: string; dependentsUntil?: string } {
  return {
    id: a.id,
    state: a.state,
    jwtKid: a.jwtKid,
    notBefore: iso(a.notBefore),
    notAfter: iso(a.notAfter),
    ...(a.activatedAt !== undefined ? { activatedAt: iso(a.activatedAt) } : {}),
    ...(a.state === 'old' && a.retireAt !== undefined ? { dependentsUntil: iso(a.retireAt) } : {}),
  };
}

export const caAdminRoutes: FastifyPluginAsyncTypebox<CaAdminOptions> = async (app, opts) => {
  const { log, rotation } = opts;
  app.get(
    '/v1/admin/ca',
    {
      schema: {
        operationId: 'getCaStatus',
        summary: 'The CA authorities (prepared, active, old), their validity and the bundle sequence. Role auditor or operator.',
        response: { 200: described('CA status.', CaStatus), ...errorResponses(...ADMIN_ERRORS) },
      },
      config: adminCall(log, READERS, 'ca.status'),
    },
    async (request) => {
      const audit = await log.allow(adminOf(request), 'ca.status', {}, request.id);
      if (rotation !== undefined) {
        const { state } = rotation.current();
        return { rotation: true, sequence: state.sequence, authorities: state.authorities.map(authorityOut), audit };
      }
      const ca = opts.ca();
      return {
        rotation: false,
        sequence: opts.bundle().spiffe_sequence,
        authorities: [{ id: ca.authorityId, state: 'active' as const, jwtKid: opts.jwtKid(), notBefore: iso(ca.signingCertNotBefore), notAfter: iso(ca.signingCertNotAfter) }],
        audit,
      };
    },
  );

  app.post(
    '/v1/admin/ca/activate',
    {
      schema: {
        operationId: 'activateCa',
        summary: 'Make the prepared CA authority the active one now (instead of at 5/6 of the active one\'s life). Role operator.',
        description: `Every replica signs X.509- and JWT-SVIDs with the prepared authority within \`ca.rotation.pollIntervalMs\`;
the one it replaces stays in the bundle until the last SVID it signed has expired. 409 \`ca_state_conflict\`
when rotation is not configured or no authority is prepared.
`,
        body: Type.Object({ reason: Reason }, { additionalProperties: false, title: 'CaActivateRequest' }),
        response: { 200: described('Activated.', Type.Object({ active: Authority, audit: AuditReceipt })), ...errorResponses('BadRequest', ...ADMIN_ERRORS) },
      },
      config: adminCall(log, ['operator'], 'ca.activate'),
    },
    async (request) => {
      if (rotation === undefined) {
        throw new BrokerError('ca_state_conflict', 'CA rotation is not configured (ca.rotation); there is no prepared authority to activate');
      }
      // Refused before it is recorded as done (activateNow checks again under the lock).
      if (preparedOf(rotation.current().state) === undefined) throw new BrokerError('ca_state_conflict', 'no authority is prepared, so there is nothing to activate');
      const audit = await log.allow(adminOf(request), 'ca.activate', { reason: request.body.reason }, request.id);
      const active = await rotation.activateNow();
      return { active: authorityOut(active), audit };
    },
  );
};
