/**
 * Dynamic MariaDB / MySQL credentials. For each request the engine creates a fresh user
 *
 *   <usernamePrefix><role, shortened>_<16 hex>     (at most 32 characters: MySQL 8's limit)
 *
 * with a random password, by running the role's creationStatements and then its grants
 * (mysql-template.ts: the name, password and expiry only ever enter SQL as driver-escaped string
 * literals; the pool never allows more than one statement per query). MariaDB and MySQL commit DDL
 * at once, so there is no transaction: if a statement fails, the engine drops whatever it created
 * before answering, and if even that fails the lease is kept and the sweeper drops the user at expiry.
 *
 * Revoking drops the user at every host it exists for (so no new login), then kills every session of
 * that user name (DROP USER leaves open sessions running on both servers), and checks none is left.
 * A user already gone is success. The admin user needs CREATE USER, the privileges it grants WITH
 * GRANT OPTION, PROCESS (to see other users' sessions) and CONNECTION ADMIN or SUPER (to kill them).
 *
 * Errors: server unreachable, timing out, or the admin's login refused (a rotated password) →
 * BrokerError engine_unavailable (503), worth retrying. A revoke refused for lack of privileges →
 * BrokerError revoke_failed (502), which the lease manager retries only hourly and alerts on.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import mysql from 'mysql2/promise';
import type { MysqlEngineConfig, MysqlRoleConfig } from '../config/config.js';
import { BrokerError } from '../errors.js';
import { RotatingAdminPool } from './admin-pool.js';
import type { AdminPasswordSource, EngineCredential, EngineLeases, SecretEngine } from './engine.js';
import type { Lease } from './leases.js';
import { renderMysqlTemplate } from './mysql-template.js';
import { randomPassword } from './postgres.js';

/** MySQL 8 limits user names to 32 characters (MariaDB to 80). */
export const MYSQL_MAX_USERNAME = 32;
const QUERY_TIMEOUT_MS = 15_000;

/**
 * Server errors for which retrying the same revoke cannot help until an operator changes something:
 * the admin lacks a privilege (1044 db access, 1142 table access, 1227 specific privilege such as
 * CREATE USER / CONNECTION ADMIN, 1095 not the owner of a thread it tries to kill). Everything else —
 * no errno (network, timeouts), 1045 (the admin's login refused: a rotated password), 1040 too many
 * connections, 2013 lost connection — is transient.
 */
export function isPermanentMysqlError(errno: unknown): boolean {
  return errno === 1044 || errno === 1142 || errno === 1227 || errno === 1095;
}

/** A user name for `role`: prefix, role (shortened to fit), "_", 64 random bits as hex; at most 32 characters. */
export function mysqlUsername(prefix: string, role: string, random: Buffer = randomBytes(8)): string {
  const room = MYSQL_MAX_USERNAME - prefix.length - 1 - 16;
  return `${prefix}${role.slice(0, room)}_${random.toString('hex')}`;
}

interface MysqlError {
  errno?: number;
  code?: string;
  message?: string;
}

/** Connection settings from the engine's URL (mysql:// or mariadb://) and password file. */
function connectionOf(config: MysqlEngineConfig): mysql.PoolOptions {
  const u = new URL(config.url);
  const password = config.passwordFile !== undefined ? readFileSync(config.passwordFile, 'utf8').replace(/\r?\n$/, '') : decodeURIComponent(u.password);
  const database = decodeURIComponent(u.pathname.replace(/^\//, ''));
  return {
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port: u.port === '' ? 3306 : Number(u.port),
    user: decodeURIComponent(u.username),
    ...(password !== '' ? { password } : {}),
    ...(database !== '' ? { database } : {}),
    connectionLimit: config.maxConnections,
    connectTimeout: config.connectTimeoutMs,
    multipleStatements: false,
    waitForConnections: true,
    queueLimit: 64,
    idleTimeout: 30_000,
    enableKeepAlive: true,
    supportBigNumbers: true,
  };
}

export class MysqlEngine implements SecretEngine {
  readonly kind = 'mysql' as const;
  readonly name: string;
  readonly #config: MysqlEngineConfig;
  readonly #leases: EngineLeases;
  readonly #pool: RotatingAdminPool<mysql.Pool>;
  readonly #base: mysql.PoolOptions;
  readonly #onError: ((err: Error) => void) | undefined;
  readonly #usernamePattern: RegExp;
  #closed = false;

  constructor(config: MysqlEngineConfig, leases: EngineLeases, opts: { onError?: (err: Error) => void; adminPassword?: AdminPasswordSource } = {}) {
    this.name = config.name;
    this.#config = config;
    this.#leases = leases;
    this.#base = connectionOf(config);
    this.#onError = opts.onError;
    const configured = this.#base.password ?? '';
    this.#pool = new RotatingAdminPool((password) => this.#makePool(password ?? configured), configured, opts.adminPassword);
    this.#usernamePattern = new RegExp(`^${config.usernamePrefix}[a-z][a-z0-9_]*_[0-9a-f]{16}$`);
  }

  #makePool(password: string): mysql.Pool {
    const { password: _configured, ...base } = this.#base;
    const pool = mysql.createPool({ ...base, ...(password !== '' ? { password } : {}) });
    // A pooled connection that dies (server restart) must not crash the broker; the next checkout reconnects.
    pool.on('connection', (conn) => {
      (conn as unknown as { on(ev: 'error', f: (e: Error) => void): void }).on('error', (err) => this.#onError?.(err));
    });
    return pool;
  }

  role(role: string): MysqlRoleConfig | undefined {
    return Object.hasOwn(this.#config.roles, role) ? this.#config.roles[role] : undefined;
  }

  /** Only users this engine made are ever renewed or dropped, whatever a lease record says. */
  #checkUsername(username: string): string {
    if (username.length > MYSQL_MAX_USERNAME || !this.#usernamePattern.test(username)) {
      throw new BrokerError('bad_request', `"${username}" is not a user engine ${this.name} created; refusing to touch it`);
    }
    return username;
  }

  #unavailable(action: string, err: unknown): BrokerError {
    if (err instanceof BrokerError) return err;
    const e = err as MysqlError;
    const detail = typeof e.code === 'string' && /^[A-Z][A-Z0-9_]{1,63}$/.test(e.code) ? ` (${e.code})` : '';
    return new BrokerError('engine_unavailable', `MySQL engine "${this.name}" could not ${action}${detail}`, { cause: err });
  }

  #revokeError(username: string, err: unknown): BrokerError {
    const e = err as MysqlError;
    if (!(err instanceof BrokerError) && isPermanentMysqlError(e.errno)) {
      // The server's message names users and privileges, never a password.
      const why = typeof e.message === 'string' ? `: ${e.message.slice(0, 200)}` : '';
      return new BrokerError(
        'revoke_failed',
        `MySQL engine "${this.name}" refused to drop user ${username} (${e.errno as number}${why}); retrying cannot fix this — see docs/secrets.md for the admin user's privileges`,
        { cause: err },
      );
    }
    return this.#unavailable(`drop user ${username}`, err);
  }

  async #connection(action: string): Promise<mysql.PoolConnection> {
    if (this.#closed) throw new BrokerError('engine_unavailable', `MySQL engine "${this.name}" is closed`);
    try {
      return await (await this.#pool.current()).getConnection();
    } catch (err) {
      throw this.#unavailable(`${action}: cannot connect`, err);
    }
  }

  async issue(role: string, identity: string, ttlSeconds: number): Promise<{ credential: EngineCredential; lease: Lease }> {
    const cfg = this.role(role);
    if (cfg === undefined) throw new BrokerError('not_found', `engine ${this.name} has no role ${role}`);
    const credential = { username: this.#checkUsername(mysqlUsername(this.#config.usernamePrefix, role)), password: randomPassword() };
    const lease = await this.#leases.create({
      kind: 'mysql',
      identity,
      secret: `mysql/${role}`,
      engine: this.name,
      role,
      username: credential.username,
      ttlMs: ttlSeconds * 1000,
      maxTtlMs: cfg.maxTtlSeconds * 1000,
    });
    let conn: mysql.PoolConnection;
    try {
      conn = await this.#connection('create a user');
    } catch (err) {
      await this.#leases.discard(lease.id);
      throw err;
    }
    let broken = false;
    try {
      const values = { name: credential.username, password: credential.password, expiration: lease.expiresAt };
      for (const t of [...cfg.creationStatements, ...cfg.grants]) {
        await conn.query({ sql: renderMysqlTemplate(t, values), timeout: QUERY_TIMEOUT_MS });
      }
    } catch (err) {
      broken = true;
      // DDL is not transactional here: take back what was made, then forget the lease. If that
      // fails too, the lease stays and the sweeper drops the user at expiry (nobody has its password).
      try {
        await this.#drop(conn, credential.username);
        await this.#leases.discard(lease.id);
      } catch {
        // Kept for the sweeper.
      }
      throw this.#unavailable(`create a user for "${role}"`, err);
    } finally {
      if (broken) conn.destroy();
      else conn.release();
    }
    return { credential, lease };
  }

  /** Nothing to move on the server (MariaDB has no VALID UNTIL); the user must still exist: 404 if not. */
  async renew(lease: Lease): Promise<void> {
    const username = this.#checkUsername(lease.username ?? '');
    const conn = await this.#connection('renew a user');
    try {
      const [rows] = await conn.query<mysql.RowDataPacket[]>({ sql: 'SELECT 1 FROM mysql.user WHERE User = ? LIMIT 1', timeout: QUERY_TIMEOUT_MS }, [username]);
      if (rows.length === 0) throw new BrokerError('not_found', `user ${username} no longer exists`);
    } catch (err) {
      throw this.#unavailable('renew a user', err);
    } finally {
      conn.release();
    }
  }

  /** Drops the user at every host and kills its sessions; idempotent. */
  async #drop(conn: mysql.PoolConnection, username: string): Promise<void> {
    const [hosts] = await conn.query<mysql.RowDataPacket[]>({ sql: 'SELECT Host FROM mysql.user WHERE User = ?', timeout: QUERY_TIMEOUT_MS }, [username]);
    for (const row of hosts) {
      await conn.query({ sql: 'DROP USER IF EXISTS ?@?', timeout: QUERY_TIMEOUT_MS }, [username, String(row.Host)]);
    }
    const sessions = { sql: 'SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND ID <> CONNECTION_ID()', timeout: QUERY_TIMEOUT_MS };
    // Killed sessions take a moment to go; wait (bounded) so "revoked" means "no session left".
    for (let i = 0; i < 50; i++) {
      const [ids] = await conn.query<mysql.RowDataPacket[]>(sessions, [username]);
      if (ids.length === 0) return;
      for (const row of ids) {
        const id = Number(row.ID);
        if (!Number.isSafeInteger(id) || id <= 0) continue;
        try {
          await conn.query({ sql: 'KILL CONNECTION ?', timeout: QUERY_TIMEOUT_MS }, [id]);
        } catch (err) {
          // 1094: unknown thread (it ended on its own meanwhile).
          if ((err as MysqlError).errno !== 1094) throw err;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new BrokerError('engine_unavailable', `MySQL engine "${this.name}": sessions of user ${username} are still open after KILL`);
  }

  async revoke(lease: Lease): Promise<void> {
    const username = this.#checkUsername(lease.username ?? '');
    const conn = await this.#connection('revoke a user');
    let broken = false;
    try {
      await this.#drop(conn, username);
    } catch (err) {
      broken = true;
      throw this.#revokeError(username, err);
    } finally {
      if (broken) conn.destroy();
      else conn.release();
    }
  }

  /**
   * ALTER USER '<user>'@'<host>' IDENTIFIED BY '<new>' for the account the admin logged in as
   * (CURRENT_USER(); MariaDB 10.11 silently ignores ALTER USER CURRENT_USER(), so it is named). Every
   * value is a driver-escaped literal; the password is random base64url anyway.
   */
  async rotateRoot(newPassword: string): Promise<void> {
    const conn = await this.#connection('rotate the admin password');
    try {
      const [rows] = await conn.query<mysql.RowDataPacket[]>({ sql: 'SELECT CURRENT_USER() AS me', timeout: QUERY_TIMEOUT_MS });
      const me = String(rows[0]?.me ?? '');
      const at = me.lastIndexOf('@');
      if (at <= 0) throw new BrokerError('root_rotation_refused', `MySQL engine "${this.name}": cannot tell which account the admin logged in as`);
      await conn.query({ sql: 'ALTER USER ?@? IDENTIFIED BY ?', timeout: QUERY_TIMEOUT_MS }, [me.slice(0, at), me.slice(at + 1), newPassword]);
    } catch (err) {
      throw this.#unavailable('rotate the admin password', err);
    } finally {
      conn.release();
    }
  }

  /** Can the admin user log in and run a statement? (engine health; never throws). */
  async health(): Promise<{ ok: true } | { ok: false; error: string }> {
    try {
      const conn = await this.#connection('check health');
      try {
        await conn.query({ sql: 'SELECT 1', timeout: 5000 });
      } finally {
        conn.release();
      }
      return { ok: true };
    } catch (err) {
      return { ok: false, error: this.#unavailable('check health', err).message };
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#pool.end();
  }
}
