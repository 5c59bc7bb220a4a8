/**
 * GET /.well-known/openid-configuration and GET /.well-known/jwks.json: OIDC discovery of the JWT-SVID
 * keys (spiffe/oidc.ts, docs/oidc.md). Public: no caller auth. Registered on the broker's listener and,
 * alone, on the public listener (server/oidc-public.ts); both answer 404 unless `oidc.enabled`.
 */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import { BrokerError } from '../../errors.js';
import type { SpiffeBundle } from '../../spiffe/bundle.js';
import { discoveryDocument, DISCOVERY_PATH, JWKS_PATH, jwksMaxAgeSeconds, oidcJwks } from '../../spiffe/oidc.js';
import { described, ErrorBody, StringEnum, Strings } from '../schemas.js';

/** Both bodies are sent serialized once per bundle (a JSON string is not serialized again). */
const OidcDiscovery = Type.Unsafe<string>(Type.Object(
  {
    issuer: Type.String(),
    jwks_uri: Type.String(),
    response_types_supported: Strings,
    subject_types_supported: Strings,
    id_token_signing_alg_values_supported: Strings,
    claims_supported: Strings,
  },
  { title: 'OidcDiscovery' },
));

const OidcJwks = Type.Unsafe<string>(Type.Object(
  {
    keys: Type.Array(
      Type.Object({
        kty: Type.String(),
        kid: Type.String(),
        use: StringEnum(['sig']),
        alg: Type.String(),
        crv: Type.Optional(Type.String()),
        x: Type.Optional(Type.String()),
        y: Type.Optional(Type.String()),
        n: Type.Optional(Type.String()),
        e: Type.Optional(Type.String()),
      }),
    ),
  },
  { title: 'OidcJwks' },
));

const notEnabled = described('OIDC discovery is not enabled (config oidc.enabled).', ErrorBody);

export interface OidcOptions {
  /** The issuer (config jwt.issuer) when `oidc.enabled`; undefined: both paths answer 404. */
  readonly issuer: string | undefined;
  /** The bundle as of now (CA rotation publishes and drops JWT keys). */
  readonly bundle: () => SpiffeBundle;
  /** ca.rotation.caTtlSeconds when the CA rotates: caching stays shorter than a key's pre-publication. */
  readonly caTtlSeconds: number | undefined;
}

interface Served {
  readonly bundle: SpiffeBundle;
  readonly document: string;
  readonly jwks: string;
  readonly cacheControl: string;
}

export const oidcRoutes: FastifyPluginAsyncTypebox<OidcOptions> = async (app, { issuer, bundle: getBundle, caTtlSeconds }) => {
  let served: Served | undefined;
  const current = (): Served => {
    if (issuer === undefined) throw new BrokerError('not_found', 'OIDC discovery is not enabled on this broker (config oidc.enabled)');
    const bundle = getBundle();
    if (served?.bundle !== bundle) {
      const jwks = oidcJwks(bundle);
      served = {
        bundle,
        document: JSON.stringify(discoveryDocument(issuer, jwks)),
        jwks: JSON.stringify(jwks),
        cacheControl: `public, max-age=${jwksMaxAgeSeconds(bundle.spiffe_refresh_hint, caTtlSeconds)}`,
      };
    }
    return served;
  };
  app.get(
    DISCOVERY_PATH,
    {
      schema: {
        operationId: 'getOpenidConfiguration',
        summary: 'OpenID Connect discovery document of the JWT-SVID issuer (config jwt.issuer), naming the JWKS.',
        response: { 200: described('OpenID provider metadata.', OidcDiscovery), 404: notEnabled, '4xx': ErrorBody, '5xx': ErrorBody },
      },
    },
    async (_request, reply) => {
      const { document, cacheControl } = current();
      void reply.type('application/json').header('cache-control', cacheControl);
      return document;
    },
  );
  app.get(
    JWKS_PATH,
    {
      schema: {
        operationId: 'getOidcJwks',
        summary: 'The JWT-SVID public keys (every key in the bundle, rotating ones included) as a JWKS for OIDC relying parties.',
        response: { 200: described('JSON Web Key Set.', OidcJwks), 404: notEnabled, '4xx': ErrorBody, '5xx': ErrorBody },
      },
    },
    async (_request, reply) => {
      const { jwks, cacheControl } = current();
      void reply.type('application/json').header('cache-control', cacheControl);
      return jwks;
    },
  );
};
