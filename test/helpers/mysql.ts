/**
 * MariaDB / MySQL for tests: is the shared server (127.0.0.1:3306, root with an empty password; or
 * TESSERA_TEST_MYSQL=host:port) reachable, a throwaway database and user prefix per run with cleanup.
 * A TCP proxy that tests can cut is startPgProxy(SHARED_MYSQL) (postgres.ts: it is protocol-blind).
 *
 * Suites use `describe.skipIf(!r.ok)` and print why; `mysqlRequiredUnderCi()` adds a test that fails the
 * run when CI=true and the server is missing, so CI can never skip silently.
 */
import { randomBytes } from 'node:crypto';
import mysql from 'mysql2/promise';
import { expect, it } from 'vitest';
import type { Reachability } from './postgres.js';

const override = /^(127\.0\.0\.1|localhost):(\d{1,5})$/.exec(process.env.TESSERA_TEST_MYSQL ?? '');
export const SHARED_MYSQL = { host: '127.0.0.1', port: override ? Number(override[2]) : 3306, user: 'root' } as const;
const inCi = process.env.CI === 'true';

export function mysqlUrl(database = '', port: number = SHARED_MYSQL.port, user: string = SHARED_MYSQL.user): string {
  return `mysql://${encodeURIComponent(user)}@${SHARED_MYSQL.host}:${port}/${encodeURIComponent(database)}`;
}

/** A connection (the caller ends it); bounded connect time. */
export async function mysqlConnect(opts: { user?: string; password?: string; database?: string } = {}): Promise<mysql.Connection> {
  const conn = await mysql.createConnection({
    host: SHARED_MYSQL.host,
    port: SHARED_MYSQL.port,
    user: opts.user ?? SHARED_MYSQL.user,
    ...(opts.password !== undefined ? { password: opts.password } : {}),
    ...(opts.database !== undefined ? { database: opts.database } : {}),
    connectTimeout: 3000,
  });
  // A killed session emits 'error' on the connection; tests look at query results instead.
  conn.on('error', () => undefined);
  return conn;
}

let cached: Promise<Reachability> | undefined;

/** Reachability of the shared server as root; logs the reason once when it is missing. */
export function sharedMysql(): Promise<Reachability> {
  cached ??= (async (): Promise<Reachability> => {
    let conn: mysql.Connection | undefined;
    try {
      conn = await mysqlConnect();
      await conn.query('SELECT 1');
      return { ok: true, reason: 'ok' };
    } catch (err) {
      return { ok: false, reason: `${SHARED_MYSQL.host}:${SHARED_MYSQL.port}: ${(err as Error).message}` };
    } finally {
      await conn?.end().catch(() => undefined);
    }
  })().then((r) => {
    if (!r.ok) {
      console.warn(
        `[mysql] MariaDB/MySQL suites SKIPPED: ${r.reason}. Start MariaDB on ${SHARED_MYSQL.host}:${SHARED_MYSQL.port} ` +
          `(root, empty password) to run them` + (inCi ? ' (CI=true: the reachability test fails the run)' : ''),
      );
    }
    return r;
  });
  return cached;
}

export function mysqlRequiredUnderCi(r: Reachability): void {
  it(`MariaDB/MySQL at ${SHARED_MYSQL.host}:${SHARED_MYSQL.port} is reachable${inCi ? ' (required: CI=true)' : ' (or these suites are skipped)'}`, () => {
    if (inCi) expect(r.ok, `CI=true but MariaDB/MySQL is unreachable: ${r.reason}`).toBe(true);
    else if (!r.ok) console.warn(`[mysql] skipped: ${r.reason}`);
  });
}

export interface TestMysql {
  /** Database with orders (3 rows) and payroll (1 row). */
  readonly name: string;
  /** User prefix for the engine: every user this run creates starts with it (8 characters). */
  readonly prefix: string;
  query<R extends mysql.RowDataPacket[] = mysql.RowDataPacket[]>(sql: string, values?: unknown[]): Promise<R>;
  /** Users of this run that still exist. */
  users(): Promise<string[]>;
  /** Open sessions of one user. */
  sessionsOf(user: string): Promise<number>;
  drop(): Promise<void>;
}

export async function createTestMysql(label: string): Promise<TestMysql> {
  const name = `tessera_t_${label}_${process.pid}_${randomBytes(3).toString('hex')}`;
  const prefix = `t${randomBytes(3).toString('hex')}_`;
  const conn = await mysqlConnect();
  await conn.query(`CREATE DATABASE ${mysql.escapeId(name)}`);
  await conn.query(`CREATE TABLE ${mysql.escapeId(name)}.orders (id int PRIMARY KEY, item varchar(32) NOT NULL)`);
  await conn.query(`INSERT INTO ${mysql.escapeId(name)}.orders VALUES (1, 'tea'), (2, 'coffee'), (3, 'cake')`);
  await conn.query(`CREATE TABLE ${mysql.escapeId(name)}.payroll (id int PRIMARY KEY, salary int NOT NULL)`);
  await conn.query(`INSERT INTO ${mysql.escapeId(name)}.payroll VALUES (1, 100000)`);
  const users = async (): Promise<string[]> => {
    const [rows] = await conn.query<mysql.RowDataPacket[]>('SELECT DISTINCT User FROM mysql.user WHERE LEFT(User, ?) = ? ORDER BY 1', [prefix.length, prefix]);
    return rows.map((r) => String(r.User));
  };
  return {
    name,
    prefix,
    query: async <R extends mysql.RowDataPacket[]>(sql: string, values?: unknown[]) => (await conn.query<R>(sql, values))[0],
    users,
    sessionsOf: async (user) => {
      const [rows] = await conn.query<mysql.RowDataPacket[]>('SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE USER = ?', [user]);
      return Number(rows[0]?.n ?? -1);
    },
    drop: async () => {
      try {
        await conn.query(`DROP DATABASE IF EXISTS ${mysql.escapeId(name)}`);
        const [hosts] = await conn.query<mysql.RowDataPacket[]>('SELECT User, Host FROM mysql.user WHERE LEFT(User, ?) = ?', [prefix.length, prefix]);
        for (const h of hosts) await conn.query('DROP USER IF EXISTS ?@?', [h.User, h.Host]);
        const [ids] = await conn.query<mysql.RowDataPacket[]>('SELECT ID FROM information_schema.PROCESSLIST WHERE LEFT(USER, ?) = ?', [prefix.length, prefix]);
        for (const r of ids) await conn.query('KILL CONNECTION ?', [Number(r.ID)]).catch(() => undefined);
      } finally {
        await conn.end().catch(() => undefined);
      }
    },
  };
}

/** Runs one statement as a user over its own connection: the rows, or the server's errno of the refusal. */
export async function asMysqlUser(
  username: string,
  password: string,
  database: string,
  sql: string,
): Promise<{ ok: true; rows: Record<string, unknown>[] } | { ok: false; errno: number | string; message: string }> {
  let conn: mysql.Connection | undefined;
  try {
    conn = await mysqlConnect({ user: username, password, database });
    const [rows] = await conn.query(sql);
    return { ok: true, rows: Array.isArray(rows) ? (rows as Record<string, unknown>[]).map((r) => ({ ...r })) : [] };
  } catch (err) {
    const e = err as { errno?: number; code?: string; message?: string };
    return { ok: false, errno: e.errno ?? e.code ?? 'connect', message: e.message ?? '' };
  } finally {
    await conn?.end().catch(() => undefined);
  }
}
