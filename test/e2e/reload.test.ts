/**
 * Reload without restart, on a real `tessera serve` process: SIGHUP with a good config puts a new
 * registration entry in force while requests keep flowing (none dropped); SIGHUP with a broken config
 * is refused, logged, and the broker keeps serving on the old one. Before this, SIGHUP's default action
 * ended the broker. POST /v1/admin/reload does the same for an operator (in-process broker).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { mintDevToken } from '../../src/dev/token-issuer.js';
import { auditEntries, mintAdminCert } from '../helpers/admin.js';
import { devMaterial, materialConfig, startBroker } from '../helpers/broker.js';
import { httpsCall } from '../helpers/https.js';
import { until } from '../helpers/until.js';

const CLI = path.resolve('dist/cli/main.js');

describe('SIGHUP reloads the config of a running broker', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-reload-'));
  let proc: ChildProcess | undefined;
  afterAll(async () => {
    if (proc !== undefined && proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise((r) => proc?.once('exit', r));
      proc.kill('SIGKILL');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('a good config: the new entry is in force, no request in flight fails; a broken one: refused, logged, still serving', async () => {
    if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
    const { dir: pkiDir, material } = await devMaterial();
    const file = path.join(dir, 'tessera.yaml');
    const base = {
      ...materialConfig(pkiDir, material),
      listen: { host: '127.0.0.1', port: 0 },
      logLevel: 'info',
      registration: [{ selector: { namespace: 'shop', serviceAccount: 'web' }, jwtAudiences: [] }],
      store: { embedded: { dir: path.join(dir, 'data') } },
      admin: { caBundleFile: material.adminCaCertFile, principals: [{ id: 'spiffe://example.org/admin/dev', roles: ['auditor'] }] },
    };
    writeFileSync(file, stringify(base));
    proc = spawn(process.execPath, [CLI, 'serve', '--config', file], {
      env: { ...process.env, TESSERA_CONFIG: '', REDIS_URL: '', TESSERA_PORT: '', TESSERA_LOG_LEVEL: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    const url = await until('broker listening', async () => /listening on (https:\/\/[\d.]+:\d+)/.exec(out)?.[1], 60_000, 100);
    const ca = readFileSync(material.bundleFile, 'utf8');
    const token = (namespace: string, serviceAccount: string) => mintDevToken({ keyFile: material.issuerKeyFile, namespace, serviceAccount });
    const agent = new https.Agent({ keepAlive: true, maxSockets: 8 });
    const x509 = async (ns: string, sa: string) =>
      (await httpsCall(url, ca, { path: '/v1/svid/x509', token: await token(ns, sa), body: { keyType: 'ec-p256' }, agent })).status;

    expect(await x509('team', 'api')).toBe(403);

    // Load: four clients issuing for shop/web until told to stop, across the reload.
    let loading = true;
    const statuses: number[] = [];
    const shopToken = await token('shop', 'web');
    const client = async () => {
      while (loading) {
        try {
          statuses.push((await httpsCall(url, ca, { path: '/v1/svid/x509', token: shopToken, body: { keyType: 'ec-p256' }, agent })).status);
        } catch (err) {
          statuses.push(0);
          throw err;
        }
      }
    };
    const clients = [client(), client(), client(), client()];
    await until('load running', async () => (statuses.length >= 4 ? true : undefined), 30_000);

    writeFileSync(file, stringify({ ...base, bodyLimitBytes: 32_768, registration: [...base.registration, { selector: { namespace: 'team', serviceAccount: 'api' }, jwtAudiences: [] }] }));
    proc.kill('SIGHUP');
    await until('new entry in force', async () => ((await x509('team', 'api')) === 200 ? true : undefined), 20_000, 100);
    const before = statuses.length;
    await until('load continues after the reload', async () => (statuses.length >= before + 4 ? true : undefined), 30_000);
    loading = false;
    await Promise.all(clients);
    expect(statuses.length).toBeGreaterThan(8);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect(proc.exitCode).toBeNull();
    await until('reload logged', async () => (/config reloaded: applied registration; needs restart: bodyLimitBytes/.test(out) ? true : undefined), 10_000);

    // A broken config: refused, logged, old config kept, still serving.
    writeFileSync(file, stringify({ ...parse(readFileSync(file, 'utf8')) as object, limits: { windowSeconds: 'soon' } }));
    proc.kill('SIGHUP');
    await until('refusal logged', async () => (/config not reloaded \(the running config is kept\): config\.limits\.windowSeconds/.test(out) ? true : undefined), 20_000);
    expect(proc.exitCode).toBeNull();
    expect(await x509('team', 'api')).toBe(200);
    expect(await x509('shop', 'web')).toBe(200);

    // Both reloads are in the audit log (read as the auditor).
    const admin = mintAdminCert(material, 'spiffe://example.org/admin/dev');
    const search = await httpsCall<{ hits: { entry: { action: string; decision: string; source: string; reason: string } }[] }>(url, ca, {
      path: '/v1/audit/search?type=admin',
      cert: admin.cert,
      key: admin.key,
    });
    const reloads = search.json.hits.map((h) => h.entry).filter((e) => e.action === 'config.reload');
    expect(reloads).toEqual([
      expect.objectContaining({ decision: 'allow', source: 'signal', reason: expect.stringMatching(/applied registration/) }),
      expect.objectContaining({ decision: 'deny', source: 'signal', reason: expect.stringMatching(/windowSeconds/) }),
    ]);
    agent.destroy();

    const exited = new Promise<number | null>((r) => proc?.once('exit', (code) => r(code)));
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
  }, 240_000);
});

describe('POST /v1/admin/reload', () => {
  it('an operator reloads; what changed is applied or reported as needing a restart; a bad config is refused (400) and audited', async () => {
    const b = await startBroker();
    try {
      const operator = mintAdminCert(b.material, 'spiffe://example.org/admin/dev');
      const file = path.join(b.dir, 'tessera.yaml');
      const original = parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
      const x509 = async () => (await b.call({ path: '/v1/svid/x509', token: await b.token({ namespace: 'team', serviceAccount: 'api' }), body: { keyType: 'ec-p256' } })).status;
      expect(await x509()).toBe(403);

      writeFileSync(file, stringify({ ...original, registration: [{ selector: { namespace: 'team', serviceAccount: 'api' }, jwtAudiences: [] }], limits: { issuancesPerIdentity: 5 }, listen: { host: '127.0.0.1', port: 1 } }));
      const ok = await b.call<{ applied: string[]; needsRestart: string[] }>({ path: '/v1/admin/reload', body: {}, cert: operator.cert, key: operator.key });
      expect(ok.status, ok.text).toBe(200);
      expect(ok.json).toMatchObject({ applied: ['limits', 'registration'], needsRestart: ['listen'] });
      expect(await x509()).toBe(200);
      // The old config's entries are gone; the new rate limit holds.
      expect((await b.call({ path: '/v1/svid/x509', token: await b.token(), body: { keyType: 'ec-p256' } })).status).toBe(403);

      writeFileSync(file, 'trustDomain: [not, a, string]\n');
      const bad = await b.call<{ error: string; message: string }>({ path: '/v1/admin/reload', body: {}, cert: operator.cert, key: operator.key });
      expect([bad.status, bad.json.error, bad.json.message]).toEqual([400, 'bad_request', expect.stringMatching(/config not reloaded \(the running config is kept\): config\.trustDomain/)]);
      expect(await x509()).toBe(200);

      const log = (await auditEntries(b)).map((e) => e.entry).filter((e) => e.action === 'config.reload');
      expect(log).toEqual([
        expect.objectContaining({ decision: 'allow', actor: 'spiffe://example.org/admin/dev', reason: expect.stringMatching(/applied limits, registration; needs restart: listen/) }),
        expect.objectContaining({ decision: 'deny', actor: 'spiffe://example.org/admin/dev' }),
      ]);
    } finally {
      await b.close();
    }
  }, 60_000);
});
