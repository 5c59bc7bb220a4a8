/** `tessera serve`: load config, create dev material if running on defaults, start the HTTPS broker. */
import path from 'node:path';
import { createBroker } from '../broker.js';
import { loadConfig } from '../config/load.js';
import { ensureDevMaterial } from '../dev/material.js';
import { buildServer } from '../server/app.js';

export async function serve(opts: { config?: string }): Promise<void> {
  const config = loadConfig(opts.config !== undefined ? { file: opts.config } : {});
  if (config.dev) await ensureDevMaterial(config.devDir, config.trustDomain);
  const broker = await createBroker(config);
  const app = await buildServer(broker);
  await app.listen({ host: config.listen.host, port: config.listen.port });
  const address = app.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : config.listen.port;
  const url = `https://${config.listen.host.includes(':') ? `[${config.listen.host}]` : config.listen.host}:${port}`;
  const rel = (p: string): string => path.relative(process.cwd(), p) || '.';
  process.stdout.write(
    [
      '',
      `Tessera broker listening on ${url}  (trust domain ${config.trustDomain}${config.dev ? ', DEV defaults' : ''})`,
      `  trust bundle : ${rel(config.ca.bundleFile)}`,
      `  signing CA   : ${rel(config.ca.certFile)}`,
      `  audit store  : ${rel(config.store.embedded.dir)}  (${broker.audit.size} entries)`,
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
    ].join('\n'),
  );
  let closing = false;
  const shutdown = (signal: string): void => {
    if (closing) return;
    closing = true;
    app.log.info({ signal }, 'shutting down');
    void app
      .close()
      .then(() => broker.close())
      .then(
        () => process.exit(0),
        (err: unknown) => {
          app.log.error({ err }, 'error during shutdown');
          process.exit(1);
        },
      );
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
}
