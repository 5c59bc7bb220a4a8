/**
 * Dynamic PostgreSQL credentials against the real server on 127.0.0.1:5432 (no mocks): the issued role
 * logs in with its password and can do exactly what its template grants; revoke and expiry terminate its
 * sessions and drop it; hostile names cannot inject SQL; PostgreSQL down → 503 and no lease; a revoke
 * that fails is kept, reported and retried; renewals stop at the max TTL; leases survive a restart.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LEASE_SPACE, type Lease } from '../../src/secrets/leases.js';
import { createRoleStatements, scramSha256Verifier } from '../../src/secrets/postgres.js';
import { mintAdminCert } from '../helpers/admin.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { TestClock } from '../helpers/clock.js';
import {
  asRole,
  createTestDatabase,
  inCi,
  pgConnect,
  pgUrl,
  postgresRequiredUnderCi,
  sharedPostgres,
  startPgProxy,
  type PgProxy,
  type TestDatabase,
} from '../helpers/postgres.js';
import { freePort } from '../helpers/redis.js';
import { engineCalls, expectError, expectSpec, plantForeignLease, WEB, type EngineCreds } from '../helpers/secrets.js';

const reach = await sharedPostgres();

type Creds = EngineCreds & { role: string; audit: { index: number } };

postgresRequiredUnderCi(reach);

describe.skipIf(!reach.ok)('dynamic PostgreSQL credentials', () => {
  let db: TestDatabase;
  let proxy: PgProxy;
  let b: TestBroker;
  let closedPort: number;
  const clock = new TestClock(); // real time plus what the test advances (TTLs, expiry)
  let secretsConfig: Record<string, unknown>;

  const reportingGrants = (dbName: string): string[] => [
    `GRANT CONNECT ON DATABASE ${pg.escapeIdentifier(dbName)} TO {{name}}`,
    'GRANT USAGE ON SCHEMA app TO {{name}}',
    'GRANT SELECT ON app.orders TO {{name}}',
  ];

  // A least-privilege admin (LOGIN CREATEROLE, not a superuser), unique to this run: the production shape.
  // It owns schema "lim" so it can grant CREATE on it; db.drop() removes it with the run's other roles.
  let limitedAdmin: string;

  beforeAll(async () => {
    db = await createTestDatabase('secrets');
    limitedAdmin = `${db.prefix}admin`;
    await db.query(`CREATE ROLE ${pg.escapeIdentifier(limitedAdmin)} WITH LOGIN CREATEROLE NOSUPERUSER`);
    await db.query(`GRANT CONNECT ON DATABASE ${pg.escapeIdentifier(db.name)} TO ${pg.escapeIdentifier(limitedAdmin)} WITH GRANT OPTION`);
    await db.query(`CREATE SCHEMA lim AUTHORIZATION ${pg.escapeIdentifier(limitedAdmin)}`);
    // Two admins that cannot do the job: no CREATEROLE; CREATEROLE but NOINHERIT.
    await db.query(`CREATE ROLE ${pg.escapeIdentifier(`${db.prefix}weak`)} WITH LOGIN NOSUPERUSER NOCREATEROLE`);
    await db.query(`CREATE ROLE ${pg.escapeIdentifier(`${db.prefix}noinh`)} WITH LOGIN NOSUPERUSER CREATEROLE NOINHERIT`);
    for (const r of ['weak', 'noinh']) await db.query(`GRANT CONNECT ON DATABASE ${pg.escapeIdentifier(db.name)} TO ${pg.escapeIdentifier(`${db.prefix}${r}`)}`);
    proxy = await startPgProxy();
    closedPort = await freePort();
    secretsConfig = {
      grants: [
        { spiffeIds: [WEB], postgresRoles: ['reporting', 'offline', 'proxied', 'flash', 'builder', 'weakling', 'noinherit'] },
        { selector: { namespace: 'payments', serviceAccount: '*' }, postgresRoles: ['offline'] },
      ],
      postgres: [
        {
          name: 'main',
          url: db.url,
          usernamePrefix: db.prefix,
          roles: {
            reporting: { ttlSeconds: 60, maxTtlSeconds: 120, grants: reportingGrants(db.name) },
            flash: { ttlSeconds: 1, maxTtlSeconds: 2, grants: reportingGrants(db.name) },
          },
        },
        // PostgreSQL that is not there: a loopback port nothing listens on.
        { name: 'down', url: pgUrl(db.name, closedPort), usernamePrefix: db.prefix, connectTimeoutMs: 2000, roles: { offline: { grants: reportingGrants(db.name) } } },
        // The same server behind a proxy the tests can cut.
        {
          name: 'flaky',
          url: pgUrl(db.name, proxy.port),
          usernamePrefix: db.prefix,
          connectTimeoutMs: 1000,
          roles: { proxied: { ttlSeconds: 60, grants: reportingGrants(db.name) } },
        },
        // Connected as the non-superuser admin: roles that create (and so own) tables.
        {
          name: 'limited',
          url: pgUrl(db.name, undefined, limitedAdmin),
          usernamePrefix: db.prefix,
          roles: {
            builder: {
              ttlSeconds: 60,
              grants: [`GRANT CONNECT ON DATABASE ${pg.escapeIdentifier(db.name)} TO {{name}}`, 'GRANT USAGE, CREATE ON SCHEMA lim TO {{name}}'],
            },
          },
        },
        { name: 'weak', url: pgUrl(db.name, undefined, `${db.prefix}weak`), usernamePrefix: db.prefix, roles: { weakling: { grants: reportingGrants(db.name) } } },
        { name: 'noinh', url: pgUrl(db.name, undefined, `${db.prefix}noinh`), usernamePrefix: db.prefix, roles: { noinherit: { grants: reportingGrants(db.name) } } },
      ],
    };
    b = await startBroker({ secrets: secretsConfig, clock });
  });

  afterAll(async () => {
    await b?.close();
    await proxy?.close();
    await db?.drop();
  });

  const { token, creds, auditEntries, auditText, leases } = engineCalls<Creds>(() => b, 'postgres', 'reporting');
  async function roleRow(username: string) {
    const r = await db.query<{ rolcanlogin: boolean; rolsuper: boolean; rolcreaterole: boolean; rolvaliduntil: Date | null; rolpassword: string | null }>(
      'SELECT rolcanlogin, rolsuper, rolcreaterole, rolvaliduntil, rolpassword FROM pg_authid WHERE rolname = $1',
      [username],
    );
    return r.rows[0];
  }
  async function sessionsOf(username: string): Promise<number> {
    const r = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1', [username]);
    return r.rows[0]?.n ?? -1;
  }

  it('creates a role that logs in with its password and holds exactly the template grants', async () => {
    const before = b.broker.audit.size;
    const res = await creds();
    // Read the clock first: compiling the openapi schema below takes a while on a loaded machine.
    const ttl = Date.parse(res.json.expiresAt) - clock.now();
    expect(res.status, res.text).toBe(200);
    expectSpec('/v1/secrets/postgres/{role}/creds', 'post', res);
    expect(res.headers['cache-control']).toBe('no-store');
    const c = res.json;
    expect(c.username).toMatch(new RegExp(`^${db.prefix}reporting_[0-9a-f]{16}$`));
    expect(c.password).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(ttl).toBeGreaterThan(55_000);
    expect(ttl).toBeLessThanOrEqual(60_000);

    // The role as PostgreSQL sees it: LOGIN, no special powers, VALID UNTIL = lease expiry, and the
    // stored SCRAM verifier is the one for exactly this password.
    const row = await roleRow(c.username);
    expect(row).toMatchObject({ rolcanlogin: true, rolsuper: false, rolcreaterole: false });
    expect(row?.rolvaliduntil?.getTime()).toBe(Date.parse(c.expiresAt));
    const m = /^SCRAM-SHA-256\$(\d+):([^$]+)\$/.exec(row?.rolpassword ?? '');
    expect(m).not.toBeNull();
    expect(await scramSha256Verifier(c.password, Buffer.from(m?.[2] as string, 'base64'), Number(m?.[1]))).toBe(row?.rolpassword);
    expect(await scramSha256Verifier('not-the-password', Buffer.from(m?.[2] as string, 'base64'), Number(m?.[1]))).not.toBe(row?.rolpassword);

    // Exactly what the template grants, and not more.
    expect(await asRole(c.username, c.password, db.name, 'SELECT count(*)::int AS n FROM app.orders')).toEqual({ ok: true, rows: [{ n: 3 }] });
    expect(await asRole(c.username, c.password, db.name, "INSERT INTO app.orders VALUES (9, 'x')")).toMatchObject({ ok: false, code: '42501' });
    expect(await asRole(c.username, c.password, db.name, 'UPDATE app.orders SET item = item')).toMatchObject({ ok: false, code: '42501' });
    expect(await asRole(c.username, c.password, db.name, 'SELECT * FROM app.payroll')).toMatchObject({ ok: false, code: '42501' });
    expect(await asRole(c.username, c.password, db.name, 'CREATE TABLE app.evil (x int)')).toMatchObject({ ok: false, code: '42501' });
    expect(await asRole(c.username, c.password, db.name, 'CREATE TABLE public.evil (x int)')).toMatchObject({ ok: false, code: '42501' });
    expect(await asRole(c.username, c.password, db.name, 'CREATE ROLE evil')).toMatchObject({ ok: false, code: '42501' });
    expect(await asRole(c.username, c.password, db.otherName, 'SELECT 1')).toMatchObject({ ok: false, code: '42501' });

    // And for psql, the real client.
    const psql = spawnSync('psql', ['-h', '127.0.0.1', '-U', c.username, '-d', db.name, '-XAtc', 'SELECT item FROM app.orders ORDER BY id'], {
      encoding: 'utf8',
      env: { ...process.env, PGPASSWORD: c.password, PGCONNECT_TIMEOUT: '5' },
      timeout: 15_000,
    });
    if (psql.error !== undefined && !inCi) {
      console.warn(`[postgres] psql not runnable (${psql.error.message}); checked with the pg client only`);
    } else {
      expect(psql.status, psql.stderr).toBe(0);
      expect(psql.stdout.trim().split('\n')).toEqual(['tea', 'coffee', 'cake']);
    }

    // Lease and audit: the role name and lease id, never the password.
    const lease = (await leases()).find((l) => l.id === c.leaseId);
    expect(lease).toMatchObject({ kind: 'postgres', identity: WEB, engine: 'main', role: 'reporting', username: c.username, state: 'active' });
    expect(await auditEntries(before)).toEqual([
      expect.objectContaining({ type: 'secret.issued', subject: WEB, secret: 'postgres/reporting', dbUsername: c.username, leaseId: c.leaseId }),
    ]);
    expect(await auditText()).not.toContain(c.password);
    expect(JSON.stringify(lease)).not.toContain(c.password);
  });

  it('revoke by the holder terminates open sessions and drops the role', async () => {
    const c = (await creds()).json;
    const session = await pgConnect(db.name, { user: c.username, password: c.password });
    expect((await session.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    expect(await sessionsOf(c.username)).toBe(1);

    const before = b.broker.audit.size;
    const res = await b.call({ path: `/v1/leases/${c.leaseId}/revoke`, token: await token(), method: 'POST' });
    expect(res.status, res.text).toBe(200);
    expectSpec('/v1/leases/{leaseId}/revoke', 'post', res);

    await expect(session.query('SELECT 1')).rejects.toThrow();
    await session.end().catch(() => undefined);
    expect(await sessionsOf(c.username)).toBe(0);
    expect(await roleRow(c.username)).toBeUndefined();
    const login = await asRole(c.username, c.password, db.name, 'SELECT 1');
    expect(login.ok).toBe(false);
    expect(await b.broker.store.kvGet(LEASE_SPACE, c.leaseId)).toBeUndefined();
    expect(await auditEntries(before)).toEqual([
      expect.objectContaining({ type: 'lease.revoked', leaseId: c.leaseId, dbUsername: c.username, actor: WEB, reason: 'revoked by holder' }),
    ]);
  });

  it('revoke works with a non-superuser CREATEROLE admin when the role owns a table (PostgreSQL 15+)', async () => {
    const res = await creds('builder');
    expect(res.status, res.text).toBe(200);
    const c = res.json;
    expect(await asRole(c.username, c.password, db.name, 'CREATE TABLE lim.made_by_lease (x int)')).toEqual({ ok: true, rows: [] });
    const owner = await db.query<{ owner: string }>("SELECT tableowner AS owner FROM pg_tables WHERE schemaname = 'lim' AND tablename = 'made_by_lease'");
    expect(owner.rows).toEqual([{ owner: c.username }]);

    const rev = await b.call({ path: `/v1/leases/${c.leaseId}/revoke`, token: await token(), method: 'POST' });
    expect(rev.status, rev.text).toBe(200);
    expectSpec('/v1/leases/{leaseId}/revoke', 'post', rev);
    expect(await roleRow(c.username)).toBeUndefined();
    expect(await b.broker.store.kvGet(LEASE_SPACE, c.leaseId)).toBeUndefined();
    // What the role owned now belongs to the admin (REASSIGN OWNED), not dropped with the role.
    const after = await db.query<{ owner: string }>("SELECT tableowner AS owner FROM pg_tables WHERE schemaname = 'lim' AND tablename = 'made_by_lease'");
    expect(after.rows).toEqual([{ owner: limitedAdmin }]);
  });

  it('an admin role that could not drop what it creates is refused before any role is created: 503 with the reason', async () => {
    const rolesBefore = await db.roles();
    const leasesBefore = (await leases()).length;
    for (const [role, why] of [
      ['weakling', /admin role "[^"]+weak" has neither SUPERUSER nor CREATEROLE/],
      ['noinherit', /admin role "[^"]+noinh" is NOINHERIT/],
    ] as const) {
      const res = await creds(role);
      expectError(res, 503, 'engine_unavailable');
      expectSpec('/v1/secrets/postgres/{role}/creds', 'post', res);
      expect((res.json as unknown as { message: string }).message).toMatch(why);
    }
    expect(await db.roles()).toEqual(rolesBefore);
    expect((await leases()).length).toBe(leasesBefore);
  });

  it('renewals move VALID UNTIL and stop at the max TTL', async () => {
    const c = (await creds()).json;
    const issued = Date.parse(c.expiresAt) - 60_000;
    expect(Date.parse(c.maxExpiresAt)).toBe(issued + 120_000);
    clock.advance(50_000);
    const r1 = await b.call<{ expiresAt: string }>({ path: `/v1/leases/${c.leaseId}/renew`, token: await token(), method: 'POST' });
    expect(r1.status, r1.text).toBe(200);
    expect(Date.parse(r1.json.expiresAt)).toBeGreaterThanOrEqual(issued + 110_000);
    expect((await roleRow(c.username))?.rolvaliduntil?.getTime()).toBe(Date.parse(r1.json.expiresAt));
    clock.advance(50_000);
    const r2 = await b.call<{ expiresAt: string }>({ path: `/v1/leases/${c.leaseId}/renew`, token: await token(), body: { ttlSeconds: 3600 } });
    expect(r2.status).toBe(200);
    expect(r2.json.expiresAt).toBe(c.maxExpiresAt);
    expect((await roleRow(c.username))?.rolvaliduntil?.getTime()).toBe(Date.parse(c.maxExpiresAt));
    // Another identity may not renew it.
    const other = await b.call({ path: `/v1/leases/${c.leaseId}/renew`, token: await token({ namespace: 'payments', serviceAccount: 'api' }), method: 'POST' });
    expectError(other, 403, 'forbidden');
    // Past the max TTL it is gone for renewal, and the sweeper drops the role.
    clock.advance(21_000);
    expectError(await b.call({ path: `/v1/leases/${c.leaseId}/renew`, token: await token(), method: 'POST' }), 404, 'not_found');
    const swept = await b.broker.secrets.leases.sweepOnce();
    expect(swept.revoked).toContain(c.leaseId);
    expect(await roleRow(c.username)).toBeUndefined();
  });

  it('the sweeper revokes an expired lease: sessions terminated, role dropped, audited as expired', async () => {
    const c = (await creds()).json;
    const session = await pgConnect(db.name, { user: c.username, password: c.password });
    await session.query('SELECT 1');
    clock.advance(61_000);
    const before = b.broker.audit.size;
    const report = await b.broker.secrets.leases.sweepOnce();
    expect(report.ran).toBe(true);
    expect(report.revoked).toContain(c.leaseId);
    expect(report.failed).toEqual([]);
    await expect(session.query('SELECT 1')).rejects.toThrow();
    await session.end().catch(() => undefined);
    expect(await sessionsOf(c.username)).toBe(0);
    expect(await roleRow(c.username)).toBeUndefined();
    expect((await asRole(c.username, c.password, db.name, 'SELECT 1')).ok).toBe(false);
    expect(await auditEntries(before)).toEqual(
      expect.arrayContaining([expect.objectContaining({ type: 'lease.revoked', leaseId: c.leaseId, actor: null, reason: 'expired', dbUsername: c.username })]),
    );
  });

  it('grant matrix: other service account, other namespace, unregistered and ungranted roles get 403 (audited), nothing created', async () => {
    const rolesBefore = await db.roles();
    for (const [who, role] of [
      [{ namespace: 'shop', serviceAccount: 'cart' }, 'reporting'],
      [{ namespace: 'payments', serviceAccount: 'api' }, 'reporting'],
      [{ namespace: 'kube-system', serviceAccount: 'default' }, 'reporting'],
      [{ namespace: 'shop', serviceAccount: 'web' }, 'nosuchrole'],
    ] as const) {
      const before = b.broker.audit.size;
      const res = await creds(role, who);
      expectError(res, 403, 'forbidden');
      expectSpec('/v1/secrets/postgres/{role}/creds', 'post', res);
      expect(await auditEntries(before)).toEqual([expect.objectContaining({ type: 'denial', code: 'forbidden', secret: `postgres/${role}` })]);
    }
    expect(await db.roles()).toEqual(rolesBefore);
  });

  it('a revoked identity gets no credentials and its roles are dropped', async () => {
    const c = (await creds()).json;
    await b.broker.store.kvPut('revocation', `spiffeId:${WEB}`, JSON.stringify({ kind: 'spiffeId', value: WEB, reason: 't', by: 'admin', at: 1, requestId: 'r' }));
    try {
      const out = await b.broker.secrets.revokeIdentity(WEB, { actor: 'spiffe://example.org/admin/alice', requestId: 'r', reason: 'identity revoked' });
      expect(out.revoked).toContain(c.leaseId);
      expect(await roleRow(c.username)).toBeUndefined();
      const rolesBefore = await db.roles();
      const before = b.broker.audit.size;
      const res = await creds();
      expect(res.status).toBe(403);
      expect(await auditEntries(before)).toEqual([expect.objectContaining({ type: 'denial', decision: 'deny' })]);
      expect(await db.roles()).toEqual(rolesBefore);
    } finally {
      await b.broker.store.kvDelete('revocation', `spiffeId:${WEB}`);
    }
  });

  it('hostile role names are refused before any SQL; nothing is created or dropped', async () => {
    const rolesBefore = await db.roles();
    for (const role of [
      encodeURIComponent('x"; DROP TABLE app.orders; --'),
      encodeURIComponent("reporting'; DROP ROLE postgres; --"),
      'Reporting',
      'reporting%3B',
      encodeURIComponent('../reporting'),
      'a'.repeat(40),
    ]) {
      const res = await creds(role);
      expect([400, 404], `${role}: ${res.status} ${res.text}`).toContain(res.status);
    }
    expectError(await creds('Reporting'), 400, 'bad_request');
    expect((await db.query('SELECT count(*)::int AS n FROM app.orders')).rows).toEqual([{ n: 3 }]);
    expect(await db.roles()).toEqual(rolesBefore);
    expect((await db.query("SELECT count(*)::int AS n FROM pg_roles WHERE rolname = 'postgres'")).rows).toEqual([{ n: 1 }]);
  });

  it('a hostile name in the template placeholder is only ever a quoted identifier (run on the real server)', async () => {
    const hostile = `${db.prefix}x"; DROP TABLE app.orders; --`;
    const statements = createRoleStatements(hostile, await scramSha256Verifier('pw'), Date.now() + 60_000, [
      ...reportingGrants(db.name),
      'COMMENT ON ROLE {{name}} IS \'made by a test\'',
    ]);
    const admin = await pgConnect(db.name);
    try {
      await admin.query('BEGIN');
      for (const sql of statements) await admin.query({ text: sql, queryMode: 'extended' } as pg.QueryConfig);
      await admin.query('COMMIT');
      expect((await admin.query('SELECT count(*)::int AS n FROM app.orders')).rows).toEqual([{ n: 3 }]);
      const r = await admin.query<{ ok: boolean }>("SELECT has_table_privilege($1, 'app.orders', 'SELECT') AS ok", [hostile]);
      expect(r.rows).toEqual([{ ok: true }]);
      expect((await admin.query('SELECT rolname FROM pg_roles WHERE rolname = $1', [hostile])).rowCount).toBe(1);
      // A multi-statement template cannot even reach the server as one statement.
      await expect(admin.query({ text: 'SELECT 1; DROP TABLE app.orders', queryMode: 'extended' } as pg.QueryConfig)).rejects.toThrow(/multiple commands/);
      expect((await admin.query('SELECT count(*)::int AS n FROM app.orders')).rows).toEqual([{ n: 3 }]);
    } finally {
      await admin.query('ROLLBACK').catch(() => undefined);
      await admin.query(`DROP OWNED BY ${pg.escapeIdentifier(hostile)}`).catch(() => undefined);
      await admin.query(`DROP ROLE IF EXISTS ${pg.escapeIdentifier(hostile)}`).catch(() => undefined);
      await admin.end();
    }
  });

  it('refuses to renew or drop a role it did not create, whatever a lease record says', async () => {
    const forged = await plantForeignLease(b, { id: 'f'.repeat(32), kind: 'postgres', engine: 'main', role: 'reporting', username: 'postgres', now: clock.now() });
    const report = await b.broker.secrets.leases.sweepOnce();
    expect(report.failed.map((f) => f.id)).toContain(forged.id);
    expect((await db.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'postgres'")).rows).toEqual([{ rolcanlogin: true }]);
    expect(JSON.parse((await b.broker.store.kvGet(LEASE_SPACE, forged.id)) as string)).toMatchObject({ state: 'revoking', attempts: 1 });
    await b.broker.store.kvDelete(LEASE_SPACE, forged.id);
  });

  it('PostgreSQL unreachable: 503 engine_unavailable, quickly, and no lease recorded', async () => {
    const leasesBefore = (await leases()).length;
    const started = Date.now();
    const res = await creds('offline');
    expectError(res, 503, 'engine_unavailable');
    expectSpec('/v1/secrets/postgres/{role}/creds', 'post', res);
    expect(res.headers['retry-after']).toBeDefined();
    expect(Date.now() - started).toBeLessThan(5_000);
    expect((await leases()).length).toBe(leasesBefore);
    expect((await leases()).filter((l) => l.role === 'offline')).toEqual([]);
  });

  it('a revoke that fails while PostgreSQL is down is kept, reported, and retried until the role is gone', async () => {
    const c = (await creds('proxied')).json;
    expect(c.username).toBeDefined();
    expect(await roleRow(c.username)).toBeDefined();
    await proxy.cut();
    let before = b.broker.audit.size;
    try {
      const res = await b.call({ path: `/v1/leases/${c.leaseId}/revoke`, token: await token(), method: 'POST' });
      expectError(res, 503, 'engine_unavailable');
      expectSpec('/v1/leases/{leaseId}/revoke', 'post', res);
      const kept = JSON.parse((await b.broker.store.kvGet(LEASE_SPACE, c.leaseId)) as string) as Lease;
      expect(kept).toMatchObject({ state: 'revoking', attempts: 1 });
      expect(kept.lastError).toMatch(/engine "flaky"/);
      expect((await b.broker.secrets.leases.failedRevocations()).map((l) => l.id)).toContain(c.leaseId);
      expect(await auditEntries(before)).toEqual(
        expect.arrayContaining([expect.objectContaining({ type: 'lease.revoke-failed', leaseId: c.leaseId, code: 'engine_unavailable' })]),
      );
      // The role still exists (the lease must not be forgotten).
      expect(await roleRow(c.username)).toBeDefined();
      // A sweep while still down fails again and backs off.
      clock.advance(3_700_000);
      const again = await b.broker.secrets.leases.sweepOnce();
      expect(again.failed.map((f) => f.id)).toContain(c.leaseId);
    } finally {
      await proxy.restore();
    }
    before = b.broker.audit.size;
    clock.advance(3_700_000);
    const report = await b.broker.secrets.leases.sweepOnce();
    expect(report.revoked).toContain(c.leaseId);
    expect(await roleRow(c.username)).toBeUndefined();
    expect(await b.broker.store.kvGet(LEASE_SPACE, c.leaseId)).toBeUndefined();
    expect(await auditEntries(before)).toEqual(
      expect.arrayContaining([expect.objectContaining({ type: 'lease.revoked', leaseId: c.leaseId, reason: 'retry: revoked by holder' })]),
    );
  });

  it('leases survive a broker restart: the new broker renews and revokes the role', async () => {
    const dataDir = path.join(b.dir, 'restart-data');
    const first = await startBroker({ secrets: secretsConfig, dataDir });
    const res = await first.call<Creds>({ path: '/v1/secrets/postgres/reporting/creds', token: await first.token(), method: 'POST' });
    expect(res.status, res.text).toBe(200);
    await first.close();
    expect(await roleRow(res.json.username)).toBeDefined();
    const second = await startBroker({ secrets: secretsConfig, dataDir });
    try {
      const renewed = await second.call({ path: `/v1/leases/${res.json.leaseId}/renew`, token: await second.token(), method: 'POST' });
      expect(renewed.status, renewed.text).toBe(200);
      const revoked = await second.call({ path: `/v1/leases/${res.json.leaseId}/revoke`, token: await second.token(), method: 'POST' });
      expect(revoked.status, revoked.text).toBe(200);
      expect(await roleRow(res.json.username)).toBeUndefined();
    } finally {
      await second.close();
    }
  });

  it('the periodic sweeper (real timer) drops a role soon after its lease expires', async () => {
    const live = await startBroker({ secrets: { ...secretsConfig, sweepIntervalSeconds: 1 } });
    try {
      const res = await live.call<Creds>({ path: '/v1/secrets/postgres/flash/creds', token: await live.token(), method: 'POST' });
      expect(res.status, res.text).toBe(200);
      expect(await roleRow(res.json.username)).toBeDefined();
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline && (await roleRow(res.json.username)) !== undefined) await new Promise((r) => setTimeout(r, 200));
      expect(await roleRow(res.json.username)).toBeUndefined();
      expect(await live.broker.store.kvGet(LEASE_SPACE, res.json.leaseId)).toBeUndefined();
    } finally {
      await live.close();
    }
  });
  it('a revoke PostgreSQL refuses for good (42501) marks the lease revoke_failed: 502, metric, alert, admin list, hourly retry', async () => {
    // Its own broker and clock (it moves time by an hour), with the revoke-failed alert rule.
    const own = new TestClock();
    const sb = await startBroker({ secrets: secretsConfig, clock: own, alerts: { rules: [{ name: 'stuck-revoke', kind: 'revoke-failed' }] } });
    const admin = pg.escapeIdentifier(limitedAdmin);
    try {
      const issued = await sb.call<Creds>({ path: '/v1/secrets/postgres/builder/creds', token: await sb.token(), method: 'POST' });
      expect(issued.status, issued.text).toBe(200);
      const c = issued.json;
      const metric = async (): Promise<number> =>
        Number(/^tessera_lease_revoke_failures_total\{kind="permanent"\} (\d+)$/m.exec(await sb.broker.metrics.text())?.[1] ?? 'NaN');
      expect(await metric()).toBe(0);
      // The admin loses CREATEROLE (a realistic misconfiguration): every revoke statement is now 42501.
      await db.query(`ALTER ROLE ${admin} NOCREATEROLE`);
      const before = sb.broker.audit.size;
      const res = await sb.call({ path: `/v1/leases/${c.leaseId}/revoke`, token: await sb.token(), method: 'POST' });
      expectError(res, 502, 'revoke_failed');
      expectSpec('/v1/leases/{leaseId}/revoke', 'post', res);
      expect((res.json as { message: string }).message).toMatch(/42501/);

      const kept = JSON.parse((await sb.broker.store.kvGet(LEASE_SPACE, c.leaseId)) as string) as Lease;
      expect(kept).toMatchObject({ state: 'revoke_failed', attempts: 1 });
      expect((kept.nextAttemptAt as number) - own.now()).toBeGreaterThan(59 * 60_000);
      expect(await roleRow(c.username)).toBeDefined();
      expect(await metric()).toBe(1);

      // Audited, and the revoke-failed rule raised an alert (recorded in the log).
      await sb.broker.alerts.idle();
      const entries = (await sb.broker.audit.entries(before, sb.broker.audit.size)).map((e) => JSON.parse(e.toString('utf8')) as Record<string, unknown>);
      expect(entries).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ type: 'lease.revoke-failed', leaseId: c.leaseId, code: 'revoke_failed', dbUsername: c.username }),
          expect.objectContaining({ type: 'alert', code: 'alert', reason: expect.stringContaining(`rule stuck-revoke: lease ${c.leaseId}`) }),
        ]),
      );

      // Operators see it through the admin API.
      const cert = mintAdminCert(sb.material, 'spiffe://example.org/admin/dev');
      const list = await sb.call<{ leases: { leaseId: string; state: string; username?: string }[] }>({
        path: '/v1/admin/leases/failed',
        cert: cert.cert,
        key: cert.key,
      });
      expect(list.status, list.text).toBe(200);
      expectSpec('/v1/admin/leases/failed', 'get', list);
      expect(list.json.leases).toContainEqual(expect.objectContaining({ leaseId: c.leaseId, state: 'revoke_failed', username: c.username }));

      // The sweeper does not hammer it: nothing within the hour (the transient backoff would be minutes).
      own.advance(30 * 60_000);
      const quiet = await sb.broker.secrets.leases.sweepOnce();
      expect([...quiet.revoked, ...quiet.failed.map((f) => f.id)]).not.toContain(c.leaseId);
      expect(JSON.parse((await sb.broker.store.kvGet(LEASE_SPACE, c.leaseId)) as string)).toMatchObject({ state: 'revoke_failed', attempts: 1 });

      // Once the cause is fixed, the hourly retry drops the role and forgets the lease.
      await db.query(`ALTER ROLE ${admin} CREATEROLE`);
      own.advance(31 * 60_000);
      const healed = await sb.broker.secrets.leases.sweepOnce();
      expect(healed.revoked).toContain(c.leaseId);
      expect(await roleRow(c.username)).toBeUndefined();
      expect(await sb.broker.store.kvGet(LEASE_SPACE, c.leaseId)).toBeUndefined();
    } finally {
      await db.query(`ALTER ROLE ${admin} CREATEROLE`);
      await sb.close();
    }
  });
});
