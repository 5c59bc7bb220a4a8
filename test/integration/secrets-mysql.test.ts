/**
 * Dynamic MariaDB / MySQL credentials against the real server on 127.0.0.1:3306 (no mocks): the issued
 * user logs in with its password and can do exactly what its role grants; revoke and expiry drop it
 * and kill its live sessions; hostile names cannot inject SQL; the server down → 503 and no lease; a
 * revoke that fails is kept, reported and retried (with backoff) until the user is gone, also across a
 * broker restart; renewals stop at the max TTL.
 */
import path from 'node:path';
import mysql from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LEASE_SPACE, type Lease } from '../../src/secrets/leases.js';
import { secretsEngines } from '../../src/cli/secrets.js';
import { renderMysqlTemplate } from '../../src/secrets/mysql-template.js';
import { configFile, MINIMAL_CONFIG } from '../helpers/config-file.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { TestClock } from '../helpers/clock.js';
import { asMysqlUser, createTestMysql, mysqlConnect, mysqlRequiredUnderCi, mysqlUrl, sharedMysql, SHARED_MYSQL, type TestMysql } from '../helpers/mysql.js';
import { startPgProxy, type PgProxy } from '../helpers/postgres.js';
import { freePort } from '../helpers/redis.js';
import { engineCalls, expectError, plantForeignLease, WEB, type EngineCreds } from '../helpers/secrets.js';

const reach = await sharedMysql();

type Creds = EngineCreds & { role: string };

mysqlRequiredUnderCi(reach);

describe.skipIf(!reach.ok)('dynamic MariaDB/MySQL credentials', () => {
  let db: TestMysql;
  let proxy: PgProxy;
  let b: TestBroker;
  const clock = new TestClock();
  let secretsConfig: Record<string, unknown>;
  const readerGrants = (name: string): string[] => [`GRANT SELECT ON ${mysql.escapeId(name)}.orders TO {{name}}@'%'`];

  beforeAll(async () => {
    db = await createTestMysql('secrets');
    proxy = await startPgProxy(SHARED_MYSQL);
    const closedPort = await freePort();
    secretsConfig = {
      grants: [{ spiffeIds: [WEB], mysqlRoles: ['reader', 'writer', 'flash', 'offline', 'proxied'] }],
      mysql: [
        {
          name: 'maria',
          url: mysqlUrl(),
          usernamePrefix: db.prefix,
          roles: {
            reader: { ttlSeconds: 60, maxTtlSeconds: 120, grants: readerGrants(db.name) },
            writer: {
              ttlSeconds: 60,
              creationStatements: ["CREATE USER {{name}}@'%' IDENTIFIED BY {{password}} WITH MAX_USER_CONNECTIONS 5"],
              grants: [`GRANT SELECT, INSERT ON ${mysql.escapeId(db.name)}.orders TO {{name}}@'%'`],
            },
            flash: { ttlSeconds: 1, maxTtlSeconds: 2, grants: readerGrants(db.name) },
          },
        },
        { name: 'down', url: mysqlUrl('', closedPort), usernamePrefix: db.prefix, connectTimeoutMs: 2000, roles: { offline: { grants: readerGrants(db.name) } } },
        { name: 'flaky', url: mysqlUrl('', proxy.port), usernamePrefix: db.prefix, connectTimeoutMs: 1000, roles: { proxied: { ttlSeconds: 60, grants: readerGrants(db.name) } } },
      ],
    };
    b = await startBroker({ secrets: secretsConfig, clock });
  });

  afterAll(async () => {
    await b?.close();
    await proxy?.close();
    await db?.drop();
  });

  const { token, creds, auditEntries, auditText, leases } = engineCalls<Creds>(() => b, 'mysql', 'reader');
  const exists = async (user: string): Promise<boolean> => (await db.users()).includes(user);

  it('creates a user that logs in with its password and can do exactly what the role grants', async () => {
    const before = b.broker.audit.size;
    const res = await creds();
    expect(res.status, res.text).toBe(200);
    expect(res.headers['cache-control']).toBe('no-store');
    const c = res.json;
    expect(c.username).toMatch(new RegExp(`^${db.prefix}reader_[0-9a-f]{16}$`));
    expect(c.username.length).toBeLessThanOrEqual(32);
    expect(c.password).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const q = (sql: string) => asMysqlUser(c.username, c.password, db.name, sql);
    expect(await q('SELECT COUNT(*) AS n FROM orders')).toEqual({ ok: true, rows: [{ n: 3 }] });
    // Refused by the server: 1142 table access denied, 1227 / 1044 privileges.
    expect(await q("INSERT INTO orders VALUES (9, 'x')")).toMatchObject({ ok: false, errno: 1142 });
    expect(await q('SELECT * FROM payroll')).toMatchObject({ ok: false, errno: 1142 });
    expect(await q('CREATE TABLE evil (x int)')).toMatchObject({ ok: false, errno: 1142 });
    expect(await q("CREATE USER 'evil'@'%'")).toMatchObject({ ok: false, errno: 1227 });
    expect(await asMysqlUser(c.username, c.password, 'mysql', 'SELECT 1')).toMatchObject({ ok: false, errno: 1044 });
    expect(await asMysqlUser(c.username, 'wrong-password', db.name, 'SELECT 1')).toMatchObject({ ok: false, errno: 1045 });

    const lease = (await leases()).find((l) => l.id === c.leaseId);
    expect(lease).toMatchObject({ kind: 'mysql', identity: WEB, engine: 'maria', role: 'reader', username: c.username, secret: 'mysql/reader', state: 'active' });
    expect(await auditEntries(before)).toEqual([
      expect.objectContaining({ type: 'secret.issued', subject: WEB, secret: 'mysql/reader', dbUsername: c.username, leaseId: c.leaseId }),
    ]);
    expect(await auditText()).not.toContain(c.password);
    expect(JSON.stringify(lease)).not.toContain(c.password);
  });

  it('custom creationStatements run with the password as an escaped literal; the writer role may insert', async () => {
    const res = await creds('writer');
    expect(res.status, res.text).toBe(200);
    const c = res.json;
    expect(await asMysqlUser(c.username, c.password, db.name, "INSERT INTO orders VALUES (4, 'bun')")).toEqual({ ok: true, rows: [] });
    expect(await asMysqlUser(c.username, c.password, db.name, 'DELETE FROM orders')).toMatchObject({ ok: false, errno: 1142 });
    const [row] = await db.query('SELECT max_user_connections AS m FROM mysql.user WHERE User = ?', [c.username]);
    expect(Number(row?.m)).toBe(5);
    await db.query(`DELETE FROM ${mysql.escapeId(db.name)}.orders WHERE id = 4`);
  });

  it('revoke by the holder kills a live session and drops the user', async () => {
    const c = (await creds()).json;
    const session = await mysqlConnect({ user: c.username, password: c.password, database: db.name });
    expect((await session.query('SELECT 1 AS one'))[0]).toEqual([{ one: 1 }]);
    expect(await db.sessionsOf(c.username)).toBe(1);
    const before = b.broker.audit.size;
    const res = await b.call({ path: `/v1/leases/${c.leaseId}/revoke`, token: await token(), method: 'POST' });
    expect(res.status, res.text).toBe(200);
    await expect(session.query('SELECT 1')).rejects.toThrow();
    await session.end().catch(() => undefined);
    expect(await db.sessionsOf(c.username)).toBe(0);
    expect(await exists(c.username)).toBe(false);
    expect((await asMysqlUser(c.username, c.password, db.name, 'SELECT 1')).ok).toBe(false);
    expect(await b.broker.store.kvGet(LEASE_SPACE, c.leaseId)).toBeUndefined();
    expect(await auditEntries(before)).toEqual([
      expect.objectContaining({ type: 'lease.revoked', leaseId: c.leaseId, dbUsername: c.username, actor: WEB, reason: 'revoked by holder' }),
    ]);
    // Idempotent: revoking the same lease again is a 404, and the engine itself accepts a user already gone.
    expectError(await b.call({ path: `/v1/leases/${c.leaseId}/revoke`, token: await token(), method: 'POST' }), 404, 'not_found');
  });

  it('renewals extend the lease up to the max TTL, then the sweeper drops the user', async () => {
    const c = (await creds()).json;
    const issued = Date.parse(c.expiresAt) - 60_000;
    expect(Date.parse(c.maxExpiresAt)).toBe(issued + 120_000);
    clock.advance(50_000);
    const r1 = await b.call<{ expiresAt: string }>({ path: `/v1/leases/${c.leaseId}/renew`, token: await token(), method: 'POST' });
    expect(r1.status, r1.text).toBe(200);
    expect(Date.parse(r1.json.expiresAt)).toBeGreaterThanOrEqual(issued + 110_000);
    clock.advance(50_000);
    const r2 = await b.call<{ expiresAt: string }>({ path: `/v1/leases/${c.leaseId}/renew`, token: await token(), body: { ttlSeconds: 3600 } });
    expect(r2.status).toBe(200);
    expect(r2.json.expiresAt).toBe(c.maxExpiresAt);
    clock.advance(21_000);
    expectError(await b.call({ path: `/v1/leases/${c.leaseId}/renew`, token: await token(), method: 'POST' }), 404, 'not_found');
    const swept = await b.broker.secrets.leases.sweepOnce();
    expect(swept.revoked).toContain(c.leaseId);
    expect(await exists(c.username)).toBe(false);
  });

  it('the sweeper revokes an expired lease: live session killed, user dropped, audited as expired', async () => {
    const c = (await creds()).json;
    const session = await mysqlConnect({ user: c.username, password: c.password, database: db.name });
    await session.query('SELECT 1');
    clock.advance(61_000);
    const before = b.broker.audit.size;
    const report = await b.broker.secrets.leases.sweepOnce();
    expect(report.revoked).toContain(c.leaseId);
    expect(report.failed).toEqual([]);
    await expect(session.query('SELECT 1')).rejects.toThrow();
    await session.end().catch(() => undefined);
    expect(await db.sessionsOf(c.username)).toBe(0);
    expect(await exists(c.username)).toBe(false);
    expect(await auditEntries(before)).toEqual(
      expect.arrayContaining([expect.objectContaining({ type: 'lease.revoked', leaseId: c.leaseId, actor: null, reason: 'expired', dbUsername: c.username })]),
    );
  });

  it('ungranted identities and roles get 403 (audited); hostile role names 400/404; nothing created', async () => {
    const usersBefore = await db.users();
    for (const [who, role] of [
      [{ namespace: 'shop', serviceAccount: 'cart' }, 'reader'],
      [{ namespace: 'shop', serviceAccount: 'web' }, 'nosuchrole'],
    ] as const) {
      const before = b.broker.audit.size;
      expectError(await creds(role, who), 403, 'forbidden');
      expect(await auditEntries(before)).toEqual([expect.objectContaining({ type: 'denial', code: 'forbidden', secret: `mysql/${role}` })]);
    }
    for (const role of [encodeURIComponent("reader'@'%'; DROP DATABASE mysql; --"), encodeURIComponent('reader`'), 'Reader', encodeURIComponent('../reader'), 'a'.repeat(40)]) {
      const res = await creds(role);
      expect([400, 404], `${role}: ${res.status} ${res.text}`).toContain(res.status);
    }
    expect(await db.users()).toEqual(usersBefore);
    expect(await db.query(`SELECT COUNT(*) AS n FROM ${mysql.escapeId(db.name)}.orders`)).toEqual([{ n: 3 }]);
  });

  it('hostile values in a template placeholder stay one string literal (run on the real server)', async () => {
    const hostile = `${db.prefix}x'@'%'; DROP DATABASE ${db.name}; -- \\`;
    const admin = await mysqlConnect();
    try {
      const values = { name: hostile, password: "p'w\\\"; DROP USER root", expiration: Date.now() + 60_000 };
      for (const t of ["CREATE USER {{name}}@'%' IDENTIFIED BY {{password}}", ...readerGrants(db.name)]) {
        await admin.query(renderMysqlTemplate(t, values));
      }
      const [rows] = await admin.query<mysql.RowDataPacket[]>('SELECT User FROM mysql.user WHERE User = ?', [hostile]);
      expect(rows.map((r) => r.User)).toEqual([hostile]);
      expect(await db.query(`SELECT COUNT(*) AS n FROM ${mysql.escapeId(db.name)}.orders`)).toEqual([{ n: 3 }]);
      // And a second statement never reaches the server through the engine's (non-multi-statement) connections.
      await expect(admin.query('SELECT 1; SELECT 2')).rejects.toThrow();
    } finally {
      await admin.query('DROP USER IF EXISTS ?@?', [hostile, '%']).catch(() => undefined);
      await admin.end();
    }
  });

  it('refuses to drop a user it did not create, whatever a lease record says', async () => {
    const forged = await plantForeignLease(b, { id: 'e'.repeat(32), kind: 'mysql', engine: 'maria', role: 'reader', username: 'root', now: clock.now() });
    const report = await b.broker.secrets.leases.sweepOnce();
    expect(report.failed.map((f) => f.id)).toContain(forged.id);
    expect(await db.query("SELECT COUNT(*) AS n FROM mysql.user WHERE User = 'root'")).not.toEqual([{ n: 0 }]);
    await b.broker.store.kvDelete(LEASE_SPACE, forged.id);
  });

  it('server unreachable: 503 engine_unavailable, quickly, and no lease recorded', async () => {
    const leasesBefore = (await leases()).length;
    const started = Date.now();
    const res = await creds('offline');
    expectError(res, 503, 'engine_unavailable');
    expect(Date.now() - started).toBeLessThan(5_000);
    expect((await leases()).length).toBe(leasesBefore);
  });

  it('a revoke that fails while the server is down is kept, backs off, survives a restart, and completes when it is back', async () => {
    const dataDir = path.join(b.dir, 'mysql-restart-data');
    const own = new TestClock();
    // A 10 s sweep interval: retries back off 10 s, 20 s, … (capped at 5 min).
    const first = await startBroker({ secrets: { ...secretsConfig, sweepIntervalSeconds: 10 }, dataDir, clock: own });
    let c: Creds;
    try {
      const res = await first.call<Creds>({ path: '/v1/secrets/mysql/proxied/creds', token: await first.token(), method: 'POST' });
      expect(res.status, res.text).toBe(200);
      c = res.json;
      const session = await mysqlConnect({ user: c.username, password: c.password, database: db.name });
      session.on('error', () => undefined);
      await proxy.cut();
      const failedAt = own.now();
      const rev = await first.call({ path: `/v1/leases/${c.leaseId}/revoke`, token: await first.token(), method: 'POST' });
      expectError(rev, 503, 'engine_unavailable');
      const kept = JSON.parse((await first.broker.store.kvGet(LEASE_SPACE, c.leaseId)) as string) as Lease;
      expect(kept).toMatchObject({ state: 'revoking', attempts: 1 });
      expect(kept.lastError).toMatch(/engine "flaky"/);
      // A second failure backs off further.
      const firstDelay = (kept.nextAttemptAt as number) - failedAt;
      own.advance(firstDelay);
      const retriedAt = own.now();
      await first.broker.secrets.leases.sweepOnce();
      const again = JSON.parse((await first.broker.store.kvGet(LEASE_SPACE, c.leaseId)) as string) as Lease;
      expect(again).toMatchObject({ state: 'revoking', attempts: 2 });
      expect((again.nextAttemptAt as number) - retriedAt).toBeGreaterThan(firstDelay + 1000);
      // The user still exists and its session still works: the lease must not be forgotten.
      expect(await exists(c.username)).toBe(true);
      expect((await session.query('SELECT 1 AS one'))[0]).toEqual([{ one: 1 }]);
      await session.end().catch(() => undefined);
    } finally {
      await first.close();
      await proxy.restore();
    }
    const second = await startBroker({ secrets: secretsConfig, dataDir, clock: own });
    try {
      own.advance(10 * 60_000);
      const report = await second.broker.secrets.leases.sweepOnce();
      expect(report.revoked).toContain(c.leaseId);
      expect(await exists(c.username)).toBe(false);
      expect(await second.broker.store.kvGet(LEASE_SPACE, c.leaseId)).toBeUndefined();
    } finally {
      await second.close();
    }
  });

  it('an engine that cannot reach its server makes /readyz degraded for that engine only; the others keep serving', async () => {
    const ready = await b.call<{ status: string; checks: Record<string, string> }>({ path: '/readyz' });
    expect(ready.status, ready.text).toBe(200);
    expect(ready.json.status).toBe('degraded');
    expect(ready.json.checks).toMatchObject({ store: 'ok', audit: 'ok', 'engine:maria': 'ok', 'engine:flaky': 'ok' });
    expect(ready.json.checks['engine:down']).toMatch(/MySQL engine "down" could not check health: cannot connect \(ECONNREFUSED\)/);
    expect((await creds()).status).toBe(200);
  });

  it('tessera secrets engines lists every engine with its health, and exits 1 when one fails', async () => {
    const lines: string[] = [];
    const closedPort = await freePort();
    const file = configFile(`${MINIMAL_CONFIG}
secrets:
  mysql:
    - name: good
      url: ${mysqlUrl()}
      roles: { reader: { grants: ["GRANT SELECT ON x.* TO {{name}}@'%'"] } }
    - name: bad
      url: ${mysqlUrl('', closedPort)}
      connectTimeoutMs: 1000
      roles: { other: { grants: ["GRANT SELECT ON x.* TO {{name}}@'%'"] } }
`);
    expect(await secretsEngines({ config: file, out: (l) => lines.push(l) })).toBe(1);
    expect(lines).toEqual([
      expect.stringMatching(/^bad\tmysql\troles: other\tFAILING: MySQL engine "bad" could not check health: cannot connect/),
      'good\tmysql\troles: reader\tok',
    ]);
  });

  it('the periodic sweeper (real timer) drops a user soon after its lease expires', async () => {
    const live = await startBroker({ secrets: { ...secretsConfig, sweepIntervalSeconds: 1 } });
    try {
      const res = await live.call<Creds>({ path: '/v1/secrets/mysql/flash/creds', token: await live.token(), method: 'POST' });
      expect(res.status, res.text).toBe(200);
      expect(await exists(res.json.username)).toBe(true);
      const deadline = Date.now() + 15_000;
      while (Date.now() < deadline && (await exists(res.json.username))) await new Promise((r) => setTimeout(r, 200));
      expect(await exists(res.json.username)).toBe(false);
    } finally {
      await live.close();
    }
  });
});
