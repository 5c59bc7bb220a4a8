/** POST /v1/svid/x509 and POST /v1/svid/jwt: the attested caller's SVIDs, issued through the audited path. */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import type { AuditEventType } from '../../audit/entry.js';
import { badRequest } from '../../errors.js';
import type { Issuer } from '../../issue/issuer.js';
import { identityOf } from '../auth.js';
import { refusedIdentity, type RefusalRecorder } from '../refusals.js';
import { AuditReceipt, DateTime, described, errorResponses, iso, StringEnum, Strings } from '../schemas.js';

const SpiffeIdChoice = Type.String({
  minLength: 1,
  maxLength: 2048,
  description: 'When several registration entries match the caller: which of their SPIFFE IDs to issue (without it the most specific entry wins; a tie is 409 `ambiguous_registration`).',
});

const X509Body = Type.Object(
  {
    csr: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 16_384,
        description: 'PEM PKCS#10 CSR. Only its public key is used (EC P-256/P-384, RSA ≥ 2048, Ed25519); the broker decides every name and extension.',
      }),
    ),
    keyType: Type.Optional(StringEnum(['ec-p256'], { description: 'Ask the broker to make the key pair; the private key is returned once, as PKCS#8 PEM.' })),
    ttlSeconds: Type.Optional(
      Type.Integer({ minimum: 60, maximum: 2_592_000, description: "Requested lifetime; capped by policy and by the signing CA's own validity." }),
    ),
    spiffeId: Type.Optional(SpiffeIdChoice),
  },
  { additionalProperties: false, title: 'X509SvidRequest', description: 'Exactly one of `csr` or `keyType`.' },
);

const X509Svid = Type.Object(
  {
    spiffeId: Type.String({ examples: ['spiffe://example.org/ns/shop/sa/web'] }),
    serial: Type.String({ description: 'Certificate serial number, lowercase hex.' }),
    certificates: Type.Immutable(Type.Array(Type.String(), { description: 'PEM certificates, leaf first, then intermediates (no root).' })),
    svid: Type.String({ description: 'The same chain concatenated, ready to write to svid.pem.' }),
    privateKey: Type.Optional(Type.String({ description: 'PKCS#8 PEM, only when keyType was requested.' })),
    notBefore: DateTime(),
    expiresAt: DateTime(),
    bundle: Type.String({ description: 'The trust bundle (root certificates) as PEM.' }),
    federatedBundles: Type.Array(
      Type.Object({
        trustDomain: Type.String({ examples: ['partner.test'] }),
        bundle: Type.String({ description: "The foreign trust domain's X.509 authorities as PEM." }),
        spiffeBundle: Type.String({ description: 'Its SPIFFE bundle JSON (x509-svid and jwt-svid keys).' }),
      }),
      { description: "Bundles of the foreign trust domains this workload's registration entry federates with (federatesWith): trust each only for SVIDs of its own trust domain." },
    ),
    audit: AuditReceipt,
  },
  { title: 'X509SvidResponse' },
);

const JwtBody = Type.Object(
  {
    audience: Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { minItems: 1, maxItems: 16, uniqueItems: true }),
    ttlSeconds: Type.Optional(Type.Integer({ minimum: 30, maximum: 86_400 })),
    spiffeId: Type.Optional(SpiffeIdChoice),
  },
  { additionalProperties: false, title: 'JwtSvidRequest' },
);

const JwtSvid = Type.Object(
  {
    spiffeId: Type.String(),
    token: Type.String({ description: 'JWT-SVID: ES256, sub = SPIFFE ID, aud, exp, iat, jti; kid in the bundle.' }),
    jti: Type.String(),
    audience: Strings,
    expiresAt: DateTime(),
    audit: AuditReceipt,
  },
  { title: 'JwtSvidResponse' },
);

const ERRORS = errorResponses('BadRequest', 'Unauthenticated', 'Forbidden', 'AmbiguousRegistration', 'TooLarge', 'UnsupportedMediaType', 'RateLimited', 'Unavailable');

export interface SvidOptions {
  readonly issuer: Issuer;
  /** The trust bundle sent with every X.509-SVID. */
  readonly rootsPem: string;
  /** The federated bundles in force for these trust domains. */
  readonly federatedBundles: (trustDomains: readonly string[]) => readonly { trustDomain: string; pem: string; json: string }[];
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

export const svidRoutes: FastifyPluginAsyncTypebox<SvidOptions> = async (app, { issuer, rootsPem, federatedBundles }) => {
  // A refusal (bad token, bad certificate, policy, bad CSR) is as visible as a grant.
  const refusal = (type: AuditEventType): RefusalRecorder => (err, request) => issuer.recordDenial(type, err, refusedIdentity(request, err), request.id);

  app.post(
    '/v1/svid/x509',
    {
      schema: {
        operationId: 'issueX509Svid',
        summary: 'Issue an X.509-SVID (from a CSR, or with a server-made key); renew over mTLS with the current SVID.',
        body: X509Body,
        response: { 200: described('The SVID, its chain, the bundle and the audit receipt.', X509Svid), ...ERRORS },
      },
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
        federatedBundles: federatedBundles(issued.federatesWith).map((b) => ({ trustDomain: b.trustDomain, bundle: b.pem, spiffeBundle: b.json })),
        audit: issued.audit,
      };
    },
  );

  app.post(
    '/v1/svid/jwt',
    {
      schema: {
        operationId: 'issueJwtSvid',
        summary: 'Issue a JWT-SVID for audiences that policy allows this identity.',
        body: JwtBody,
        response: { 200: described('The JWT-SVID and the audit receipt.', JwtSvid), ...ERRORS },
      },
      config: { auth: 'workload', refusal: refusal('jwt-svid.issued') },
    },
    async (request) => {
      const issued = await issuer.jwt(identityOf(request), request.body, request.id);
      return { ...issued, expiresAt: iso(issued.expiresAt) };
    },
  );
};
