/**
 * Dynamic RabbitMQ users against the real RabbitMQ of this machine (AMQP on 5672, management API on
 * 15672, guest/guest): the issued user logs in over AMQP and can do exactly what its vhost
 * permissions allow (the broker refuses the rest with ACCESS_REFUSED); revoke and expiry delete it and
 * close its live connections; a revoke while the API is unreachable is kept and retried.
 */
import { randomBytes } from 'node:crypto';
import amqp from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LEASE_SPACE, type Lease } from '../../src/secrets/leases.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { TestClock } from '../helpers/clock.js';
import { startPgProxy, type PgProxy } from '../helpers/postgres.js';
import { freePort, inCi } from '../helpers/redis.js';
import { engineCalls, expectError, RABBIT_API, rabbitApi, rabbitReachable, WEB, type EngineCreds as Creds } from '../helpers/secrets.js';

const api = (method: string, p: string): Promise<{ status: number; json: unknown }> => rabbitApi(method, p);
const reach = await rabbitReachable();
if (!reach.ok) console.warn(`[rabbitmq] RabbitMQ suite SKIPPED: ${reach.reason} (rabbitmq-plugins enable rabbitmq_management)` + (inCi ? ' (CI=true: this fails the run)' : ''));

it(`RabbitMQ with its management API is reachable${inCi ? ' (required: CI=true)' : ' (or the RabbitMQ suite is skipped)'}`, () => {
  if (inCi) expect(reach.ok, reach.reason).toBe(true);
});

describe.skipIf(!reach.ok)('dynamic RabbitMQ users', () => {
  const prefix = `t${randomBytes(3).toString('hex')}_`;
  let b: TestBroker;
  let proxy: PgProxy;
  const clock = new TestClock();
  let secretsConfig: Record<string, unknown>;
  const opened: amqp.ChannelModel[] = [];

  beforeAll(async () => {
    proxy = await startPgProxy({ host: '127.0.0.1', port: 15672 });
    const closedPort = await freePort();
    const role = { ttlSeconds: 60, maxTtlSeconds: 120, vhosts: { '/': { configure: '^app\\.', write: '^app\\.', read: '^app\\.' } } };
    secretsConfig = {
      grants: [{ spiffeIds: [WEB], rabbitmqRoles: ['app', 'offline', 'proxied'] }],
      rabbitmq: [
        { name: 'mq', url: 'http://guest:guest@127.0.0.1:15672', usernamePrefix: prefix, roles: { app: role } },
        { name: 'mqdown', url: `http://guest:guest@127.0.0.1:${closedPort}`, usernamePrefix: prefix, connectTimeoutMs: 1000, roles: { offline: role } },
        { name: 'mqflaky', url: `http://guest:guest@127.0.0.1:${proxy.port}`, usernamePrefix: prefix, connectTimeoutMs: 1000, roles: { proxied: role } },
      ],
    };
    b = await startBroker({ secrets: secretsConfig, clock });
  });

  afterAll(async () => {
    for (const c of opened) await c.close().catch(() => undefined);
    await b?.close();
    await proxy?.close();
    const users = await api('GET', '/users').catch(() => ({ json: [] }));
    for (const u of (users.json as { name: string }[]) ?? []) if (u.name.startsWith(prefix)) await api('DELETE', `/users/${encodeURIComponent(u.name)}`);
  });

  const { token, creds } = engineCalls(() => b, 'rabbitmq', 'app');
  async function connect(c: Creds, vhost = '/'): Promise<amqp.ChannelModel> {
    const conn = await amqp.connect({ hostname: '127.0.0.1', port: 5672, username: c.username, password: c.password, vhost });
    conn.on('error', () => undefined);
    opened.push(conn);
    return conn;
  }
  const exists = async (user: string): Promise<boolean> => (await api('GET', `/users/${encodeURIComponent(user)}`)).status === 200;
  /** Rejects with the channel's close reason when the broker refuses the operation. */
  async function onChannel(conn: amqp.ChannelModel, f: (ch: amqp.Channel) => Promise<unknown>): Promise<string> {
    const ch = await conn.createChannel();
    ch.on('error', () => undefined);
    try {
      await f(ch);
      await ch.close();
      return 'ok';
    } catch (err) {
      return (err as Error).message;
    }
  }

  it('creates a user that logs in over AMQP and may touch exactly app.* on vhost /; the rest is ACCESS_REFUSED', async () => {
    const before = b.broker.audit.size;
    const res = await creds();
    expect(res.status, res.text).toBe(200);
    const c = res.json;
    expect(c.username).toMatch(new RegExp(`^${prefix}app_[0-9a-f]{16}$`));
    const conn = await connect(c);
    const q = `app.${randomBytes(4).toString('hex')}`;
    expect(await onChannel(conn, async (ch) => ch.assertQueue(q, { exclusive: true, autoDelete: true }))).toBe('ok');
    expect(await onChannel(conn, async (ch) => ch.assertQueue(`other.${q}`, { exclusive: true }))).toMatch(/ACCESS_REFUSED/);
    expect(await onChannel(conn, async (ch) => ch.checkQueue('other.nothing'))).toMatch(/ACCESS_REFUSED|NOT_FOUND/);
    // No tag: the management API refuses it; a wrong password is refused at login.
    const mgmt = await fetch(`${RABBIT_API}/whoami`, { headers: { authorization: `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}` } });
    expect(mgmt.status).toBe(401);
    await expect(amqp.connect({ hostname: '127.0.0.1', username: c.username, password: 'wrong' })).rejects.toThrow(/ACCESS_REFUSED|403/);

    const lease = JSON.parse((await b.broker.store.kvGet(LEASE_SPACE, c.leaseId)) as string) as Lease;
    expect(lease).toMatchObject({ kind: 'rabbitmq', engine: 'mq', role: 'app', username: c.username, secret: 'rabbitmq/app' });
    const entries = (await b.broker.audit.entries(before, b.broker.audit.size)).map((e) => e.toString('utf8'));
    expect(JSON.parse(entries[0] as string)).toMatchObject({ type: 'secret.issued', secret: 'rabbitmq/app', dbUsername: c.username });
    expect(entries.join('\n')).not.toContain(c.password);
  });

  it('revoke by the holder deletes the user and closes its live connection', async () => {
    const c = (await creds()).json;
    const conn = await connect(c);
    const closed = new Promise<string>((resolve) => conn.on('close', (err?: Error) => resolve(err?.message ?? 'closed')));
    const res = await b.call({ path: `/v1/leases/${c.leaseId}/revoke`, token: await token(), method: 'POST' });
    expect(res.status, res.text).toBe(200);
    expect(await Promise.race([closed, new Promise((r) => setTimeout(() => r('still open'), 15_000))])).not.toBe('still open');
    expect(await exists(c.username)).toBe(false);
    await expect(amqp.connect({ hostname: '127.0.0.1', username: c.username, password: c.password })).rejects.toThrow();
  });

  it('renewals stop at the max TTL; the sweeper deletes an expired user', async () => {
    const c = (await creds()).json;
    clock.advance(50_000);
    expect((await b.call({ path: `/v1/leases/${c.leaseId}/renew`, token: await token(), method: 'POST' })).status).toBe(200);
    clock.advance(50_000);
    const r2 = await b.call<{ expiresAt: string }>({ path: `/v1/leases/${c.leaseId}/renew`, token: await token(), body: { ttlSeconds: 3600 } });
    expect(r2.json.expiresAt).toBe(c.maxExpiresAt);
    clock.advance(21_000);
    const swept = await b.broker.secrets.leases.sweepOnce();
    expect(swept.revoked).toContain(c.leaseId);
    expect(await exists(c.username)).toBe(false);
  });

  it('hostile role names are refused; the API unreachable is 503 with no lease', async () => {
    for (const role of [encodeURIComponent('app/../../users/guest'), 'App', encodeURIComponent('app%2F..')]) {
      const res = await creds(role);
      expect([400, 404], `${role}: ${res.status}`).toContain(res.status);
    }
    expect(await exists('guest')).toBe(true);
    const before = (await b.broker.store.kvList(LEASE_SPACE)).length;
    expectError(await creds('offline'), 503, 'engine_unavailable');
    expect((await b.broker.store.kvList(LEASE_SPACE)).length).toBe(before);
  });

  it('a revoke while the API is unreachable is kept and completes once it is back', async () => {
    const c = (await creds('proxied')).json;
    await proxy.cut();
    try {
      expectError(await b.call({ path: `/v1/leases/${c.leaseId}/revoke`, token: await token(), method: 'POST' }), 503, 'engine_unavailable');
      expect(JSON.parse((await b.broker.store.kvGet(LEASE_SPACE, c.leaseId)) as string)).toMatchObject({ state: 'revoking', attempts: 1 });
      expect(await exists(c.username)).toBe(true);
    } finally {
      await proxy.restore();
    }
    clock.advance(10 * 60_000);
    expect((await b.broker.secrets.leases.sweepOnce()).revoked).toContain(c.leaseId);
    expect(await exists(c.username)).toBe(false);
  });
});
