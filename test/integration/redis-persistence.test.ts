/**
 * The broker's Redis persistence check against real redis-server children (docs/redis.md, "The
 * persistence check"): each runs with the settings under test on a free port; the shared Redis is
 * never touched. The check is read with CONFIG GET on the live server, and `tessera serve` is run for
 * real to see the refusal (exit 1, the cause named) and the opt-out's warning.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { BrokerError } from '../../src/errors.js';
import { connectCheckedRedis } from '../../src/store/redis-persistence.js';
import { RedisStore } from '../../src/store/redis.js';
import { devMaterial, materialConfig } from '../helpers/broker.js';
import { CLI } from '../helpers/broker-process.js';
import { inCi, redisServerAvailable, startPrivateRedis, type PrivateRedis } from '../helpers/redis.js';

const haveServer = redisServerAvailable();
if (!haveServer) console.warn('[redis] persistence check tests SKIPPED: the redis-server binary is not on PATH');

describe('redis-server for the persistence check', () => {
  it(`is installed${inCi ? ' (required: CI=true)' : ' (or these tests are skipped)'}`, () => {
    if (inCi) expect(haveServer, 'CI=true but redis-server is not on PATH').toBe(true);
  });
});

describe.skipIf(!haveServer)('the Redis persistence check (private redis-server)', () => {
  const servers: PrivateRedis[] = [];
  const dirs: string[] = [];
  afterAll(async () => {
    for (const s of servers) await s.destroy();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  const redis = async (args: string[]): Promise<PrivateRedis> => {
    const r = await startPrivateRedis(args);
    servers.push(r);
    return r;
  };
  const check = async (url: string, allowVolatile = false): Promise<{ warnings: string[]; store?: RedisStore; error?: BrokerError }> => {
    const warnings: string[] = [];
    try {
      const store = await connectCheckedRedis({ url, prefix: 'persistence-check', allowVolatile }, (w) => warnings.push(w));
      return { warnings, store };
    } catch (err) {
      return { warnings, error: err as BrokerError };
    }
  };

  it('appendonly yes + appendfsync always (what the test helpers run): passes quietly, and the store works', async () => {
    const r = await redis([]);
    const { warnings, store, error } = await check(r.url);
    expect(error).toBeUndefined();
    expect(warnings).toEqual([]);
    expect(await store?.persistence()).toEqual([{ node: `127.0.0.1:${r.port}`, settings: { appendonly: 'yes', appendfsync: 'always', save: '' } }]);
    await store?.close();
  });

  it('appendfsync everysec: passes with a warning naming the node', async () => {
    const r = await redis(['--appendfsync', 'everysec']);
    const { warnings, store, error } = await check(r.url);
    expect(error).toBeUndefined();
    expect(warnings).toEqual([expect.stringMatching(new RegExp(`^Redis persistence on 127\\.0\\.0\\.1:${r.port} is weak: appendonly yes with appendfsync everysec`))]);
    await store?.close();
  });

  it.each([
    [['--appendonly', 'no'], /appendonly no and save "": Redis keeps nothing across a restart/],
    [['--appendonly', 'no', '--save', '60 1'], /appendonly no \(RDB snapshots only, save "60 1"\)/],
    [['--appendfsync', 'no'], /appendonly yes but appendfsync no/],
  ])('%j: refused with store_unavailable naming the cause, the fix and the opt-out', async (args, cause) => {
    const r = await redis(args);
    const { store, error } = await check(r.url);
    expect(store).toBeUndefined();
    expect(error?.code).toBe('store_unavailable');
    expect(error?.message).toMatch(new RegExp(`^Redis store: refusing to start on a Redis that cannot keep the audit log \\(127\\.0\\.0\\.1:${r.port}: `));
    expect(error?.message).toMatch(cause);
    expect(error?.message).toMatch(/Fix: run Redis with appendonly yes and appendfsync always .*store\.redis\.allowVolatile: true/);
  });

  it('the same volatile Redis with allowVolatile: starts, with the loud warning', async () => {
    const r = await redis(['--appendonly', 'no']);
    const { warnings, store, error } = await check(r.url, true);
    expect(error).toBeUndefined();
    expect(warnings).toEqual([expect.stringMatching(/^store\.redis\.allowVolatile is set: starting on a Redis that CANNOT KEEP THE AUDIT LOG \(127\.0\.0\.1:\d+: appendonly no and save ""/)]);
    await store?.close();
  });

  it('an ACL user without CONFIG: starts, warning that persistence was not checked and why', async () => {
    // Even on a volatile Redis: the broker cannot know, so it warns instead of refusing.
    const r = await redis(['--appendonly', 'no', '--user', 'tessera', 'on', '>s3cret-pass', '~*', '&*', '+@all', '-config']);
    const { warnings, store, error } = await check(`redis://tessera:s3cret-pass@127.0.0.1:${r.port}`);
    expect(error).toBeUndefined();
    expect(warnings).toEqual([expect.stringMatching(new RegExp(`^Redis persistence NOT CHECKED on 127\\.0\\.0\\.1:${r.port}: CONFIG GET was refused \\(NOPERM`))]);
    expect(warnings[0]).not.toContain('s3cret-pass');
    await store?.close();
  });

  describe('tessera serve, as a process', () => {
    const serve = async (url: string, allowVolatile: boolean): Promise<{ code: number | null; out: string; kill: () => void }> => {
      const { dir: pki, material } = await devMaterial();
      const dir = mkdtempSync(path.join(tmpdir(), 'tessera-persist-'));
      dirs.push(dir);
      const file = path.join(dir, 'tessera.yaml');
      writeFileSync(
        file,
        stringify({
          ...materialConfig(pki, material),
          listen: { host: '127.0.0.1', port: 0 },
          logLevel: 'warn',
          store: { embedded: { dir: path.join(dir, 'data') }, redis: { url, prefix: 'persistence-serve', allowVolatile } },
        }),
      );
      const p = spawn(process.execPath, [CLI, 'serve', '--config', file], { env: { ...process.env, REDIS_URL: '', TESSERA_CONFIG: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const code = await new Promise<number | null>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`tessera serve neither exited nor listened in 60 s:\n${out}`)), 60_000);
        p.once('exit', (c) => {
          clearTimeout(timer);
          resolve(c);
        });
        p.stdout.on('data', () => {
          if (out.includes('listening on https://')) {
            clearTimeout(timer);
            resolve(null);
          }
        });
      });
      return { code, out, kill: () => p.kill('SIGKILL') };
    };

    it('refuses to start on a Redis without persistence: exit 1, the cause on stderr', async () => {
      const r = await redis(['--appendonly', 'no']);
      const run = await serve(r.url, false);
      expect(run.code, run.out).toBe(1);
      expect(run.out).toMatch(/tessera: Redis store: refusing to start on a Redis that cannot keep the audit log \(127\.0\.0\.1:\d+: appendonly no and save ""/);
      expect(run.out).not.toMatch(/unexpected error|\n\s+at /);
    }, 90_000);

    it('starts on it with store.redis.allowVolatile, printing the warning', async () => {
      const r = await redis(['--appendonly', 'no']);
      const run = await serve(r.url, true);
      try {
        expect(run.code, run.out).toBeNull();
        expect(run.out).toMatch(/\[TESSERA_REDIS_PERSISTENCE\] Warning: store\.redis\.allowVolatile is set: starting on a Redis that CANNOT KEEP THE AUDIT LOG/);
      } finally {
        run.kill();
      }
    }, 90_000);
  });
});
