/** GET /v1/bundle (SPIFFE bundle as JWKS) and GET /v1/bundle.pem (X.509 roots). Public: no caller auth. */
import { type FastifyPluginAsyncTypebox, Type } from '@fastify/type-provider-typebox';
import type { SpiffeBundle } from '../../spiffe/bundle.js';
import { described, StringEnum, Strings } from '../schemas.js';

/** The bundle: the handler sends it serialized once per bundle (a JSON string is not serialized again). */
const BundleJwks = Type.Unsafe<string>(Type.Object(
  {
    keys: Type.Array(
      Type.Object({
        kty: Type.String(),
        use: StringEnum(['x509-svid', 'jwt-svid']),
        kid: Type.Optional(Type.String()),
        crv: Type.Optional(Type.String()),
        x: Type.Optional(Type.String()),
        y: Type.Optional(Type.String()),
        n: Type.Optional(Type.String()),
        e: Type.Optional(Type.String()),
        x5c: Type.Optional(Strings),
      }),
    ),
    spiffe_sequence: Type.Integer(),
    spiffe_refresh_hint: Type.Integer(),
  },
  { title: 'SpiffeBundle' },
));

export interface BundleOptions {
  /** The bundle as of now (CA rotation publishes and drops keys). */
  readonly bundle: () => SpiffeBundle;
  readonly rootsPem: string;
}

export const bundleRoutes: FastifyPluginAsyncTypebox<BundleOptions> = async (app, { bundle: getBundle, rootsPem }) => {
  let served: { bundle: SpiffeBundle; jwks: string } | undefined;
  const current = (): { bundle: SpiffeBundle; jwks: string } => {
    const bundle = getBundle();
    if (served?.bundle !== bundle) served = { bundle, jwks: JSON.stringify(bundle) };
    return served;
  };
  app.get(
    '/v1/bundle',
    {
      schema: {
        operationId: 'getBundle',
        summary: 'The SPIFFE trust bundle as a JWKS (x509-svid roots with x5c, jwt-svid keys).',
        response: { 200: described('SPIFFE bundle.', BundleJwks) },
      },
    },
    async (_request, reply) => {
    const { bundle, jwks } = current();
    void reply.type('application/json').header('cache-control', `max-age=${bundle.spiffe_refresh_hint}`);
    return jwks;
  });
  app.get(
    '/v1/bundle.pem',
    {
      schema: {
        operationId: 'getBundlePem',
        summary: 'The X.509 roots as PEM.',
        produces: ['application/x-pem-file'],
        response: { 200: described('PEM certificates.', Type.String()) },
      },
    },
    async (_request, reply) => {
    void reply.type('application/x-pem-file').header('cache-control', `max-age=${getBundle().spiffe_refresh_hint}`);
    return rootsPem;
  });
};
