/**
 * Dynamic secrets: an engine makes a fresh credential per lease, moves its expiry and drops it. The
 * secrets service and the lease sweeper know engines only through `SecretEngine`; which engines exist
 * is decided once, from config, in `SecretEngines.fromConfig`.
 */
import type { SecretsConfig } from '../config/config.js';
import { BrokerError } from '../errors.js';
import type { Lease, LeaseBackend, NewLease } from './leases.js';
import { MysqlEngine } from './mysql.js';
import { PostgresEngine } from './postgres.js';
import { RabbitmqEngine } from './rabbitmq.js';
import { RedisAclEngine } from './redis-acl.js';

/** The kinds of dynamic engine (each has its own config list, grant list and route). */
export type EngineKind = 'postgres' | 'mysql' | 'redis' | 'rabbitmq';
export const ENGINE_LABEL: Readonly<Record<EngineKind, string>> = { postgres: 'PostgreSQL', mysql: 'MySQL', redis: 'Redis', rabbitmq: 'RabbitMQ' };

/** What a role of an engine allows: its default and longest lease. */
export interface EngineRole {
  readonly ttlSeconds: number;
  readonly maxTtlSeconds: number;
}

export interface EngineCredential {
  readonly username: string;
  readonly password: string;
}

/** The lease records an engine issues under (the secrets service's LeaseManager). */
export interface EngineLeases {
  create(n: NewLease): Promise<Lease>;
  /** Drops the record of a lease whose credential was never made. */
  discard(id: string): Promise<void>;
}

export interface SecretEngine extends LeaseBackend {
  readonly kind: EngineKind;
  readonly name: string;
  role(role: string): EngineRole | undefined;
  /**
   * A fresh credential for `role`, held by `identity` (a SPIFFE ID) for `ttlSeconds`. The lease is
   * recorded first, so a credential made just before the broker dies is still dropped by the sweeper;
   * if making it fails, nothing is left (no credential, no lease).
   */
  issue(role: string, identity: string, ttlSeconds: number): Promise<{ credential: EngineCredential; lease: Lease }>;
  /** Drops the lease's credential; one that is already gone is success. */
  revoke(lease: Lease): Promise<void>;
  /** Can the engine's admin credentials log in and act? Bounded by the engine's connect timeout; never throws. */
  health(): Promise<EngineHealth>;
  /**
   * Sets `newPassword` as the admin user's password on the backend, using the current admin
   * credentials (root.ts stores it first, and the engine then connects with it). Throws BrokerError:
   * engine_unavailable (backend down or refused), root_rotation_refused (this engine cannot rotate).
   */
  rotateRoot(newPassword: string): Promise<void>;
  close(): Promise<void>;
}

/**
 * The admin password an engine connects with, asked on every (re)connect: the rotated one from the
 * store (root.ts), or undefined until the first rotation (then the config's password is used).
 */
export type AdminPasswordSource = () => Promise<string | undefined>;

export type EngineHealth = { readonly ok: true } | { readonly ok: false; readonly error: string };

/** How long one health answer is reused (/readyz is probed often; backends should not be hammered). */
export const HEALTH_CACHE_MS = 10_000;

/** All configured engines, found by role (role names are unique across engines) or by a lease's engine. */
export class SecretEngines implements LeaseBackend {
  readonly #engines: ReadonlyMap<string, SecretEngine>;
  #health: { at: number; value: Promise<Record<string, EngineHealth & { kind: EngineKind }>> } | undefined;

  constructor(engines: readonly SecretEngine[]) {
    this.#engines = new Map(engines.map((e) => [e.name, e]));
  }

  /** The engines `config` describes: PostgreSQL, MariaDB/MySQL and Redis servers. */
  static fromConfig(
    config: SecretsConfig,
    leases: EngineLeases,
    onError?: (engine: string, err: Error) => void,
    adminPassword?: (engine: string) => AdminPasswordSource,
  ): SecretEngines {
    const pw = (name: string): { adminPassword?: AdminPasswordSource } => (adminPassword !== undefined ? { adminPassword: adminPassword(name) } : {});
    return new SecretEngines([
      ...config.postgres.map((c) => new PostgresEngine(c, leases, { onError: (err) => onError?.(c.name, err), ...pw(c.name) })),
      ...config.mysql.map((c) => new MysqlEngine(c, leases, { onError: (err) => onError?.(c.name, err), ...pw(c.name) })),
      ...config.redis.map((c) => new RedisAclEngine(c, leases, pw(c.name))),
      ...config.rabbitmq.map((c) => new RabbitmqEngine(c, leases, pw(c.name))),
    ]);
  }

  /** The engine named `name`, or undefined. */
  get(name: string): SecretEngine | undefined {
    return this.#engines.get(name);
  }

  /** The engine (of `kind`, if given) that defines `role`, or undefined. */
  forRole(role: string, kind?: EngineKind): SecretEngine | undefined {
    for (const e of this.#engines.values()) if ((kind === undefined || e.kind === kind) && e.role(role) !== undefined) return e;
    return undefined;
  }

  /** Health of every engine by name (cached HEALTH_CACHE_MS; engines are checked in parallel). */
  async health(now: number = Date.now()): Promise<Record<string, EngineHealth & { kind: EngineKind }>> {
    if (this.#health === undefined || now - this.#health.at >= HEALTH_CACHE_MS) {
      const engines = [...this.#engines.values()];
      const value = Promise.all(engines.map(async (e) => [e.name, { kind: e.kind, ...(await e.health()) }] as const)).then((l) => Object.fromEntries(l));
      this.#health = { at: now, value };
    }
    return this.#health.value;
  }

  /** Every configured engine. */
  list(): SecretEngine[] {
    return [...this.#engines.values()];
  }

  #engineOf(lease: Lease): SecretEngine {
    const engine = lease.engine !== undefined ? this.#engines.get(lease.engine) : undefined;
    if (engine === undefined) throw new BrokerError('engine_unavailable', `engine "${lease.engine ?? '?'}" of lease ${lease.id} is not configured`);
    return engine;
  }

  async renew(lease: Lease, expiresAt: number): Promise<void> {
    await this.#engineOf(lease).renew(lease, expiresAt);
  }

  async revoke(lease: Lease): Promise<void> {
    await this.#engineOf(lease).revoke(lease);
  }

  async close(): Promise<void> {
    await Promise.all([...this.#engines.values()].map((e) => e.close()));
  }
}
