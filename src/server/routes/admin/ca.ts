/**
 * The CA lifecycle (docs/ca.md):
 *   GET  /v1/admin/ca            the authorities (prepared / active / old), their dates, the bundle sequence   (auditor, operator)
 *   POST /v1/admin/ca/activate   {reason}: the prepared authority signs from now on                          (operator)
 *   POST /v1/admin/ca/prepare    {reason}: keys for the next authority, and a CSR for an upstream root        (operator)
 *   POST /v1/admin/ca/import     {reason, certificatePem, chainPem?}: the signed CSR becomes the prepared authority (operator)
 */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { AdminAudit } from '../../../admin/audit.js';
import type { CertificateAuthority } from '../../../ca/authority.js';
import { MAX_IMPORT_CERT_PEM, MAX_IMPORT_CHAIN_PEM, preparedOf, type AuthorityRecord, type CaRotation } from '../../../ca/rotation.js';
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
    pendingSince: Type.Optional(DateTime('When `ca prepare` made keys that wait for `ca import`.')),
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
        return {
          rotation: true,
          sequence: state.sequence,
          authorities: state.authorities.map(authorityOut),
          ...(state.pending !== undefined ? { pendingSince: iso(state.pending.createdAt) } : {}),
          audit,
        };
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

  const notConfigured = (): BrokerError =>
    new BrokerError('ca_state_conflict', 'CA rotation is not configured (ca.rotation); the signing CA is the config files, replaced by a restart');

  app.post(
    '/v1/admin/ca/prepare',
    {
      schema: {
        operationId: 'prepareCa',
        summary: 'Make the keys of the next CA authority and return a PKCS#10 CSR for its signing CA, for an upstream or offline root to sign. Role operator.',
        description: `The keys stay in the store, sealed with the secrets KEK; nothing is published until \`POST /v1/admin/ca/import\`.
Asked again before the import, it returns the same CSR (\`created: false\`). 409 \`ca_state_conflict\` when rotation
is not configured or an authority is already prepared.
`,
        body: Type.Object({ reason: Reason }, { additionalProperties: false, title: 'CaPrepareRequest' }),
        response: {
          200: described(
            'The CSR.',
            Type.Object({
              csrPem: Type.String({ description: 'PEM CERTIFICATE REQUEST: O=Tessera, CN=Tessera Signing CA, EC P-256, asking for cA:TRUE pathlen 0, keyCertSign + cRLSign, the trust domain URI.' }),
              created: Type.Boolean({ description: 'false: the CSR of a prepare already pending.' }),
              pendingSince: DateTime(),
              audit: AuditReceipt,
            }),
          ),
          ...errorResponses('BadRequest', ...ADMIN_ERRORS),
        },
      },
      config: adminCall(log, ['operator'], 'ca.prepare'),
    },
    async (request) => {
      if (rotation === undefined) throw notConfigured();
      const prepared = preparedOf(rotation.current().state);
      if (prepared !== undefined) throw new BrokerError('ca_state_conflict', `authority ${prepared.id} is already prepared: activate it (tessera ca activate) before preparing another`);
      const audit = await log.allow(adminOf(request), 'ca.prepare', { reason: request.body.reason }, request.id);
      const out = await rotation.prepareCsr();
      return { csrPem: out.csrPem, created: out.created, pendingSince: iso(out.createdAt), audit };
    },
  );

  app.post(
    '/v1/admin/ca/import',
    {
      schema: {
        operationId: 'importCa',
        summary: 'Install the certificate an upstream or offline root signed for the pending CSR as the prepared CA authority. Role operator.',
        description: `The certificate must be for the key of \`POST /v1/admin/ca/prepare\`, a CA (basicConstraints cA, keyUsage
keyCertSign), valid now and for at least \`svid.x509MaxTtlSeconds\`, and chain through \`chainPem\` (the certificates
between it and the root, if any) to a root in \`ca.bundleFile\` — else 400 \`bad_request\` naming the cause, and
nothing changes. On success it is published in the bundle (\`spiffe_sequence\` + 1) as the prepared authority;
\`POST /v1/admin/ca/activate\` (or the 5/6-of-life schedule) makes it sign. 409 \`ca_state_conflict\` when no
prepare is pending.
`,
        body: Type.Object(
          {
            reason: Reason,
            certificatePem: Type.String({ minLength: 1, maxLength: MAX_IMPORT_CERT_PEM, description: 'The signed certificate (PEM, one certificate).' }),
            chainPem: Type.Optional(Type.String({ maxLength: MAX_IMPORT_CHAIN_PEM, description: 'Certificates between it and a root of ca.bundleFile (PEM), if any.' })),
          },
          { additionalProperties: false, title: 'CaImportRequest' },
        ),
        response: {
          200: described('Installed as the prepared authority.', Type.Object({ prepared: Authority, sequence: Type.Integer(), audit: AuditReceipt })),
          ...errorResponses('BadRequest', ...ADMIN_ERRORS),
        },
      },
      config: adminCall(log, ['operator'], 'ca.import'),
    },
    async (request) => {
      if (rotation === undefined) throw notConfigured();
      const { certificatePem, chainPem = '' } = request.body;
      // Refused before it is recorded as done (importCertificate checks again under the lock).
      await rotation.checkImport(certificatePem, chainPem);
      const audit = await log.allow(adminOf(request), 'ca.import', { reason: request.body.reason }, request.id);
      const record = await rotation.importCertificate(certificatePem, chainPem);
      return { prepared: authorityOut(record), sequence: rotation.current().state.sequence, audit };
    },
  );
};
