/**
 * Tessera's configuration: one TypeBox schema of the config file (allowed keys, defaults, the message
 * every bad value gets) and the typed, frozen `Config` every other module receives, derived from it.
 * Loading, env overrides and the checks a schema cannot express live in load.ts.
 */
import Type, { type Static, type TSchema } from 'typebox';
import { MAX_CA_THREADS } from '../ca/minter-pool.js';

// Every schema carries `message`: what a user is told when a value does not fit (`<setting>: <message>`).
// String schemas with `file: true` are paths, resolved against the config file's folder (load.ts).
const str = (opts: { pattern?: string; message?: string; default?: string } = {}) =>
  Type.String({ minLength: 1, message: 'expected a non-empty string', ...opts });
const int = (minimum: number, maximum: number, fallback?: number) =>
  Type.Integer({ minimum, maximum, message: `expected an integer in [${minimum}, ${maximum}]`, ...(fallback !== undefined ? { default: fallback } : {}) });
const bool = (fallback: boolean) => Type.Boolean({ default: fallback, message: 'expected true or false' });
const strings = () => Type.Array(Type.String({ minLength: 1 }), { message: 'expected a list of non-empty strings' });
const strList = (fallback: readonly string[] = []) =>
  Type.Array(Type.String({ minLength: 1 }), { default: [...fallback], message: 'expected a list of non-empty strings' });
/** A path (relative to the config file's folder). */
const file = (fallback?: string) => Type.String({ minLength: 1, message: 'expected a non-empty string', file: true, ...(fallback !== undefined ? { default: fallback } : {}) });
const files = () => Type.Array(file(), { default: [], message: 'expected a list of non-empty strings' });
const list = <T extends TSchema>(item: T) => Type.Array(item, { message: 'expected a list' });
/** A mapping with exactly these keys; an absent section is `{}` (so its defaults apply) unless fallback is null. */
const section = <P extends Record<string, TSchema>>(properties: P, fallback: object | null = {}) =>
  Type.Object(properties, { additionalProperties: false, message: 'expected a mapping', ...(fallback !== null ? { default: fallback } : {}) });
const opt = Type.Optional;
const oneOf = <const V extends string[]>(values: readonly [...V], message: string, fallback?: V[number]) =>
  Type.Enum(values, { message, ...(fallback !== undefined ? { default: fallback } : {}) });

const SHORT_NAME = { pattern: '^[A-Za-z0-9._-]{1,64}$', message: 'expected 1-64 of A-Z a-z 0-9 . _ -' };
export const MAX_WORKERS = 64;
/** An integer in [minimum, maximum], or `auto` (0 is also accepted: it means auto for workers, no threads for ca.threads). */
const autoOr = (minimum: number, maximum: number, fallback: 'auto' | number) =>
  Type.Union([Type.Literal('auto'), Type.Integer({ minimum: 0, maximum })], {
    default: fallback,
    message: `expected an integer in [${minimum}, ${maximum}] or auto`,
  });

/**
 * A signing key in a PKCS#11 token (HSM; SoftHSM2 in tests) instead of a key file: the module, the
 * token, a file with the user PIN (chmod 600) and the key pair's CKA_LABEL (docs/ca.md "Keys in an HSM").
 */
const pkcs11Key = section({
  module: file(),
  tokenLabel: str(),
  pinFile: file(),
  keyLabel: str(),
  /** Sessions that sign in parallel. */
  sessions: int(1, 64, 4),
}, null);

/** Exact namespace / service account, or "*" for any. */
const selector = (fallback: object | null = {}) => section({ namespace: str({ default: '*' }), serviceAccount: str({ default: '*' }) }, fallback);

const redisAddress = Type.Union([Type.String(), section({ host: str(), port: int(1, 65_535, 6379) }, null)], {
  message: 'expected "host:port" or a mapping with host and port',
});

const alertRule = section({
  name: str(SHORT_NAME),
  kind: oneOf(['denials', 'break-glass', 'revoke-failed', 'device-lag'], 'expected denials, break-glass, revoke-failed or device-lag'),
  per: opt(oneOf(['spiffeId', 'namespace'], 'expected spiffeId or namespace')),
  threshold: opt(int(0, 1_000_000)),
  windowSeconds: opt(int(1, 86_400)),
  /** Overrides alerts.muteSeconds for this rule (0: never muted). */
  muteSeconds: opt(int(0, 7 * 86_400)),
}, null);

/**
 * An audit device (audit/devices/): ships every audit entry, in order, to a file, syslog or a socket.
 * Which keys a type takes (and that address, TLS material and names are well formed) is checked in
 * audit/devices/config.ts at load time.
 */
const auditDevice = section({
  name: str(SHORT_NAME),
  type: oneOf(['file', 'syslog', 'socket'], 'expected file, syslog or socket'),
  /** file: where the JSON lines go. */
  path: opt(file()),
  /** file: rotate when the file would grow past this (0: never); keep this many rotated files. */
  maxBytes: opt(int(0, Number.MAX_SAFE_INTEGER)),
  keep: opt(int(0, 1000)),
  /** file: fdatasync after every batch (batch, the default) or leave it to the OS (none). */
  fsync: opt(oneOf(['batch', 'none'], 'expected batch or none')),
  /** syslog: tcp://, tls:// or udp://host:port; socket: tcp://host:port or unix:///path. */
  address: opt(str()),
  /** syslog: facility name (RFC 5424 §6.2.1) and APP-NAME. */
  facility: opt(str()),
  appName: opt(str()),
  /** syslog over tls://: the CA that verifies the server, an optional client certificate, the name to verify. */
  tls: opt(section({ caFile: file(), certFile: opt(file()), keyFile: opt(file()), serverName: opt(str()) }, null)),
  /** Issuance fails closed (503 audit_device_lagging) while this device is further behind than the bounds below. */
  required: bool(false),
  maxLagEntries: int(1, 100_000_000, 10_000),
  maxLagSeconds: int(1, 86_400, 60),
  /** Entries per write (the most a device holds in memory at once). */
  batchSize: int(1, 10_000, 500),
  writeTimeoutMs: int(100, 300_000, 10_000),
  /** Retry delays double from retryInitialMs up to retryMaxMs, with jitter. */
  retryInitialMs: int(10, 60_000, 250),
  retryMaxMs: int(10, 600_000, 30_000),
  /** Stream devices: entries written this recently before a connection fails are sent again (same index). */
  resendWindowMs: int(0, 600_000, 2000),
}, null);

const MAX_LEASE_SECONDS = 30 * 86_400;
const postgresRole = section({
  /** SQL statements run when a credential is created; `{{name}}` becomes the new role's quoted identifier. */
  grants: Type.Array(Type.String({ minLength: 1 }), { minItems: 1, maxItems: 64, message: 'expected 1 to 64 statements' }),
  ttlSeconds: int(1, MAX_LEASE_SECONDS, 3600),
  /** Default: the larger of one day and ttlSeconds. */
  maxTtlSeconds: opt(int(1, MAX_LEASE_SECONDS)),
}, null);

const mysqlRole = section({
  /**
   * Statements run, in order, when a credential is created. Placeholders {{name}}, {{password}} and
   * {{expiration}} become driver-escaped string literals (write them bare: CREATE USER {{name}}@'%' ...).
   * Default: CREATE USER {{name}}@'%' IDENTIFIED BY {{password}}.
   */
  creationStatements: opt(Type.Array(Type.String({ minLength: 1 }), { minItems: 1, maxItems: 64, message: 'expected 1 to 64 statements' })),
  /** GRANT statements run after creation; {{name}} as above. */
  grants: Type.Array(Type.String({ minLength: 1 }), { minItems: 1, maxItems: 64, message: 'expected 1 to 64 statements' }),
  ttlSeconds: int(1, MAX_LEASE_SECONDS, 3600),
  maxTtlSeconds: opt(int(1, MAX_LEASE_SECONDS)),
}, null);

const redisRole = section({
  /** Key patterns the user may touch (~pattern); checked strictly at load. */
  keys: strList(),
  /** Pub/Sub channel patterns (&pattern). */
  channels: strList(),
  /** Command rules in order: +@category, -@category, +command, -command (never +@all, +@admin, +@dangerous, +acl, …). */
  commands: Type.Array(Type.String({ minLength: 1 }), { minItems: 1, maxItems: 64, message: 'expected 1 to 64 rules' }),
  ttlSeconds: int(1, MAX_LEASE_SECONDS, 3600),
  maxTtlSeconds: opt(int(1, MAX_LEASE_SECONDS)),
}, null);

const rabbitPermissions = section({ configure: Type.String({ default: '^$' }), write: Type.String({ default: '^$' }), read: Type.String({ default: '^$' }) }, null);
const rabbitmqRole = section({
  /** vhost → permission regexes (configure / write / read; default "^$": nothing). */
  vhosts: Type.Record(Type.String(), rabbitPermissions, { minProperties: 1, message: 'expected a mapping of vhost to permissions' }),
  /** User tags: management, monitoring or policymaker (never administrator). */
  tags: strList(),
  ttlSeconds: int(1, MAX_LEASE_SECONDS, 3600),
  maxTtlSeconds: opt(int(1, MAX_LEASE_SECONDS)),
}, null);

export const ADMIN_ROLES: readonly AdminRole[] = ['auditor', 'operator', 'secrets-admin', 'registrar'];

/** The config file. Every mapping refuses keys it does not name. */
/**
 * A list of secrets engines of one kind. Every engine has a name (unique across all kinds), the admin's
 * URL and optional password file, the prefix of every user it creates (<usernamePrefix><role>_<16 hex>;
 * `maxTail` characters may follow the first letter), a connect timeout, the settings of its kind, and roles.
 */
const engineList = <X extends Record<string, TSchema>, R extends TSchema>(opts: { usernamePrefix: { maxTail: number; default: string } }, settings: X, role: R) => {
  const prefix = `^[a-z][a-z0-9_]{0,${opts.usernamePrefix.maxTail}}$`;
  return Type.Array(
    section({
      name: str({ pattern: '^[a-z][a-z0-9_-]{0,31}$', message: 'expected ^[a-z][a-z0-9_-]{0,31}$' }),
      url: str(),
      passwordFile: opt(file()),
      usernamePrefix: str({ pattern: prefix, message: `expected ${prefix}`, default: opts.usernamePrefix.default }),
      connectTimeoutMs: int(100, 60_000, 5000),
      ...settings,
      roles: Type.Record(Type.String(), role, { minProperties: 1, message: 'expected a mapping of role name to role' }),
    }, null),
    { default: [], message: 'expected a list' },
  );
};

export const ConfigFileSchema = section({
  trustDomain: str({ default: 'example.org' }),
  /** Default: the host name. */
  replicaId: str(),
  devDir: file('certs-dev'),
  listen: section({ host: str({ default: '127.0.0.1' }), port: int(0, 65_535, 8443) }),
  /** The broker's own serving certificate (leaf first, then chain) and key. */
  tls: section({ certFile: file(), keyFile: file() }),
  ca: section({
    certFile: file(),
    /** The signing CA's private key: a PEM file, or (exactly one of the two) a key in a PKCS#11 token. */
    keyFile: opt(file()),
    pkcs11: opt(pkcs11Key),
    intermediatesFile: opt(file()),
    bundleFile: file(),
    /** EC P-256 key that signs JWT-SVIDs (kept apart from the X.509 CA key). */
    jwtKeyFile: opt(file()),
    jwtPkcs11: opt(pkcs11Key),
    /** Minting threads (0: mint on the event loop); `auto` is resolved at load time. */
    threads: autoOr(0, MAX_CA_THREADS, 'auto'),
    /** Warn (log, alert, /readyz `expiring`) this many seconds before the signing CA's notAfter. */
    expiryWarningSeconds: Type.Array(Type.Integer({ minimum: 1, maximum: 10 * 365 * 86_400 }), {
      default: [30 * 86_400, 7 * 86_400, 86_400],
      maxItems: 16,
      message: 'expected a list of at most 16 integers in [1, 315360000] (seconds before the CA expires)',
    }),
    /**
     * Automatic rotation of the signing CA and the JWT-SVID key (docs/ca.md), for when Tessera holds the
     * root that signs its intermediates. With `pkcs11` / `jwtPkcs11` the next keys are generated in that
     * token (docs/ca.md "Rotating keys in an HSM"), else sealed into the store. Absent: the configured
     * CA and JWT key, never rotated.
     */
    rotation: opt(section({
      /**
       * Private key of the root in bundleFile that signs each next signing CA. Absent (an upstream or
       * offline root): next authorities come from `tessera ca prepare` / `ca import` (docs/ca.md).
       */
      rootKeyFile: opt(file()),
      /** Lifetime of each signing CA Tessera makes (prepared at 1/2 of the active one's life, active at 5/6). */
      caTtlSeconds: int(30, 10 * 365 * 86_400, 7 * 86_400),
      /** How often every replica reads the shared CA state (a switch reaches every replica within this). */
      pollIntervalMs: int(50, 10_000, 500),
    }, null)),
  }),
  issuers: Type.Array(
    section({
      issuer: str(),
      jwksFile: opt(file()),
      jwksUrl: opt(str()),
      /** Or: OpenID discovery at <issuer>/.well-known/openid-configuration names the JWKS (https only; key rotation without restart). */
      discovery: opt(Type.Boolean({ message: 'expected true or false' })),
      /** CA bundle (PEM) for discovery's TLS; default: the system's CAs. */
      caFile: opt(file()),
      /** Fetched keys (jwksUrl, discovery) are re-read when older than this (and on an unknown kid, at most every 30 s). */
      jwksRefreshSeconds: opt(int(30, 86_400)),
      allowInsecureHttp: bool(false),
      audiences: strList(),
      maxLifetimeSeconds: int(60, 31 * 86_400, 86_400),
      requirePodBinding: bool(false),
      /** Confirm each token with the cluster's TokenReview API and read its pod for label/annotation/node/image selectors. */
      kubernetes: opt(section({
        apiServer: str(),
        caFile: file(),
        tokenFile: file(),
        cacheSeconds: int(1, 3600, 60),
        /** When the API server cannot be asked: accept the JWKS verdict alone (no pod metadata) instead of 503. */
        jwksFallback: bool(false),
        timeoutMs: int(100, 60_000, 5000),
      }, null)),
    }, null),
    { default: [], minItems: 1, message: 'at least one token issuer is required' },
  ),
  registration: Type.Array(
    section({
      selector: selector(),
      /** Path below the trust domain instead of /ns/<ns>/sa/<sa>; "{namespace}" and "{serviceAccount}" are substituted. */
      spiffePath: opt(str({ pattern: '^(/[A-Za-z0-9._{}-]+)+$', message: 'expected /segment/segment…' })),
      dnsNames: strList(),
      // X.509 TTLs may go as low as 5 s so rotation can be exercised end to end in seconds.
      x509TtlSeconds: opt(int(5, 30 * 86_400)),
      jwtTtlSeconds: opt(int(30, 86_400)),
      jwtAudiences: strList(),
      /** Foreign trust domains (config.federation) whose bundles workloads of this entry receive. */
      federatesWith: strList(),
    }, null),
    { default: [], message: 'expected a list' },
  ),
  /** This trust domain's SPIFFE bundle endpoint (docs/federation.md): GET /v1/bundle on the broker (https_web), and optionally an https_spiffe listener. */
  bundleEndpoint: section({
    /** spiffe_refresh_hint of the served bundle: how often federated trust domains fetch it again. */
    refreshHintSeconds: int(1, 86_400, 300),
    /** A listener whose server certificate is an SVID of this trust domain (spiffe://<td>/tessera/bundle-endpoint), re-minted as the CA rotates. */
    spiffe: opt(section({ host: str({ default: '127.0.0.1' }), port: int(0, 65_535, 8444) }, null)),
  }),
  /** Foreign trust domains this broker fetches bundles from (docs/federation.md). More can be added at run time (tessera federation add). */
  federation: Type.Array(
    section({
      trustDomain: str(),
      bundleEndpointUrl: str(),
      profile: oneOf(['https_web', 'https_spiffe'], 'expected https_web or https_spiffe'),
      /** https_spiffe: the SPIFFE ID the endpoint's SVID carries (in the foreign trust domain). */
      endpointSpiffeId: opt(str()),
      /** The foreign bundle (SPIFFE bundle JSON, or PEM roots) to start from; required for https_spiffe. */
      bootstrapBundleFile: opt(file()),
      /** https_web: roots (PEM) that verify the endpoint instead of the system CAs. */
      caFile: opt(file()),
      /** The foreign refresh hint is obeyed within [minRefreshSeconds, maxRefreshSeconds]. */
      minRefreshSeconds: int(1, 86_400, 30),
      maxRefreshSeconds: int(1, 7 * 86_400, 3600),
      /** Alert (and /metrics) once the last good bundle is older than this. */
      staleAfterSeconds: int(1, 30 * 86_400, 3600),
    }, null),
    { default: [], maxItems: 64, message: 'expected a list of at most 64 trust domains' },
  ),
  svid: section({
    x509DefaultTtlSeconds: int(5, 30 * 86_400, 3600),
    x509MaxTtlSeconds: int(5, 30 * 86_400, 86_400),
    jwtDefaultTtlSeconds: int(30, 86_400, 300),
    jwtMaxTtlSeconds: int(30, 86_400, 3600),
  }),
  store: section({
    embedded: section({ dir: file('data'), fsync: bool(true) }),
    /** Shared state in Redis (several replicas). Exactly one of url, sentinels (+ name) or nodes. See docs/redis.md. */
    redis: opt(section({
      url: opt(str()),
      sentinels: opt(list(redisAddress)),
      name: opt(str()),
      nodes: opt(list(redisAddress)),
      /** Keys are `{prefix}:…` (a Cluster hash tag). */
      prefix: str({ ...SHORT_NAME, default: 'tessera' }),
      /**
       * Start even when Redis cannot keep the audit log (CONFIG GET shows appendonly no, or appendfsync no):
       * for tests and throwaway demos only, and loudly logged. Without it the broker refuses such a Redis.
       */
      allowVolatile: bool(false),
      /** `WAIT 1` after every write: answer only once a replica has the write. */
      requireReplicaAck: bool(false),
      commandTimeoutMs: int(100, 60_000, 1500),
      connectTimeoutMs: int(100, 60_000, 1500),
      username: opt(str()),
      passwordFile: opt(file()),
      tls: opt(Type.Union([Type.Boolean(), section({ caFile: opt(file()), certFile: opt(file()), keyFile: opt(file()), serverName: opt(str()) }, null)], {
        message: 'expected true, false or a mapping',
      })),
    }, null)),
  }),
  audit: section({
    /** Ed25519 private key (PKCS#8 PEM) that signs checkpoints; kept apart from every CA key. */
    signingKeyFile: opt(file()),
    /** Or (exactly one of the two): the Ed25519 key in a PKCS#11 token. */
    signingPkcs11: opt(pkcs11Key),
    /** Checkpoint origin line and signature key name (default "<trustDomain>/tessera/audit"). */
    origin: str(),
    /** Background checkpoints: at most one per this interval while the log grows, plus one on shutdown. */
    checkpointIntervalMs: int(10, 3_600_000, 1000),
    /** Minimum gap between two on-demand checkpoints signed for issuance receipts (coalesces bursts). */
    receiptCheckpointGapMs: int(0, 60_000, 0),
    /**
     * C2SP tlog-witnesses that cosign each checkpoint (docs/audit.md "Witnesses"): name, URL prefix of
     * add-checkpoint, and the witness's verifier key <name>+<id>+base64(0x04 ‖ key).
     */
    witnesses: Type.Array(section({ name: str(), url: str(), key: str() }, null), { default: [], maxItems: 32, message: 'expected a list of at most 32 witnesses' }),
    /** Cosignatures that make a checkpoint "cosigned" (receipts, requireWitnesses). */
    witnessQuorum: int(1, 32, 1),
    /** Fail issuance closed (503 witness_quorum_unavailable) unless a quorum cosigned the log within maxWitnessLagSeconds. */
    requireWitnesses: bool(false),
    maxWitnessLagSeconds: int(5, 86_400, 300),
    /** Each add-checkpoint call gives up after this long (then retried with backoff). */
    witnessTimeoutMs: int(100, 60_000, 5000),
    alerts: section({
      /** Where alerts are POSTed as JSON. Without it alerts are still recorded in the audit log. */
      webhookUrl: opt(str()),
      /** Allow an http:// webhook (tests, a local relay). https is required otherwise. */
      allowInsecureHttp: bool(false),
      webhookCaFile: opt(file()),
      /** After a rule fires for one key, further firings for that key are muted this long. */
      muteSeconds: int(0, 7 * 86_400, 300),
      timeoutMs: int(100, 60_000, 5000),
      /** Delivery attempts per alert (first try included); delays double from retryInitialMs. */
      maxAttempts: int(1, 20, 8),
      retryInitialMs: int(10, 60_000, 500),
      /** Alerts waiting for delivery; beyond this the oldest is dropped (and counted). */
      queueLimit: int(1, 100_000, 1000),
      rules: Type.Array(alertRule, { default: [], message: 'expected a list' }),
    }),
    /** Audit devices (docs/audit.md, "Feeding your SIEM"). */
    devices: Type.Array(auditDevice, { default: [], message: 'expected a list' }),
  }),
  secrets: section({
    /** Active key-encryption key (32 random bytes, base64, file mode 0600). Needed for static secrets. */
    kekFile: opt(file()),
    /** Older KEKs still accepted for reading until `tessera secrets rotate-kek` has re-wrapped everything. */
    oldKekFiles: files(),
    lease: section({ defaultTtlSeconds: int(1, MAX_LEASE_SECONDS, 3600), maxTtlSeconds: opt(int(1, MAX_LEASE_SECONDS)) }),
    sweepIntervalSeconds: int(1, 3600, 10),
    /** Exactly one of spiffeIds or selector; grants add up, nothing is granted by default. */
    grants: Type.Array(
      section({ spiffeIds: opt(strings()), selector: opt(selector(null)), secrets: strList(), postgresRoles: strList(), mysqlRoles: opt(strings()), redisRoles: opt(strings()), rabbitmqRoles: opt(strings()) }, null),
      { default: [], message: 'expected a list' },
    ),
    /** PostgreSQL servers: postgres://user@host:port/database of the admin role (the database the grants apply in). */
    postgres: engineList(
      { usernamePrefix: { maxTail: 13, default: 'tessera_' } },
      { statementTimeoutMs: int(100, 300_000, 10_000), maxConnections: int(1, 64, 4) },
      postgresRole,
    ),
    /**
     * MariaDB / MySQL servers (engine names are unique across all engine kinds): mysql://user@host:port[/database]
     * of the admin user (CREATE USER, GRANT OPTION, CONNECTION ADMIN or SUPER). Users are named
     * <usernamePrefix><role, shortened>_<16 hex>, at most 32 characters.
     */
    mysql: engineList({ usernamePrefix: { maxTail: 7, default: 'tsr_' } }, { maxConnections: int(1, 64, 4) }, mysqlRole),
    /** Redis servers (standalone; one engine per node for Sentinel / Cluster): ACL users; redis://[user@]host:port of the admin user (needs +acl and +client). */
    redis: engineList({ usernamePrefix: { maxTail: 13, default: 'tessera_' } }, {}, redisRole),
    /** RabbitMQ brokers, through the management HTTP API: http(s)://user@host:15672 as an administrator. */
    rabbitmq: engineList({ usernamePrefix: { maxTail: 13, default: 'tessera_' } }, {}, rabbitmqRole),
  }),
  admin: section({
    /** Roots (PEM) of the separate admin CA. Without it no admin certificate is accepted. */
    caBundleFile: opt(file()),
    /** Admin CA certificate and key that sign break-glass admin certificates (admin-role grants). */
    caCertFile: opt(file()),
    caKeyFile: opt(file()),
    /** Allow-list of admins and their roles; an admin certificate whose ID is not here gets nothing. */
    principals: Type.Array(section({ id: str(), roles: strList() }, null), { default: [], message: 'expected a list' }),
  }),
  breakGlass: section({
    keys: Type.Array(section({ id: str(SHORT_NAME), publicKey: str() }, null), { default: [], message: 'expected a list' }),
    /** M of N: how many distinct configured keys must sign one request (two-person rule: 2). */
    requiredSignatures: int(1, 16, 1),
    /** Lifetime of the credential a request gets: requests are capped to this (≤ 900 s). */
    maxTtlSeconds: int(60, 900, 900),
    /** What requests may ask for: admin roles, and "secret:<name>" or "secret:<prefix>/" grants. */
    allowedGrants: strList(['auditor', 'operator', 'secrets-admin']),
    /** Failed attempts per minute (all replicas) after which further attempts get 429 for the minute. */
    maxFailuresPerMinute: int(1, 10_000, 30),
  }),
  /** Rate limits (see docs/operations.md). Counters live in the Store, so replicas share them. */
  limits: section({
    enabled: bool(true),
    windowSeconds: int(1, 86_400, 60),
    /** Unauthenticated requests per client address per window; 0 = no limit. */
    attemptsPerSource: int(0, 10_000_000, 1200),
    /** Authenticated requests per SPIFFE ID per window; 0 = no limit. */
    issuancesPerIdentity: int(0, 10_000_000, 600),
  }),
  /** JWT-SVIDs (docs/oidc.md). */
  jwt: section({
    /**
     * When set, every JWT-SVID carries `iss` equal to it: the OIDC issuer relying parties and cloud IAM
     * trust, an https origin (https://host[:port], no path, no trailing slash). Absent: no `iss`.
     */
    issuer: opt(str()),
  }),
  /** OIDC discovery of the JWT-SVID keys (docs/oidc.md): needs jwt.issuer. */
  oidc: section({
    /** Serve /.well-known/openid-configuration and its JWKS on the broker's listener. */
    enabled: bool(false),
    /**
     * Also serve them, and nothing else, on a separate HTTPS listener that never asks for a client
     * certificate: the one to expose publicly. Certificate and key default to tls.certFile/keyFile.
     */
    public: opt(section({ host: str({ default: '127.0.0.1' }), port: int(0, 65_535), certFile: opt(file()), keyFile: opt(file()) }, null)),
  }),
  /** Prometheus metrics on a separate plain-HTTP listener (loopback by default; 0 picks a free port). */
  metrics: section({ enabled: bool(false), host: str({ default: '127.0.0.1' }), port: int(0, 65_535, 9464) }),
  /** Processes that serve requests (1 = the broker runs in this process). See docs/performance.md. */
  workers: autoOr(1, MAX_WORKERS, 1),
  bodyLimitBytes: int(1024, 1024 * 1024, 64 * 1024),
  logLevel: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'expected fatal|error|warn|info|debug|trace|silent', 'info'),
});
export type ConfigFile = Static<typeof ConfigFileSchema>;

type DeepReadonly<T> = T extends readonly (infer I)[] ? readonly DeepReadonly<I>[] : T extends object ? { readonly [K in keyof T]: DeepReadonly<T[K]> } : T;
type File = DeepReadonly<ConfigFile>;

export type ListenConfig = File['listen'];
export type TlsConfig = File['tls'];
export type Pkcs11KeyConfig = NonNullable<File['ca']['pkcs11']>;
export type CaConfig = Omit<File['ca'], 'threads'> & { readonly threads: number };
export type TokenIssuerConfig = File['issuers'][number];
export type RegistrationEntry = File['registration'][number];
export type RegistrationSelector = RegistrationEntry['selector'];
export type SvidConfig = File['svid'];
export type FederationConfig = File['federation'][number];
export type BundleEndpointConfig = File['bundleEndpoint'];
export interface RedisAddressConfig {
  readonly host: string;
  readonly port: number;
}
type RedisFile = NonNullable<File['store']['redis']>;
export type RedisStoreConfig = Omit<RedisFile, 'sentinels' | 'nodes' | 'tls'> & {
  readonly sentinels?: readonly RedisAddressConfig[];
  readonly nodes?: readonly RedisAddressConfig[];
  readonly tls?: Exclude<RedisFile['tls'], boolean>;
};
export interface StoreConfig {
  readonly embedded: File['store']['embedded'];
  readonly redis?: RedisStoreConfig;
}
export type AlertRuleConfig = File['audit']['alerts']['rules'][number];
export type AlertsConfig = File['audit']['alerts'];
export type AuditConfig = File['audit'];
export type AuditDeviceConfig = File['audit']['devices'][number];
export type SecretGrantConfig = File['secrets']['grants'][number];
export type PostgresRoleConfig = Required<File['secrets']['postgres'][number]['roles'][string]>;
export type PostgresEngineConfig = Omit<File['secrets']['postgres'][number], 'roles'> & {
  readonly roles: Readonly<Record<string, PostgresRoleConfig>>;
};
export type MysqlRoleConfig = Omit<Required<File['secrets']['mysql'][number]['roles'][string]>, 'creationStatements'> & {
  readonly creationStatements: readonly string[];
};
export type MysqlEngineConfig = Omit<File['secrets']['mysql'][number], 'roles'> & {
  readonly roles: Readonly<Record<string, MysqlRoleConfig>>;
};
export type RedisRoleConfig = Required<File['secrets']['redis'][number]['roles'][string]>;
export type RedisEngineConfig = Omit<File['secrets']['redis'][number], 'roles'> & {
  readonly roles: Readonly<Record<string, RedisRoleConfig>>;
};
export type RabbitmqRoleConfig = Required<File['secrets']['rabbitmq'][number]['roles'][string]>;
export type RabbitmqEngineConfig = Omit<File['secrets']['rabbitmq'][number], 'roles'> & {
  readonly roles: Readonly<Record<string, RabbitmqRoleConfig>>;
};
export type SecretsConfig = Omit<File['secrets'], 'lease' | 'postgres' | 'mysql' | 'redis' | 'rabbitmq'> & {
  /** TTL of a static-secret lease, and the most any lease may be renewed to (from its issue time). */
  readonly leaseDefaultTtlSeconds: number;
  readonly leaseMaxTtlSeconds: number;
  readonly postgres: readonly PostgresEngineConfig[];
  readonly mysql: readonly MysqlEngineConfig[];
  readonly redis: readonly RedisEngineConfig[];
  readonly rabbitmq: readonly RabbitmqEngineConfig[];
};
/** What an admin may do: read/search audit, revoke and freeze, write secrets, manage registration entries. */
export type AdminRole = 'auditor' | 'operator' | 'secrets-admin' | 'registrar';
export type AdminPrincipalConfig = { readonly id: string; readonly roles: readonly AdminRole[] };
export type AdminConfig = Omit<File['admin'], 'principals'> & { readonly principals: readonly AdminPrincipalConfig[] };
export type BreakGlassKeyConfig = File['breakGlass']['keys'][number];
export type BreakGlassConfig = File['breakGlass'];
export type LimitsConfig = File['limits'];
export type MetricsConfig = File['metrics'];

export type Config = Omit<File, 'ca' | 'store' | 'secrets' | 'admin' | 'workers'> & {
  /** True when running on generated dev material (npm start without a config file). */
  readonly dev: boolean;
  readonly ca: CaConfig;
  readonly store: StoreConfig;
  readonly secrets: SecretsConfig;
  readonly admin: AdminConfig;
  readonly workers: number;
};
