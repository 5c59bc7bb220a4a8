/**
 * Dynamic Redis ACL users. For each request the engine creates a fresh user
 *
 *   ACL SETUSER <usernamePrefix><role>_<16 hex> reset on ><password> ~<key pattern>… &<channel>… <+/-rules>…
 *
 * Every piece is its own RESP bulk string (ioredis sends commands as arrays), so nothing can be
 * parsed as a second rule or command; the rules themselves come only from config and are checked
 * strictly at load (aclRuleProblem): key and channel patterns from a fixed alphabet, command rules
 * that are categories or command names, and nothing that would let the user manage the server or its
 * own permissions (+@all, +@admin, +@dangerous, +acl, +config, …). "reset" first means no key,
 * channel or command the role does not name.
 *
 * Revoking switches the user off (no new AUTH), kills its connections (CLIENT KILL USER), then deletes
 * it (ACL DELUSER). A user already gone is success. Redis keeps ACL users per node: with Sentinel or
 * Cluster, configure one engine per node (docs/secrets.md). ACL users live in memory; with an aclfile,
 * run ACL SAVE from your own tooling if they must survive a Redis restart (leases are short).
 *
 * Errors: Redis unreachable, timing out or refusing the admin's AUTH → engine_unavailable (503);
 * a revoke refused with NOPERM (the admin lost +acl / +client) → revoke_failed (502).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import type { RedisEngineConfig, RedisRoleConfig } from '../config/config.js';
import { BrokerError } from '../errors.js';
import type { AdminPasswordSource, EngineCredential, EngineLeases, SecretEngine } from './engine.js';
import type { Lease } from './leases.js';
import { randomPassword } from './postgres.js';

const PATTERN = /^[A-Za-z0-9:_.\-*?[\]{}/|^!@=+,]{1,256}$/;
export const ACL_CATEGORIES: ReadonlySet<string> = new Set([
  'keyspace', 'read', 'write', 'set', 'sortedset', 'list', 'hash', 'string', 'bitmap', 'hyperloglog', 'geo', 'stream',
  'pubsub', 'admin', 'fast', 'slow', 'blocking', 'dangerous', 'connection', 'transaction', 'scripting', 'all',
]);
/** Categories a role may never add: they let the user run the server or change its own rights. */
const FORBIDDEN_CATEGORIES: ReadonlySet<string> = new Set(['all', 'admin', 'dangerous']);
/** Commands a role may never add (server management, replication, ACLs, other clients, scripts that run anything). */
const FORBIDDEN_COMMANDS: ReadonlySet<string> = new Set([
  'acl', 'config', 'debug', 'module', 'shutdown', 'replicaof', 'slaveof', 'monitor', 'sync', 'psync', 'failover', 'cluster',
  'client', 'save', 'bgsave', 'bgrewriteaof', 'flushall', 'flushdb', 'migrate', 'restore', 'swapdb', 'script', 'function',
  'eval', 'evalsha', 'eval_ro', 'evalsha_ro', 'fcall', 'fcall_ro', 'latency', 'slowlog', 'lastsave', 'info', 'keys', 'pfdebug', 'pfselftest',
]);

/** Why a key or channel pattern is unusable, or undefined. */
export function aclPatternProblem(p: string): string | undefined {
  if (typeof p !== 'string' || !PATTERN.test(p)) return 'expected 1-256 of A-Z a-z 0-9 : _ . - * ? [ ] { } / | ^ ! @ = + , (no spaces or control characters)';
  return undefined;
}

/** Why a command rule (+@category, -@category, +command, -command, +command|sub) is unusable, or undefined. */
export function aclRuleProblem(rule: string): string | undefined {
  if (typeof rule !== 'string') return 'expected a string';
  const cat = /^([+-])@([a-z]+)$/.exec(rule);
  if (cat !== null) {
    const [, sign, name] = cat as unknown as [string, string, string];
    if (!ACL_CATEGORIES.has(name)) return `unknown ACL category @${name}`;
    if (sign === '+' && FORBIDDEN_CATEGORIES.has(name)) return `+@${name} would let the user manage the server; name the categories it needs`;
    return undefined;
  }
  const cmd = /^([+-])([a-z][a-z0-9_-]{0,63})(\|[a-z][a-z0-9_-]{0,63})?$/.exec(rule);
  if (cmd !== null) {
    const [, sign, name] = cmd as unknown as [string, string, string];
    if (sign === '+' && FORBIDDEN_COMMANDS.has(name)) return `+${name} would let the user manage the server or other clients`;
    return undefined;
  }
  return 'expected +@category, -@category, +command, -command or +command|subcommand';
}

/** The ACL SETUSER arguments for a new user (pure; tested alone). */
export function aclSetuserArgs(password: string, role: Pick<RedisRoleConfig, 'keys' | 'channels' | 'commands'>): string[] {
  return ['reset', 'on', `>${password}`, ...role.keys.map((k) => `~${k}`), ...role.channels.map((c) => `&${c}`), ...role.commands];
}

interface RedisError {
  message?: string;
  code?: string;
}

export class RedisAclEngine implements SecretEngine {
  readonly kind = 'redis' as const;
  readonly name: string;
  readonly #config: RedisEngineConfig;
  readonly #leases: EngineLeases;
  readonly #usernamePattern: RegExp;
  readonly #password: string | undefined;
  readonly #source: AdminPasswordSource | undefined;

  constructor(config: RedisEngineConfig, leases: EngineLeases, opts: { adminPassword?: AdminPasswordSource } = {}) {
    this.name = config.name;
    this.#source = opts.adminPassword;
    this.#config = config;
    this.#leases = leases;
    this.#password = config.passwordFile !== undefined ? readFileSync(config.passwordFile, 'utf8').replace(/\r?\n$/, '') : undefined;
    this.#usernamePattern = new RegExp(`^${config.usernamePrefix}[a-z][a-z0-9_]{0,30}_[0-9a-f]{16}$`);
  }

  role(role: string): RedisRoleConfig | undefined {
    return Object.hasOwn(this.#config.roles, role) ? this.#config.roles[role] : undefined;
  }

  #checkUsername(username: string): string {
    if (!this.#usernamePattern.test(username)) {
      throw new BrokerError('bad_request', `"${username}" is not a user engine ${this.name} created; refusing to touch it`);
    }
    return username;
  }

  #unavailable(action: string, err: unknown): BrokerError {
    if (err instanceof BrokerError) return err;
    const e = err as RedisError;
    const word = typeof e.message === 'string' ? /^([A-Z]{3,20})\b/.exec(e.message)?.[1] : undefined;
    const code = typeof e.code === 'string' && /^E[A-Z]+$/.test(e.code) ? e.code : word;
    return new BrokerError('engine_unavailable', `Redis engine "${this.name}" could not ${action}${code !== undefined ? ` (${code})` : ''}`, { cause: err });
  }

  /** Runs `f` on a fresh admin connection (bounded connect and command time; no retries, no offline queue). */
  async #with<T>(action: string, f: (r: Redis, password: string) => Promise<T>): Promise<T> {
    const u = new URL(this.#config.url);
    let stored: string | undefined;
    try {
      stored = this.#source !== undefined ? await this.#source() : undefined;
    } catch (err) {
      throw this.#unavailable(`${action}: cannot read its admin password`, err);
    }
    const password = stored ?? this.#password ?? decodeURIComponent(u.password);
    const r = new Redis({
      host: u.hostname.replace(/^\[|\]$/g, ''),
      port: u.port === '' ? 6379 : Number(u.port),
      ...(u.username !== '' ? { username: decodeURIComponent(u.username) } : {}),
      ...(password !== '' ? { password } : {}),
      lazyConnect: true,
      connectTimeout: this.#config.connectTimeoutMs,
      commandTimeout: this.#config.connectTimeoutMs * 2,
      retryStrategy: () => null,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      enableReadyCheck: false,
    });
    r.on('error', () => undefined);
    try {
      try {
        await r.connect();
      } catch (err) {
        throw this.#unavailable(`${action}: cannot connect`, err);
      }
      return await f(r, password);
    } finally {
      r.disconnect();
    }
  }

  async issue(role: string, identity: string, ttlSeconds: number): Promise<{ credential: EngineCredential; lease: Lease }> {
    const cfg = this.role(role);
    if (cfg === undefined) throw new BrokerError('not_found', `engine ${this.name} has no role ${role}`);
    const credential = { username: this.#checkUsername(`${this.#config.usernamePrefix}${role}_${randomBytes(8).toString('hex')}`), password: randomPassword() };
    const lease = await this.#leases.create({
      kind: 'redis',
      identity,
      secret: `redis/${role}`,
      engine: this.name,
      role,
      username: credential.username,
      ttlMs: ttlSeconds * 1000,
      maxTtlMs: cfg.maxTtlSeconds * 1000,
    });
    try {
      await this.#with('create a user', async (r) => {
        try {
          await r.call('ACL', 'SETUSER', credential.username, ...aclSetuserArgs(credential.password, cfg));
        } catch (err) {
          await r.call('ACL', 'DELUSER', credential.username).catch(() => undefined);
          throw this.#unavailable(`create a user for "${role}"`, err);
        }
      });
    } catch (err) {
      await this.#leases.discard(lease.id);
      throw err;
    }
    return { credential, lease };
  }

  /** Redis ACL users have no expiry of their own; the user must still exist (404 if not). */
  async renew(lease: Lease): Promise<void> {
    const username = this.#checkUsername(lease.username ?? '');
    await this.#with('renew a user', async (r) => {
      let found: unknown;
      try {
        found = await r.call('ACL', 'GETUSER', username);
      } catch (err) {
        throw this.#unavailable('renew a user', err);
      }
      if (found === null) throw new BrokerError('not_found', `user ${username} no longer exists`);
    });
  }

  async revoke(lease: Lease): Promise<void> {
    const username = this.#checkUsername(lease.username ?? '');
    await this.#with(`drop user ${username}`, async (r) => {
      try {
        if ((await r.call('ACL', 'GETUSER', username)) === null) return;
        await r.call('ACL', 'SETUSER', username, 'off');
        try {
          await r.call('CLIENT', 'KILL', 'USER', username);
        } catch (err) {
          if (!/no such user/i.test((err as RedisError).message ?? '')) throw err;
        }
        await r.call('ACL', 'DELUSER', username);
      } catch (err) {
        const message = (err as RedisError).message ?? '';
        if (message.startsWith('NOPERM')) {
          throw new BrokerError(
            'revoke_failed',
            `Redis engine "${this.name}" refused to drop user ${username} (${message.slice(0, 200)}); retrying cannot fix this — the admin user needs +acl and +client`,
            { cause: err },
          );
        }
        throw this.#unavailable(`drop user ${username}`, err);
      }
    });
  }

  /**
   * ACL SETUSER <admin> ><new> <<old>: adds the new password and removes the one the broker used (other
   * passwords the user may have are left alone). Refused for the "default" user: every client without
   * a user name logs in as it. Then ACL SAVE, so a Redis with an aclfile keeps it over a restart.
   */
  async rotateRoot(newPassword: string): Promise<void> {
    await this.#with('rotate the admin password', async (r, old) => {
      let me: unknown;
      try {
        me = await r.call('ACL', 'WHOAMI');
      } catch (err) {
        throw this.#unavailable('rotate the admin password', err);
      }
      if (typeof me !== 'string' || me === 'default') {
        throw new BrokerError(
          'root_rotation_refused',
          `Redis engine "${this.name}" logs in as the "default" user; rotating its password would lock out every client that logs in without a user name. Give the engine a dedicated ACL admin user (see docs/secrets.md)`,
        );
      }
      try {
        await r.call('ACL', 'SETUSER', me, `>${newPassword}`, ...(old !== '' ? [`<${old}`] : []));
      } catch (err) {
        const message = (err as RedisError).message ?? '';
        if (message.startsWith('NOPERM')) throw new BrokerError('root_rotation_refused', `Redis engine "${this.name}": the admin user may not change its password (NOPERM); it needs +acl`);
        throw this.#unavailable('rotate the admin password', err);
      }
      // Without an aclfile ACL SAVE fails: the new password then lives in memory like the leased users.
      await r.call('ACL', 'SAVE').catch(() => undefined);
    });
  }

  async health(): Promise<{ ok: true } | { ok: false; error: string }> {
    try {
      await this.#with('check health', async (r) => {
        try {
          await r.call('ACL', 'WHOAMI');
        } catch (err) {
          throw this.#unavailable('check health', err);
        }
      });
      return { ok: true };
    } catch (err) {
      return { ok: false, error: (err as Error).message };
    }
  }

  async close(): Promise<void> {
    // Connections are per operation: nothing stays open.
  }
}
