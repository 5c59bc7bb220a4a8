/**
 * Loads configuration from a YAML file (optional) and environment overrides, fills defaults and checks
 * it against the schema in config.ts, then checks what a schema cannot say (cross-field rules, SPIFFE
 * IDs, URLs, keys) and returns a deep-frozen Config. Every error names the field or the env variable.
 * Without a file, Tessera runs on dev defaults: material under certs-dev/, store under data/.
 */
import { createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { availableParallelism, hostname } from 'node:os';
import path from 'node:path';
import type { TSchema } from 'typebox';
import { Compile } from 'typebox/compile';
import { parse as parseYaml } from 'yaml';
import { deviceProblem } from '../audit/devices/config.js';
import { isRecord as isObj } from '../is-record.js';
import { parseSpiffeId, validatePathSegment, validateTrustDomain } from '../spiffe/id.js';
import { issuerProblem } from '../spiffe/oidc.js';
import { isRoleName, secretGrantProblem } from '../secrets/names.js';
import { DEFAULT_MYSQL_CREATION, mysqlTemplateProblem } from '../secrets/mysql-template.js';
import { rabbitRoleProblem } from '../secrets/rabbitmq.js';
import { aclPatternProblem, aclRuleProblem } from '../secrets/redis-acl.js';
import { grantTemplateProblem } from '../secrets/sql-template.js';
import { autoCaThreads } from '../ca/minter-pool.js';
import { relationshipProblem } from '../spiffe/relationship.js';
import { parseCosignerKey } from '../audit/cosignature.js';
import { ADMIN_ROLES, ConfigFileSchema, MAX_WORKERS, type AdminRole, type Config, type ConfigFile, type RedisAddressConfig, type RedisStoreConfig } from './config.js';

export { MAX_WORKERS };

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
/** A schema node as load.ts reads it: the JSON Schema keywords it walks plus our annotations. */
type Node = TSchema & {
  message?: string;
  default?: unknown;
  file?: boolean;
  type?: string;
  properties?: Record<string, Node>;
  patternProperties?: Record<string, Node>;
  items?: Node;
  anyOf?: Node[];
};

const SCHEMA = ConfigFileSchema as Node;
const validator = Compile(ConfigFileSchema);

/** Environment variables that override a setting, and the setting (a JSON pointer into the file). */
const ENV_SETTINGS = {
  TESSERA_TRUST_DOMAIN: '/trustDomain',
  TESSERA_REPLICA_ID: '/replicaId',
  TESSERA_HOST: '/listen/host',
  TESSERA_PORT: '/listen/port',
  TESSERA_DATA_DIR: '/store/embedded/dir',
  TESSERA_LOG_LEVEL: '/logLevel',
  TESSERA_WORKERS: '/workers',
  TESSERA_CA_THREADS: '/ca/threads',
  TESSERA_METRICS_PORT: '/metrics/port',
  TESSERA_RATE_LIMITS: '/limits/enabled',
  REDIS_URL: '/store/redis/url',
} as const;

/** Names a setting in a message: the env variable it came from, or config.a.b[0].c. */
type Namer = (pointer: string) => string;

function namer(fromEnv: ReadonlyMap<string, string>): Namer {
  return (pointer) =>
    fromEnv.get(pointer) ??
    `config${pointer.split('/').slice(1).map((s) => (/^\d+$/.test(s) ? `[${s}]` : `.${s.replace(/~1/g, '/').replace(/~0/g, '~')}`)).join('')}`;
}

/** The member of a union that fits the value's shape (a mapping or a list), else the schema itself. */
const fitting = (schema: Node | undefined, value: unknown): Node | undefined =>
  schema?.anyOf?.find((s) => (isObj(value) ? s.type === 'object' : Array.isArray(value) && s.type === 'array')) ?? schema;

/** The schema of a setting inside a mapping: a property or a record entry. */
const property = (schema: Node | undefined, key: string): Node | undefined =>
  schema?.properties?.[key] ?? Object.values(schema?.patternProperties ?? {})[0];

/**
 * Rebuilds `value` along `schema`: drops null settings (YAML `key:` means "use the default"), fills in
 * defaults (in records too, which the compiled validator's Default does not reach), and maps each scalar.
 */
function walk(value: unknown, schema: Node | undefined, leaf: (value: unknown, schema: Node | undefined) => unknown): unknown {
  const s = fitting(schema, value);
  if (Array.isArray(value)) return value.map((v) => walk(v, s?.items, leaf));
  if (!isObj(value)) return leaf(value, s);
  const out: Obj = {};
  for (const [k, v] of Object.entries(value)) if (v !== null) out[k] = walk(v, property(s, k), leaf);
  for (const [k, p] of Object.entries(s?.properties ?? {})) {
    if (out[k] === undefined && p.default !== undefined) out[k] = walk(structuredClone(p.default), p, leaf);
  }
  return out;
}

const takesInteger = (s: Node | undefined): boolean => s?.type === 'integer' || (s?.anyOf?.some((m) => m.type === 'integer') ?? false);
/** Integers may be written as digit strings (env values always are). */
const digitsToInteger = (v: unknown, s: Node | undefined): unknown => (typeof v === 'string' && /^\d+$/.test(v) && takesInteger(s) ? Number(v) : v);

function setAt(root: Obj, pointer: string, value: unknown): void {
  const keys = pointer.split('/').slice(1);
  let node = root;
  for (const key of keys.slice(0, -1)) {
    if (node[key] === undefined) node[key] = {};
    const next = node[key];
    if (!isObj(next)) return; // not a mapping: the schema reports it
    node = next;
  }
  node[keys[keys.length - 1] as string] = value;
}

/** Applies the environment overrides; returns which settings came from which variable. */
function applyEnv(raw: Obj, env: NodeJS.ProcessEnv): Map<string, string> {
  const fromEnv = new Map<string, string>();
  for (const [name, pointer] of Object.entries(ENV_SETTINGS)) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    if (name === 'TESSERA_RATE_LIMITS' && value !== 'on' && value !== 'off') throw new ConfigError(`${name}: expected on or off`);
    // REDIS_URL replaces any topology from the file but keeps its other settings.
    if (name === 'REDIS_URL' && isObj(raw.store) && isObj(raw.store.redis)) {
      for (const key of ['sentinels', 'nodes', 'name']) delete raw.store.redis[key];
    }
    setAt(raw, pointer, name === 'TESSERA_RATE_LIMITS' ? value === 'on' : value);
    // Setting TESSERA_METRICS_PORT turns the listener on.
    if (name === 'TESSERA_METRICS_PORT') setAt(raw, '/metrics/enabled', true);
    fromEnv.set(pointer, name);
  }
  return fromEnv;
}

/** The schemas along an error's schema path, each with how many steps into the value it sits. */
function schemasAlong(schemaPath: string): [Node, number][] {
  const nodes: [Node, number][] = [[SCHEMA, 0]];
  const segments = schemaPath.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
  for (let i = 0, depth = 0; i < segments.length; i += 1) {
    const parent = (nodes[nodes.length - 1] as [Node, number])[0] as Obj;
    const keyword = segments[i] as string;
    if (keyword === 'items') nodes.push([parent.items as Node, ++depth]);
    else nodes.push([(parent[keyword] as Obj)[segments[++i] as string] as Node, keyword === 'anyOf' ? depth : ++depth]);
  }
  return nodes;
}

/** The first schema error, in the words a user reads: `<setting>: <what was expected>`. */
function schemaProblem(value: unknown, name: Namer): string | undefined {
  for (const e of validator.Errors(value)) {
    if (e.keyword === 'boolean') continue; // an unknown key: its additionalProperties error says so
    const path = e.instancePath.split('/');
    const nodes = schemasAlong(e.schemaPath);
    // In a union, a mapping is judged by the mapping member alone (its errors name the inner field).
    const valueAt = (depth: number): unknown => path.slice(1, depth + 1).reduce<unknown>((v, k) => (isObj(v) || Array.isArray(v) ? (v as Obj)[k] : undefined), value);
    const misfit = nodes.some(([s, depth], i) => {
      const fit = fitting(s, valueAt(depth));
      return fit !== s && nodes[i + 1]?.[0] !== fit;
    });
    if (misfit) continue;
    const innermost = (nodes[nodes.length - 1] as [Node, number])[0];
    if (e.keyword === 'additionalProperties') return `${name(`${e.instancePath}/${e.params.additionalProperties[0]}`)}: unknown setting`;
    if (e.keyword === 'required') {
      const missing = e.params.requiredProperties[0] as string;
      return `${name(`${e.instancePath}/${missing}`)}: ${innermost.properties?.[missing]?.message ?? e.message}`;
    }
    const [schema, depth] = [...nodes].reverse().find(([s]) => s.message !== undefined) ?? [SCHEMA, 0];
    return `${name(path.slice(0, depth + 1).join('/'))}: ${schema.message ?? e.message}`;
  }
  return undefined;
}

/** The file (or dev defaults) with env overrides, digit strings as integers, and every default filled in. */
function withDefaults(raw: Obj, env: NodeJS.ProcessEnv, dev: boolean): { file: ConfigFile; name: Namer } {
  if (dev) Object.assign(raw, devDefaults(env.TESSERA_TRUST_DOMAIN || 'example.org'));
  const name = namer(applyEnv(raw, env));
  const trustDomain = typeof raw.trustDomain === 'string' ? raw.trustDomain : 'example.org';
  raw.replicaId ??= hostname();
  if (isObj(raw.audit)) raw.audit.origin ??= `${trustDomain}/tessera/audit`;
  else if (raw.audit === undefined) raw.audit = { origin: `${trustDomain}/tessera/audit` };
  const file = walk(raw, SCHEMA, digitsToInteger);
  const problem = schemaProblem(file, name);
  if (problem !== undefined) throw new ConfigError(problem);
  return { file: file as ConfigFile, name };
}

/** `npm start` without a config file: the material `tessera dev` generates under certs-dev/. */
function devDefaults(trustDomain: string): Obj {
  const inDev = (name: string): string => `certs-dev/${name}`;
  return {
    tls: { certFile: inDev('server.pem'), keyFile: inDev('server.key') },
    ca: { certFile: inDev('intermediate.pem'), keyFile: inDev('intermediate.key'), bundleFile: inDev('bundle.pem'), jwtKeyFile: inDev('jwt-signing.key') },
    issuers: [{ issuer: DEV_TOKEN_ISSUER, jwksFile: inDev('dev-issuer.jwks.json'), audiences: [DEV_TOKEN_AUDIENCE] }],
    registration: [{ jwtAudiences: ['payments', 'tessera-demo'] }],
    audit: { signingKeyFile: inDev('audit-signing.key') },
    secrets: { kekFile: inDev('secrets.kek'), grants: [{ selector: {}, secrets: ['dev/'] }] },
    admin: {
      caBundleFile: inDev('admin-ca.pem'),
      caCertFile: inDev('admin-ca.pem'),
      caKeyFile: inDev('admin-ca.key'),
      principals: [{ id: `spiffe://${trustDomain}/admin/dev`, roles: [...ADMIN_ROLES] }],
    },
  };
}

function fail(message: string): never {
  throw new ConfigError(message);
}

/** Runs `check`, turning what it throws into a ConfigError for `where`. */
function named<T>(where: string, check: () => T): T {
  try {
    return check();
  } catch (err) {
    throw err instanceof ConfigError ? err : new ConfigError(`${where}: ${(err as Error).message}`);
  }
}

function url(value: string): URL | undefined {
  try {
    return new URL(value);
  } catch {
    return undefined;
  }
}

function noDuplicates(values: readonly string[], problem: (value: string) => string): void {
  const seen = new Set<string>();
  for (const v of values) {
    if (seen.has(v)) fail(problem(v));
    seen.add(v);
  }
}

const DNS_NAME = /^(?=.{1,253}$)(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

function checkSelector(selector: { namespace: string; serviceAccount: string }, where: string): void {
  named(where, () => {
    for (const value of [selector.namespace, selector.serviceAccount]) if (value !== '*') validatePathSegment(value);
  });
}

/** Identity: trust domain, token issuers, registration entries, SVID lifetimes. */
function checkIdentity(f: ConfigFile, name: Namer): void {
  named(name('/trustDomain'), () => validateTrustDomain(f.trustDomain));
  f.issuers.forEach((issuer, i) => {
    if (issuer.audiences.length === 0) fail(`config.issuers[${i}].audiences: at least one audience is required`);
    const discovery = issuer.discovery === true;
    if ([issuer.jwksFile !== undefined, issuer.jwksUrl !== undefined, discovery].filter(Boolean).length !== 1) {
      fail(`config.issuers[${i}]: set exactly one of jwksFile, jwksUrl or discovery: true`);
    }
    if (discovery) {
      const u = url(issuer.issuer);
      if (u?.protocol !== 'https:' || u.username !== '' || u.password !== '') {
        fail(`config.issuers[${i}].issuer: discovery needs an https:// issuer URL without credentials`);
      }
      if (issuer.allowInsecureHttp) fail(`config.issuers[${i}].allowInsecureHttp: discovery is https only`);
    } else if (issuer.caFile !== undefined) {
      fail(`config.issuers[${i}].caFile: only used with discovery: true`);
    }
    if (issuer.jwksRefreshSeconds !== undefined && issuer.jwksFile !== undefined) {
      fail(`config.issuers[${i}].jwksRefreshSeconds: only used with jwksUrl or discovery (a jwksFile is re-read on reload)`);
    }
    const api = issuer.kubernetes?.apiServer;
    if (api !== undefined && url(api)?.protocol !== 'https:') fail(`config.issuers[${i}].kubernetes.apiServer: expected an https:// URL`);
  });
  checkFederation(f);
  f.registration.forEach((entry, i) => {
    const where = `config.registration[${i}]`;
    for (const dns of entry.dnsNames) if (!DNS_NAME.test(dns)) fail(`${where}.dnsNames: "${dns}" is not a lowercase DNS name`);
    checkSelector(entry.selector, `${where}.selector`);
    for (const td of entry.federatesWith) named(`${where}.federatesWith`, () => validateTrustDomain(td));
  });
  const { svid } = f;
  if (svid.x509DefaultTtlSeconds > svid.x509MaxTtlSeconds) fail('config.svid: x509DefaultTtlSeconds exceeds x509MaxTtlSeconds');
  if (svid.jwtDefaultTtlSeconds > svid.jwtMaxTtlSeconds) fail('config.svid: jwtDefaultTtlSeconds exceeds jwtMaxTtlSeconds');
  const oneKey = (where: string, fileKey: string, pkcs11Key: string, v: { file?: string | undefined; pkcs11?: object | undefined }): void => {
    if ((v.file === undefined) === (v.pkcs11 === undefined)) fail(`${where}.${fileKey}: set exactly one of ${fileKey} and ${pkcs11Key}`);
  };
  oneKey('config.ca', 'keyFile', 'pkcs11', { file: f.ca.keyFile, pkcs11: f.ca.pkcs11 });
  oneKey('config.ca', 'jwtKeyFile', 'jwtPkcs11', { file: f.ca.jwtKeyFile, pkcs11: f.ca.jwtPkcs11 });
  oneKey('config.audit', 'signingKeyFile', 'signingPkcs11', { file: f.audit.signingKeyFile, pkcs11: f.audit.signingPkcs11 });
  const rotation = f.ca.rotation;
  if (rotation !== undefined) {
    // Activation at 5/6 of a CA's life leaves 1/6 of it: enough for the longest X.509-SVID, never cut short.
    if (svid.x509MaxTtlSeconds * 6 > rotation.caTtlSeconds) {
      fail(`config.ca.rotation.caTtlSeconds: must be at least 6 × svid.x509MaxTtlSeconds (${svid.x509MaxTtlSeconds * 6}) so no X.509-SVID is cut short by its CA's end`);
    }
    if (f.secrets.kekFile === undefined && rotationSealsKeys(f.ca)) fail(ROTATION_NEEDS_KEK);
  }
}

/** Federation: each trust domain once, not our own, and what its profile needs (federation/relationship.ts). */
function checkFederation(f: ConfigFile): void {
  noDuplicates(f.federation.map((r) => r.trustDomain), (td) => `config.federation: trust domain ${td} is listed twice`);
  f.federation.forEach((r, i) => {
    const problem = relationshipProblem({ ...r, ownTrustDomain: f.trustDomain, hasBootstrap: r.bootstrapBundleFile !== undefined });
    if (problem !== undefined) fail(`config.federation[${i}].${problem}`);
  });
}

/** jwt.issuer and oidc: an issuer in its one canonical spelling; discovery needs it. */
function checkOidc(f: ConfigFile): void {
  const issuer = f.jwt.issuer;
  const problem = issuer !== undefined ? issuerProblem(issuer) : undefined;
  if (problem !== undefined) fail(`config.jwt.issuer: ${problem}`);
  const { oidc } = f;
  if (oidc.enabled && issuer === undefined) fail('config.oidc.enabled: needs jwt.issuer (the https URL the discovery document names and JWT-SVIDs carry as iss)');
  if (oidc.public !== undefined) {
    if (!oidc.enabled) fail('config.oidc.public: needs oidc.enabled: true');
    if ((oidc.public.certFile === undefined) !== (oidc.public.keyFile === undefined)) fail('config.oidc.public: set both certFile and keyFile, or neither');
    if (oidc.public.port === f.listen.port && oidc.public.port !== 0) fail(`config.oidc.public.port: ${oidc.public.port} is the broker's own listen.port`);
  }
}

function redisAddress(raw: string | RedisAddressConfig, where: string): RedisAddressConfig {
  if (typeof raw !== 'string') return raw;
  const m = /^([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$/.exec(raw);
  const port = Number(m?.[2]);
  if (!m || port < 1 || port > 65_535) fail(`${where}: expected "host:port"`);
  return { host: (m[1] as string).replace(/^\[|\]$/g, ''), port };
}

/** store.redis: one topology, addresses as host and port, TLS as a mapping. */
function readRedis(redis: NonNullable<ConfigFile['store']['redis']>, name: Namer): RedisStoreConfig {
  const where = 'config.store.redis';
  const { sentinels, nodes, tls, ...rest } = redis;
  if ([redis.url, sentinels, nodes].filter((v) => v !== undefined).length !== 1) {
    fail(`${where}: set exactly one of url, sentinels (with name) or nodes (or REDIS_URL)`);
  }
  const parsed = redis.url === undefined ? undefined : url(redis.url);
  if (redis.url !== undefined && (parsed === undefined || (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:'))) {
    fail(`${name('/store/redis/url')}: expected redis://host:port or rediss://host:port`);
  }
  if (sentinels?.length === 0 || nodes?.length === 0) fail(`${where}: the address list is empty`);
  if (sentinels !== undefined && redis.name === undefined) fail(`${where}.name: the Sentinel master group name is required with sentinels`);
  if (typeof tls === 'object' && (tls.certFile === undefined) !== (tls.keyFile === undefined)) fail(`${where}.tls: set both certFile and keyFile, or neither`);
  return {
    ...rest,
    ...(sentinels !== undefined ? { sentinels: sentinels.map((a, i) => redisAddress(a, `${where}.sentinels[${i}]`)) } : {}),
    ...(nodes !== undefined ? { nodes: nodes.map((a, i) => redisAddress(a, `${where}.nodes[${i}]`)) } : {}),
    ...(tls === true ? { tls: {} } : typeof tls === 'object' ? { tls } : {}),
  };
}

/** The audit section: the origin is a C2SP key name, alert rules fit their kind, the webhook is safe. */
function readAudit(audit: ConfigFile['audit']): Config['audit'] {
  if (/[\s+\p{Cc}\p{Cs}]/u.test(audit.origin)) fail('config.audit.origin: must not contain spaces, "+" or control characters');
  const { webhookUrl, allowInsecureHttp } = audit.alerts;
  if (webhookUrl !== undefined) {
    const u = url(webhookUrl);
    const where = 'config.audit.alerts.webhookUrl';
    if (u === undefined || (u.protocol !== 'https:' && u.protocol !== 'http:')) fail(`${where}: expected an https:// URL`);
    if (u.protocol === 'http:' && !allowInsecureHttp) fail(`${where}: http:// needs allowInsecureHttp: true (use https)`);
    if (u.username !== '' || u.password !== '') fail(`${where}: credentials in the URL are not allowed`);
  }
  const rules = audit.alerts.rules.map((rule, i) => {
    const where = `config.audit.alerts.rules[${i}]`;
    if (rule.kind !== 'denials') {
      for (const k of ['per', 'threshold', 'windowSeconds'] as const) if (rule[k] !== undefined) fail(`${where}.${k}: not used by a ${rule.kind} rule`);
      return rule;
    }
    if (rule.threshold === undefined || rule.windowSeconds === undefined) fail(`${where}: a denials rule needs threshold and windowSeconds`);
    return { ...rule, per: rule.per ?? 'spiffeId' };
  });
  noDuplicates(rules.map((r) => r.name), (n) => `config.audit.alerts.rules: duplicate rule name "${n}"`);
  audit.devices.forEach((d, i) => {
    const problem = deviceProblem(d);
    if (problem !== undefined) fail(`config.audit.devices[${i}].${problem.field}: ${problem.message}`);
  });
  noDuplicates(audit.devices.map((d) => d.name), (n) => `config.audit.devices: duplicate device name "${n}"`);
  checkWitnesses(audit);
  return { ...audit, alerts: { ...audit.alerts, rules } };
}

/** Witnesses: a cosignature (type 0x04) verifier key named as the witness, an http(s) URL, a reachable quorum. */
function checkWitnesses(audit: ConfigFile['audit']): void {
  audit.witnesses.forEach((w, i) => {
    const where = `config.audit.witnesses[${i}]`;
    try {
      if (parseCosignerKey(w.key).name !== w.name) fail(`${where}.key: names "${w.key.split('+')[0] ?? ''}", not the witness name "${w.name}"`);
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      fail(`${where}.key: ${(err as Error).message} (expected the witness verifier key that \`tessera witness keygen\` printed)`);
    }
    const u = url(w.url);
    if (u === undefined || (u.protocol !== 'https:' && u.protocol !== 'http:')) fail(`${where}.url: expected an http(s):// URL prefix of the witness`);
    if (u.username !== '' || u.password !== '' || u.search !== '' || u.hash !== '') fail(`${where}.url: no credentials, query or fragment`);
  });
  noDuplicates(audit.witnesses.map((w) => w.name), (n) => `config.audit.witnesses: duplicate witness name "${n}"`);
  if (audit.witnesses.length > 0 && audit.witnessQuorum > audit.witnesses.length) {
    fail(`config.audit.witnessQuorum: ${audit.witnessQuorum} is more than the ${audit.witnesses.length} witness(es) configured`);
  }
  if (audit.requireWitnesses && audit.witnesses.length === 0) fail('config.audit.requireWitnesses: needs audit.witnesses');
}

function checkPostgresEngine(engine: ConfigFile['secrets']['postgres'][number], where: string): Config['secrets']['postgres'][number] {
  const parsed = url(engine.url);
  // Never echo the URL: it may carry the admin password.
  if (parsed === undefined || (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') || parsed.hostname === '') {
    fail(`${where}.url: expected postgres://user@host:port/database`);
  }
  if (parsed.pathname.length < 2) fail(`${where}.url: name the database the grants apply in (postgres://…/database)`);
  const roles = Object.fromEntries(
    Object.entries(engine.roles).map(([role, r]) => {
      if (!isRoleName(role)) fail(`${where}.roles: role name "${role}" must match ^[a-z][a-z0-9_]{0,30}$`);
      r.grants.forEach((g, i) => {
        const problem = grantTemplateProblem(g);
        if (problem !== undefined) fail(`${where}.roles.${role}.grants[${i}]: ${problem}`);
      });
      const maxTtlSeconds = r.maxTtlSeconds ?? Math.max(86_400, r.ttlSeconds);
      if (r.ttlSeconds > maxTtlSeconds) fail(`${where}.roles.${role}: ttlSeconds exceeds maxTtlSeconds`);
      return [role, { ...r, maxTtlSeconds }];
    }),
  );
  return { ...engine, roles };
}

function checkMysqlEngine(engine: ConfigFile['secrets']['mysql'][number], where: string): Config['secrets']['mysql'][number] {
  const parsed = url(engine.url);
  // Never echo the URL: it may carry the admin password.
  if (parsed === undefined || (parsed.protocol !== 'mysql:' && parsed.protocol !== 'mariadb:') || parsed.hostname === '' || parsed.username === '') {
    fail(`${where}.url: expected mysql://user@host:port[/database]`);
  }
  if (parsed.search !== '' || parsed.hash !== '') fail(`${where}.url: no query string or fragment`);
  const roles = Object.fromEntries(
    Object.entries(engine.roles).map(([role, r]) => {
      if (!isRoleName(role)) fail(`${where}.roles: role name "${role}" must match ^[a-z][a-z0-9_]{0,30}$`);
      const creationStatements = r.creationStatements ?? [DEFAULT_MYSQL_CREATION];
      creationStatements.forEach((s, i) => {
        const problem = mysqlTemplateProblem(s);
        if (problem !== undefined) fail(`${where}.roles.${role}.creationStatements[${i}]: ${problem}`);
      });
      if (!creationStatements.some((s) => s.includes('{{password}}'))) {
        fail(`${where}.roles.${role}.creationStatements: one statement must set the password ({{password}})`);
      }
      r.grants.forEach((g, i) => {
        const problem = mysqlTemplateProblem(g, ['{{name}}', '{{expiration}}']);
        if (problem !== undefined) fail(`${where}.roles.${role}.grants[${i}]: ${problem}`);
      });
      const maxTtlSeconds = r.maxTtlSeconds ?? Math.max(86_400, r.ttlSeconds);
      if (r.ttlSeconds > maxTtlSeconds) fail(`${where}.roles.${role}: ttlSeconds exceeds maxTtlSeconds`);
      return [role, { ...r, creationStatements, maxTtlSeconds }];
    }),
  );
  return { ...engine, roles };
}

function checkRedisEngine(engine: ConfigFile['secrets']['redis'][number], where: string): Config['secrets']['redis'][number] {
  const parsed = url(engine.url);
  // Never echo the URL: it may carry the admin password.
  if (parsed === undefined || parsed.protocol !== 'redis:' || parsed.hostname === '' || (parsed.pathname !== '' && parsed.pathname !== '/')) {
    fail(`${where}.url: expected redis://[user@]host:port`);
  }
  const roles = Object.fromEntries(
    Object.entries(engine.roles).map(([role, r]) => {
      if (!isRoleName(role)) fail(`${where}.roles: role name "${role}" must match ^[a-z][a-z0-9_]{0,30}$`);
      for (const field of ['keys', 'channels'] as const) {
        r[field].forEach((p, i) => {
          const problem = aclPatternProblem(p);
          if (problem !== undefined) fail(`${where}.roles.${role}.${field}[${i}]: ${problem}`);
        });
      }
      r.commands.forEach((c, i) => {
        const problem = aclRuleProblem(c);
        if (problem !== undefined) fail(`${where}.roles.${role}.commands[${i}]: ${problem}`);
      });
      if (!r.commands.some((c) => c.startsWith('+'))) fail(`${where}.roles.${role}.commands: allows no command (add +@read, +get, …)`);
      const maxTtlSeconds = r.maxTtlSeconds ?? Math.max(86_400, r.ttlSeconds);
      if (r.ttlSeconds > maxTtlSeconds) fail(`${where}.roles.${role}: ttlSeconds exceeds maxTtlSeconds`);
      return [role, { ...r, maxTtlSeconds }];
    }),
  );
  return { ...engine, roles };
}

function checkRabbitmqEngine(engine: ConfigFile['secrets']['rabbitmq'][number], where: string): Config['secrets']['rabbitmq'][number] {
  const parsed = url(engine.url);
  // Never echo the URL: it may carry the admin password.
  if (parsed === undefined || (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') || parsed.hostname === '' || parsed.username === '') {
    fail(`${where}.url: expected http(s)://user@host:15672 (the management API)`);
  }
  if (parsed.search !== '' || parsed.hash !== '') fail(`${where}.url: no query string or fragment`);
  const roles = Object.fromEntries(
    Object.entries(engine.roles).map(([role, r]) => {
      if (!isRoleName(role)) fail(`${where}.roles: role name "${role}" must match ^[a-z][a-z0-9_]{0,30}$`);
      const problem = rabbitRoleProblem(r);
      if (problem !== undefined) fail(`${where}.roles.${role}.${problem.field}: ${problem.problem}`);
      const maxTtlSeconds = r.maxTtlSeconds ?? Math.max(86_400, r.ttlSeconds);
      if (r.ttlSeconds > maxTtlSeconds) fail(`${where}.roles.${role}: ttlSeconds exceeds maxTtlSeconds`);
      return [role, { ...r, maxTtlSeconds }];
    }),
  );
  return { ...engine, roles };
}

/** The secrets section. Default deny: without grants nobody gets anything. */
function readSecrets(secrets: ConfigFile['secrets'], trustDomain: string): Config['secrets'] {
  const where = 'config.secrets';
  const { lease, postgres, mysql, redis, rabbitmq, ...rest } = secrets;
  const leaseMaxTtlSeconds = lease.maxTtlSeconds ?? Math.max(86_400, lease.defaultTtlSeconds);
  if (lease.defaultTtlSeconds > leaseMaxTtlSeconds) fail(`${where}.lease: defaultTtlSeconds exceeds maxTtlSeconds`);
  const engines = postgres.map((e, i) => checkPostgresEngine(e, `${where}.postgres[${i}]`));
  const mysqlEngines = mysql.map((e, i) => checkMysqlEngine(e, `${where}.mysql[${i}]`));
  // Engine names are unique across kinds: a lease names its engine only.
  const redisEngines = redis.map((e, i) => checkRedisEngine(e, `${where}.redis[${i}]`));
  const rabbitEngines = rabbitmq.map((e, i) => checkRabbitmqEngine(e, `${where}.rabbitmq[${i}]`));
  noDuplicates([...engines, ...mysqlEngines, ...redisEngines, ...rabbitEngines].map((e) => e.name), (n) => `${where}: duplicate engine name "${n}"`);
  const owners = (list: readonly { name: string; roles: Readonly<Record<string, unknown>> }[], at: string): Map<string, string> => {
    const roleOwner = new Map<string, string>();
    for (const e of list) {
      for (const role of Object.keys(e.roles)) {
        const other = roleOwner.get(role);
        if (other !== undefined) fail(`${where}.${at}: role "${role}" is defined by engines "${other}" and "${e.name}"`);
        roleOwner.set(role, e.name);
      }
    }
    return roleOwner;
  };
  const roleOwner = owners(engines, 'postgres');
  const mysqlRoleOwner = owners(mysqlEngines, 'mysql');
  const redisRoleOwner = owners(redisEngines, 'redis');
  const rabbitRoleOwner = owners(rabbitEngines, 'rabbitmq');
  secrets.grants.forEach((g, i) => {
    const at = `${where}.grants[${i}]`;
    if ((g.spiffeIds === undefined) === (g.selector === undefined)) fail(`${at}: set exactly one of spiffeIds or selector`);
    if (g.spiffeIds?.length === 0) fail(`${at}.spiffeIds: at least one SPIFFE ID`);
    for (const id of g.spiffeIds ?? []) {
      let ok: boolean;
      try {
        const p = parseSpiffeId(id);
        ok = p.trustDomain === trustDomain && p.path !== '';
      } catch {
        ok = false;
      }
      if (!ok) fail(`${at}.spiffeIds: "${id}" is not a workload SPIFFE ID in trust domain ${trustDomain}`);
    }
    if (g.selector !== undefined) checkSelector(g.selector, `${at}.selector`);
    for (const s of g.secrets) {
      const problem = secretGrantProblem(s);
      if (problem !== undefined) fail(`${at}.secrets: "${s}": ${problem}`);
    }
    for (const r of g.postgresRoles) if (!isRoleName(r)) fail(`${at}.postgresRoles: "${r}" must match ^[a-z][a-z0-9_]{0,30}$`);
    for (const r of g.mysqlRoles ?? []) if (!isRoleName(r)) fail(`${at}.mysqlRoles: "${r}" must match ^[a-z][a-z0-9_]{0,30}$`);
    for (const r of g.redisRoles ?? []) if (!isRoleName(r)) fail(`${at}.redisRoles: "${r}" must match ^[a-z][a-z0-9_]{0,30}$`);
    for (const r of g.rabbitmqRoles ?? []) if (!isRoleName(r)) fail(`${at}.rabbitmqRoles: "${r}" must match ^[a-z][a-z0-9_]{0,30}$`);
    const dynamic = [...g.postgresRoles, ...(g.mysqlRoles ?? []), ...(g.redisRoles ?? []), ...(g.rabbitmqRoles ?? [])];
    if (g.secrets.length === 0 && dynamic.length === 0) fail(`${at}: grants nothing (set secrets, postgresRoles, mysqlRoles, redisRoles or rabbitmqRoles)`);
  });
  secrets.grants.forEach((g, i) => {
    for (const r of g.postgresRoles) if (!roleOwner.has(r)) fail(`${where}.grants[${i}].postgresRoles: no engine defines role "${r}"`);
    for (const r of g.mysqlRoles ?? []) if (!mysqlRoleOwner.has(r)) fail(`${where}.grants[${i}].mysqlRoles: no MySQL engine defines role "${r}"`);
    for (const r of g.redisRoles ?? []) if (!redisRoleOwner.has(r)) fail(`${where}.grants[${i}].redisRoles: no Redis engine defines role "${r}"`);
    for (const r of g.rabbitmqRoles ?? []) if (!rabbitRoleOwner.has(r)) fail(`${where}.grants[${i}].rabbitmqRoles: no RabbitMQ engine defines role "${r}"`);
    if (g.secrets.length > 0 && secrets.kekFile === undefined) fail(`${where}.kekFile: required when grants give static secrets (grants[${i}])`);
  });
  return { ...rest, leaseDefaultTtlSeconds: lease.defaultTtlSeconds, leaseMaxTtlSeconds, postgres: engines, mysql: mysqlEngines, redis: redisEngines, rabbitmq: rabbitEngines };
}

/** A SPIFFE-style admin ID (valid SPIFFE ID with a path); break-glass IDs are minted by the broker only. */
function readAdminId(value: string, where: string): string {
  const parsed = named(where, () => parseSpiffeId(value));
  if (parsed.path === '') fail(`${where}: an admin ID needs a path (e.g. spiffe://example.org/admin/alice)`);
  if (parsed.path.startsWith('/admin/break-glass/')) fail(`${where}: /admin/break-glass/ is reserved for break-glass certificates`);
  return parsed.uri;
}

/** The admin section: the admin CA files go together, principals have known roles and unique IDs. */
function readAdmin(admin: ConfigFile['admin']): Config['admin'] {
  if ((admin.caCertFile === undefined) !== (admin.caKeyFile === undefined)) fail('config.admin: set both caCertFile and caKeyFile, or neither');
  if (admin.caCertFile !== undefined && admin.caBundleFile === undefined) fail('config.admin.caBundleFile: required with caCertFile');
  const principals = admin.principals.map((p, i) => {
    const where = `config.admin.principals[${i}]`;
    if (p.roles.length === 0) fail(`${where}.roles: at least one role is required`);
    for (const r of p.roles) if (!(ADMIN_ROLES as readonly string[]).includes(r)) fail(`${where}.roles: "${r}" is not one of ${ADMIN_ROLES.join(', ')}`);
    return { id: readAdminId(p.id, `${where}.id`), roles: [...new Set(p.roles)] as AdminRole[] };
  });
  noDuplicates(principals.map((p) => p.id), (id) => `config.admin.principals: duplicate id ${id}`);
  if (principals.length > 0 && admin.caBundleFile === undefined) fail('config.admin.caBundleFile: required when principals are set');
  return { ...admin, principals };
}

/** A break-glass grant: an admin role, or "secret:<name>" / "secret:<prefix>/". */
/**
 * With `ca.rotation`, a CA or JWT-SVID key that is a file is sealed into the store with the secrets KEK;
 * keys in a token are recorded by label only, so with both there nothing needs the KEK.
 */
export function rotationSealsKeys(ca: { readonly pkcs11?: unknown; readonly jwtPkcs11?: unknown }): boolean {
  return ca.pkcs11 === undefined || ca.jwtPkcs11 === undefined;
}
export const ROTATION_NEEDS_KEK = 'config.ca.rotation: requires secrets.kekFile (a CA or JWT-SVID key that is a file is kept sealed in the store with it)';

export function breakGlassGrantProblem(grant: string): string | undefined {
  if ((ADMIN_ROLES as readonly string[]).includes(grant)) return undefined;
  if (!grant.startsWith('secret:')) return `expected one of ${ADMIN_ROLES.join(', ')} or secret:<name>`;
  const name = grant.slice('secret:'.length);
  if (!/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*\/?$/.test(name) || name.split('/').some((s) => s === '.' || s === '..') || name.length > 256) {
    return 'secret:<name> needs a secret name (segments of A-Z a-z 0-9 . _ -, "/"-separated; a trailing "/" grants a prefix)';
  }
  return undefined;
}

const isEd25519Spki = (base64: string): boolean => {
  try {
    return /^[A-Za-z0-9+/]+=*$/.test(base64) && createPublicKey({ key: Buffer.from(base64, 'base64'), format: 'der', type: 'spki' }).asymmetricKeyType === 'ed25519';
  } catch {
    return false;
  }
};

/** The breakGlass section: off unless keys are configured; keys are Ed25519 only. */
function readBreakGlass(bg: ConfigFile['breakGlass']): Config['breakGlass'] {
  const keys = bg.keys.map((k, i) => {
    const publicKey = k.publicKey.replace(/\s+/g, '');
    if (!isEd25519Spki(publicKey)) fail(`config.breakGlass.keys[${i}].publicKey: expected an Ed25519 public key (base64 SPKI DER, from tessera break-glass init)`);
    return { id: k.id, publicKey };
  });
  const seen = new Set<string>();
  for (const k of keys) {
    if (seen.has(k.id) || seen.has(k.publicKey)) fail(`config.breakGlass.keys: duplicate key or id "${k.id}"`);
    seen.add(k.id).add(k.publicKey);
  }
  if (keys.length > 0 && bg.requiredSignatures > keys.length) {
    fail(`config.breakGlass.requiredSignatures: ${bg.requiredSignatures} signatures needed but only ${keys.length} key(s) configured`);
  }
  for (const g of bg.allowedGrants) {
    const problem = breakGlassGrantProblem(g);
    if (problem !== undefined) fail(`config.breakGlass.allowedGrants: "${g}": ${problem}`);
  }
  return { ...bg, keys };
}

/** Break-glass can never be used quietly: it needs an alert rule and a webhook, and a CA for admin grants. */
function checkBreakGlass(config: Config): void {
  const bg = config.breakGlass;
  if (bg.keys.length === 0) return;
  const { alerts } = config.audit;
  if (alerts.webhookUrl === undefined || !alerts.rules.some((r) => r.kind === 'break-glass')) {
    fail('config.breakGlass: break-glass needs audit.alerts.webhookUrl and an audit.alerts.rules entry with kind: break-glass');
  }
  if (bg.allowedGrants.some((g) => !g.startsWith('secret:')) && config.admin.caKeyFile === undefined) {
    fail('config.breakGlass: admin-role grants need admin.caCertFile and admin.caKeyFile (the admin CA signs them)');
  }
}

const workersValidator = Compile(ConfigFileSchema.properties.workers);

/**
 * workers: an integer in [1, 64] (default 1), or `auto` / 0 for one per CPU core. Also used for
 * `tessera serve --workers`.
 */
export function readWorkers(value: unknown, where = 'config.workers'): number {
  const v = digitsToInteger(value ?? 1, ConfigFileSchema.properties.workers);
  if (!workersValidator.Check(v)) fail(`${where}: ${(ConfigFileSchema.properties.workers as Node).message}`);
  return v === 'auto' || v === 0 ? Math.min(MAX_WORKERS, Math.max(1, availableParallelism())) : v;
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
  const dev = file === undefined || file === '';
  let raw: unknown = {};
  let base = opts.cwd ?? process.cwd();
  if (!dev) {
    try {
      // The yaml parser refuses duplicate keys.
      raw = parseYaml(readFileSync(file, 'utf8')) ?? {};
    } catch (err) {
      throw new ConfigError(`cannot read config file ${file}: ${(err as Error).message}`);
    }
    base = path.dirname(path.resolve(file));
  }
  if (!isObj(raw)) throw new ConfigError('config: expected a YAML mapping at the top level');
  const { file: parsed, name } = withDefaults(raw, env, dev);
  const f = walk(parsed, SCHEMA, (v, s) => (s?.file === true && typeof v === 'string' ? path.resolve(base, v) : v)) as ConfigFile;
  checkIdentity(f, name);
  checkOidc(f);
  const workers = readWorkers(f.workers);
  const config: Config = {
    ...f,
    dev,
    ca: { ...f.ca, threads: f.ca.threads === 'auto' ? autoCaThreads(workers) : f.ca.threads },
    store: { embedded: f.store.embedded, ...(f.store.redis !== undefined ? { redis: readRedis(f.store.redis, name) } : {}) },
    audit: readAudit(f.audit),
    secrets: readSecrets(f.secrets, f.trustDomain),
    admin: readAdmin(f.admin),
    breakGlass: readBreakGlass(f.breakGlass),
    workers,
  };
  checkBreakGlass(config);
  return deepFreeze(config);
}
