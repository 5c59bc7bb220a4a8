/**
 * Loads configuration from a YAML file (optional) and environment overrides, applies defaults,
 * validates every field with a message that names it, and returns a deep-frozen Config.
 * Without a file, Tessera runs on dev defaults: material under certs-dev/, store under data/.
 */
import { createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { availableParallelism, hostname } from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { validatePathSegment, validateTrustDomain } from '../spiffe/id.js';
import { isRoleName, secretGrantProblem } from '../secrets/names.js';
import { grantTemplateProblem } from '../secrets/sql-template.js';
import { parseSpiffeId } from '../spiffe/id.js';
import { autoCaThreads, MAX_CA_THREADS } from '../ca/minter-pool.js';
import type { PostgresEngineConfig, PostgresRoleConfig, SecretGrantConfig, SecretsConfig } from './config.js';
import type { AdminConfig, AdminPrincipalConfig, AdminRole, BreakGlassConfig, BreakGlassKeyConfig } from './config.js';
import type { AlertRuleConfig, AuditConfig, Config, RedisAddressConfig, RedisStoreConfig, RegistrationEntry, TokenIssuerConfig } from './config.js';
import type { LimitsConfig, MetricsConfig } from './config.js';
import { isRecord as isObj } from '../is-record.js';

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
  // X.509 TTLs may go as low as 5 s so rotation can be exercised end to end in seconds.
  const x509TtlSeconds = f.optInt('x509TtlSeconds', 5, 30 * 86_400);
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

function readRedisAddress(raw: unknown, where: string): RedisAddressConfig {
  if (typeof raw === 'string') {
    const m = /^([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$/.exec(raw);
    const port = Number(m?.[2]);
    if (!m || port < 1 || port > 65_535) throw new ConfigError(`${where}: expected "host:port"`);
    return { host: (m[1] as string).replace(/^\[|\]$/g, ''), port };
  }
  if (!isObj(raw)) throw new ConfigError(`${where}: expected "host:port" or a mapping with host and port`);
  const f = new Fields(raw, where, ['host', 'port']);
  return { host: f.str('host'), port: f.int('port', 6379, 1, 65_535) };
}

/** store.redis (and REDIS_URL, which replaces any url/sentinels/nodes from the file). */
function readRedis(raw: unknown, envUrl: string | undefined, base: string): RedisStoreConfig | undefined {
  const fromEnv = envUrl !== undefined && envUrl !== '';
  if (raw === undefined && !fromEnv) return undefined;
  const where = 'config.store.redis';
  if (raw !== undefined && !isObj(raw)) throw new ConfigError(`${where}: expected a mapping`);
  const f = new Fields(isObj(raw) ? raw : {}, where, [
    'url', 'sentinels', 'name', 'nodes', 'prefix', 'requireReplicaAck', 'commandTimeoutMs', 'connectTimeoutMs',
    'username', 'passwordFile', 'tls',
  ]);
  const url = fromEnv ? envUrl : f.optStr('url');
  const sentinelsRaw = fromEnv ? undefined : f.list('sentinels');
  const nodesRaw = fromEnv ? undefined : f.list('nodes');
  const chosen = [url, sentinelsRaw, nodesRaw].filter((v) => v !== undefined).length;
  if (chosen !== 1) throw new ConfigError(`${where}: set exactly one of url, sentinels (with name) or nodes (or REDIS_URL)`);
  if (url !== undefined) {
    let parsed: URL | undefined;
    try {
      parsed = new URL(url);
    } catch {
      parsed = undefined;
    }
    if (parsed === undefined || (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:')) {
      throw new ConfigError(`${fromEnv ? 'env.REDIS_URL' : `${where}.url`}: expected redis://host:port or rediss://host:port`);
    }
  }
  const sentinels = sentinelsRaw?.map((a, i) => readRedisAddress(a, `${where}.sentinels[${i}]`));
  const nodes = nodesRaw?.map((a, i) => readRedisAddress(a, `${where}.nodes[${i}]`));
  if (sentinels?.length === 0 || nodes?.length === 0) throw new ConfigError(`${where}: the address list is empty`);
  const name = fromEnv ? undefined : f.optStr('name');
  if (sentinels !== undefined && name === undefined) throw new ConfigError(`${where}.name: the Sentinel master group name is required with sentinels`);
  const prefix = f.str('prefix', 'tessera');
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(prefix)) throw new ConfigError(`${where}.prefix: expected 1-64 of A-Z a-z 0-9 . _ -`);
  const username = f.optStr('username');
  const passwordFile = f.optStr('passwordFile');
  const tlsRaw = isObj(raw) ? raw.tls : undefined;
  let tls: RedisStoreConfig['tls'];
  if (tlsRaw === true) tls = {};
  else if (tlsRaw !== undefined && tlsRaw !== false) {
    const t = f.obj_('tls', ['caFile', 'certFile', 'keyFile', 'serverName']);
    const file = (key: string): string | undefined => {
      const v = t.optStr(key);
      return v === undefined ? undefined : path.resolve(base, v);
    };
    const [caFile, certFile, keyFile, serverName] = [file('caFile'), file('certFile'), file('keyFile'), t.optStr('serverName')];
    if ((certFile === undefined) !== (keyFile === undefined)) throw new ConfigError(`${where}.tls: set both certFile and keyFile, or neither`);
    tls = {
      ...(caFile !== undefined ? { caFile } : {}),
      ...(certFile !== undefined ? { certFile } : {}),
      ...(keyFile !== undefined ? { keyFile } : {}),
      ...(serverName !== undefined ? { serverName } : {}),
    };
  }
  return {
    ...(url !== undefined ? { url } : {}),
    ...(sentinels !== undefined ? { sentinels } : {}),
    ...(name !== undefined ? { name } : {}),
    ...(nodes !== undefined ? { nodes } : {}),
    prefix,
    requireReplicaAck: f.bool('requireReplicaAck', false),
    commandTimeoutMs: f.int('commandTimeoutMs', 1500, 100, 60_000),
    connectTimeoutMs: f.int('connectTimeoutMs', 1500, 100, 60_000),
    ...(username !== undefined ? { username } : {}),
    ...(passwordFile !== undefined ? { passwordFile: path.resolve(base, passwordFile) } : {}),
    ...(tls !== undefined ? { tls } : {}),
  };
}

const RULE_NAME = /^[A-Za-z0-9._-]{1,64}$/;

function readAlertRule(raw: unknown, where: string): AlertRuleConfig {
  if (!isObj(raw)) throw new ConfigError(`${where}: expected a mapping`);
  const f = new Fields(raw, where, ['name', 'kind', 'per', 'threshold', 'windowSeconds', 'muteSeconds']);
  const name = f.str('name');
  if (!RULE_NAME.test(name)) throw new ConfigError(`${where}.name: expected 1-64 of A-Z a-z 0-9 . _ -`);
  const kind = f.str('kind');
  const muteSeconds = f.optInt('muteSeconds', 0, 7 * 86_400);
  const mute = muteSeconds !== undefined ? { muteSeconds } : {};
  if (kind === 'break-glass' || kind === 'revoke-failed') {
    for (const k of ['per', 'threshold', 'windowSeconds']) {
      if (raw[k] !== undefined) throw new ConfigError(`${where}.${k}: not used by a ${kind} rule`);
    }
    return { name, kind, ...mute };
  }
  if (kind !== 'denials') throw new ConfigError(`${where}.kind: expected denials, break-glass or revoke-failed`);
  const per = f.str('per', 'spiffeId');
  if (per !== 'spiffeId' && per !== 'namespace') throw new ConfigError(`${where}.per: expected spiffeId or namespace`);
  if (raw.threshold === undefined || raw.windowSeconds === undefined) {
    throw new ConfigError(`${where}: a denials rule needs threshold and windowSeconds`);
  }
  return {
    name,
    kind,
    per,
    threshold: f.int('threshold', 0, 0, 1_000_000),
    windowSeconds: f.int('windowSeconds', 0, 1, 86_400),
    ...mute,
  };
}

/** The audit: section. The signing key has a dev default only; origin defaults from the trust domain. */
function readAudit(top: Fields, trustDomain: string, dev: boolean, inDev: (name: string) => string, base: string): AuditConfig {
  const audit = top.obj_('audit', ['signingKeyFile', 'origin', 'checkpointIntervalMs', 'receiptCheckpointGapMs', 'alerts']);
  const origin = audit.str('origin', `${trustDomain}/tessera/audit`);
  // A C2SP key name: no spaces, no '+', no control characters.
  if (/[\s+\p{Cc}\p{Cs}]/u.test(origin)) throw new ConfigError('config.audit.origin: must not contain spaces, "+" or control characters');
  const alerts = audit.obj_('alerts', [
    'webhookUrl', 'allowInsecureHttp', 'webhookCaFile', 'muteSeconds', 'timeoutMs', 'maxAttempts', 'retryInitialMs',
    'queueLimit', 'rules',
  ]);
  const webhookUrl = alerts.optStr('webhookUrl');
  const allowInsecureHttp = alerts.bool('allowInsecureHttp', false);
  if (webhookUrl !== undefined) {
    let u: URL | undefined;
    try {
      u = new URL(webhookUrl);
    } catch {
      u = undefined;
    }
    if (u === undefined || (u.protocol !== 'https:' && u.protocol !== 'http:')) {
      throw new ConfigError('config.audit.alerts.webhookUrl: expected an https:// URL');
    }
    if (u.protocol === 'http:' && !allowInsecureHttp) {
      throw new ConfigError('config.audit.alerts.webhookUrl: http:// needs allowInsecureHttp: true (use https)');
    }
    if (u.username !== '' || u.password !== '') throw new ConfigError('config.audit.alerts.webhookUrl: credentials in the URL are not allowed');
  }
  const webhookCaFile = alerts.optStr('webhookCaFile');
  const rules = (alerts.list('rules') ?? []).map((r, i) => readAlertRule(r, `config.audit.alerts.rules[${i}]`));
  const names = new Set<string>();
  for (const r of rules) {
    if (names.has(r.name)) throw new ConfigError(`config.audit.alerts.rules: duplicate rule name "${r.name}"`);
    names.add(r.name);
  }
  return {
    signingKeyFile: path.resolve(base, dev ? audit.str('signingKeyFile', inDev('audit-signing.key')) : audit.str('signingKeyFile')),
    origin,
    checkpointIntervalMs: audit.int('checkpointIntervalMs', 1000, 10, 3_600_000),
    receiptCheckpointGapMs: audit.int('receiptCheckpointGapMs', 0, 0, 60_000),
    alerts: {
      ...(webhookUrl !== undefined ? { webhookUrl } : {}),
      allowInsecureHttp,
      ...(webhookCaFile !== undefined ? { webhookCaFile: path.resolve(base, webhookCaFile) } : {}),
      muteSeconds: alerts.int('muteSeconds', 300, 0, 7 * 86_400),
      timeoutMs: alerts.int('timeoutMs', 5000, 100, 60_000),
      maxAttempts: alerts.int('maxAttempts', 8, 1, 20),
      retryInitialMs: alerts.int('retryInitialMs', 500, 10, 60_000),
      queueLimit: alerts.int('queueLimit', 1000, 1, 100_000),
      rules,
    },
  };
}

const ENGINE_NAME = /^[a-z][a-z0-9_-]{0,31}$/;
const USERNAME_PREFIX = /^[a-z][a-z0-9_]{0,13}$/;
const MAX_LEASE_SECONDS = 30 * 86_400;

function readPostgresRole(raw: unknown, where: string): PostgresRoleConfig {
  if (!isObj(raw)) throw new ConfigError(`${where}: expected a mapping`);
  const f = new Fields(raw, where, ['grants', 'ttlSeconds', 'maxTtlSeconds']);
  const grants = f.strList('grants');
  if (grants.length === 0 || grants.length > 64) throw new ConfigError(`${where}.grants: expected 1 to 64 statements`);
  grants.forEach((g, i) => {
    const problem = grantTemplateProblem(g);
    if (problem !== undefined) throw new ConfigError(`${where}.grants[${i}]: ${problem}`);
  });
  const ttlSeconds = f.int('ttlSeconds', 3600, 1, MAX_LEASE_SECONDS);
  const maxTtlSeconds = f.int('maxTtlSeconds', Math.max(86_400, ttlSeconds), 1, MAX_LEASE_SECONDS);
  if (ttlSeconds > maxTtlSeconds) throw new ConfigError(`${where}: ttlSeconds exceeds maxTtlSeconds`);
  return { grants, ttlSeconds, maxTtlSeconds };
}

function readPostgresEngine(raw: unknown, where: string, base: string): PostgresEngineConfig {
  if (!isObj(raw)) throw new ConfigError(`${where}: expected a mapping`);
  const f = new Fields(raw, where, [
    'name', 'url', 'passwordFile', 'usernamePrefix', 'connectTimeoutMs', 'statementTimeoutMs', 'maxConnections', 'roles',
  ]);
  const name = f.str('name');
  if (!ENGINE_NAME.test(name)) throw new ConfigError(`${where}.name: expected ${ENGINE_NAME.source}`);
  const url = f.str('url');
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    parsed = undefined;
  }
  // Never echo the URL: it may carry the admin password.
  if (parsed === undefined || (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') || parsed.hostname === '') {
    throw new ConfigError(`${where}.url: expected postgres://user@host:port/database`);
  }
  if (parsed.pathname.length < 2) throw new ConfigError(`${where}.url: name the database the grants apply in (postgres://…/database)`);
  const passwordFile = f.optStr('passwordFile');
  const usernamePrefix = f.str('usernamePrefix', 'tessera_');
  if (!USERNAME_PREFIX.test(usernamePrefix)) throw new ConfigError(`${where}.usernamePrefix: expected ${USERNAME_PREFIX.source}`);
  const rolesRaw = raw.roles;
  if (!isObj(rolesRaw) || Object.keys(rolesRaw).length === 0) throw new ConfigError(`${where}.roles: expected a mapping of role name to role`);
  const roles: Record<string, PostgresRoleConfig> = {};
  for (const [role, r] of Object.entries(rolesRaw)) {
    if (!isRoleName(role)) throw new ConfigError(`${where}.roles: role name "${role}" must match ^[a-z][a-z0-9_]{0,30}$`);
    roles[role] = readPostgresRole(r, `${where}.roles.${role}`);
  }
  return {
    name,
    url,
    ...(passwordFile !== undefined ? { passwordFile: path.resolve(base, passwordFile) } : {}),
    usernamePrefix,
    connectTimeoutMs: f.int('connectTimeoutMs', 5000, 100, 60_000),
    statementTimeoutMs: f.int('statementTimeoutMs', 10_000, 100, 300_000),
    maxConnections: f.int('maxConnections', 4, 1, 64),
    roles,
  };
}

function readSecretGrant(raw: unknown, where: string, trustDomain: string): SecretGrantConfig {
  if (!isObj(raw)) throw new ConfigError(`${where}: expected a mapping`);
  const f = new Fields(raw, where, ['spiffeIds', 'selector', 'secrets', 'postgresRoles']);
  if ((raw.spiffeIds === undefined) === (raw.selector === undefined)) {
    throw new ConfigError(`${where}: set exactly one of spiffeIds or selector`);
  }
  let spiffeIds: string[] | undefined;
  let selector: SecretGrantConfig['selector'];
  if (raw.spiffeIds !== undefined) {
    spiffeIds = f.strList('spiffeIds');
    if (spiffeIds.length === 0) throw new ConfigError(`${where}.spiffeIds: at least one SPIFFE ID`);
    for (const id of spiffeIds) {
      let ok = false;
      try {
        const p = parseSpiffeId(id);
        ok = p.trustDomain === trustDomain && p.path !== '';
      } catch {
        ok = false;
      }
      if (!ok) throw new ConfigError(`${where}.spiffeIds: "${id}" is not a workload SPIFFE ID in trust domain ${trustDomain}`);
    }
  } else {
    const sel = f.obj_('selector', ['namespace', 'serviceAccount']);
    try {
      selector = {
        namespace: readSelectorValue(sel.str('namespace', '*'), `${where}.selector.namespace`),
        serviceAccount: readSelectorValue(sel.str('serviceAccount', '*'), `${where}.selector.serviceAccount`),
      };
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      throw new ConfigError(`${where}.selector: ${(err as Error).message}`);
    }
  }
  const secrets = f.strList('secrets');
  for (const s of secrets) {
    const problem = secretGrantProblem(s);
    if (problem !== undefined) throw new ConfigError(`${where}.secrets: "${s}": ${problem}`);
  }
  const postgresRoles = f.strList('postgresRoles');
  for (const r of postgresRoles) {
    if (!isRoleName(r)) throw new ConfigError(`${where}.postgresRoles: "${r}" must match ^[a-z][a-z0-9_]{0,30}$`);
  }
  if (secrets.length === 0 && postgresRoles.length === 0) throw new ConfigError(`${where}: grants nothing (set secrets or postgresRoles)`);
  return { ...(spiffeIds !== undefined ? { spiffeIds } : {}), ...(selector !== undefined ? { selector } : {}), secrets, postgresRoles };
}

/**
 * The secrets: section. Default deny: without grants nobody gets anything. On dev defaults a dev KEK
 * under certs-dev/ is used and every registered workload may read secrets under "dev/".
 */
function readSecrets(top: Fields, trustDomain: string, dev: boolean, inDev: (name: string) => string, base: string): SecretsConfig {
  const where = 'config.secrets';
  const sec = top.obj_('secrets', ['kekFile', 'oldKekFiles', 'lease', 'sweepIntervalSeconds', 'grants', 'postgres']);
  const lease = sec.obj_('lease', ['defaultTtlSeconds', 'maxTtlSeconds']);
  const leaseDefaultTtlSeconds = lease.int('defaultTtlSeconds', 3600, 1, MAX_LEASE_SECONDS);
  const leaseMaxTtlSeconds = lease.int('maxTtlSeconds', Math.max(86_400, leaseDefaultTtlSeconds), 1, MAX_LEASE_SECONDS);
  if (leaseDefaultTtlSeconds > leaseMaxTtlSeconds) throw new ConfigError(`${where}.lease: defaultTtlSeconds exceeds maxTtlSeconds`);
  const kekFile = dev ? sec.str('kekFile', inDev('secrets.kek')) : sec.optStr('kekFile');
  const engines = (sec.list('postgres') ?? []).map((e, i) => readPostgresEngine(e, `${where}.postgres[${i}]`, base));
  const roleOwner = new Map<string, string>();
  for (const e of engines) {
    if (engines.filter((x) => x.name === e.name).length > 1) throw new ConfigError(`${where}.postgres: duplicate engine name "${e.name}"`);
    for (const role of Object.keys(e.roles)) {
      const other = roleOwner.get(role);
      if (other !== undefined) throw new ConfigError(`${where}.postgres: role "${role}" is defined by engines "${other}" and "${e.name}"`);
      roleOwner.set(role, e.name);
    }
  }
  const grantsRaw = sec.list('grants');
  const grants: SecretGrantConfig[] =
    grantsRaw === undefined
      ? dev
        ? [{ selector: { namespace: '*', serviceAccount: '*' }, secrets: ['dev/'], postgresRoles: [] }]
        : []
      : grantsRaw.map((g, i) => readSecretGrant(g, `${where}.grants[${i}]`, trustDomain));
  grants.forEach((g, i) => {
    for (const r of g.postgresRoles) {
      if (!roleOwner.has(r)) throw new ConfigError(`${where}.grants[${i}].postgresRoles: no engine defines role "${r}"`);
    }
    if (g.secrets.length > 0 && kekFile === undefined) {
      throw new ConfigError(`${where}.kekFile: required when grants give static secrets (grants[${i}])`);
    }
  });
  return {
    ...(kekFile !== undefined ? { kekFile: path.resolve(base, kekFile) } : {}),
    oldKekFiles: sec.strList('oldKekFiles').map((f) => path.resolve(base, f)),
    leaseDefaultTtlSeconds,
    leaseMaxTtlSeconds,
    sweepIntervalSeconds: sec.int('sweepIntervalSeconds', 10, 1, 3600),
    grants,
    postgres: engines,
  };
}

const ADMIN_ROLE_NAMES: readonly AdminRole[] = ['auditor', 'operator', 'secrets-admin'];
const SHORT_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/** A SPIFFE-style admin ID (valid SPIFFE ID with a path); break-glass IDs are minted by the broker only. */
function readAdminId(value: string, where: string): string {
  let parsed;
  try {
    parsed = parseSpiffeId(value);
  } catch (err) {
    throw new ConfigError(`${where}: ${(err as Error).message}`);
  }
  if (parsed.path === '') throw new ConfigError(`${where}: an admin ID needs a path (e.g. spiffe://example.org/admin/alice)`);
  if (parsed.path.startsWith('/admin/break-glass/')) throw new ConfigError(`${where}: /admin/break-glass/ is reserved for break-glass certificates`);
  return parsed.uri;
}

/** The admin: section. Dev defaults: the dev admin CA under certs-dev/ and one all-roles admin, spiffe://<td>/admin/dev. */
function readAdmin(top: Fields, trustDomain: string, dev: boolean, inDev: (name: string) => string, base: string): AdminConfig {
  const admin = top.obj_('admin', ['caBundleFile', 'caCertFile', 'caKeyFile', 'principals']);
  const file = (key: string, devName: string): string | undefined => {
    const v = dev ? admin.str(key, inDev(devName)) : admin.optStr(key);
    return v === undefined ? undefined : path.resolve(base, v);
  };
  const caBundleFile = file('caBundleFile', 'admin-ca.pem');
  const caCertFile = file('caCertFile', 'admin-ca.pem');
  const caKeyFile = file('caKeyFile', 'admin-ca.key');
  if ((caCertFile === undefined) !== (caKeyFile === undefined)) throw new ConfigError('config.admin: set both caCertFile and caKeyFile, or neither');
  if (caCertFile !== undefined && caBundleFile === undefined) throw new ConfigError('config.admin.caBundleFile: required with caCertFile');
  const raw = admin.list('principals');
  const principals: AdminPrincipalConfig[] =
    raw === undefined
      ? dev
        ? [{ id: `spiffe://${trustDomain}/admin/dev`, roles: [...ADMIN_ROLE_NAMES] }]
        : []
      : raw.map((p, i) => {
          const where = `config.admin.principals[${i}]`;
          if (!isObj(p)) throw new ConfigError(`${where}: expected a mapping`);
          const f = new Fields(p, where, ['id', 'roles']);
          const roles = f.strList('roles');
          if (roles.length === 0) throw new ConfigError(`${where}.roles: at least one role is required`);
          for (const r of roles) {
            if (!(ADMIN_ROLE_NAMES as readonly string[]).includes(r)) throw new ConfigError(`${where}.roles: "${r}" is not one of ${ADMIN_ROLE_NAMES.join(', ')}`);
          }
          return { id: readAdminId(f.str('id'), `${where}.id`), roles: [...new Set(roles)] as AdminRole[] };
        });
  const ids = new Set<string>();
  for (const p of principals) {
    if (ids.has(p.id)) throw new ConfigError(`config.admin.principals: duplicate id ${p.id}`);
    ids.add(p.id);
  }
  if (principals.length > 0 && caBundleFile === undefined) throw new ConfigError('config.admin.caBundleFile: required when principals are set');
  return {
    ...(caBundleFile !== undefined ? { caBundleFile } : {}),
    ...(caCertFile !== undefined ? { caCertFile } : {}),
    ...(caKeyFile !== undefined ? { caKeyFile } : {}),
    principals,
  };
}

/** A break-glass grant: an admin role, or "secret:<name>" / "secret:<prefix>/". */
export function breakGlassGrantProblem(grant: string): string | undefined {
  if ((ADMIN_ROLE_NAMES as readonly string[]).includes(grant)) return undefined;
  if (!grant.startsWith('secret:')) return `expected one of ${ADMIN_ROLE_NAMES.join(', ')} or secret:<name>`;
  const name = grant.slice('secret:'.length);
  if (!/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*\/?$/.test(name) || name.split('/').some((s) => s === '.' || s === '..') || name.length > 256) {
    return 'secret:<name> needs a secret name (segments of A-Z a-z 0-9 . _ -, "/"-separated; a trailing "/" grants a prefix)';
  }
  return undefined;
}

/** The breakGlass: section. Off unless keys are configured; keys are Ed25519 only. */
function readBreakGlass(top: Fields): BreakGlassConfig {
  const bg = top.obj_('breakGlass', ['keys', 'requiredSignatures', 'maxTtlSeconds', 'allowedGrants', 'maxFailuresPerMinute']);
  const keys: BreakGlassKeyConfig[] = (bg.list('keys') ?? []).map((k, i) => {
    const where = `config.breakGlass.keys[${i}]`;
    if (!isObj(k)) throw new ConfigError(`${where}: expected a mapping`);
    const f = new Fields(k, where, ['id', 'publicKey']);
    const id = f.str('id');
    if (!SHORT_NAME.test(id)) throw new ConfigError(`${where}.id: expected 1-64 of A-Z a-z 0-9 . _ -`);
    const publicKey = f.str('publicKey').replace(/\s+/g, '');
    let ok = false;
    try {
      ok = /^[A-Za-z0-9+/]+=*$/.test(publicKey) && createPublicKey({ key: Buffer.from(publicKey, 'base64'), format: 'der', type: 'spki' }).asymmetricKeyType === 'ed25519';
    } catch {
      ok = false;
    }
    if (!ok) throw new ConfigError(`${where}.publicKey: expected an Ed25519 public key (base64 SPKI DER, from tessera break-glass init)`);
    return { id, publicKey };
  });
  const seen = new Set<string>();
  for (const k of keys) {
    if (seen.has(k.id) || seen.has(k.publicKey)) throw new ConfigError(`config.breakGlass.keys: duplicate key or id "${k.id}"`);
    seen.add(k.id);
    seen.add(k.publicKey);
  }
  const requiredSignatures = bg.int('requiredSignatures', 1, 1, 16);
  if (keys.length > 0 && requiredSignatures > keys.length) {
    throw new ConfigError(`config.breakGlass.requiredSignatures: ${requiredSignatures} signatures needed but only ${keys.length} key(s) configured`);
  }
  const allowedGrants = bg.strList('allowedGrants', ADMIN_ROLE_NAMES);
  for (const g of allowedGrants) {
    const problem = breakGlassGrantProblem(g);
    if (problem !== undefined) throw new ConfigError(`config.breakGlass.allowedGrants: "${g}": ${problem}`);
  }
  return {
    keys,
    requiredSignatures,
    maxTtlSeconds: bg.int('maxTtlSeconds', 900, 60, 900),
    allowedGrants,
    maxFailuresPerMinute: bg.int('maxFailuresPerMinute', 30, 1, 10_000),
  };
}

/** Break-glass can never be used quietly: it needs an alert rule and a webhook, and a CA for admin grants. */
function checkBreakGlass(config: Config): void {
  const bg = config.breakGlass;
  if (bg.keys.length === 0) return;
  const { alerts } = config.audit;
  if (alerts.webhookUrl === undefined || !alerts.rules.some((r) => r.kind === 'break-glass')) {
    throw new ConfigError('config.breakGlass: break-glass needs audit.alerts.webhookUrl and an audit.alerts.rules entry with kind: break-glass');
  }
  if (bg.allowedGrants.some((g) => !g.startsWith('secret:')) && config.admin.caKeyFile === undefined) {
    throw new ConfigError('config.breakGlass: admin-role grants need admin.caCertFile and admin.caKeyFile (the admin CA signs them)');
  }
}

/** limits: rate limits (defaults sized so normal fleets and the test suites never meet them). */
function readLimits(top: Fields, env: NodeJS.ProcessEnv): LimitsConfig {
  const f = top.obj_('limits', ['enabled', 'windowSeconds', 'attemptsPerSource', 'issuancesPerIdentity']);
  const envSwitch = env.TESSERA_RATE_LIMITS;
  if (envSwitch !== undefined && envSwitch !== 'on' && envSwitch !== 'off') {
    throw new ConfigError('env.TESSERA_RATE_LIMITS: expected on or off');
  }
  return {
    enabled: envSwitch !== undefined ? envSwitch === 'on' : f.bool('enabled', true),
    windowSeconds: f.int('windowSeconds', 60, 1, 86_400),
    attemptsPerSource: f.int('attemptsPerSource', 1200, 0, 10_000_000),
    issuancesPerIdentity: f.int('issuancesPerIdentity', 600, 0, 10_000_000),
  };
}

/** metrics: the Prometheus listener. Off by default; loopback unless the operator says otherwise. */
function readMetrics(top: Fields, env: NodeJS.ProcessEnv): MetricsConfig {
  const f = top.obj_('metrics', ['enabled', 'host', 'port']);
  const envPort = env.TESSERA_METRICS_PORT;
  const port =
    envPort !== undefined && envPort !== ''
      ? new Fields({ port: envPort }, 'env.TESSERA_METRICS', ['port']).int('port', 0, 0, 65_535)
      : f.int('port', 9464, 0, 65_535);
  return {
    // Setting TESSERA_METRICS_PORT turns the listener on.
    enabled: (envPort !== undefined && envPort !== '') || f.bool('enabled', false),
    host: f.str('host', '127.0.0.1'),
    port,
  };
}

export const MAX_WORKERS = 64;

/**
 * workers: an integer in [1, 64] (default 1), or `auto` / 0 for one per CPU core. Also used for
 * `tessera serve --workers`.
 */
export function readWorkers(value: unknown, where = 'config.workers'): number {
  if (value === undefined || value === null || value === '') return 1;
  if (value === 'auto' || value === 0 || value === '0') return Math.min(MAX_WORKERS, Math.max(1, availableParallelism()));
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_WORKERS) {
    throw new ConfigError(`${where}: expected an integer in [1, ${MAX_WORKERS}] or auto`);
  }
  return n;
}

/**
 * ca.threads: minting threads per broker process, an integer in [0, 16] (0: mint on the event loop)
 * or `auto` (the default: the cores each of `processes` processes may use beyond its event loop, 1..4).
 */
export function readCaThreads(value: unknown, where: string, processes: number): number {
  if (value === undefined || value === null || value === '' || value === 'auto') return autoCaThreads(processes);
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > MAX_CA_THREADS) {
    throw new ConfigError(`${where}: expected an integer in [0, ${MAX_CA_THREADS}] or auto`);
  }
  return n;
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
    'bodyLimitBytes', 'logLevel', 'audit', 'secrets', 'admin', 'breakGlass', 'limits', 'metrics', 'workers',
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
  const ca = top.obj_('ca', ['certFile', 'keyFile', 'intermediatesFile', 'bundleFile', 'jwtKeyFile', 'threads']);
  const svid = top.obj_('svid', ['x509DefaultTtlSeconds', 'x509MaxTtlSeconds', 'jwtDefaultTtlSeconds', 'jwtMaxTtlSeconds']);
  const store = top.obj_('store', ['embedded', 'redis']);
  const embedded = store.obj_('embedded', ['dir', 'fsync']);
  const redis = readRedis(isObj(raw.store) ? raw.store.redis : undefined, env.REDIS_URL, base);
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

  const x509DefaultTtlSeconds = svid.int('x509DefaultTtlSeconds', 3600, 5, 30 * 86_400);
  const x509MaxTtlSeconds = svid.int('x509MaxTtlSeconds', 86_400, 5, 30 * 86_400);
  const jwtDefaultTtlSeconds = svid.int('jwtDefaultTtlSeconds', 300, 30, 86_400);
  const jwtMaxTtlSeconds = svid.int('jwtMaxTtlSeconds', 3600, 30, 86_400);
  if (x509DefaultTtlSeconds > x509MaxTtlSeconds) throw new ConfigError('config.svid: x509DefaultTtlSeconds exceeds x509MaxTtlSeconds');
  if (jwtDefaultTtlSeconds > jwtMaxTtlSeconds) throw new ConfigError('config.svid: jwtDefaultTtlSeconds exceeds jwtMaxTtlSeconds');

  const logLevel = env.TESSERA_LOG_LEVEL ?? top.str('logLevel', 'info');
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(logLevel)) {
    throw new ConfigError('config.logLevel: expected fatal|error|warn|info|debug|trace|silent');
  }

  const portFromEnv = env.TESSERA_PORT;
  const workers = readWorkers(env.TESSERA_WORKERS ?? raw.workers, env.TESSERA_WORKERS !== undefined ? 'env.TESSERA_WORKERS' : 'config.workers');
  const caThreads = readCaThreads(
    env.TESSERA_CA_THREADS ?? (isObj(raw.ca) ? raw.ca.threads : undefined),
    env.TESSERA_CA_THREADS !== undefined ? 'env.TESSERA_CA_THREADS' : 'config.ca.threads',
    workers,
  );
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
      threads: caThreads,
    },
    issuers,
    registration,
    svid: { x509DefaultTtlSeconds, x509MaxTtlSeconds, jwtDefaultTtlSeconds, jwtMaxTtlSeconds },
    store: {
      embedded: {
        dir: path.resolve(base, env.TESSERA_DATA_DIR ?? embedded.str('dir', 'data')),
        fsync: embedded.bool('fsync', true),
      },
      ...(redis !== undefined ? { redis } : {}),
    },
    audit: readAudit(top, trustDomain, dev, inDev, base),
    secrets: readSecrets(top, trustDomain, dev, inDev, base),
    admin: readAdmin(top, trustDomain, dev, inDev, base),
    breakGlass: readBreakGlass(top),
    limits: readLimits(top, env),
    metrics: readMetrics(top, env),
    workers,
    bodyLimitBytes: top.int('bodyLimitBytes', 64 * 1024, 1024, 1024 * 1024),
    logLevel: logLevel as Config['logLevel'],
  };
  checkBreakGlass(config);
  return deepFreeze(config);
}
