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

export interface StoreConfig {
  readonly embedded: { readonly dir: string; readonly fsync: boolean };
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
  readonly bodyLimitBytes: number;
  readonly logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
}
