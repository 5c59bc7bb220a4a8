/**
 * The fastify app: HTTPS with optional client certificates (mTLS identity), strict JSON bodies,
 * timeouts against slow clients, one authentication hook, one error handler (which audits refusals),
 * and one plugin per resource, each given only what it needs.
 */
import { randomUUID } from 'node:crypto';
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import { AdminAudit } from '../admin/audit.js';
import type { Broker } from '../broker.js';
import { BrokerError } from '../errors.js';
import { clientErrorHandler, errorHandler } from './errors.js';
import { authHook } from './auth.js';
import { LazyLogger } from './lazy-logger.js';
import { observeRequests } from './observe.js';
import { auditRefusal } from './refusals.js';
import { auditSearchRoutes } from './routes/admin/audit-search.js';
import { caAdminRoutes } from './routes/admin/ca.js';
import { breakGlassRoutes } from './routes/admin/break-glass.js';
import { entriesRoutes } from './routes/admin/entries.js';
import { reloadRoutes } from './routes/admin/reload.js';
import { freezeRoutes } from './routes/admin/freeze.js';
import { revocationRoutes } from './routes/admin/revocations.js';
import { secretsAdminRoutes } from './routes/admin/secrets.js';
import { whoamiRoutes } from './routes/admin/whoami.js';
import { federationRoutes } from './routes/admin/federation.js';
import { trustBundlePem } from '../spiffe/bundle-parse.js';
import { auditRoutes } from './routes/audit.js';
import { bundleRoutes } from './routes/bundle.js';
import { healthRoutes } from './routes/health.js';
import { leasesRoutes } from './routes/leases.js';
import { oidcRoutes, type OidcOptions } from './routes/oidc.js';
import { secretsRoutes } from './routes/secrets.js';
import { svidRoutes } from './routes/svid.js';
import { SharedTicketKeys } from './ticket-keys.js';

/** How long one shared TLS session-ticket key is used before the next (server/ticket-keys.ts). */
const TICKET_KEY_PERIOD_MS = 3_600_000;

export interface ServerOptions {
  /** Pino logger options, or false for none (tests). */
  readonly logger?: boolean | Record<string, unknown>;
  /** Called for every route registered (the spec-parity test lists them, with their operationIds). */
  readonly onRoute?: (method: string, url: string, operationId: string | undefined) => void;
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
  // On Redis, replicas share their TLS session-ticket keys (rotated hourly), so a reconnect to another
  // replica resumes its session (server/ticket-keys.ts). The embedded store keeps Node's per-process key.
  if (broker.store.kind === 'redis') {
    const tickets = await SharedTicketKeys.start(broker.store, app.server, {
      periodMs: TICKET_KEY_PERIOD_MS,
      clock: broker.clock,
      onError: (err) => app.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'TLS session-ticket keys: refresh failed (the current key stays)'),
    });
    app.addHook('onClose', async () => tickets.close());
  }

  const onRoute = opts.onRoute;
  if (onRoute !== undefined) {
    app.addHook('onRoute', (route) => {
      for (const method of [route.method].flat()) onRoute(method, route.url, route.schema?.operationId);
    });
  }
  observeRequests(app, broker.metrics);
  // Every body is JSON: a text/plain body is refused (415) instead of reaching a schema as a string.
  app.removeContentTypeParser('text/plain');
  // A refusal is recorded in the audit log before it is answered (server/refusals.ts).
  app.setErrorHandler(async (err, request, reply) => errorHandler(await auditRefusal(err, request), request, reply));
  app.setNotFoundHandler((request, reply) => {
    errorHandler(new BrokerError('not_found', `no route ${request.method} ${request.url.split('?')[0] ?? ''}`), request, reply);
  });
  app.decorateRequest('caller', undefined);
  app.addHook('preHandler', authHook({ attestors: broker.attestors, limits: broker.limits, guard: broker.guard, adminAuthority: broker.admin.authority }));
  broker.secrets.setLogger(app.log);
  broker.reloader.onReload((c) => {
    app.log.level = c.logLevel;
  });
  await registerRoutes(app, broker);
  return app;
}

/** One plugin per resource, each given only what it needs (src/server/openapi.ts documents them from here). */
export async function registerRoutes(app: FastifyInstance, broker: Broker): Promise<void> {
  const { config, audit, checkpoints, store, clock, ca, secrets, guard } = broker;
  const log = new AdminAudit(audit, checkpoints, clock, config.replicaId);
  await app.register(healthRoutes, { store, audit, caExpiry: () => broker.caExpiry.current(), engines: secrets.engines, devices: broker.devices });
  await app.register(bundleRoutes, { bundle: () => broker.bundle, rootsPem: ca.rootsPem });
  await app.register(oidcRoutes, oidcOptions(broker));
  await app.register(svidRoutes, {
    issuer: broker.issuer,
    rootsPem: ca.rootsPem,
    federatedBundles: (tds) => broker.federation.bundlesFor(tds).map((b) => ({ trustDomain: b.trustDomain, pem: trustBundlePem(b.bundle), json: b.json })),
  });
  await app.register(auditRoutes, { audit, checkpoints, store, adminLog: log, ...(broker.witnesses !== undefined ? { witnesses: broker.witnesses } : {}) });
  await app.register(secretsRoutes, { secrets, guard });
  await app.register(leasesRoutes, { secrets, guard });
  await app.register(whoamiRoutes, { log });
  await app.register(revocationRoutes, { log, revocations: guard.revocations, secrets });
  await app.register(freezeRoutes, { log, freeze: guard.freeze });
  await app.register(secretsAdminRoutes, { log, kv: secrets.kv, rotateRoot: (engine) => secrets.rotateRoot(engine) });
  await app.register(breakGlassRoutes, { log, breakGlass: broker.breakGlass, limits: broker.limits, adminRootsPem: broker.admin.pki?.rootsPem ?? '' });
  await app.register(auditSearchRoutes, { log, store, clock });
  await app.register(caAdminRoutes, {
    log,
    ...(broker.rotation !== undefined ? { rotation: broker.rotation } : {}),
    ca: () => broker.ca,
    jwtKid: () => broker.jwt.kid,
    bundle: () => broker.bundle,
  });
  await app.register(entriesRoutes, { log, registry: broker.registry });
  await app.register(reloadRoutes, { log, reloader: broker.reloader });
  await app.register(federationRoutes, { log, federation: broker.federation });
}

/** What the OIDC discovery routes serve (here and on the public listener): nothing unless oidc.enabled. */
export function oidcOptions(broker: Broker): OidcOptions {
  const { config } = broker;
  return {
    // `=== true`: openapi.ts registers the routes on an inert broker, whose every setting is an object.
    issuer: config.oidc.enabled === true ? config.jwt.issuer : undefined,
    bundle: () => broker.bundle,
    caTtlSeconds: config.ca.rotation?.caTtlSeconds,
  };
}
