/**
 * Dynamic Redis ACL users against a real redis-server (a private child on its own port, so the shared
 * Redis is never touched): the issued user authenticates and can run exactly the commands, keys and
 * channels its role names (everything else is NOPERM from the server); revoke and expiry kill its live
 * connections and delete it; a revoke while Redis is unreachable is kept and retried until it succeeds,
 * also across a broker restart.
 */
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LEASE_SPACE, type Lease } from '../../src/secrets/leases.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { TestClock } from '../helpers/clock.js';
import { startPgProxy, type PgProxy } from '../helpers/postgres.js';
import { freePort, inCi, redisServerAvailable, startPrivateRedis, type PrivateRedis } from '../helpers/redis.js';
import { engineCalls, expectError, WEB, type EngineCreds as Creds } from '../helpers/secrets.js';

const available = redisServerAvailable();
if (!available) console.warn('[redis] Redis ACL engine suite SKIPPED: redis-server is not installed' + (inCi ? ' (CI=true: this fails the run)' : ''));

it(`redis-server is installed${inCi ? ' (required: CI=true)' : ' (or the Redis ACL suite is skipped)'}`, () => {
  if (inCi) expect(available, 'CI=true but redis-server is missing').toBe(true);
});

describe.skipIf(!available)('dynamic Redis ACL users', () => {
  let redis: PrivateRedis;
  let admin: Redis;
  let proxy: PgProxy;
  let b: TestBroker;
  const clock = new TestClock();
  let secretsConfig: Record<string, unknown>;
  const cacheRole = { ttlSeconds: 60, maxTtlSeconds: 120, keys: ['cache:*'], channels: ['events:*'], commands: ['+@read', '+@write', '+@connection', '+publish', '+subscribe', '-@dangerous'] };
  const opened: Redis[] = [];

  beforeAll(async () => {
    redis = await startPrivateRedis();
    admin = new Redis({ port: redis.port, host: '127.0.0.1', lazyConnect: true });
    await admin.connect();
    proxy = await startPgProxy({ host: '127.0.0.1', port: redis.port });
    const closedPort = await freePort();
    secretsConfig = {
      grants: [{ spiffeIds: [WEB], redisRoles: ['cache', 'reader', 'flash', 'offline', 'proxied'] }],
      redis: [
        {
          name: 'cache',
          url: redis.url,
          roles: {
            cache: cacheRole,
            reader: { keys: ['cache:*'], commands: ['+get', '+ping'] },
            flash: { ttlSeconds: 1, maxTtlSeconds: 2, keys: ['cache:*'], commands: ['+get'] },
          },
        },
        { name: 'rdown', url: `redis://127.0.0.1:${closedPort}`, connectTimeoutMs: 1000, roles: { offline: { keys: ['x'], commands: ['+get'] } } },
        { name: 'rflaky', url: `redis://127.0.0.1:${proxy.port}`, connectTimeoutMs: 1000, roles: { proxied: { keys: ['cache:*'], commands: ['+get', '+ping'] } } },
      ],
    };
    b = await startBroker({ secrets: secretsConfig, clock });
  });

  afterAll(async () => {
    for (const c of opened) c.disconnect();
    await b?.close();
    admin?.disconnect();
    await proxy?.close();
    await redis?.destroy();
  });

  const { token, creds, auditEntries } = engineCalls(() => b, 'redis', 'cache');
  async function login(c: Creds, port = redis.port): Promise<Redis> {
    const r = new Redis({ host: '127.0.0.1', port, username: c.username, password: c.password, lazyConnect: true, enableReadyCheck: false, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    r.on('error', () => undefined);
    opened.push(r);
    await r.connect();
    return r;
  }
  /** AUTH as the user on a fresh unauthenticated connection: 'OK' or the server's refusal. */
  async function auth(user: string, password: string): Promise<string> {
    const anon = new Redis({ host: '127.0.0.1', port: redis.port, lazyConnect: true, enableReadyCheck: false });
    anon.on('error', () => undefined);
    try {
      await anon.connect();
      return String(await anon.call('AUTH', user, password));
    } catch (err) {
      return (err as Error).message;
    } finally {
      anon.disconnect();
    }
  }
  const exists = async (user: string): Promise<boolean> => (await admin.call('ACL', 'GETUSER', user)) !== null;
  const clientsOf = async (user: string): Promise<number> =>
    String(await admin.call('CLIENT', 'LIST')).split('\n').filter((l) => l.includes(` user=${user} `)).length;

  it('creates an ACL user that can run exactly its role: keys, channels and commands; the rest is NOPERM', async () => {
    await admin.set('cache:a', '1');
    await admin.set('secret:a', 'x');
    const before = b.broker.audit.size;
    const res = await creds();
    expect(res.status, res.text).toBe(200);
    const c = res.json;
    expect(c.username).toMatch(/^tessera_cache_[0-9a-f]{16}$/);
    const u = await login(c);
    expect(await u.get('cache:a')).toBe('1');
    expect(await u.set('cache:b', '2')).toBe('OK');
    await expect(u.get('secret:a')).rejects.toThrow(/NOPERM/);
    await expect(u.set('other', '1')).rejects.toThrow(/NOPERM/);
    await expect(u.flushall()).rejects.toThrow(/NOPERM/);
    await expect(u.call('ACL', 'SETUSER', c.username, '+@all', '~*')).rejects.toThrow(/NOPERM/);
    await expect(u.call('CONFIG', 'GET', 'dir')).rejects.toThrow(/NOPERM/);
    expect(await u.publish('events:x', 'hi')).toBe(0);
    await expect(u.publish('admin:x', 'hi')).rejects.toThrow(/NOPERM/);
    // Wrong password: refused by the server.
    expect(await auth(c.username, 'wrong')).toMatch(/^WRONGPASS/);
    expect(await auth(c.username, c.password)).toBe('OK');
    // A second role with only +get: SET is refused.
    const r2 = (await creds('reader')).json;
    const u2 = await login(r2);
    expect(await u2.get('cache:a')).toBe('1');
    await expect(u2.set('cache:a', '3')).rejects.toThrow(/NOPERM/);

    const lease = (JSON.parse((await b.broker.store.kvGet(LEASE_SPACE, c.leaseId)) as string)) as Lease;
    expect(lease).toMatchObject({ kind: 'redis', engine: 'cache', role: 'cache', username: c.username, secret: 'redis/cache' });
    const entries = await auditEntries(before);
    expect(entries[0]).toMatchObject({ type: 'secret.issued', secret: 'redis/cache', dbUsername: c.username, leaseId: c.leaseId });
    expect(JSON.stringify(entries)).not.toContain(c.password);
  });

  it('revoke by the holder kills live connections and deletes the user', async () => {
    const c = (await creds()).json;
    const u = await login(c);
    expect(await u.ping()).toBe('PONG');
    expect(await clientsOf(c.username)).toBe(1);
    const res = await b.call({ path: `/v1/leases/${c.leaseId}/revoke`, token: await token(), method: 'POST' });
    expect(res.status, res.text).toBe(200);
    await expect(u.ping()).rejects.toThrow();
    expect(await clientsOf(c.username)).toBe(0);
    expect(await exists(c.username)).toBe(false);
    expect(await auth(c.username, c.password)).toMatch(/^WRONGPASS/);
  });

  it('renewals stop at the max TTL; the sweeper deletes an expired user and kills its connection', async () => {
    const c = (await creds()).json;
    const u = await login(c);
    clock.advance(50_000);
    expect((await b.call({ path: `/v1/leases/${c.leaseId}/renew`, token: await token(), method: 'POST' })).status).toBe(200);
    clock.advance(50_000);
    const r2 = await b.call<{ expiresAt: string }>({ path: `/v1/leases/${c.leaseId}/renew`, token: await token(), body: { ttlSeconds: 3600 } });
    expect(r2.json.expiresAt).toBe(c.maxExpiresAt);
    clock.advance(21_000);
    expectError(await b.call({ path: `/v1/leases/${c.leaseId}/renew`, token: await token(), method: 'POST' }), 404, 'not_found');
    const before = b.broker.audit.size;
    const swept = await b.broker.secrets.leases.sweepOnce();
    expect(swept.revoked).toContain(c.leaseId);
    await expect(u.ping()).rejects.toThrow();
    expect(await exists(c.username)).toBe(false);
    expect(await auditEntries(before)).toEqual(expect.arrayContaining([expect.objectContaining({ type: 'lease.revoked', reason: 'expired', dbUsername: c.username })]));
  });

  it('hostile role names are refused before Redis sees anything; ungranted identities get 403', async () => {
    const users = (await admin.call('ACL', 'USERS')) as string[];
    for (const role of [encodeURIComponent('cache +@all ~*'), encodeURIComponent('cache\r\nFLUSHALL'), 'Cache', encodeURIComponent('../cache')]) {
      const res = await creds(role);
      expect([400, 404], `${role}: ${res.status}`).toContain(res.status);
    }
    expectError(await creds('cache', { namespace: 'shop', serviceAccount: 'cart' }), 403, 'forbidden');
    expect((await admin.call('ACL', 'USERS')) as string[]).toEqual(users);
  });

  it('Redis unreachable: 503 engine_unavailable and no lease', async () => {
    const before = (await b.broker.store.kvList(LEASE_SPACE)).length;
    expectError(await creds('offline'), 503, 'engine_unavailable');
    expect((await b.broker.store.kvList(LEASE_SPACE)).length).toBe(before);
  });

  it('a revoke while Redis is unreachable is kept, survives a restart, and completes when Redis is back', async () => {
    const dataDir = path.join(b.dir, 'redis-restart-data');
    const own = new TestClock();
    const first = await startBroker({ secrets: secretsConfig, dataDir, clock: own });
    let c: Creds;
    try {
      const res = await first.call<Creds>({ path: '/v1/secrets/redis/proxied/creds', token: await first.token(), method: 'POST' });
      expect(res.status, res.text).toBe(200);
      c = res.json;
      const u = await login(c);
      await proxy.cut();
      expectError(await first.call({ path: `/v1/leases/${c.leaseId}/revoke`, token: await first.token(), method: 'POST' }), 503, 'engine_unavailable');
      expect(JSON.parse((await first.broker.store.kvGet(LEASE_SPACE, c.leaseId)) as string)).toMatchObject({ state: 'revoking', attempts: 1 });
      // Still a working user (directly, not through the cut proxy): nothing is forgotten.
      expect(await u.get('cache:a')).toBe('1');
    } finally {
      await first.close();
      await proxy.restore();
    }
    const second = await startBroker({ secrets: secretsConfig, dataDir, clock: own });
    try {
      own.advance(10 * 60_000);
      expect((await second.broker.secrets.leases.sweepOnce()).revoked).toContain(c.leaseId);
      expect(await exists(c.username)).toBe(false);
      expect(await clientsOf(c.username)).toBe(0);
    } finally {
      await second.close();
    }
  });
});
