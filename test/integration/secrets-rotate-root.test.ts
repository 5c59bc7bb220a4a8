/**
 * `secrets rotate-root` against the real services of this machine, each with a dedicated admin user
 * made for the test (never MariaDB's root, never the shared Redis or RabbitMQ's guest): after a
 * rotation the old admin password is refused by the backend, the new one is only in the store (sealed
 * under the KEK, never in the audit log), issuing and revoking keep working, and a restarted broker
 * (another replica reading the same store) connects with the stored password. A rotation a crash left
 * pending is resolved at start: kept if the backend took it, dropped if not.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import mysql from 'mysql2/promise';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SECRETS_COMMANDS } from '../../src/cli/secrets.js';
import { KeyRing, readKekFile, seal, serializeSealed } from '../../src/secrets/envelope.js';
import { scramSha256Verifier } from '../../src/secrets/postgres.js';
import { ROOT_SPACE, RootPasswords } from '../../src/secrets/root.js';
import type { Store } from '../../src/store/store.js';
import { adminSection, mintAdminCert, writeClientCert } from '../helpers/admin.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { asMysqlUser, createTestMysql, mysqlConnect, mysqlRequiredUnderCi, sharedMysql, type TestMysql } from '../helpers/mysql.js';
import { createTestDatabase, postgresRequiredUnderCi, sharedPostgres, type TestDatabase } from '../helpers/postgres.js';
import { RedisStore } from '../../src/store/redis.js';
import { deletePrefix, inCi, redisServerAvailable, SHARED_REDIS_URL, sharedRedis, startPrivateRedis, uniquePrefix, type PrivateRedis } from '../helpers/redis.js';
import { rabbitApi, rabbitReachable } from '../helpers/secrets.js';

const DEV_ADMIN = 'spiffe://example.org/admin/dev';
const AUDITOR = 'spiffe://example.org/admin/only-auditor';

interface Creds {
  username: string;
  password: string;
  leaseId: string;
}

/** The admin section of startBroker's config plus an auditor-only principal (403 checks). */
function adminConfig(): Promise<Record<string, unknown>> {
  return adminSection([
    { id: DEV_ADMIN, roles: ['auditor', 'operator', 'secrets-admin'] },
    { id: AUDITOR, roles: ['auditor'] },
  ]);
}

/** The active stored admin password of `engine`, decrypted with the dev KEK (what every replica reads). */
async function stored(b: TestBroker, engine: string): Promise<string | undefined> {
  return new RootPasswords(b.broker.store, KeyRing.of(readKekFile(b.material.kekFile)), 't').current(engine);
}

async function rotate(b: TestBroker, engine: string, who = DEV_ADMIN) {
  const admin = mintAdminCert(b.material, who);
  return b.call<{ engine: string; kind: string; rotatedAt: string; audit: unknown }>({
    method: 'POST',
    path: `/v1/admin/secrets-engines/${engine}/rotate-root`,
    cert: admin.cert,
    key: admin.key,
  });
}

async function issue(b: TestBroker, kind: string, role: string): Promise<Creds> {
  const res = await b.call<Creds>({ path: `/v1/secrets/${kind}/${role}/creds`, token: await b.token(), method: 'POST' });
  expect(res.status, res.text).toBe(200);
  return res.json;
}

async function revoke(b: TestBroker, c: Creds): Promise<void> {
  const res = await b.call({ path: `/v1/leases/${c.leaseId}/revoke`, token: await b.token(), method: 'POST' });
  expect(res.status, res.text).toBe(200);
}

async function auditText(b: TestBroker): Promise<string> {
  return (await b.broker.audit.entries(0, b.broker.audit.size)).map((e) => e.toString('utf8')).join('\n');
}

/** Common checks after a successful rotation: the new password is stored, never audited, never the old one. */
async function checkRotated(b: TestBroker, engine: string, kind: string, old: string): Promise<string> {
  const res = await rotate(b, engine);
  expect(res.status, res.text).toBe(200);
  expect(res.json).toMatchObject({ engine, kind, rotatedAt: expect.any(String) });
  const now = await stored(b, engine);
  expect(now).toMatch(/^[A-Za-z0-9_-]{43}$/);
  expect(now).not.toBe(old);
  expect(res.text).not.toContain(now as string);
  const audit = await auditText(b);
  expect(audit).toContain('"action":"secret.rotate-root"');
  expect(audit).toContain(`"secret":"engine/${engine}"`);
  expect(audit).not.toContain(now as string);
  // Sealed at rest: the store record holds no plaintext.
  expect(await b.broker.store.kvGet(ROOT_SPACE, engine)).not.toContain(now as string);
  return now as string;
}

// ─── Redis: a private redis-server with an ACL admin user ──────────────────────────────────────────

const redisAvailable = redisServerAvailable();
it(`redis-server is installed${inCi ? ' (required: CI=true)' : ' (or the Redis rotate-root suite is skipped)'}`, () => {
  if (inCi) expect(redisAvailable).toBe(true);
});

describe.skipIf(!redisAvailable)('rotate-root: Redis ACL admin user', () => {
  let redis: PrivateRedis;
  let b: TestBroker | undefined;
  const dataDir = path.join(mkdtempSync(path.join(tmpdir(), 'tessera-rotate-redis-')), 'data');
  const old = randomBytes(16).toString('hex');
  let secrets: Record<string, unknown>;
  let config: Record<string, unknown>;

  /** AUTH as `user` with `password`: 'OK' or the server's refusal. */
  async function auth(user: string, password: string): Promise<string> {
    const r = new Redis({ port: redis.port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    r.on('error', () => undefined);
    try {
      await r.connect();
      return String(await r.call('AUTH', user, password));
    } catch (err) {
      return (err as Error).message;
    } finally {
      r.disconnect();
    }
  }

  beforeAll(async () => {
    redis = await startPrivateRedis();
    const root = new Redis({ port: redis.port, host: '127.0.0.1', lazyConnect: true });
    await root.connect();
    // The broker's admin: may manage ACL users and kill their clients, nothing else.
    await root.call('ACL', 'SETUSER', 'tessera-admin', 'on', `>${old}`, '+acl', '+client', '+ping', '+auth', '+hello');
    root.disconnect();
    secrets = {
      grants: [{ spiffeIds: ['spiffe://example.org/ns/shop/sa/web'], redisRoles: ['cache', 'nopw'] }],
      redis: [
        { name: 'cache', url: `redis://tessera-admin:${old}@127.0.0.1:${redis.port}`, roles: { cache: { keys: ['cache:*'], commands: ['+get', '+ping'] } } },
        // Logs in as "default" (no user in the URL): rotating it would lock out every anonymous client.
        { name: 'anon', url: redis.url, roles: { nopw: { keys: ['x'], commands: ['+get'] } } },
      ],
    };
    config = await adminConfig();
    b = await startBroker({ secrets, config, dataDir });
  });

  afterAll(async () => {
    await b?.close();
    await redis?.destroy();
  });

  it('rotates: the old password is refused by Redis, the stored one works, issuing and revoking go on', async () => {
    const broker = b as TestBroker;
    const before = await issue(broker, 'redis', 'cache');
    const now = await checkRotated(broker, 'cache', 'redis', old);
    expect(await auth('tessera-admin', old)).toMatch(/WRONGPASS/);
    expect(await auth('tessera-admin', now)).toBe('OK');
    const after = await issue(broker, 'redis', 'cache');
    expect(await auth(after.username, after.password)).toBe('OK');
    await revoke(broker, before);
    await revoke(broker, after);
    expect(await auth(after.username, after.password)).toMatch(/WRONGPASS/);
    expect((await broker.broker.secrets.engines.get('cache')?.health())?.ok).toBe(true);
  });

  it('a restarted broker (another replica on the same store) connects with the stored password', async () => {
    await b?.close();
    b = await startBroker({ secrets, config, dataDir });
    const c = await issue(b, 'redis', 'cache');
    expect(await auth(c.username, c.password)).toBe('OK');
    await revoke(b, c);
  });

  it('rotating twice: each password replaces the one before', async () => {
    const broker = b as TestBroker;
    const first = (await stored(broker, 'cache')) as string;
    const second = await checkRotated(broker, 'cache', 'redis', first);
    expect(await auth('tessera-admin', first)).toMatch(/WRONGPASS/);
    expect(await auth('tessera-admin', second)).toBe('OK');
  });

  it('refuses the "default" user, an unknown engine, and a caller without the role', async () => {
    const broker = b as TestBroker;
    const anon = await rotate(broker, 'anon');
    expect(anon.status, anon.text).toBe(409);
    expect(anon.json).toEqual({ error: 'root_rotation_refused', message: expect.stringMatching(/"default" user/) });
    expect(await stored(broker, 'anon')).toBeUndefined();
    expect(await auth('default', 'anything')).toBe('OK'); // still open: nothing was changed
    const unknown = await rotate(broker, 'nope');
    expect([unknown.status, (unknown.json as unknown as { error: string }).error]).toEqual([404, 'not_found']);
    const auditor = await rotate(broker, 'cache', AUDITOR);
    expect(auditor.status, auditor.text).toBe(403);
  });

  it('crash safety: a pending password the backend took is kept at start; one it never got is dropped', async () => {
    let broker = b as TestBroker;
    const active = (await stored(broker, 'cache')) as string;
    const ring = KeyRing.of(readKekFile(broker.material.kekFile));
    const store: Store = broker.broker.store;
    const record = JSON.parse((await store.kvGet(ROOT_SPACE, 'cache')) as string) as Record<string, unknown>;

    // 1. Crash after "pending" was written, before the backend changed: the old active one stays.
    const never = randomBytes(16).toString('hex');
    await store.kvPut(ROOT_SPACE, 'cache', JSON.stringify({ ...record, pending: JSON.parse(serializeSealed(seal(ring, Buffer.from(never), 'root/cache'))) }));
    await broker.close();
    b = broker = await startBroker({ secrets, config, dataDir });
    await broker.broker.secrets.settleRoots();
    expect(JSON.parse((await broker.broker.store.kvGet(ROOT_SPACE, 'cache')) as string)).not.toHaveProperty('pending');
    expect(await stored(broker, 'cache')).toBe(active);
    await revoke(broker, await issue(broker, 'redis', 'cache'));

    // 2. Crash after the backend changed, before "active": the pending one is the only one that works.
    const taken = randomBytes(16).toString('hex');
    const root = new Redis({ port: redis.port, host: '127.0.0.1', lazyConnect: true });
    await root.connect();
    await root.call('ACL', 'SETUSER', 'tessera-admin', `>${taken}`, `<${active}`);
    root.disconnect();
    const rec2 = JSON.parse((await broker.broker.store.kvGet(ROOT_SPACE, 'cache')) as string) as Record<string, unknown>;
    await broker.broker.store.kvPut(ROOT_SPACE, 'cache', JSON.stringify({ ...rec2, pending: JSON.parse(serializeSealed(seal(ring, Buffer.from(taken), 'root/cache'))) }));
    await broker.close();
    b = broker = await startBroker({ secrets, config, dataDir });
    await broker.broker.secrets.settleRoots();
    expect(await stored(broker, 'cache')).toBe(taken);
    await revoke(broker, await issue(broker, 'redis', 'cache'));
  });

  it('the CLI: tessera secrets rotate-root ENGINE over the admin API', async () => {
    const broker = b as TestBroker;
    const before = (await stored(broker, 'cache')) as string;
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-rotate-cli-'));
    const files = writeClientCert(dir, 'admin', mintAdminCert(broker.material, DEV_ADMIN));
    const cmd = SECRETS_COMMANDS.find((c) => c.name === 'secrets rotate-root');
    let out = '';
    const io = { stdout: (s: string) => (out += s), stderr: (s: string) => (out += s) };
    const argv = ['cache', '--url', broker.url, '--cacert', broker.material.bundleFile, '--cert', files.certFile, '--key', files.keyFile];
    expect(await cmd?.run(argv, io as never)).toBe(0);
    expect(out).toMatch(/rotated the admin password of redis engine cache/);
    const after = (await stored(broker, 'cache')) as string;
    expect(after).not.toBe(before);
    expect(out).not.toContain(after);
    await expect(cmd?.run(['nope', '--url', broker.url, '--cacert', broker.material.bundleFile, '--cert', files.certFile, '--key', files.keyFile], io as never)).rejects.toThrow(
      /404 not_found: no secrets engine named "nope"/,
    );
  });
});

// ─── MariaDB / MySQL: a dedicated admin user (root is never touched) ───────────────────────────────

const mysqlReach = await sharedMysql();
mysqlRequiredUnderCi(mysqlReach);

describe.skipIf(!mysqlReach.ok)('rotate-root: MariaDB admin user', () => {
  let db: TestMysql;
  let b: TestBroker | undefined;
  const dataDir = path.join(mkdtempSync(path.join(tmpdir(), 'tessera-rotate-mysql-')), 'data');
  const old = randomBytes(16).toString('hex');
  let adminUser: string;
  let secrets: Record<string, unknown>;

  beforeAll(async () => {
    db = await createTestMysql('rotate');
    // Named with the run's prefix, so db.drop() removes it with the users it made.
    adminUser = `${db.prefix}admin`;
    await db.query('CREATE USER ?@? IDENTIFIED BY ?', [adminUser, '%', old]);
    await db.query(`GRANT SELECT ON ${mysql.escapeId(db.name)}.orders TO ?@? WITH GRANT OPTION`, [adminUser, '%']);
    await db.query('GRANT CREATE USER, PROCESS, CONNECTION ADMIN, SELECT ON *.* TO ?@?', [adminUser, '%']).catch(async () =>
      db.query('GRANT CREATE USER, PROCESS, SUPER, SELECT ON *.* TO ?@?', [adminUser, '%']),
    );
    secrets = {
      grants: [{ spiffeIds: ['spiffe://example.org/ns/shop/sa/web'], mysqlRoles: ['reader'] }],
      mysql: [
        {
          name: 'maria',
          url: `mysql://${encodeURIComponent(adminUser)}:${old}@127.0.0.1:3306`,
          usernamePrefix: db.prefix,
          roles: { reader: { ttlSeconds: 60, grants: [`GRANT SELECT ON ${mysql.escapeId(db.name)}.orders TO {{name}}@'%'`] } },
        },
      ],
    };
    b = await startBroker({ secrets, config: await adminConfig(), dataDir });
  });

  afterAll(async () => {
    await b?.close();
    await db?.drop();
  });

  it('rotates: MariaDB refuses the old password, the stored one logs in, issuing goes on; a restart uses the stored one', async () => {
    const broker = b as TestBroker;
    const before = await issue(broker, 'mysql', 'reader');
    const now = await checkRotated(broker, 'maria', 'mysql', old);
    expect(await asMysqlUser(adminUser, old, db.name, 'SELECT 1')).toMatchObject({ ok: false, errno: 1045 });
    expect(await asMysqlUser(adminUser, now, db.name, 'SELECT 1 AS x')).toEqual({ ok: true, rows: [{ x: 1 }] });
    const after = await issue(broker, 'mysql', 'reader');
    expect(await asMysqlUser(after.username, after.password, db.name, 'SELECT COUNT(*) AS n FROM orders')).toEqual({ ok: true, rows: [{ n: 3 }] });
    await revoke(broker, before);
    await broker.close();
    b = await startBroker({ secrets, config: await adminConfig(), dataDir });
    const third = await issue(b, 'mysql', 'reader');
    expect(await asMysqlUser(third.username, third.password, db.name, 'SELECT 1 AS x')).toEqual({ ok: true, rows: [{ x: 1 }] });
    await revoke(b, after);
    await revoke(b, third);
    expect(await db.users()).toEqual([adminUser]);
    // root was never touched: it still logs in with its empty password.
    const root = await mysqlConnect();
    await root.end();
  });
});

const sharedStore = await sharedRedis();

describe.skipIf(!mysqlReach.ok || !sharedStore.ok)('rotate-root: two live replicas on one Redis store (MariaDB engine)', () => {
  let db: TestMysql;
  let a: TestBroker | undefined;
  let c: TestBroker | undefined;
  const prefix = uniquePrefix('rotate-root');
  const old = randomBytes(16).toString('hex');
  let adminUser: string;

  beforeAll(async () => {
    db = await createTestMysql('rotrep');
    adminUser = `${db.prefix}admin`;
    await db.query('CREATE USER ?@? IDENTIFIED BY ?', [adminUser, '%', old]);
    await db.query(`GRANT SELECT ON ${mysql.escapeId(db.name)}.orders TO ?@? WITH GRANT OPTION`, [adminUser, '%']);
    await db.query('GRANT CREATE USER, PROCESS, CONNECTION ADMIN, SELECT ON *.* TO ?@?', [adminUser, '%']);
  });

  afterAll(async () => {
    await a?.close();
    await c?.close();
    await deletePrefix(prefix);
    await db?.drop();
  });

  it('a rotation on replica A is used by the already running replica B on its next connection', async () => {
    const secrets = {
      grants: [{ spiffeIds: ['spiffe://example.org/ns/shop/sa/web'], mysqlRoles: ['reader'] }],
      mysql: [
        {
          name: 'maria',
          url: `mysql://${encodeURIComponent(adminUser)}:${old}@127.0.0.1:3306`,
          usernamePrefix: db.prefix,
          roles: { reader: { ttlSeconds: 60, grants: [`GRANT SELECT ON ${mysql.escapeId(db.name)}.orders TO {{name}}@'%'`] } },
        },
      ],
    };
    // Not a test of Redis timeouts: a generous command timeout keeps a loaded machine from failing it.
    const store = () => RedisStore.connect({ url: SHARED_REDIS_URL, prefix, commandTimeoutMs: 10_000 });
    a = await startBroker({ store, secrets, config: { ...(await adminConfig()), replicaId: 'replica-a' } });
    c = await startBroker({ store, secrets, config: { ...(await adminConfig()), replicaId: 'replica-b' } });
    const onB = await issue(c, 'mysql', 'reader'); // B's pool is logged in with the config's password
    const now = await checkRotated(a, 'maria', 'mysql', old);
    expect(await asMysqlUser(adminUser, old, db.name, 'SELECT 1')).toMatchObject({ ok: false, errno: 1045 });
    // End every admin session (B's pool logged in before the rotation): B must log in again, with the stored password.
    for (const r of await db.query('SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?', [adminUser])) {
      await db.query('KILL CONNECTION ?', [Number(r.ID)]).catch(() => undefined);
    }
    const again = await issue(c, 'mysql', 'reader');
    expect(await asMysqlUser(again.username, again.password, db.name, 'SELECT COUNT(*) AS n FROM orders')).toEqual({ ok: true, rows: [{ n: 3 }] });
    expect(await asMysqlUser(adminUser, now, db.name, 'SELECT 1 AS x')).toEqual({ ok: true, rows: [{ x: 1 }] });
    await revoke(c, onB);
    await revoke(a, again);
    expect(await db.users()).toEqual([adminUser]);
  });
});

// ─── RabbitMQ: a dedicated administrator user (guest is never touched) ─────────────────────────────

const rabbit = rabbitApi;
const rabbitReach = await rabbitReachable();
it(`RabbitMQ management API is reachable${inCi ? ' (required: CI=true)' : ' (or the RabbitMQ rotate-root suite is skipped)'}`, () => {
  if (inCi) expect(rabbitReach.ok, rabbitReach.reason).toBe(true);
});

describe.skipIf(!rabbitReach.ok)('rotate-root: RabbitMQ administrator user', () => {
  const prefix = `t${randomBytes(3).toString('hex')}_`;
  const adminUser = `${prefix}admin`;
  const old = randomBytes(16).toString('hex');
  const dataDir = path.join(mkdtempSync(path.join(tmpdir(), 'tessera-rotate-mq-')), 'data');
  let b: TestBroker | undefined;
  let secrets: Record<string, unknown>;
  const basic = (user: string, pw: string): string => `Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}`;

  beforeAll(async () => {
    expect((await rabbit('PUT', `/users/${adminUser}`, { password: old, tags: 'administrator' })).status).toBeLessThan(300);
    expect((await rabbit('PUT', `/permissions/%2F/${adminUser}`, { configure: '.*', write: '.*', read: '.*' })).status).toBeLessThan(300);
    const role = { ttlSeconds: 60, vhosts: { '/': { configure: '^app\\.', write: '^app\\.', read: '^app\\.' } } };
    secrets = {
      grants: [{ spiffeIds: ['spiffe://example.org/ns/shop/sa/web'], rabbitmqRoles: ['app'] }],
      rabbitmq: [{ name: 'mq', url: `http://${adminUser}:${old}@127.0.0.1:15672`, usernamePrefix: prefix, roles: { app: role } }],
    };
    b = await startBroker({ secrets, config: await adminConfig(), dataDir });
  });

  afterAll(async () => {
    await b?.close();
    const users = await rabbit('GET', '/users').catch(() => ({ json: [] }));
    for (const u of (users.json as { name: string }[]) ?? []) if (u.name.startsWith(prefix)) await rabbit('DELETE', `/users/${encodeURIComponent(u.name)}`);
  });

  it('rotates keeping the administrator tag: the old password gets 401, issuing goes on; a restart uses the stored one', async () => {
    const broker = b as TestBroker;
    const before = await issue(broker, 'rabbitmq', 'app');
    const now = await checkRotated(broker, 'mq', 'rabbitmq', old);
    expect((await rabbit('GET', '/whoami', undefined, basic(adminUser, old))).status).toBe(401);
    const me = await rabbit('GET', '/whoami', undefined, basic(adminUser, now));
    expect(me.status).toBe(200);
    expect(JSON.stringify((me.json as { tags: unknown }).tags)).toContain('administrator');
    const after = await issue(broker, 'rabbitmq', 'app');
    expect((await rabbit('GET', '/whoami', undefined, basic(after.username, after.password))).status).toBe(401); // no management tag: AMQP only
    await revoke(broker, before);
    await broker.close();
    b = await startBroker({ secrets, config: await adminConfig(), dataDir });
    await revoke(b, after);
    expect((await rabbit('GET', `/users/${after.username}`)).status).toBe(404);
  });
});

// ─── PostgreSQL: a dedicated LOGIN CREATEROLE admin role ───────────────────────────────────────────

const pgReach = await sharedPostgres();
postgresRequiredUnderCi(pgReach);

describe.skipIf(!pgReach.ok)('rotate-root: PostgreSQL admin role', () => {
  let db: TestDatabase;
  let b: TestBroker | undefined;
  const dataDir = path.join(mkdtempSync(path.join(tmpdir(), 'tessera-rotate-pg-')), 'data');
  const old = randomBytes(16).toString('hex');
  let adminRole: string;
  let secrets: Record<string, unknown>;

  /** Whether `password` is the one PostgreSQL stores for the admin role (its SCRAM verifier recomputed). */
  async function isPassword(password: string): Promise<boolean> {
    const r = await db.query<{ rolpassword: string | null }>('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [adminRole]);
    const v = r.rows[0]?.rolpassword ?? '';
    const m = /^SCRAM-SHA-256\$(\d+):([^$]+)\$/.exec(v);
    if (m === null) return false;
    return (await scramSha256Verifier(password, Buffer.from(m[2] as string, 'base64'), Number(m[1]))) === v;
  }

  beforeAll(async () => {
    db = await createTestDatabase('rotate');
    adminRole = `${db.prefix}admin`;
    await db.query(`CREATE ROLE ${pg.escapeIdentifier(adminRole)} WITH LOGIN CREATEROLE NOSUPERUSER PASSWORD ${pg.escapeLiteral(await scramSha256Verifier(old))}`);
    await db.query(`GRANT CONNECT ON DATABASE ${pg.escapeIdentifier(db.name)} TO ${pg.escapeIdentifier(adminRole)} WITH GRANT OPTION`);
    secrets = {
      grants: [{ spiffeIds: ['spiffe://example.org/ns/shop/sa/web'], postgresRoles: ['login'] }],
      postgres: [
        {
          name: 'pg',
          url: `postgres://${encodeURIComponent(adminRole)}:${old}@127.0.0.1:5432/${db.name}`,
          usernamePrefix: db.prefix,
          roles: { login: { ttlSeconds: 60, grants: [`GRANT CONNECT ON DATABASE ${pg.escapeIdentifier(db.name)} TO {{name}}`] } },
        },
      ],
    };
    b = await startBroker({ secrets, config: await adminConfig(), dataDir });
  });

  afterAll(async () => {
    await b?.close();
    await db?.drop();
  });

  it('rotates with ALTER ROLE (a SCRAM verifier): the stored password is the role\'s, the old one is not; issuing goes on', async () => {
    // This machine's pg_hba trusts loopback, so a refused login cannot be shown here: the stored
    // SCRAM verifier is checked instead (it is what a password-checking server compares against).
    expect(await isPassword(old)).toBe(true);
    const broker = b as TestBroker;
    const before = await issue(broker, 'postgres', 'login');
    const now = await checkRotated(broker, 'pg', 'postgres', old);
    expect(await isPassword(now)).toBe(true);
    expect(await isPassword(old)).toBe(false);
    const after = await issue(broker, 'postgres', 'login');
    await revoke(broker, before);
    await broker.close();
    b = await startBroker({ secrets, config: await adminConfig(), dataDir });
    await revoke(b, after);
    await revoke(b, await issue(b, 'postgres', 'login'));
  });
});
