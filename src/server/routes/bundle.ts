/** GET /v1/bundle (SPIFFE bundle as JWKS) and GET /v1/bundle.pem (X.509 roots). Public: no caller auth. */
import type { FastifyInstance } from 'fastify';
import type { Broker } from '../../broker.js';

export function bundleRoutes(app: FastifyInstance, broker: Broker): void {
  const jwks = JSON.stringify(broker.bundle);
  app.get('/v1/bundle', async (_request, reply) => {
    void reply.type('application/json').header('cache-control', `max-age=${broker.bundle.spiffe_refresh_hint}`);
    return jwks;
  });
  app.get('/v1/bundle.pem', async (_request, reply) => {
    void reply.type('application/x-pem-file').header('cache-control', `max-age=${broker.bundle.spiffe_refresh_hint}`);
    return broker.ca.rootsPem;
  });
}
