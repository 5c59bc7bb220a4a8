/**
 * The fastify app: HTTPS with optional client certificates (mTLS identity), strict JSON bodies,
 * timeouts against slow clients, one error handler, and one file per route group.
 */
import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Broker } from '../broker.js';
import { BrokerError } from '../errors.js';
import { errorHandler } from './errors.js';
import { bundleRoutes } from './routes/bundle.js';
import { healthRoutes } from './routes/health.js';
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
      ca: broker.ca.rootsPem,
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: 'TLSv1.2',
    },
    bodyLimit: config.bodyLimitBytes,
    // Slow clients: a request must arrive within 10 s, headers within 5 s; idle keep-alive closes at 65 s.
    requestTimeout: 10_000,
    connectionTimeout: 30_000,
    keepAliveTimeout: 65_000,
    genReqId: () => randomUUID(),
    logger:
      opts.logger === false
        ? false
        : {
            level: config.logLevel,
            redact: { paths: ['req.headers.authorization', 'req.headers.cookie', '*.privateKey', '*.token', '*.csr'], censor: '[redacted]' },
            ...(typeof opts.logger === 'object' ? opts.logger : {}),
          },
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false } },
    return503OnClosing: true,
  });
  app.server.headersTimeout = 5_000;

  const onRoute = opts.onRoute;
  if (onRoute !== undefined) {
    app.addHook('onRoute', (route) => {
      for (const method of [route.method].flat()) onRoute(method, route.url);
    });
  }
  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler((request, reply) => {
    errorHandler(new BrokerError('not_found', 404, `no route ${request.method} ${request.url.split('?')[0] ?? ''}`), request, reply);
  });

  healthRoutes(app, broker);
  bundleRoutes(app, broker);
  svidRoutes(app, broker);
  return app;
}
