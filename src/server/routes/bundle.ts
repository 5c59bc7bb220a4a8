/** GET /v1/bundle (SPIFFE bundle as JWKS) and GET /v1/bundle.pem (X.509 roots). Public: no caller auth. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { SpiffeBundle } from '../../spiffe/bundle.js';

export interface BundleOptions {
  readonly bundle: SpiffeBundle;
  readonly rootsPem: string;
}

export const bundleRoutes: FastifyPluginAsyncTypebox<BundleOptions> = async (app, { bundle, rootsPem }) => {
  const jwks = JSON.stringify(bundle);
  app.get('/v1/bundle', { schema: { operationId: 'getBundle' } }, async (_request, reply) => {
    void reply.type('application/json').header('cache-control', `max-age=${bundle.spiffe_refresh_hint}`);
    return jwks;
  });
  app.get('/v1/bundle.pem', { schema: { operationId: 'getBundlePem' } }, async (_request, reply) => {
    void reply.type('application/x-pem-file').header('cache-control', `max-age=${bundle.spiffe_refresh_hint}`);
    return rootsPem;
  });
};
