/**
 * Tessera's configuration: the typed, frozen shape every other module receives.
 * Loading and validation live in load.ts; this file is only the contract.
 */
export interface ListenConfig {
  readonly host: string;
  readonly port: number;
}

export interface TlsConfig {
  /** The broker's own serving certificate (leaf first, then chain) and key. */
  readonly certFile: string;
  readonly keyFile: string;
}

export interface CaConfig {
  /** The signing (intermediate) CA certificate and key, extra intermediates, and the root bundle. */
  readonly certFile: string;
  readonly keyFile: string;
  readonly intermediatesFile?: string;
  readonly bundleFile: string;
  /** EC P-256 key that signs JWT-SVIDs (kept apart from the X.509 CA key). */
  readonly jwtKeyFile: string;
  /**
   * Minting threads (CSR check, key import, certificate signature off the event loop; ca/minter-pool.ts).
   * 0 mints on the event loop. Resolved from `auto` (the default) at load time.
   */
  readonly threads: number;
}

export interface TokenIssuerConfig {
  readonly issuer: string;
  readonly jwksFile?: string;
  readonly jwksUrl?: string;
  readonly allowInsecureHttp?: boolean;
  readonly audiences: readonly string[];
  readonly maxLifetimeSeconds: number;
  readonly requirePodBinding: boolean;
}

export interface RegistrationSelector {
  /** Exact namespace, or "*" for any. */
  readonly namespace: string;
  /** Exact service account, or "*" for any. */
  readonly serviceAccount: string;
}

export interface RegistrationEntry {
  readonly selector: RegistrationSelector;
  /** Path below the trust domain to issue instead of /ns/<ns>/sa/<sa>; "{namespace}" and "{serviceAccount}" are substituted. */
  readonly spiffePath?: string;
  readonly dnsNames: readonly string[];
  readonly x509TtlSeconds?: number;
  readonly jwtTtlSeconds?: number;
  readonly jwtAudiences: readonly string[];
}

export interface SvidConfig {
  readonly x509DefaultTtlSeconds: number;
  readonly x509MaxTtlSeconds: number;
  readonly jwtDefaultTtlSeconds: number;
  readonly jwtMaxTtlSeconds: number;
}

export interface RedisAddressConfig {
  readonly host: string;
  readonly port: number;
}

/** Shared state in Redis (several replicas). Exactly one of url, sentinels (+ name) or nodes. See docs/redis.md. */
export interface RedisStoreConfig {
  readonly url?: string;
  readonly sentinels?: readonly RedisAddressConfig[];
  readonly name?: string;
  readonly nodes?: readonly RedisAddressConfig[];
  /** Keys are `{prefix}:…` (a Cluster hash tag). */
  readonly prefix: string;
  /** `WAIT 1` after every write: answer only once a replica has the write. */
  readonly requireReplicaAck: boolean;
  readonly commandTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly username?: string;
  readonly passwordFile?: string;
  readonly tls?: { readonly caFile?: string; readonly certFile?: string; readonly keyFile?: string; readonly serverName?: string };
}

export interface StoreConfig {
  readonly embedded: { readonly dir: string; readonly fsync: boolean };
  /** When set, the broker keeps all shared state in Redis instead of the embedded store. */
  readonly redis?: RedisStoreConfig;
}

export interface AlertRuleConfig {
  /** Unique name; it is in every alert and in the mute key. */
  readonly name: string;
  /**
   * 'denials': more than `threshold` denials for one key within `windowSeconds`. 'break-glass': any use.
   * 'revoke-failed': a lease whose credential the engine refused to drop (lease state revoke_failed).
   */
  readonly kind: 'denials' | 'break-glass' | 'revoke-failed';
  /** What a denial is counted against (denials rules only). */
  readonly per?: 'spiffeId' | 'namespace';
  readonly threshold?: number;
  readonly windowSeconds?: number;
  /** Overrides alerts.muteSeconds for this rule (0: never muted). */
  readonly muteSeconds?: number;
}

export interface AlertsConfig {
  /** Where alerts are POSTed as JSON. Without it alerts are still recorded in the audit log. */
  readonly webhookUrl?: string;
  /** Allow an http:// webhook (tests, a local relay). https is required otherwise. */
  readonly allowInsecureHttp: boolean;
  /** Extra CA certificates (PEM file) to trust for an https webhook. */
  readonly webhookCaFile?: string;
  /** After a rule fires for one key, further firings for that key are muted this long. */
  readonly muteSeconds: number;
  readonly timeoutMs: number;
  /** Delivery attempts per alert (first try included); delays double from retryInitialMs. */
  readonly maxAttempts: number;
  readonly retryInitialMs: number;
  /** Alerts waiting for delivery; beyond this the oldest is dropped (and counted). */
  readonly queueLimit: number;
  readonly rules: readonly AlertRuleConfig[];
}

export interface AuditConfig {
  /** Ed25519 private key (PKCS#8 PEM) that signs checkpoints; kept apart from every CA key. */
  readonly signingKeyFile: string;
  /** Checkpoint origin line and signature key name (default "<trustDomain>/tessera/audit"). */
  readonly origin: string;
  /** Background checkpoints: at most one per this interval while the log grows, plus one on shutdown. */
  readonly checkpointIntervalMs: number;
  /** Minimum gap between two on-demand checkpoints signed for issuance receipts (coalesces bursts). */
  readonly receiptCheckpointGapMs: number;
  readonly alerts: AlertsConfig;
}

/** One grant of secrets to workloads: exactly one of `spiffeIds` or `selector`. Grants add up; nothing is granted by default. */
export interface SecretGrantConfig {
  /** Registered SPIFFE IDs (as the registration policy assigns them). */
  readonly spiffeIds?: readonly string[];
  /** Namespace / service account of registered workloads ("*" for any). */
  readonly selector?: RegistrationSelector;
  /** Exact secret names, or prefixes ending in "/" (every secret below that path). */
  readonly secrets: readonly string[];
  /** Dynamic PostgreSQL roles (names from secrets.postgres[].roles). */
  readonly postgresRoles: readonly string[];
}

export interface PostgresRoleConfig {
  /** SQL statements run when a credential is created; `{{name}}` becomes the new role's quoted identifier. */
  readonly grants: readonly string[];
  readonly ttlSeconds: number;
  readonly maxTtlSeconds: number;
}

/** A PostgreSQL server Tessera creates short-lived roles on, through an admin role with CREATEROLE. */
export interface PostgresEngineConfig {
  readonly name: string;
  /** postgres://user@host:port/database of the admin role (the database the grants apply in). */
  readonly url: string;
  /** File holding the admin password (0600), so the URL need not carry it. */
  readonly passwordFile?: string;
  /** Every role Tessera creates is named <usernamePrefix><role>_<16 hex>. */
  readonly usernamePrefix: string;
  readonly connectTimeoutMs: number;
  readonly statementTimeoutMs: number;
  readonly maxConnections: number;
  readonly roles: Readonly<Record<string, PostgresRoleConfig>>;
}

/** Scoped secrets: encrypted static secrets, dynamic PostgreSQL credentials, leases. See docs/secrets.md. */
export interface SecretsConfig {
  /** Active key-encryption key (32 random bytes, base64, file mode 0600). Needed for static secrets. */
  readonly kekFile?: string;
  /** Older KEKs still accepted for reading until `tessera secrets rotate-kek` has re-wrapped everything. */
  readonly oldKekFiles: readonly string[];
  /** TTL of a static-secret lease, and the most any lease may be renewed to (from its issue time). */
  readonly leaseDefaultTtlSeconds: number;
  readonly leaseMaxTtlSeconds: number;
  /** How often the lease sweeper looks for expired leases (one replica at a time). */
  readonly sweepIntervalSeconds: number;
  readonly grants: readonly SecretGrantConfig[];
  readonly postgres: readonly PostgresEngineConfig[];
}

/** What an admin may do: read/search audit, revoke and freeze, write secrets. */
export type AdminRole = 'auditor' | 'operator' | 'secrets-admin';

export interface AdminPrincipalConfig {
  /** The SPIFFE-style URI SAN of the admin's certificate, e.g. spiffe://example.org/admin/alice. */
  readonly id: string;
  readonly roles: readonly AdminRole[];
}

/** The admin API (/v1/admin/*). See docs/admin-breakglass.md. */
export interface AdminConfig {
  /** Roots (PEM) of the separate admin CA. Without it no admin certificate is accepted. */
  readonly caBundleFile?: string;
  /** Admin CA certificate and key that sign break-glass admin certificates (admin-role grants). */
  readonly caCertFile?: string;
  readonly caKeyFile?: string;
  /** Allow-list of admins and their roles; an admin certificate whose ID is not here gets nothing. */
  readonly principals: readonly AdminPrincipalConfig[];
}

export interface BreakGlassKeyConfig {
  /** Short name shown in audit entries and alerts (e.g. bg-1). */
  readonly id: string;
  /** Ed25519 public key: base64 of its SPKI DER, as printed by `tessera break-glass init`. */
  readonly publicKey: string;
}

/** Break-glass (POST /v1/admin/break-glass). No keys: break-glass is disabled. */
export interface BreakGlassConfig {
  readonly keys: readonly BreakGlassKeyConfig[];
  /** M of N: how many distinct configured keys must sign one request (two-person rule: 2). */
  readonly requiredSignatures: number;
  /** Lifetime of the credential a request gets: requests are capped to this (≤ 900 s). */
  readonly maxTtlSeconds: number;
  /** What requests may ask for: admin roles, and "secret:<name>" or "secret:<prefix>/" grants. */
  readonly allowedGrants: readonly string[];
  /** Failed attempts per minute (all replicas) after which further attempts get 429 for the minute. */
  readonly maxFailuresPerMinute: number;
}

/** Rate limits (see docs/operations.md). Counters live in the Store, so replicas share them. */
export interface LimitsConfig {
  /** false turns every rate limit off (benchmarks; env TESSERA_RATE_LIMITS=off). */
  readonly enabled: boolean;
  /** Length of the fixed counting window. */
  readonly windowSeconds: number;
  /** Requests per client address per window that are not authenticated by an accepted SVID (token attempts, bad or no certificate); 0 = no limit. */
  readonly attemptsPerSource: number;
  /** Authenticated requests per SPIFFE ID per window; 0 = no limit. */
  readonly issuancesPerIdentity: number;
}

/** Prometheus metrics on a separate plain-HTTP listener (loopback by default; off unless enabled). */
export interface MetricsConfig {
  readonly enabled: boolean;
  readonly host: string;
  /** 0 picks a free port (tests). */
  readonly port: number;
}

export interface Config {
  /** True when running on generated dev material (npm start without a config file). */
  readonly dev: boolean;
  readonly devDir: string;
  readonly trustDomain: string;
  readonly replicaId: string;
  readonly listen: ListenConfig;
  readonly tls: TlsConfig;
  readonly ca: CaConfig;
  readonly issuers: readonly TokenIssuerConfig[];
  readonly registration: readonly RegistrationEntry[];
  readonly svid: SvidConfig;
  readonly store: StoreConfig;
  readonly audit: AuditConfig;
  readonly secrets: SecretsConfig;
  readonly admin: AdminConfig;
  readonly breakGlass: BreakGlassConfig;
  readonly limits: LimitsConfig;
  readonly metrics: MetricsConfig;
  /** Processes that serve requests (node:cluster; 1 = the broker runs in this process). See docs/performance.md. */
  readonly workers: number;
  readonly bodyLimitBytes: number;
  readonly logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
}
