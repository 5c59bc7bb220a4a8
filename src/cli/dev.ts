/** `tessera dev token` and `tessera dev certs`: the dev helpers for running without a cluster. */
import { loadConfig } from '../config/load.js';
import { ensureDevMaterial } from '../dev/material.js';
import { mintDevToken } from '../dev/token-issuer.js';
import { validatePathSegment } from '../spiffe/id.js';
import { UsageError } from './usage.js';

export async function devToken(opts: {
  namespace?: string;
  serviceAccount?: string;
  pod?: string;
  audience?: string;
  ttl?: string;
}): Promise<void> {
  if (opts.namespace === undefined || opts.serviceAccount === undefined) {
    throw new UsageError('dev token needs --namespace and --service-account');
  }
  for (const [flag, value] of [['--namespace', opts.namespace], ['--service-account', opts.serviceAccount]] as const) {
    try {
      validatePathSegment(value);
    } catch {
      throw new UsageError(`${flag} "${value}" is not a valid name (letters, digits, ".", "-", "_")`);
    }
  }
  const ttlSeconds = opts.ttl === undefined ? 3600 : Number(opts.ttl);
  if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > 86_400) {
    throw new UsageError('--ttl is a whole number of seconds between 1 and 86400');
  }
  const config = loadConfig();
  const material = await ensureDevMaterial(config.devDir, config.trustDomain);
  const token = await mintDevToken({
    keyFile: material.issuerKeyFile,
    namespace: opts.namespace,
    serviceAccount: opts.serviceAccount,
    ttlSeconds,
    ...(opts.pod !== undefined ? { podName: opts.pod } : {}),
    ...(opts.audience !== undefined ? { audience: opts.audience } : {}),
  });
  process.stdout.write(`${token}\n`);
}

export async function devCerts(): Promise<void> {
  const config = loadConfig();
  const material = await ensureDevMaterial(config.devDir, config.trustDomain);
  process.stdout.write(`dev material in ${material.dir} (trust bundle: ${material.bundleFile})\n`);
}
