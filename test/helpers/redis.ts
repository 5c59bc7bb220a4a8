/**
 * Redis for tests: is the shared Redis (127.0.0.1:6379, or TESSERA_TEST_REDIS) reachable, a unique key prefix per run and its
 * cleanup, and private redis-server children (own port, own data dir) for tests that kill Redis.
 *
 * Suites that need Redis use `describe.skipIf(!redis.ok)` and print why; `redisRequiredUnderCi()`
 * adds a test that fails the run when CI=true and Redis is missing, so CI can never skip silently.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { expect, it } from 'vitest';

/** The shared test Redis; TESSERA_TEST_REDIS=host:port points the suites elsewhere (loopback only). */
const override = /^(127\.0\.0\.1|localhost):(\d{1,5})$/.exec(process.env.TESSERA_TEST_REDIS ?? '');
export const SHARED_REDIS = { host: '127.0.0.1', port: override ? Number(override[2]) : 6379 } as const;
export const SHARED_REDIS_URL = `redis://${SHARED_REDIS.host}:${SHARED_REDIS.port}`;
export const inCi = process.env.CI === 'true';

export interface Reachability {
  readonly ok: boolean;
  readonly reason: string;
}

/** Sends PING over a raw socket (no client reconnect noise); resolves within `timeoutMs`. */
export function pingRedis(host: string, port: number, timeoutMs = 1000): Promise<Reachability> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    let buf = '';
    const done = (r: Reachability): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ ok: false, reason: `no answer from ${host}:${port} within ${timeoutMs} ms` }), timeoutMs);
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG') ? { ok: true, reason: 'ok' } : { ok: false, reason: `unexpected reply ${JSON.stringify(buf.trim())}` });
    });
    sock.on('error', (err) => done({ ok: false, reason: `${host}:${port}: ${err.message}` }));
  });
}

let cached: Promise<Reachability> | undefined;

/** Reachability of the shared Redis; logs the reason once when it is missing. */
export function sharedRedis(): Promise<Reachability> {
  cached ??= pingRedis(SHARED_REDIS.host, SHARED_REDIS.port).then((r) => {
    if (!r.ok) {
      console.warn(
        `[redis] Redis suites SKIPPED: ${r.reason}. Start redis-server on ${SHARED_REDIS.host}:${SHARED_REDIS.port} to run them` +
          (inCi ? ' (CI=true: the reachability test fails the run)' : ''),
      );
    }
    return r;
  });
  return cached;
}

/** A test that passes when Redis is reachable, and fails under CI=true when it is not. */
export function redisRequiredUnderCi(r: Reachability): void {
  it(`Redis at ${SHARED_REDIS_URL} is reachable${inCi ? ' (required: CI=true)' : ' (or these suites are skipped)'}`, () => {
    if (inCi) expect(r.ok, `CI=true but Redis is unreachable: ${r.reason}`).toBe(true);
    else if (!r.ok) console.warn(`[redis] skipped: ${r.reason}`);
  });
}

/** A prefix no other run or test uses: keys are `{prefix}:…`. */
export function uniquePrefix(label: string): string {
  return `tessera-test-${label}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

/** Deletes every key under `{prefix}:` (SCAN, never KEYS) on the given Redis. */
export async function deletePrefix(prefix: string, url = SHARED_REDIS_URL): Promise<number> {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 2000 });
  let deleted = 0;
  try {
    await client.connect();
    let cursor = '0';
    // Braces are glob-special only inside [...]; escape them anyway to match literally.
    const match = `\\{${prefix}\\}:*`;
    for (let i = 0; i < 100_000; i++) {
      const [next, keys] = await client.scan(cursor, 'MATCH', match, 'COUNT', 1000);
      if (keys.length > 0) deleted += await client.del(...keys);
      cursor = next;
      if (cursor === '0') break;
    }
  } finally {
    client.disconnect();
  }
  return deleted;
}

/** Every key under `{prefix}:` (tests inspect the layout). */
export async function keysUnder(prefix: string, url = SHARED_REDIS_URL): Promise<string[]> {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  const out: string[] = [];
  try {
    await client.connect();
    let cursor = '0';
    for (let i = 0; i < 100_000; i++) {
      const [next, keys] = await client.scan(cursor, 'MATCH', `\\{${prefix}\\}:*`, 'COUNT', 1000);
      out.push(...keys);
      cursor = next;
      if (cursor === '0') break;
    }
  } finally {
    client.disconnect();
  }
  return out.sort();
}

/** A free loopback TCP port (bind to 0, read it, release it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export const redisServerAvailable = (): boolean => spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).status === 0;

export interface PrivateRedis {
  readonly port: number;
  readonly url: string;
  readonly dir: string;
  /** SIGKILL: no goodbye, no final fsync (everysec AOF may lose up to a second; we use always). */
  kill(): Promise<void>;
  /** Starts it again on the same port and data dir. */
  start(): Promise<void>;
  /** Stops it for good and removes its data dir. */
  destroy(): Promise<void>;
  readonly running: boolean;
  /** Process id of the running server (for SIGSTOP/SIGCONT). */
  readonly pid: number;
}

/** Spawns `redis-server <args>` and waits until `port` answers PING; returns the child. */
async function launch(args: readonly string[], port: number): Promise<ChildProcess> {
  const c = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  c.stdout?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-4000)));
  c.stderr?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-4000)));
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (c.exitCode !== null) throw new Error(`redis-server exited ${c.exitCode}: ${out}`);
    if ((await pingRedis('127.0.0.1', port, 500)).ok) return c;
    await new Promise((r) => setTimeout(r, 50));
  }
  c.kill('SIGKILL');
  throw new Error(`redis-server on ${port} did not answer within 10 s: ${out}`);
}

function handle(port: number, dir: string, args: () => string[]): Promise<PrivateRedis> {
  let child: ChildProcess | undefined;
  const kill = async (): Promise<void> => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await exited;
  };
  const start = async (): Promise<void> => {
    child = await launch(args(), port);
  };
  return start().then(() => ({
    port,
    url: `redis://127.0.0.1:${port}`,
    dir,
    kill,
    start,
    destroy: async () => {
      await kill();
      rmSync(dir, { recursive: true, force: true });
    },
    get running() {
      return child !== undefined && child.exitCode === null && child.signalCode === null;
    },
    get pid() {
      return child?.pid ?? -1;
    },
  }));
}

/**
 * A redis-server child on a free loopback port with AOF `appendfsync always` in a temp dir, so data
 * survives kill + start. Never touches the shared Redis.
 */
export async function startPrivateRedis(extraArgs: readonly string[] = []): Promise<PrivateRedis> {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-redis-'));
  return handle(port, dir, () => [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir,
    ...extraArgs,
  ]);
}

/** A Sentinel on a free port monitoring the master at `masterPort` as group `name` (quorum 1). */
export async function startSentinel(masterPort: number, name: string): Promise<PrivateRedis> {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-sentinel-'));
  const conf = path.join(dir, 'sentinel.conf');
  // Sentinel rewrites its config file, so it must be a writable file of its own.
  writeFileSync(
    conf,
    [`port ${port}`, 'bind 127.0.0.1', `dir ${dir}`, `sentinel monitor ${name} 127.0.0.1 ${masterPort} 1`, `sentinel down-after-milliseconds ${name} 1000`, ''].join('\n'),
  );
  return handle(port, dir, () => [conf, '--sentinel']);
}
