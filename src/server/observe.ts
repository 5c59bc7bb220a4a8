/**
 * What the HTTP layer reports about each request: issuance counts and latencies (Prometheus), one
 * structured log line per request (request id, method, path, status, time, and the caller's SPIFFE ID
 * once authenticated — never an address, a header or a body), and the request id echoed back as
 * `x-request-id` so a caller can quote it. Everything per route is bound when the route is registered.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest, onResponseHookHandler } from 'fastify';
import type { Identity } from '../attest/identity.js';
import type { BrokerMetrics, IssuanceType } from '../metrics/metrics.js';

/** Which credential a route hands out, if any (secrets and admin routes are matched by prefix). */
export function issuanceTypeOf(method: string, url: string): IssuanceType | undefined {
  if (method === 'POST' && url === '/v1/svid/x509') return 'x509-svid';
  if (method === 'POST' && url === '/v1/svid/jwt') return 'jwt-svid';
  if (method === 'POST' && url === '/v1/admin/break-glass') return 'break-glass';
  if (method === 'POST' && (url.startsWith('/v1/secrets/postgres/') || /^\/v1\/secrets\/(mysql|redis|rabbitmq)\//.test(url))) return 'db-credentials';
  if (method === 'GET' && url.startsWith('/v1/secrets/')) return 'secret';
  return undefined;
}

const INFO_ENABLED: ReadonlySet<string> = new Set(['info', 'debug', 'trace']);

export function observeRequests(app: FastifyInstance, metrics: BrokerMetrics): void {
  app.addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) {
      const type = issuanceTypeOf(method, route.url);
      if (type === undefined) continue;
      const { allow, deny, error } = metrics.issuance(type);
      const record: onResponseHookHandler = (_request, reply, done) => {
        const status = reply.statusCode;
        (status < 400 ? allow : status < 500 ? deny : error).record(reply.elapsedTime);
        done();
      };
      const existing = route.onResponse === undefined ? [] : [route.onResponse].flat();
      route.onResponse = [...existing, record];
      break;
    }
  });

  app.addHook('onRequest', (request, reply, done) => {
    void reply.header('x-request-id', request.id);
    done();
  });

  // Fastify's own request logging is off (it logs the client address and two lines per request).
  if (INFO_ENABLED.has(app.log.level)) {
    app.addHook('onResponse', (request: FastifyRequest, reply: FastifyReply, done) => {
      const q = request.url.indexOf('?');
      request.log.info(
        {
          method: request.method,
          path: q === -1 ? request.url : request.url.slice(0, q),
          statusCode: reply.statusCode,
          responseTime: Math.round(reply.elapsedTime * 100) / 100,
        },
        'request completed',
      );
      done();
    });
  }
}

/** From here on, every log line of this request names the caller. */
export function logIdentity(request: FastifyRequest, identity: Identity): void {
  if (request.log.level === 'silent') return;
  request.log = request.log.child({ spiffeId: identity.spiffeId });
}
