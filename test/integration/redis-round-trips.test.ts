/**
 * Redis round trips per issuance, counted so they cannot creep back: a broker on a private
 * redis-server (AOF, appendfsync always), MONITOR on it, and sequential issuances. Every command the
 * broker's client sends is one round trip (none are pipelined together on this path); commands run
 * inside a script (MONITOR source "lua") are not. The registration poll (one GET every 250 ms, not per
 * request) and the federation poll (a list of the federation spaces once a second, not per request) are
 * left out by key; the background checkpoint timer is set far beyond the test.
 *
 * Per X.509 or JWT issuance with rate limits on: the rate-limit counter, the caller's revocation MGET,
 * the audit append (with the issuance's revocation and freeze records checked in the same script) and
 * the checkpoint compare-and-append = 4; with limits off, 3.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import { once } from 'node:events';
import { RedisStore } from '../../src/store/redis.js';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';
import { redisServerAvailable, startPrivateRedis, type PrivateRedis } from '../helpers/redis.js';

const haveServer = redisServerAvailable();
if (!haveServer) console.warn('[redis] round-trip test SKIPPED: the redis-server binary is not on PATH');

describe.skipIf(!haveServer && process.env.CI !== 'true')('Redis round trips per issuance', () => {
  let redis: PrivateRedis;
  const brokers: TestBroker[] = [];
  beforeAll(async () => {
    redis = await startPrivateRedis();
  });
  afterAll(async () => {
    for (const b of brokers) await b.close().catch(() => {});
    await redis?.destroy();
  });

  /**
   * Top-level commands the broker sent while `work` ran, minus the background polls. MONITOR is read
   * from a raw socket: ioredis' monitor mode can lose track of its reply queue when lines arrive before
   * the MONITOR reply ("Command queue state error").
   */
  async function commandsDuring(work: () => Promise<void>): Promise<string[]> {
    const { hostname, port } = new URL(redis.url);
    const socket = net.connect({ host: hostname, port: Number(port) });
    await once(socket, 'connect');
    const seen: string[] = [];
    let buffered = '';
    let started = false;
    socket.setEncoding('utf8');
    const startedPromise = new Promise<void>((resolve) => {
      socket.on('data', (chunk: string) => {
        buffered += chunk;
        let nl: number;
        while ((nl = buffered.indexOf('\r\n')) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 2);
          if (line === '+OK' && !started) {
            started = true;
            resolve();
            continue;
          }
          // +<time> [<db> <client address>|lua] "cmd" "arg" ...
          const source = /^\+\S+ \[\d+ ([^\]]+)\]/.exec(line)?.[1];
          if (source === undefined || source === 'lua') continue;
          const args = [...line.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1] ?? '');
          const [cmd = '', key = ''] = args;
          if (cmd.toLowerCase() === 'get' && key.endsWith(':kv:registration-meta:version')) continue;
          if (cmd.toLowerCase() === 'evalsha' && args.slice(3).some((k) => /:kvi?:federation-(relationship|bundle)\b/.test(k))) continue;
          seen.push(`${cmd.toLowerCase()} ${key}`);
        }
      });
    });
    socket.write('MONITOR\r\n');
    await startedPromise;
    await new Promise((r) => setTimeout(r, 50));
    await work();
    await new Promise((r) => setTimeout(r, 100));
    socket.destroy();
    return seen;
  }

  for (const limits of [true, false]) {
    it(`X.509 and JWT-SVID issuance: ${limits ? 4 : 3} commands each (rate limits ${limits ? 'on' : 'off'})`, async () => {
      const { material } = await devMaterial();
      const b = await startBroker({
        store: () => RedisStore.connect({ url: redis.url, prefix: `rt-${String(limits)}` }),
        config: { limits: { enabled: limits }, audit: { signingKeyFile: material.auditKeyFile, checkpointIntervalMs: 3_600_000 } },
      });
      brokers.push(b);
      const token = await b.token();
      const x509 = async (): Promise<void> => {
        const r = await b.call({ path: '/v1/svid/x509', token, body: { keyType: 'ec-p256' } });
        expect(r.status).toBe(200);
      };
      const jwt = async (): Promise<void> => {
        const r = await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } });
        expect(r.status).toBe(200);
      };
      await x509();
      await jwt();
      const n = 5;
      const perIssuance = limits ? 4 : 3;
      for (const issue of [x509, jwt]) {
        const seen = await commandsDuring(async () => {
          for (let i = 0; i < n; i++) await issue();
        });
        expect(seen, seen.join('\n')).toHaveLength(n * perIssuance);
        const scripts = seen.filter((c) => c.startsWith('evalsha') || c.startsWith('eval '));
        // The guarded append and the checkpoint per issuance (plus the rate-limit counter when on).
        expect(scripts).toHaveLength(n * (limits ? 3 : 2));
        expect(seen.filter((c) => c.startsWith('mget'))).toHaveLength(n);
      }
    });
  }
});
