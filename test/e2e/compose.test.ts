/**
 * docker-compose.yml: `docker-compose config` (Debian's docker-compose; no Docker engine runs here)
 * must accept it and show Redis with AOF, the init job, two broker replicas on the shared config and
 * the demo workload. The shared config must load as a valid Tessera config on Redis, and the two
 * scripts the compose file mounts (init-certs.mjs, demo-workload.mjs) are run for real: init creates
 * the material, and the demo gets SVIDs from two replicas on one Redis log.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { RedisStore } from '../../src/store/redis.js';
import { devMaterial } from '../helpers/broker.js';
import { SHARED_REDIS_URL, deletePrefix, inCi, sharedRedis, uniquePrefix } from '../helpers/redis.js';
import { startReplicas } from '../helpers/replicas.js';

const ROOT = path.resolve('.');
const composeVersion = spawnSync('docker-compose', ['version', '--short'], { encoding: 'utf8' });
const haveCompose = composeVersion.status === 0;
const composeMissing = `docker-compose is not installed (${composeVersion.error?.message ?? composeVersion.stderr?.trim() ?? 'not found'}); apt-get install -y docker-compose`;
if (!haveCompose) console.warn(`[compose] docker-compose config test SKIPPED: ${composeMissing}`);
const redis = await sharedRedis();

describe('docker-compose availability', () => {
  it(`docker-compose is installed${inCi ? ' (required: CI=true)' : ' (or the config test is skipped)'}`, () => {
    if (inCi) expect(haveCompose, composeMissing).toBe(true);
    else if (!haveCompose) console.warn(`[compose] skipped: ${composeMissing}`);
  });
});

interface Service {
  build?: { context?: string };
  image?: string;
  command?: string[];
  entrypoint?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  user?: string;
  depends_on?: Record<string, { condition: string }>;
}

describe.skipIf(!haveCompose)('docker-compose.yml', () => {
  it('is valid for docker-compose config and has Redis (AOF), init, two replicas and the demo', () => {
    const r = spawnSync('docker-compose', ['-f', path.join(ROOT, 'docker-compose.yml'), 'config'], { cwd: ROOT, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const cfg = parse(r.stdout) as { services: Record<string, Service>; volumes: Record<string, unknown> };
    expect(Object.keys(cfg.services).sort()).toEqual(['demo', 'init', 'redis', 'tessera-a', 'tessera-b']);

    const redisSvc = cfg.services.redis as Service;
    expect(redisSvc.image).toMatch(/^redis:7/);
    expect(redisSvc.command?.join(' ')).toMatch(/--appendonly yes --appendfsync always/);
    expect(redisSvc.volumes?.some((v) => v.endsWith(':/data:rw') || v.endsWith(':/data'))).toBe(true);

    const replicas = ['tessera-a', 'tessera-b'].map((n) => cfg.services[n] as Service);
    for (const [i, s] of replicas.entries()) {
      expect(s.build?.context).toBe(ROOT); // built from the repository Dockerfile
      expect(s.command).toEqual(['serve', '--config', '/etc/tessera/tessera.yaml']);
      expect(s.volumes).toContain(`${path.join(ROOT, 'deploy/compose/tessera.yaml')}:/etc/tessera/tessera.yaml:ro`);
      expect(s.depends_on?.redis?.condition).toBe('service_healthy');
      expect(s.depends_on?.init?.condition).toBe('service_completed_successfully');
      expect(s.user).not.toMatch(/^0(:|$)/); // brokers never run as root
      expect(s.environment?.TESSERA_REPLICA_ID).toBe(['tessera-a', 'tessera-b'][i]);
    }
    expect(replicas[0]?.ports).not.toEqual(replicas[1]?.ports);
    const demo = cfg.services.demo as Service;
    expect(demo.environment?.BROKERS).toBe('https://tessera-a:8443,https://tessera-b:8443');
    expect(Object.keys(demo.depends_on ?? {}).sort()).toEqual(['tessera-a', 'tessera-b']);
    expect(Object.keys(cfg.volumes).sort()).toEqual(['redis-data', 'tessera-certs']);
  });

  it('fails docker-compose config on a broken file (the check can fail)', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-compose-'));
    try {
      const bad = path.join(dir, 'docker-compose.yml');
      writeFileSync(bad, 'services:\n  redis:\n    image: redis\n    depends_on: { nothere: { condition: service_healthy } }\n');
      const r = spawnSync('docker-compose', ['-f', bad, 'config'], { cwd: dir, encoding: 'utf8' });
      expect(r.status).not.toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('deploy/compose/tessera.yaml', () => {
  it('is a valid Tessera config on Redis, with every key path in the shared certs volume', () => {
    const c = loadConfig({ file: path.join(ROOT, 'deploy/compose/tessera.yaml'), env: {} });
    expect(c.store.redis).toMatchObject({ url: 'redis://redis:6379', prefix: 'tessera', requireReplicaAck: false });
    expect(c.listen).toEqual({ host: '0.0.0.0', port: 8443 });
    for (const f of [c.tls.certFile, c.tls.keyFile, c.ca.certFile, c.ca.keyFile ?? '', c.ca.bundleFile, c.ca.jwtKeyFile ?? '']) {
      expect(f.startsWith('/var/lib/tessera/certs/'), f).toBe(true);
    }
  });
});

describe('deploy/compose scripts, run for real', () => {
  const cleanup: (() => Promise<unknown>)[] = [];
  afterAll(async () => {
    for (const f of cleanup.reverse()) await f().catch(() => {});
  });

  it('init-certs.mjs creates the shared material, keys at mode 0600, owned by the run-as user', () => {
    expect(existsSync(path.join(ROOT, 'dist/dev/material.js')), 'run npm run build first').toBe(true);
    const dir = path.join(mkdtempSync(path.join(tmpdir(), 'tessera-init-')), 'certs');
    cleanup.push(async () => rmSync(path.dirname(dir), { recursive: true, force: true }));
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    const r = spawnSync(process.execPath, [path.join(ROOT, 'deploy/compose/init-certs.mjs')], {
      encoding: 'utf8',
      env: { ...process.env, TESSERA_HOME: ROOT, TESSERA_CERTS_DIR: dir, TESSERA_RUN_AS: `${uid}:${gid}` },
    });
    expect(r.status, r.stderr).toBe(0);
    for (const f of ['bundle.pem', 'server.pem', 'intermediate.pem', 'dev-issuer.jwks.json']) expect(existsSync(path.join(dir, f)), f).toBe(true);
    for (const f of ['server.key', 'intermediate.key', 'jwt-signing.key', 'dev-issuer.key']) {
      const st = statSync(path.join(dir, f));
      expect(st.mode & 0o777, f).toBe(0o600);
      expect(st.uid).toBe(uid);
    }
    expect(readFileSync(path.join(dir, 'bundle.pem'), 'utf8')).toMatch(/BEGIN CERTIFICATE/);
  });

  it.skipIf(!redis.ok)('demo-workload.mjs gets SVIDs from two replicas on one Redis log', async () => {
    const prefix = uniquePrefix('compose-demo');
    cleanup.push(() => deletePrefix(prefix));
    const set = await startReplicas(2, SHARED_REDIS_URL, prefix);
    cleanup.push(() => set.close());
    const { dir: certs } = await devMaterial();
    const demo = spawn(process.execPath, [path.join(ROOT, 'deploy/compose/demo-workload.mjs')], {
      env: { ...process.env, TESSERA_HOME: ROOT, TESSERA_CERTS_DIR: certs, BROKERS: set.replicas.map((r) => r.url).join(','), INTERVAL_MS: '20' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    cleanup.push(async () => void demo.kill('SIGKILL'));
    const lines = await new Promise<string[]>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`demo printed no 6 issuances in 20 s:\n${out}`)), 20_000);
      const onData = (d: Buffer): void => {
        out += d.toString();
        const issued = out.split('\n').filter((l) => / issued /.test(l));
        if (issued.length >= 6) {
          clearTimeout(timer);
          resolve(issued.slice(0, 6));
        }
      };
      demo.stdout?.on('data', onData);
      demo.stderr?.on('data', (d: Buffer) => (out += d.toString()));
      demo.once('exit', (code) => reject(new Error(`demo exited ${code}:\n${out}`)));
    });
    demo.kill('SIGKILL');
    expect(lines.filter((l) => l.startsWith(set.replicas[0]?.url ?? '-')).length).toBeGreaterThan(0);
    expect(lines.filter((l) => l.startsWith(set.replicas[1]?.url ?? '-')).length).toBeGreaterThan(0);
    expect(lines.some((l) => /X\.509-SVID serial [0-9a-f]+ to spiffe:\/\/example\.org\/ns\/shop\/sa\/web/.test(l))).toBe(true);
    expect(lines.some((l) => /JWT-SVID jti /.test(l))).toBe(true);
    // The indexes the demo saw come from one log.
    const indexes = lines.map((l) => Number(/audit index (\d+)/.exec(l)?.[1]));
    expect(new Set(indexes).size).toBe(indexes.length);
    const store = await RedisStore.connect({ url: SHARED_REDIS_URL, prefix });
    cleanup.push(() => store.close());
    expect(await store.auditSize()).toBeGreaterThanOrEqual(Math.max(...indexes) + 1);
  }, 60_000);
});
