/**
 * Dynamic PostgreSQL credentials. For each request the engine creates a fresh LOGIN role
 *
 *   CREATE ROLE "<prefix><role>_<16 hex>" WITH LOGIN NOSUPERUSER … PASSWORD '<SCRAM verifier>' VALID UNTIL '<expiry>'
 *
 * and runs the role template's grant statements, all in one transaction (a failing grant leaves no
 * role behind). Identifiers are only ever inserted with pg's escapeIdentifier, literals with
 * escapeLiteral, lookups use bind parameters, and every statement goes over the extended query
 * protocol, which refuses more than one statement per call. The password is random (32 bytes,
 * base64url) and is sent to PostgreSQL only as a SCRAM-SHA-256 verifier, so it never appears in server
 * logs either. Revoking disables login, terminates the role's sessions, reassigns and drops what it
 * owns, and drops the role.
 *
 * The admin role needs SUPERUSER, or CREATEROLE and INHERIT (docs/secrets.md, per PostgreSQL version):
 * REASSIGN OWNED and DROP OWNED require the privileges *of* the role they act on, which CREATEROLE
 * alone does not give (PostgreSQL 15 refuses with 42501; 16 no longer lets CREATEROLE act on roles it
 * holds no ADMIN OPTION on). So every role is granted to the admin (GRANT <role> TO CURRENT_USER) in
 * the transaction that creates it, and again before it is dropped (roles made before this existed).
 *
 * Errors: PostgreSQL unreachable, timing out or busy → BrokerError engine_unavailable (503), worth
 * retrying. A revoke refused for a reason retrying cannot fix (isPermanentPgError: privileges,
 * unknown objects, dependent objects) → BrokerError revoke_failed (502): the lease manager marks the
 * lease revoke_failed, counts it and alerts instead of retrying every few minutes forever.
 */
import { createHash, createHmac, pbkdf2, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import pg from 'pg';
import type { PostgresEngineConfig, PostgresRoleConfig } from '../config/config.js';
import { BrokerError } from '../errors.js';
import { RotatingAdminPool } from './admin-pool.js';
import type { AdminPasswordSource, EngineCredential, EngineLeases, SecretEngine } from './engine.js';
import type { Lease } from './leases.js';
import { renderGrantTemplate } from './sql-template.js';

const pbkdf2Async = promisify(pbkdf2);
export const SCRAM_ITERATIONS = 4096;

/** A random password: 32 bytes from the CSPRNG, base64url (43 ASCII characters, nothing to escape). */
export function randomPassword(): string {
  return randomBytes(32).toString('base64url');
}

/**
 * The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / RFC 7677), in PostgreSQL's
 * text form "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>". Our passwords are ASCII, for which
 * SASLprep is the identity.
 */
export async function scramSha256Verifier(password: string, salt: Buffer = randomBytes(16), iterations = SCRAM_ITERATIONS): Promise<string> {
  const salted = await pbkdf2Async(Buffer.from(password, 'utf8'), salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

/**
 * The statements that create `username` with the role template's grants, in order (pure; tested alone).
 * The role is granted to the admin (CURRENT_USER) so that the admin can later REASSIGN/DROP OWNED it:
 * without that membership a non-superuser admin cannot drop a role that owns anything (PostgreSQL 15+).
 */
export function createRoleStatements(username: string, verifier: string, validUntilMs: number, grants: readonly string[]): string[] {
  const id = pg.escapeIdentifier(username);
  return [
    `CREATE ROLE ${id} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT ` +
      `PASSWORD ${pg.escapeLiteral(verifier)} VALID UNTIL ${pg.escapeLiteral(new Date(validUntilMs).toISOString())}`,
    `GRANT ${id} TO CURRENT_USER`,
    ...grants.map((g) => renderGrantTemplate(g, username)),
  ];
}

/**
 * SQLSTATEs for which retrying the same revoke cannot succeed until an operator changes something:
 * class 42 (insufficient privilege 42501, undefined object 42704, …), 2BP01 (the role still owns or
 * is granted objects elsewhere, e.g. in another database), 0L (invalid grantor), 0P (invalid role
 * specification). Everything else is transient: no code at all (network, timeouts in the client),
 * 08 connection, 28 authentication (a rotated admin password), 53 resources, 57 shutdown / statement
 * timeout, 40 serialization / deadlock, 55 lock not available / object in use, XX internal.
 */
export function isPermanentPgError(code: string | undefined): boolean {
  if (typeof code !== 'string' || !/^[0-9A-Z]{5}$/.test(code)) return false;
  return code.startsWith('42') || code === '2BP01' || code.startsWith('0L') || code.startsWith('0P');
}

/** pg's query config with the extended protocol forced (one statement per call). */
function extended(text: string, values?: unknown[]): pg.QueryConfig {
  const q = { text, queryMode: 'extended', ...(values !== undefined ? { values } : {}) };
  return q as pg.QueryConfig;
}

/** Runs `statements` as one transaction; on failure rolls back (best effort) and rethrows. */
async function inTransaction(client: pg.PoolClient, statements: readonly pg.QueryConfig[]): Promise<void> {
  await client.query('BEGIN');
  try {
    for (const q of statements) await client.query(q);
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

interface PgError {
  code?: string;
  message?: string;
}

export class PostgresEngine implements SecretEngine {
  readonly kind = 'postgres' as const;
  readonly name: string;
  readonly #config: PostgresEngineConfig;
  readonly #leases: EngineLeases;
  readonly #pool: RotatingAdminPool<pg.Pool>;
  readonly #onError: ((err: Error) => void) | undefined;
  readonly #usernamePattern: RegExp;
  #closed = false;
  #adminChecked = false;

  constructor(config: PostgresEngineConfig, leases: EngineLeases, opts: { onError?: (err: Error) => void; adminPassword?: AdminPasswordSource } = {}) {
    this.name = config.name;
    this.#config = config;
    this.#leases = leases;
    const password = config.passwordFile !== undefined ? readFileSync(config.passwordFile, 'utf8').replace(/\r?\n$/, '') : undefined;
    this.#onError = opts.onError;
    // Without a password file (undefined) the pool logs in with the URL's password.
    this.#pool = new RotatingAdminPool((rotated) => this.#makePool(rotated ?? password), password ?? decodeURIComponent(new URL(config.url).password), opts.adminPassword);
    this.#usernamePattern = new RegExp(`^${config.usernamePrefix}[a-z][a-z0-9_]{0,30}_[0-9a-f]{16}$`);
  }

  #makePool(password: string | undefined): pg.Pool {
    const config = this.#config;
    const pool = new pg.Pool({
      connectionString: config.url,
      ...(password !== undefined ? { password } : {}),
      max: config.maxConnections,
      connectionTimeoutMillis: config.connectTimeoutMs,
      idleTimeoutMillis: 30_000,
      statement_timeout: config.statementTimeoutMs,
      lock_timeout: config.statementTimeoutMs,
      query_timeout: config.statementTimeoutMs + 1000,
      application_name: `tessera/${config.name}`,
    });
    // An idle connection that dies (server restart) must not crash the broker; the next checkout reconnects.
    pool.on('error', (err) => this.#onError?.(err));
    return pool;
  }

  role(role: string): PostgresRoleConfig | undefined {
    return Object.hasOwn(this.#config.roles, role) ? this.#config.roles[role] : undefined;
  }

  /** A new role name: <prefix><role>_<64 random bits as hex>, at most 62 bytes (PostgreSQL's limit is 63). */
  #newUsername(role: string): string {
    return `${this.#config.usernamePrefix}${role}_${randomBytes(8).toString('hex')}`;
  }

  /** Only roles this engine made are ever renewed or dropped, whatever a lease record says. */
  #checkUsername(username: string): void {
    if (!this.#usernamePattern.test(username)) {
      throw new BrokerError('bad_request', `"${username}" is not a role engine ${this.name} created; refusing to touch it`);
    }
  }

  /** The database role of a lease (leases.ts refuses a PostgreSQL lease record without one). */
  #usernameOf(lease: Lease): string {
    const username = lease.username ?? '';
    this.#checkUsername(username);
    return username;
  }

  #unavailable(action: string, err: unknown): BrokerError {
    if (err instanceof BrokerError) return err;
    const e = err as PgError;
    const detail = typeof e.code === 'string' && /^[A-Z0-9]{5}$|^E[A-Z]+$/.test(e.code) ? ` (${e.code})` : '';
    return new BrokerError('engine_unavailable', `PostgreSQL engine "${this.name}" could not ${action}${detail}`, { cause: err });
  }

  /** A revoke failure: revoke_failed (502) when retrying cannot help, else engine_unavailable (503). */
  #revokeError(username: string, err: unknown): BrokerError {
    const e = err as PgError;
    if (!(err instanceof BrokerError) && isPermanentPgError(e.code)) {
      // PostgreSQL's message names roles and objects, never a password (those only go out as verifiers).
      const why = typeof e.message === 'string' ? `: ${e.message.slice(0, 200)}` : '';
      return new BrokerError(
        'revoke_failed',
        `PostgreSQL engine "${this.name}" refused to drop role ${username} (${e.code as string}${why}); retrying cannot fix this — see docs/secrets.md for the admin role's privileges`,
        { cause: err },
      );
    }
    return this.#unavailable(`drop role ${username}`, err);
  }

  /**
   * The admin role must be able to drop what it creates: SUPERUSER, or CREATEROLE with INHERIT (it acts
   * with the privileges of the roles granted to it). Checked before the first role is created, so a
   * misconfigured admin gets a clear error instead of roles it can never drop. Cached once it passes.
   */
  async #checkAdmin(client: pg.PoolClient): Promise<void> {
    if (this.#adminChecked) return;
    let row: { rolname: string; rolsuper: boolean; rolcreaterole: boolean; rolinherit: boolean } | undefined;
    try {
      const r = await client.query<{ rolname: string; rolsuper: boolean; rolcreaterole: boolean; rolinherit: boolean }>(
        extended('SELECT rolname, rolsuper, rolcreaterole, rolinherit FROM pg_catalog.pg_roles WHERE rolname = current_user'),
      );
      row = r.rows[0];
    } catch (err) {
      throw this.#unavailable('check the admin role', err);
    }
    const who = row?.rolname ?? '?';
    if (row === undefined || (!row.rolsuper && !row.rolcreaterole)) {
      throw new BrokerError('engine_unavailable', `PostgreSQL engine "${this.name}": admin role "${who}" has neither SUPERUSER nor CREATEROLE; it cannot create or drop roles (see docs/secrets.md)`);
    }
    if (!row.rolsuper && !row.rolinherit) {
      throw new BrokerError(
        'engine_unavailable',
        `PostgreSQL engine "${this.name}": admin role "${who}" is NOINHERIT, so it cannot drop roles that own objects (REASSIGN/DROP OWNED need the role's privileges); ALTER ROLE ... INHERIT (see docs/secrets.md)`,
      );
    }
    this.#adminChecked = true;
  }

  async #client(action: string): Promise<pg.PoolClient> {
    if (this.#closed) throw new BrokerError('engine_unavailable', `PostgreSQL engine "${this.name}" is closed`);
    try {
      return await (await this.#pool.current()).connect();
    } catch (err) {
      throw this.#unavailable(`${action}: cannot connect`, err);
    }
  }

  async issue(role: string, identity: string, ttlSeconds: number): Promise<{ credential: EngineCredential; lease: Lease }> {
    const cfg = this.role(role);
    if (cfg === undefined) throw new BrokerError('not_found', `engine ${this.name} has no role ${role}`);
    const credential = { username: this.#newUsername(role), password: randomPassword() };
    const lease = await this.#leases.create({
      kind: 'postgres',
      identity,
      secret: `postgres/${role}`,
      engine: this.name,
      role,
      username: credential.username,
      ttlMs: ttlSeconds * 1000,
      maxTtlMs: cfg.maxTtlSeconds * 1000,
    });
    try {
      await this.#create(cfg, role, credential, lease.expiresAt);
    } catch (err) {
      // Nothing was created (one transaction): no lease either.
      await this.#leases.discard(lease.id);
      throw err;
    }
    return { credential, lease };
  }

  /** Creates the role (LOGIN, password, VALID UNTIL) with the role template's grants, atomically. */
  async #create(cfg: PostgresRoleConfig, role: string, { username, password }: EngineCredential, validUntilMs: number): Promise<void> {
    this.#checkUsername(username);
    const statements = createRoleStatements(username, await scramSha256Verifier(password), validUntilMs, cfg.grants);
    const client = await this.#client('create a role');
    let broken = false;
    try {
      await this.#checkAdmin(client);
      await inTransaction(client, statements.map((sql) => extended(sql)));
    } catch (err) {
      // A failed statement or rollback may leave the session unusable: the pool drops it.
      broken = true;
      throw this.#unavailable(`create a role for "${role}"`, err);
    } finally {
      client.release(broken);
    }
  }

  /** Moves VALID UNTIL; 404 if the role no longer exists. */
  async renew(lease: Lease, validUntilMs: number): Promise<void> {
    const username = this.#usernameOf(lease);
    const client = await this.#client('renew a role');
    try {
      await client.query(
        extended(`ALTER ROLE ${pg.escapeIdentifier(username)} VALID UNTIL ${pg.escapeLiteral(new Date(validUntilMs).toISOString())}`),
      );
    } catch (err) {
      if ((err as PgError).code === '42704') throw new BrokerError('not_found', `role ${username} no longer exists`);
      throw this.#unavailable('renew a role', err);
    } finally {
      client.release();
    }
  }

  /**
   * Drops `username`: no new logins, its sessions terminated, what it owns reassigned to the admin role
   * and its privileges dropped, then the role. Idempotent: a role that is already gone is success.
   */
  async revoke(lease: Lease): Promise<void> {
    const username = this.#usernameOf(lease);
    const client = await this.#client('revoke a role');
    const id = pg.escapeIdentifier(username);
    let broken = false;
    try {
      const exists = await client.query(extended('SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1', [username]));
      if (exists.rowCount === 0) return;
      // Membership gives the admin the role's privileges: needed to terminate its sessions and to
      // REASSIGN/DROP OWNED it. Idempotent; roles created before creation did this get it here.
      await client.query(extended(`GRANT ${id} TO CURRENT_USER`));
      await client.query(extended(`ALTER ROLE ${id} NOLOGIN`));
      const sessions = extended(
        'SELECT count(pg_catalog.pg_terminate_backend(pid))::int AS n FROM pg_catalog.pg_stat_activity WHERE usename = $1 AND pid <> pg_catalog.pg_backend_pid()',
        [username],
      );
      // Terminated backends take a moment to exit; wait (bounded) so "revoked" means "no session left".
      for (let i = 0; i < 50; i++) {
        const r = await client.query<{ n: number }>(sessions);
        if ((r.rows[0]?.n ?? 0) === 0) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      await inTransaction(client, [
        extended(`REASSIGN OWNED BY ${id} TO CURRENT_USER`),
        extended(`DROP OWNED BY ${id}`),
        extended(`DROP ROLE ${id}`),
      ]);
    } catch (err) {
      broken = true;
      throw this.#revokeError(username, err);
    } finally {
      client.release(broken);
    }
  }

  /** ALTER ROLE CURRENT_USER PASSWORD '<SCRAM verifier>': the new password never reaches the server in clear. */
  async rotateRoot(newPassword: string): Promise<void> {
    const verifier = await scramSha256Verifier(newPassword);
    const client = await this.#client('rotate the admin password');
    try {
      await client.query(extended(`ALTER ROLE CURRENT_USER PASSWORD ${pg.escapeLiteral(verifier)}`));
    } catch (err) {
      throw this.#unavailable('rotate the admin password', err);
    } finally {
      client.release();
    }
  }

  async health(): Promise<{ ok: true } | { ok: false; error: string }> {
    try {
      const client = await this.#client('check health');
      try {
        await client.query(extended('SELECT 1'));
      } finally {
        client.release();
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
