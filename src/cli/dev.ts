/** `tessera dev token` and `tessera dev certs`: the dev helpers for running without a cluster. */
import { loadConfig } from '../config/load.js';
import { ensureDevMaterial } from '../dev/material.js';
import { mintDevToken } from '../dev/token-issuer.js';
import { validatePathSegment } from '../spiffe/id.js';
import { command } from './command.js';
import { UsageError } from './usage.js';

const devToken = command({
  name: 'dev token',
  usage: '--namespace NS --service-account SA [--pod NAME] [--audience AUD] [--ttl SECONDS]',
  summary: 'print a dev Kubernetes-style service-account token',
  options: {
    namespace: { type: 'string' },
    'service-account': { type: 'string' },
    pod: { type: 'string' },
    audience: { type: 'string' },
    ttl: { type: 'string' },
  },
  async run(opts, _positionals, io) {
    const { namespace, 'service-account': serviceAccount } = opts;
    if (namespace === undefined || serviceAccount === undefined) {
      throw new UsageError('dev token needs --namespace and --service-account');
    }
    for (const [flag, value] of [['--namespace', namespace], ['--service-account', serviceAccount]] as const) {
      try {
        validatePathSegment(value);
      } catch {
        throw new UsageError(`${flag} "${value}" is not a valid name (letters, digits, ".", "-", "_")`);
      }
    }
    const ttlSeconds = opts.ttl === undefined ? 3600 : Number(opts.ttl);
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > 86_400) {
      throw new UsageError(`--ttl ${opts.ttl ?? ''}: needs a positive whole number of seconds, at most 86400`);
    }
    const config = loadConfig();
    const material = await ensureDevMaterial(config.devDir, config.trustDomain);
    const token = await mintDevToken({
      keyFile: material.issuerKeyFile,
      namespace,
      serviceAccount,
      ttlSeconds,
      ...(opts.pod !== undefined ? { podName: opts.pod } : {}),
      ...(opts.audience !== undefined ? { audience: opts.audience } : {}),
    });
    io.stdout(`${token}\n`);
  },
});

const devCerts = command({
  name: 'dev certs',
  usage: '',
  summary: 'create the dev CA, TLS and issuer material under certs-dev/',
  options: {},
  async run(_values, _positionals, io) {
    const config = loadConfig();
    const material = await ensureDevMaterial(config.devDir, config.trustDomain);
    io.stdout(`dev material in ${material.dir} (trust bundle: ${material.bundleFile})\n`);
  },
});

export const DEV_COMMANDS = [devToken, devCerts];
