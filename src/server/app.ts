/**
 * The fastify app: HTTPS with optional client certificates (mTLS identity), strict JSON bodies,
 * timeouts against slow clients, one error handler, and one file per route group.
 */
import { randomUUID } from 'node:crypto';
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import type { Broker } from '../broker.js';
import { BrokerError } from '../errors.js';
import { clientErrorHandler, errorHandler } from './errors.js';
import { LazyLogger } from './lazy-logger.js';
import { observeRequests } from './observe.js';
import { bundleRoutes } from './routes/bundle.js';
import { healthRoutes } from './routes/health.js';
import { adminRoutes } from './routes/admin.js';
import { auditRoutes } from './routes/audit.js';
import { secretsRoutes } from './routes/secrets.js';
import { svidRoutes } from './routes/svid.js';

export interface ServerOptions {
  /** Pino logger options, or false for none (tests). */
  readonly logger?: boolean | Record<string, unknown>;
  /** Called for every route registered (the spec-parity test lists them). */
  readonly onRoute?: (method: string, url: string) => void;
}

export async function buildServer(broker: Broker, opts: ServerOptions = {}): Promise<FastifyInstance> {
  const { config } = broker;
  const app = Fastify({
    https: {
      cert: broker.tls.certPem,
      key: broker.tls.keyPem,
      // Client certificates are optional (token callers have none) and are verified against our own
      // roots; what a valid chain proves is then judged by attest/mtls.ts.
      // With an admin CA, its roots are trusted too; attest/mtls.ts then classifies every chain by
      // signature, so a workload SVID never reaches admin routes nor an admin certificate workload routes.
      ca: broker.admin.pki !== undefined ? [broker.ca.rootsPem, broker.admin.pki.rootsPem] : broker.ca.rootsPem,
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: 'TLSv1.2',
      // Node checks headersTimeout/requestTimeout only every connectionsCheckingInterval (30 s by
      // default), so slow headers would live ~35 s; check every second. A TLS handshake gets 10 s.
      headersTimeout: 5_000,
      connectionsCheckingInterval: 1_000,
      handshakeTimeout: 10_000,
    },
    bodyLimit: config.bodyLimitBytes,
    // Slow clients: a request must arrive within 10 s, headers within 5 s; idle keep-alive closes at 65 s.
    requestTimeout: 10_000,
    connectionTimeout: 30_000,
    keepAliveTimeout: 65_000,
    genReqId: () => randomUUID(),
    // Per-request loggers are made when the request first logs (lazy-logger.ts).
    childLoggerFactory: (logger, bindings, opts) => new LazyLogger(logger, bindings, opts),
    logger:
      opts.logger === false
        ? false
        : {
            level: config.logLevel,
            redact: {
              paths: [
                'req.headers.authorization', 'req.headers.cookie', '*.privateKey', '*.token', '*.csr', '*.password', '*.value',
                'privateKey', 'token', 'csr', 'authorization', 'headers.authorization', '*.headers.authorization',
              ],
              censor: '[redacted]',
            },
            ...(typeof opts.logger === 'object' ? opts.logger : {}),
          },
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false } },
    return503OnClosing: true,
    // observe.ts writes one line per request, with the SPIFFE ID and without the client address.
    logController: new LogController({ disableRequestLogging: true }),
    clientErrorHandler: clientErrorHandler((reason) => broker.metrics.clientError(reason)),
    // Bad URLs are refused before routing; answer them in the same {error, message} shape.
    frameworkErrors: (err, request, reply) => errorHandler(err, request, reply),
  });
  app.server.headersTimeout = 5_000;

  const onRoute = opts.onRoute;
  if (onRoute !== undefined) {
    app.addHook('onRoute', (route) => {
      for (const method of [route.method].flat()) onRoute(method, route.url);
    });
  }
  observeRequests(app, broker.metrics);
  // Every body is JSON: a text/plain body is refused (415) instead of reaching a schema as a string.
  app.removeContentTypeParser('text/plain');
  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler((request, reply) => {
    errorHandler(new BrokerError('not_found', `no route ${request.method} ${request.url.split('?')[0] ?? ''}`), request, reply);
  });

  healthRoutes(app, broker);
  bundleRoutes(app, broker);
  svidRoutes(app, broker);
  auditRoutes(app, broker);
  secretsRoutes(app, broker);
  adminRoutes(app, broker);
  return app;
}
