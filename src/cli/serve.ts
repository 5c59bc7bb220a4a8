/** `tessera serve`: load config, create dev material if running on defaults, start the HTTPS broker. */
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { createBroker } from '../broker.js';
import type { Config } from '../config/config.js';
import { ConfigError, loadConfig } from '../config/load.js';
import { ensureDevMaterial } from '../dev/material.js';
import { startMetricsServer } from '../metrics/server.js';
import { auditedEndpointMint, startBundleEndpoint } from '../server/bundle-endpoint.js';
import { describeReload } from '../reload.js';
import { buildServer, oidcOptions } from '../server/app.js';
import { readOidcPublicTls, startOidcPublicServer } from '../server/oidc-public.js';
import { type BannerInfo, clusterWorker, runPrimary } from './cluster.js';

/** Where shared state lives, without credentials (a URL's password is never printed). */
function redisLabel(r: Config['store']['redis']): string | undefined {
  if (r === undefined) return undefined;
  let where: string;
  if (r.url !== undefined) {
    const u = new URL(r.url);
    where = `${u.protocol}//${u.host}${u.pathname === '/' ? '' : u.pathname}`;
  } else if (r.sentinels !== undefined) where = `sentinel ${r.name ?? ''} via ${r.sentinels.map((a) => `${a.host}:${a.port}`).join(',')}`;
  else where = `cluster ${(r.nodes ?? []).map((a) => `${a.host}:${a.port}`).join(',')}`;
  return `redis ${where}, keys {${r.prefix}}:*`;
}

/** The startup banner (printed once: by the broker, or by the cluster primary when workers serve). */
function bannerText(config: Config, b: BannerInfo): string {
  const { url } = b;
  const rel = (p: string): string => path.relative(process.cwd(), p) || '.';
  return (
    [
      '',
      `Tessera broker listening on ${url}  (trust domain ${config.trustDomain}${config.dev ? ', DEV defaults' : ''})`,
      `  trust bundle : ${rel(config.ca.bundleFile)}`,
      `  signing CA   : ${rel(config.ca.certFile)}`,
      `  audit store  : ${redisLabel(config.store.redis) ?? rel(config.store.embedded.dir)}  (${b.auditEntries} entries)`,
      ...(b.workers > 1 ? [`  workers      : ${b.workers} processes (node:cluster, replica IDs ${config.replicaId}-w1..w${b.workers})`] : []),
      ...(b.metricsUrl !== undefined ? [`  metrics      : ${b.metricsUrl}`] : []),
      ...(b.bundleEndpoint !== undefined ? [`  bundle endpoint (https_spiffe): ${b.bundleEndpoint}`] : []),
      ...(config.oidc.enabled
        ? [`  oidc issuer  : ${config.jwt.issuer ?? ''}${config.oidc.public !== undefined ? `  (public listener ${config.oidc.public.host}:${config.oidc.public.port})` : ''}`]
        : []),
      ...(config.dev
        ? [
            `  dev issuer   : ${config.issuers[0]?.issuer ?? ''} (JWKS ${rel(config.issuers[0]?.jwksFile ?? '')})`,
            '',
            'Next, in another shell:',
            '  TOKEN=$(npx tessera dev token --namespace shop --service-account web)',
            `  curl --cacert ${rel(config.ca.bundleFile)} -H "Authorization: Bearer $TOKEN" --json '{"keyType":"ec-p256"}' ${url}/v1/svid/x509`,
          ]
        : []),
      '',
    ].join('\n')
  );
}

export async function serve(opts: { config?: string; workers?: number }): Promise<void> {
  const read = (): Config => loadConfig(opts.config !== undefined ? { file: opts.config } : {});
  let config = read();
  // N > 1 workers: this process becomes the cluster primary (cli/cluster.ts) and forks N brokers.
  const worker = clusterWorker(config);
  const workers = opts.workers ?? config.workers;
  if (worker === undefined && workers > 1) {
    if (config.store.redis === undefined) {
      throw new ConfigError(
        `${opts.workers !== undefined ? '--workers' : 'workers'} ${workers}: more than one worker needs the Redis store (store.redis), ` +
          'which the workers share like replicas; the embedded store belongs to one process. Run one process ' +
          '(it mints on threads, ca.threads) or configure store.redis (docs/performance.md, "Scaling")',
      );
    }
    await runPrimary(config, workers, (b) => bannerText(config, b));
    return;
  }
  if (worker !== undefined) config = worker.config;
  else if (config.dev) await ensureDevMaterial(config.devDir, config.trustDomain);
  // A reload reads the file again; a worker keeps its own replica ID.
  const reloadConfig = (): Config => (worker !== undefined ? (clusterWorker(read())?.config ?? read()) : read());
  // The public OIDC listener's certificate is checked before anything is opened.
  const oidcPublicTls = config.oidc.public !== undefined ? readOidcPublicTls(config.oidc.public, config.tls) : undefined;
  const broker = await createBroker(config, { reloadConfig });
  const app = await buildServer(broker);
  await app.listen({ host: config.listen.host, port: config.listen.port });
  // The public OIDC listener (discovery and JWKS only); cluster workers share its port like the main one.
  const oidcPublic =
    config.oidc.public !== undefined && oidcPublicTls !== undefined ? await startOidcPublicServer(config.oidc.public, oidcPublicTls, oidcOptions(broker)) : undefined;
  // A worker's metrics are served by the primary, summed over all workers.
  const metricsServer = config.metrics.enabled && worker === undefined ? await startMetricsServer(broker.metrics, config.metrics) : undefined;
  // The https_spiffe bundle endpoint (config bundleEndpoint.spiffe), on its own port; cluster workers share it like the main one.
  const spiffeEndpoint = config.bundleEndpoint.spiffe;
  const bundleServer =
    spiffeEndpoint !== undefined
      ? await startBundleEndpoint({
          ...spiffeEndpoint,
          trustDomain: config.trustDomain,
          ca: () => broker.ca,
          mint: auditedEndpointMint({ audit: broker.audit, replicaId: config.replicaId }),
          bundle: () => broker.bundle,
          clock: broker.clock,
        })
      : undefined;
  const address = app.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : config.listen.port;
  const bundleEndpoint = bundleServer !== undefined ? `${bundleServer.url} as ${bundleServer.spiffeId}` : undefined;
  if (worker !== undefined) worker.ready(broker, port, bundleEndpoint);
  else {
    const url = `https://${config.listen.host.includes(':') ? `[${config.listen.host}]` : config.listen.host}:${port}`;
    process.stdout.write(
      bannerText(config, {
        url,
        auditEntries: broker.audit.size,
        workers: 1,
        ...(metricsServer !== undefined ? { metricsUrl: metricsServer.url } : {}),
        ...(bundleEndpoint !== undefined ? { bundleEndpoint } : {}),
      }),
    );
  }
  let closing = false;
  const shutdown = (signal: string): void => {
    if (closing) return;
    closing = true;
    app.log.info({ signal }, 'shutting down: no new connections, finishing requests in flight');
    // A request lives at most requestTimeout (10 s); past this deadline something is stuck.
    setTimeout(() => {
      app.log.error('shutdown did not finish within 20 s; exiting');
      process.exit(1);
    }, 20_000).unref();
    void (async () => {
      // app.close() stops accepting and closes the connections idle right now; one that finishes its
      // request during the drain would then sit in keep-alive for up to 65 s, so close those as they go idle.
      const sweep = setInterval(() => app.server.closeIdleConnections(), 100);
      try {
        await app.close(); // waits for the requests in flight
      } finally {
        clearInterval(sweep);
      }
      await metricsServer?.close();
      await oidcPublic?.close();
      await bundleServer?.close();
      await broker.close(); // signs the final audit checkpoint, then closes the store
    })().then(
      () => {
        app.log.info('shut down cleanly');
        process.exit(0);
      },
      (err: unknown) => {
        app.log.error({ err }, 'error during shutdown');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  // SIGHUP re-reads the config (it used to end the process, the default action).
  process.on('SIGHUP', () => {
    if (closing) return;
    void broker.reloader.reloadOnSignal(config.replicaId, `sighup-${randomUUID()}`).then((result) => {
      if (result instanceof Error) app.log.error({ signal: 'SIGHUP', err: result.message }, describeReload(result));
      else app.log.info({ signal: 'SIGHUP', applied: result.applied, needsRestart: result.needsRestart }, describeReload(result));
    });
  });
}
