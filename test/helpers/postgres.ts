/**
 * PostgreSQL for tests: is the shared server (127.0.0.1:5432, user postgres, trust auth; or
 * TESSERA_TEST_POSTGRES=host:port) reachable, a throwaway database and role prefix per run with
 * cleanup, and a TCP proxy in front of it that tests can cut to simulate an outage.
 *
 * Suites that need PostgreSQL use `describe.skipIf(!pg.ok)` and print why; `postgresRequiredUnderCi()`
 * adds a test that fails the run when CI=true and PostgreSQL is missing, so CI can never skip silently.
 */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import pg from 'pg';
import { expect, it } from 'vitest';

const override = /^(127\.0\.0\.1|localhost):(\d{1,5})$/.exec(process.env.TESSERA_TEST_POSTGRES ?? '');
export const SHARED_PG = { host: '127.0.0.1', port: override ? Number(override[2]) : 5432, user: 'postgres' } as const;
export const inCi = process.env.CI === 'true';

export interface Reachability {
  readonly ok: boolean;
  readonly reason: string;
}

export function pgUrl(database: string, port: number = SHARED_PG.port, user: string = SHARED_PG.user): string {
  return `postgres://${encodeURIComponent(user)}@${SHARED_PG.host}:${port}/${encodeURIComponent(database)}`;
}

/** A connected client (the caller ends it); bounded connect time. */
export async function pgConnect(database = 'postgres', opts: { user?: string; password?: string; port?: number } = {}): Promise<pg.Client> {
  const client = new pg.Client({
    host: SHARED_PG.host,
    port: opts.port ?? SHARED_PG.port,
    user: opts.user ?? SHARED_PG.user,
    database,
    ...(opts.password !== undefined ? { password: opts.password } : {}),
    connectionTimeoutMillis: 3000,
    query_timeout: 15_000,
  });
  // A terminated backend emits 'error' on the client; tests look at query results instead.
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

let cached: Promise<Reachability> | undefined;

/** Reachability of the shared PostgreSQL as a superuser; logs the reason once when it is missing. */
export function sharedPostgres(): Promise<Reachability> {
  cached ??= (async (): Promise<Reachability> => {
    let client: pg.Client | undefined;
    try {
      client = await pgConnect();
      const r = await client.query<{ su: boolean }>('SELECT rolsuper AS su FROM pg_roles WHERE rolname = current_user');
      if (r.rows[0]?.su !== true) return { ok: false, reason: `${SHARED_PG.user} is not a superuser` };
      return { ok: true, reason: 'ok' };
    } catch (err) {
      return { ok: false, reason: `${SHARED_PG.host}:${SHARED_PG.port}: ${(err as Error).message}` };
    } finally {
      await client?.end().catch(() => undefined);
    }
  })().then((r) => {
    if (!r.ok) {
      console.warn(
        `[postgres] PostgreSQL suites SKIPPED: ${r.reason}. Start PostgreSQL on ${SHARED_PG.host}:${SHARED_PG.port} ` +
          `(user ${SHARED_PG.user}, trust auth on loopback) to run them` + (inCi ? ' (CI=true: the reachability test fails the run)' : ''),
      );
    }
    return r;
  });
  return cached;
}

/** A test that passes when PostgreSQL is reachable, and fails under CI=true when it is not. */
export function postgresRequiredUnderCi(r: Reachability): void {
  it(`PostgreSQL at ${SHARED_PG.host}:${SHARED_PG.port} is reachable${inCi ? ' (required: CI=true)' : ' (or these suites are skipped)'}`, () => {
    if (inCi) expect(r.ok, `CI=true but PostgreSQL is unreachable: ${r.reason}`).toBe(true);
    else if (!r.ok) console.warn(`[postgres] skipped: ${r.reason}`);
  });
}

export interface TestDatabase {
  /** Database name (PUBLIC has no CONNECT on it: only granted roles get in). */
  readonly name: string;
  /** A second database nobody is granted, to prove roles cannot reach it. */
  readonly otherName: string;
  readonly url: string;
  /** Role prefix for the engine (usernamePrefix): every role this run creates starts with it. */
  readonly prefix: string;
  /** Runs SQL as the superuser in the test database. */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
  /** Roles of this run that still exist. */
  roles(): Promise<string[]>;
  drop(): Promise<void>;
}

/**
 * A fresh database with schema `app`: app.orders (3 rows) and app.payroll (1 row), and an unrelated
 * second database. Cleanup drops both and every role under the run's prefix.
 */
export async function createTestDatabase(label: string): Promise<TestDatabase> {
  const tag = `${label}_${process.pid}_${randomBytes(3).toString('hex')}`;
  const name = `tessera_t_${tag}`;
  const otherName = `tessera_o_${tag}`;
  const prefix = `tt${randomBytes(3).toString('hex')}_`;
  const admin = await pgConnect();
  try {
    for (const db of [name, otherName]) {
      await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(db)}`);
      await admin.query(`REVOKE ALL ON DATABASE ${pg.escapeIdentifier(db)} FROM PUBLIC`);
    }
  } finally {
    await admin.end();
  }
  const conn = await pgConnect(name);
  await conn.query(`
    CREATE SCHEMA app;
    CREATE TABLE app.orders (id int PRIMARY KEY, item text NOT NULL);
    INSERT INTO app.orders VALUES (1, 'tea'), (2, 'coffee'), (3, 'cake');
    CREATE TABLE app.payroll (id int PRIMARY KEY, salary int NOT NULL);
    INSERT INTO app.payroll VALUES (1, 100000);
    REVOKE ALL ON SCHEMA public FROM PUBLIC;
  `);
  return {
    name,
    otherName,
    url: pgUrl(name),
    prefix,
    query: (sql, values) => conn.query(sql, values),
    roles: async () =>
      (await conn.query<{ rolname: string }>('SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY 1', [prefix])).rows.map(
        (r) => r.rolname,
      ),
    drop: async () => {
      await conn.end().catch(() => undefined);
      const a = await pgConnect();
      try {
        for (const db of [name, otherName]) await a.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(db)} WITH (FORCE)`);
        const left = await a.query<{ rolname: string }>('SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)', [prefix]);
        for (const r of left.rows) {
          await a.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [r.rolname]);
          await a.query(`DROP ROLE IF EXISTS ${pg.escapeIdentifier(r.rolname)}`);
        }
      } finally {
        await a.end();
      }
    },
  };
}

/** A loopback TCP proxy to the shared PostgreSQL that can be cut (outage) and restored on the same port. */
export interface PgProxy {
  readonly port: number;
  /** Refuses new connections and kills open ones. */
  cut(): Promise<void>;
  restore(): Promise<void>;
  close(): Promise<void>;
}

/** `target` defaults to the shared PostgreSQL (the MySQL suites point it at MariaDB). */
export async function startPgProxy(target: { host: string; port: number } = SHARED_PG): Promise<PgProxy> {
  const sockets = new Set<net.Socket>();
  let server: net.Server | undefined;
  let port = 0;
  const listen = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const s = net.createServer((client) => {
        const upstream = net.connect({ host: target.host, port: target.port });
        sockets.add(client);
        sockets.add(upstream);
        const end = (): void => {
          client.destroy();
          upstream.destroy();
          sockets.delete(client);
          sockets.delete(upstream);
        };
        client.on('error', end).on('close', end);
        upstream.on('error', end).on('close', end);
        client.pipe(upstream);
        upstream.pipe(client);
      });
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => {
        const addr = s.address();
        port = typeof addr === 'object' && addr !== null ? addr.port : 0;
        server = s;
        resolve();
      });
    });
  const cut = async (): Promise<void> => {
    const s = server;
    server = undefined;
    for (const sock of sockets) sock.destroy();
    sockets.clear();
    if (s !== undefined) await new Promise<void>((r) => s.close(() => r()));
  };
  await listen();
  return {
    get port() {
      return port;
    },
    cut,
    restore: listen,
    close: cut,
  };
}

/** Runs one query as a role over its own connection: the rows, or the SQLSTATE of the refusal. */
export async function asRole(
  username: string,
  password: string,
  database: string,
  sql: string,
): Promise<{ ok: true; rows: Record<string, unknown>[] } | { ok: false; code: string; message: string }> {
  let client: pg.Client | undefined;
  try {
    client = await pgConnect(database, { user: username, password });
    const r = await client.query(sql);
    return { ok: true, rows: r.rows as Record<string, unknown>[] };
  } catch (err) {
    const e = err as { code?: string; message?: string };
    return { ok: false, code: e.code ?? 'connect', message: e.message ?? '' };
  } finally {
    await client?.end().catch(() => undefined);
  }
}
