/**
 * Loads configuration from a YAML file (optional) and environment overrides, applies defaults,
 * validates every field with a message that names it, and returns a deep-frozen Config.
 * Without a file, Tessera runs on dev defaults: material under certs-dev/, store under data/.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { validatePathSegment, validateTrustDomain } from '../spiffe/id.js';
import type { Config, RegistrationEntry, TokenIssuerConfig } from './config.js';

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** The issuer and audience the dev token issuer uses; kept here so config has no dependency on dev/. */
export const DEV_TOKEN_ISSUER = 'https://kubernetes.default.svc.cluster.local';
export const DEV_TOKEN_AUDIENCE = 'tessera';

type Obj = Record<string, unknown>;

function isObj(value: unknown): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Reads typed fields out of untrusted YAML, naming the field in every error. */
class Fields {
  constructor(
    private readonly obj: Obj,
    private readonly where: string,
    allowed: readonly string[],
  ) {
    for (const key of Object.keys(obj)) {
      if (!allowed.includes(key)) throw new ConfigError(`${where}.${key}: unknown setting`);
    }
  }

  private name(key: string): string {
    return `${this.where}.${key}`;
  }

  str(key: string, fallback?: string): string {
    const v = this.obj[key] ?? fallback;
    if (typeof v !== 'string' || v.length === 0) throw new ConfigError(`${this.name(key)}: expected a non-empty string`);
    return v;
  }

  optStr(key: string): string | undefined {
    return this.obj[key] === undefined ? undefined : this.str(key);
  }

  int(key: string, fallback: number, min: number, max: number): number {
    const raw = this.obj[key] ?? fallback;
    const v = typeof raw === 'string' && /^\d+$/.test(raw) ? Number(raw) : raw;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      throw new ConfigError(`${this.name(key)}: expected an integer in [${min}, ${max}]`);
    }
    return v;
  }

  optInt(key: string, min: number, max: number): number | undefined {
    return this.obj[key] === undefined ? undefined : this.int(key, 0, min, max);
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.obj[key] ?? fallback;
    if (typeof v !== 'boolean') throw new ConfigError(`${this.name(key)}: expected true or false`);
    return v;
  }

  strList(key: string, fallback: readonly string[] = []): string[] {
    const v = this.obj[key] ?? fallback;
    if (!Array.isArray(v) || !v.every((s) => typeof s === 'string' && s.length > 0)) {
      throw new ConfigError(`${this.name(key)}: expected a list of non-empty strings`);
    }
    return [...(v as string[])];
  }

  obj_(key: string): Fields | undefined;
  obj_(key: string, allowed: readonly string[]): Fields;
  obj_(key: string, allowed: readonly string[] = []): Fields | undefined {
    const v = this.obj[key] ?? {};
    if (!isObj(v)) throw new ConfigError(`${this.name(key)}: expected a mapping`);
    return new Fields(v, this.name(key), allowed);
  }

  list(key: string): unknown[] | undefined {
    const v = this.obj[key];
    if (v === undefined) return undefined;
    if (!Array.isArray(v)) throw new ConfigError(`${this.name(key)}: expected a list`);
    return v;
  }
}

const DNS_NAME = /^(?=.{1,253}$)(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

function readIssuer(raw: unknown, where: string, base: string): TokenIssuerConfig {
  if (!isObj(raw)) throw new ConfigError(`${where}: expected a mapping`);
  const f = new Fields(raw, where, [
    'issuer', 'jwksFile', 'jwksUrl', 'allowInsecureHttp', 'audiences', 'maxLifetimeSeconds', 'requirePodBinding',
  ]);
  const jwksFile = f.optStr('jwksFile');
  const jwksUrl = f.optStr('jwksUrl');
  if ((jwksFile === undefined) === (jwksUrl === undefined)) {
    throw new ConfigError(`${where}: set exactly one of jwksFile or jwksUrl`);
  }
  const audiences = f.strList('audiences');
  if (audiences.length === 0) throw new ConfigError(`${where}.audiences: at least one audience is required`);
  return {
    issuer: f.str('issuer'),
    ...(jwksFile !== undefined ? { jwksFile: path.resolve(base, jwksFile) } : {}),
    ...(jwksUrl !== undefined ? { jwksUrl } : {}),
    allowInsecureHttp: f.bool('allowInsecureHttp', false),
    audiences,
    maxLifetimeSeconds: f.int('maxLifetimeSeconds', 86_400, 60, 31 * 86_400),
    requirePodBinding: f.bool('requirePodBinding', false),
  };
}

function readSelectorValue(value: string, where: string): string {
  if (value === '*') return value;
  validatePathSegment(value);
  return value;
}

function readEntry(raw: unknown, where: string): RegistrationEntry {
  if (!isObj(raw)) throw new ConfigError(`${where}: expected a mapping`);
  const f = new Fields(raw, where, ['selector', 'spiffePath', 'dnsNames', 'x509TtlSeconds', 'jwtTtlSeconds', 'jwtAudiences']);
  const sel = f.obj_('selector', ['namespace', 'serviceAccount']);
  const dnsNames = f.strList('dnsNames');
  for (const name of dnsNames) {
    if (!DNS_NAME.test(name)) throw new ConfigError(`${where}.dnsNames: "${name}" is not a lowercase DNS name`);
  }
  const spiffePath = f.optStr('spiffePath');
  if (spiffePath !== undefined && !/^(\/[A-Za-z0-9._{}-]+)+$/.test(spiffePath)) {
    throw new ConfigError(`${where}.spiffePath: expected /segment/segment…`);
  }
  const x509TtlSeconds = f.optInt('x509TtlSeconds', 60, 30 * 86_400);
  const jwtTtlSeconds = f.optInt('jwtTtlSeconds', 30, 86_400);
  try {
    return {
      selector: {
        namespace: readSelectorValue(sel.str('namespace', '*'), `${where}.selector.namespace`),
        serviceAccount: readSelectorValue(sel.str('serviceAccount', '*'), `${where}.selector.serviceAccount`),
      },
      ...(spiffePath !== undefined ? { spiffePath } : {}),
      dnsNames,
      ...(x509TtlSeconds !== undefined ? { x509TtlSeconds } : {}),
      ...(jwtTtlSeconds !== undefined ? { jwtTtlSeconds } : {}),
      jwtAudiences: f.strList('jwtAudiences'),
    };
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`${where}.selector: ${(err as Error).message}`);
  }
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}

export interface LoadOptions {
  /** Path of a YAML config file; without one, dev defaults are used. */
  readonly file?: string;
  readonly env?: NodeJS.ProcessEnv;
  /** Directory relative paths resolve against when there is no file (default: process.cwd()). */
  readonly cwd?: string;
}

/** Loads, validates and freezes the configuration. Throws ConfigError naming the first bad field. */
export function loadConfig(opts: LoadOptions = {}): Config {
  const env = opts.env ?? process.env;
  const file = opts.file ?? env.TESSERA_CONFIG;
  let raw: unknown = {};
  let base = opts.cwd ?? process.cwd();
  if (file !== undefined && file !== '') {
    try {
      raw = parseYaml(readFileSync(file, 'utf8')) ?? {};
    } catch (err) {
      throw new ConfigError(`cannot read config file ${file}: ${(err as Error).message}`);
    }
    base = path.dirname(path.resolve(file));
  }
  if (!isObj(raw)) throw new ConfigError('config: expected a YAML mapping at the top level');
  const dev = file === undefined || file === '';
  const top = new Fields(raw, 'config', [
    'trustDomain', 'replicaId', 'devDir', 'listen', 'tls', 'ca', 'issuers', 'registration', 'svid', 'store',
    'bodyLimitBytes', 'logLevel',
  ]);

  const trustDomain = env.TESSERA_TRUST_DOMAIN ?? top.str('trustDomain', 'example.org');
  try {
    validateTrustDomain(trustDomain);
  } catch (err) {
    throw new ConfigError(`config.trustDomain: ${(err as Error).message}`);
  }
  const devDir = path.resolve(base, top.str('devDir', 'certs-dev'));
  const inDev = (name: string): string => path.join(devDir, name);

  const listen = top.obj_('listen', ['host', 'port']);
  const tls = top.obj_('tls', ['certFile', 'keyFile']);
  const ca = top.obj_('ca', ['certFile', 'keyFile', 'intermediatesFile', 'bundleFile', 'jwtKeyFile']);
  const svid = top.obj_('svid', ['x509DefaultTtlSeconds', 'x509MaxTtlSeconds', 'jwtDefaultTtlSeconds', 'jwtMaxTtlSeconds']);
  const store = top.obj_('store', ['embedded']);
  const embedded = store.obj_('embedded', ['dir', 'fsync']);
  const file_ = (f: Fields, key: string, devName: string): string =>
    path.resolve(base, dev ? f.str(key, inDev(devName)) : f.str(key));

  const issuersRaw = top.list('issuers');
  const issuers: TokenIssuerConfig[] =
    issuersRaw === undefined
      ? dev
        ? [{
            issuer: DEV_TOKEN_ISSUER,
            jwksFile: inDev('dev-issuer.jwks.json'),
            allowInsecureHttp: false,
            audiences: [DEV_TOKEN_AUDIENCE],
            maxLifetimeSeconds: 86_400,
            requirePodBinding: false,
          }]
        : []
      : issuersRaw.map((r, i) => readIssuer(r, `config.issuers[${i}]`, base));
  if (issuers.length === 0) throw new ConfigError('config.issuers: at least one token issuer is required');

  const registrationRaw = top.list('registration');
  const registration: RegistrationEntry[] =
    registrationRaw === undefined
      ? dev
        ? [{ selector: { namespace: '*', serviceAccount: '*' }, dnsNames: [], jwtAudiences: ['payments', 'tessera-demo'] }]
        : []
      : registrationRaw.map((r, i) => readEntry(r, `config.registration[${i}]`));

  const x509DefaultTtlSeconds = svid.int('x509DefaultTtlSeconds', 3600, 60, 30 * 86_400);
  const x509MaxTtlSeconds = svid.int('x509MaxTtlSeconds', 86_400, 60, 30 * 86_400);
  const jwtDefaultTtlSeconds = svid.int('jwtDefaultTtlSeconds', 300, 30, 86_400);
  const jwtMaxTtlSeconds = svid.int('jwtMaxTtlSeconds', 3600, 30, 86_400);
  if (x509DefaultTtlSeconds > x509MaxTtlSeconds) throw new ConfigError('config.svid: x509DefaultTtlSeconds exceeds x509MaxTtlSeconds');
  if (jwtDefaultTtlSeconds > jwtMaxTtlSeconds) throw new ConfigError('config.svid: jwtDefaultTtlSeconds exceeds jwtMaxTtlSeconds');

  const logLevel = env.TESSERA_LOG_LEVEL ?? top.str('logLevel', 'info');
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(logLevel)) {
    throw new ConfigError('config.logLevel: expected fatal|error|warn|info|debug|trace|silent');
  }

  const portFromEnv = env.TESSERA_PORT;
  const config: Config = {
    dev,
    devDir,
    trustDomain,
    replicaId: env.TESSERA_REPLICA_ID ?? top.str('replicaId', hostname()),
    listen: {
      host: env.TESSERA_HOST ?? listen.str('host', '127.0.0.1'),
      port: portFromEnv !== undefined
        ? new Fields({ port: portFromEnv }, 'env.TESSERA', ['port']).int('port', 0, 0, 65_535)
        : listen.int('port', 8443, 0, 65_535),
    },
    tls: { certFile: file_(tls, 'certFile', 'server.pem'), keyFile: file_(tls, 'keyFile', 'server.key') },
    ca: {
      certFile: file_(ca, 'certFile', 'intermediate.pem'),
      keyFile: file_(ca, 'keyFile', 'intermediate.key'),
      ...(ca.optStr('intermediatesFile') !== undefined
        ? { intermediatesFile: path.resolve(base, ca.str('intermediatesFile')) }
        : {}),
      bundleFile: file_(ca, 'bundleFile', 'bundle.pem'),
      jwtKeyFile: file_(ca, 'jwtKeyFile', 'jwt-signing.key'),
    },
    issuers,
    registration,
    svid: { x509DefaultTtlSeconds, x509MaxTtlSeconds, jwtDefaultTtlSeconds, jwtMaxTtlSeconds },
    store: {
      embedded: {
        dir: path.resolve(base, env.TESSERA_DATA_DIR ?? embedded.str('dir', 'data')),
        fsync: embedded.bool('fsync', true),
      },
    },
    bodyLimitBytes: top.int('bodyLimitBytes', 64 * 1024, 1024, 1024 * 1024),
    logLevel: logLevel as Config['logLevel'],
  };
  return deepFreeze(config);
}
