/**
 * Registration entries as data, end to end: `tessera entry …` (dist/cli/main.js) against live brokers.
 * Two replicas share one Redis prefix; an entry created, updated or deleted through one is in force on
 * the other within a second, with no restart; every change is in the audit log with the admin's
 * identity and the entry before/after; issuances carry the entry and the selectors that matched.
 */
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../../src/store/redis.js';
import { auditEntries, type ClientCert, mintAdminCert, workloadSvid, writeClientCert } from '../helpers/admin.js';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';
import { SHARED_REDIS_URL, deletePrefix, redisRequiredUnderCi, sharedRedis, uniquePrefix } from '../helpers/redis.js';
import { until } from '../helpers/until.js';

const CLI = path.resolve('dist/cli/main.js');
const redis = await sharedRedis();
const DEV_ADMIN = 'spiffe://example.org/admin/dev';
const REGISTRAR = 'spiffe://example.org/admin/reggie';
const AUDITOR = 'spiffe://example.org/admin/audrey';
const as = (c: ClientCert) => ({ cert: c.cert, key: c.key });

interface Run {
  status: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[], opts: { cwd: string; env?: Record<string, string> }): Promise<Run> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, TESSERA_CONFIG: '', TESSERA_URL: '', TESSERA_CACERT: '', TESSERA_ADMIN_CERT: '', TESSERA_ADMIN_KEY: '', ...opts.env };
    const child = spawn(process.execPath, [CLI, ...args], { cwd: opts.cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ status: code ?? -1, stdout, stderr });
    });
  });
}

const principals = [
  { id: DEV_ADMIN, roles: ['auditor', 'operator', 'secrets-admin', 'registrar'] },
  { id: REGISTRAR, roles: ['registrar'] },
  { id: AUDITOR, roles: ['auditor'] },
];

describe.skipIf(!redis.ok)('registration entries on two replicas sharing Redis', () => {
  const prefix = uniquePrefix('entries');
  let a: TestBroker | undefined;
  let b: TestBroker | undefined;
  let dir: string;
  let flagsFor: (broker: TestBroker, who?: 'dev' | 'registrar' | 'auditor') => string[];

  beforeAll(async () => {
    if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
    const store = () => RedisStore.connect({ url: SHARED_REDIS_URL, prefix });
    const { material: m } = await devMaterial();
    const admin = { caBundleFile: m.adminCaCertFile, caCertFile: m.adminCaCertFile, caKeyFile: m.adminCaKeyFile, principals };
    a = await startBroker({ store, config: { replicaId: 'replica-a', admin } });
    b = await startBroker({ store, config: { replicaId: 'replica-b', admin } });
    dir = mkdtempSync(path.join(tmpdir(), 'tessera-entries-cli-'));
    const certs = {
      dev: writeClientCert(dir, 'dev', mintAdminCert(a.material, DEV_ADMIN)),
      registrar: writeClientCert(dir, 'registrar', mintAdminCert(a.material, REGISTRAR)),
      auditor: writeClientCert(dir, 'auditor', mintAdminCert(a.material, AUDITOR)),
    };
    flagsFor = (broker, who = 'registrar') => ['--url', broker.url, '--cacert', broker.material.bundleFile, '--cert', certs[who].certFile, '--key', certs[who].keyFile];
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await deletePrefix(prefix);
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  const x509 = async (t: TestBroker, body: Record<string, unknown> = {}, ns = 'team', sa = 'api') =>
    t.call<{ spiffeId: string; certificates: string[]; error?: string; message?: string }>({
      path: '/v1/svid/x509',
      token: await t.token({ namespace: ns, serviceAccount: sa }),
      body: { keyType: 'ec-p256', ...body },
    });
  const jwt = async (t: TestBroker, audience: string) =>
    t.call<{ spiffeId: string; error?: string }>({ path: '/v1/svid/jwt', token: await t.token({ namespace: 'team', serviceAccount: 'api' }), body: { audience: [audience] } });

  /** Milliseconds until `check` holds on broker `t` (fails past 5 s; the test asserts the bound). */
  async function effectiveWithin(what: string, check: () => Promise<boolean>): Promise<number> {
    const start = Date.now();
    await until(what, async () => ((await check()) ? true : undefined), 5_000, 20);
    return Date.now() - start;
  }

  it('create (CLI on replica A) → effective on replica B within 1 s; update; delete; all audited with before/after', async () => {
    if (a === undefined || b === undefined) throw new Error('brokers did not start');
    const A = a;
    const B = b;
    expect((await x509(B)).status).toBe(403);

    const created = await cli(
      ['entry', 'create', '--spiffe-id', 'spiffe://example.org/team/api', '--selector', 'k8s:ns:team', '--selector', 'k8s:sa:api', '--dns', 'api.team.svc', '--x509-ttl', '10m', '--jwt-audience', 'payments', '--json', ...flagsFor(A)],
      { cwd: dir },
    );
    expect(created.status, created.stderr).toBe(0);
    const id = (JSON.parse(created.stdout) as { entry: { id: string } }).entry.id;
    const createMs = await effectiveWithin('entry effective on replica B', async () => (await x509(B)).status === 200);
    expect(createMs).toBeLessThan(1000);
    const issued = await x509(B);
    expect(issued.json.spiffeId).toBe('spiffe://example.org/team/api');
    expect((await jwt(B, 'payments')).status).toBe(200);

    // Update (the dev admin's flags through the environment): the audience changes on A within 1 s.
    const env = { TESSERA_URL: B.url, TESSERA_CACERT: B.material.bundleFile, TESSERA_ADMIN_CERT: path.join(dir, 'dev.pem'), TESSERA_ADMIN_KEY: path.join(dir, 'dev.key') };
    const updated = await cli(['entry', 'update', id, '--jwt-audience', 'billing'], { cwd: dir, env });
    expect(updated.status, updated.stderr).toBe(0);
    expect(updated.stdout).toMatch(/JWT audience\s+: billing/);
    const updateMs = await effectiveWithin('update effective on replica A', async () => (await jwt(A, 'billing')).status === 200);
    expect(updateMs).toBeLessThan(1000);
    expect((await jwt(A, 'payments')).status).toBe(403);

    const listed = await cli(['entry', 'list', '--selector', 'k8s:ns:team', '--json', ...flagsFor(A)], { cwd: dir });
    expect(listed.status, listed.stderr).toBe(0);
    expect(JSON.parse(listed.stdout)).toEqual([expect.objectContaining({ id, source: 'api', revision: 2, jwtAudiences: ['billing'], createdBy: REGISTRAR, updatedBy: DEV_ADMIN })]);
    const all = await cli(['entry', 'list', ...flagsFor(B)], { cwd: dir });
    expect(all.stdout).toMatch(/^Found 4 entries/);
    expect(all.stdout).toMatch(/Entry ID\s+: config-0\nSPIFFE ID\s+: spiffe:\/\/example.org\/ns\/\{namespace\}\/sa\/\{serviceAccount\}\nSource\s+: config/);
    const shown = await cli(['entry', 'show', id, ...flagsFor(B)], { cwd: dir });
    expect(shown.stdout).toMatch(/Selector\s+: k8s:ns:team\nSelector\s+: k8s:sa:api\nDNS name\s+: api.team.svc\nX509-SVID TTL\s+: 600/);

    // Delete on B: A stops issuing within 1 s.
    const deleted = await cli(['entry', 'delete', id, ...flagsFor(B)], { cwd: dir });
    expect(deleted.status, deleted.stderr).toBe(0);
    const deleteMs = await effectiveWithin('delete effective on replica A', async () => (await x509(A)).status === 403);
    expect(deleteMs).toBeLessThan(1000);
    expect((await cli(['entry', 'show', id, ...flagsFor(A)], { cwd: dir })).stderr).toMatch(/404 not_found: no registration entry/);

    // The audit log (shared) holds each change with the admin and the entry before/after, and the issuance with its entry and selectors.
    const log = (await auditEntries(A)).map((e) => e.entry);
    const change = (action: string) => log.find((e) => e.type === 'admin' && e.action === action && e.entryId === id);
    expect(change('entry.create')).toMatchObject({ actor: REGISTRAR, decision: 'allow', subject: 'spiffe://example.org/team/api', after: { id, selectors: ['k8s:ns:team', 'k8s:sa:api'], revision: 1 } });
    expect(change('entry.create')?.before).toBeUndefined();
    expect(change('entry.update')).toMatchObject({ actor: DEV_ADMIN, before: { jwtAudiences: ['payments'], revision: 1 }, after: { jwtAudiences: ['billing'], revision: 2 } });
    expect(change('entry.delete')).toMatchObject({ actor: REGISTRAR, before: { id, revision: 2 } });
    expect(log.find((e) => e.type === 'x509-svid.issued' && e.entryId === id)).toMatchObject({
      subject: 'spiffe://example.org/team/api',
      selectors: ['k8s:ns:team', 'k8s:sa:api'],
      replica: 'replica-b',
    });
  }, 180_000);

  it('several matching entries: a tie is 409 naming the SPIFFE IDs; the caller picks one by spiffeId; more selectors win', async () => {
    if (a === undefined || b === undefined) throw new Error('brokers did not start');
    const admin = mintAdminCert(a.material, REGISTRAR);
    const create = async (spiffeId: string, selectors: string[]) => {
      const res = await a?.call<{ entry: { id: string } }>({ path: '/v1/admin/entries', body: { spiffeId, selectors }, ...as(admin) });
      expect(res?.status, res?.text).toBe(201);
      return res?.json.entry.id as string;
    };
    const one = await create('spiffe://example.org/team/api', ['k8s:ns:team', 'k8s:sa:api']);
    const two = await create('spiffe://example.org/team/api-v2', ['k8s:ns:team', 'k8s:sa:api']);
    const B = b;
    const tie = await until('both entries on B', async () => {
      const r = await x509(B);
      return r.status === 409 ? r : undefined;
    }, 5_000);
    expect(tie.json.error).toBe('ambiguous_registration');
    expect(tie.json.message).toContain('spiffe://example.org/team/api-v2');
    expect(tie.json.message).toMatch(/matching SPIFFE IDs: .*spiffe:\/\/example\.org\/team\/api(,| \()/);
    const picked = await x509(B, { spiffeId: 'spiffe://example.org/team/api-v2' });
    expect([picked.status, picked.json.spiffeId]).toEqual([200, 'spiffe://example.org/team/api-v2']);
    expect((await x509(B, { spiffeId: 'spiffe://example.org/nope' })).json.error).toBe('forbidden');
    // The refusal is audited as a denial.
    expect((await auditEntries(b)).some((e) => e.entry.type === 'denial' && e.entry.code === 'ambiguous_registration')).toBe(true);

    // A third entry with a pod-bound selector is more specific: the dev token carries no pod, so it does not match;
    // narrowing "two" by updating its selectors ends the tie.
    const patched = await a.call({ path: `/v1/admin/entries/${two}`, method: 'PATCH', body: { selectors: ['k8s:ns:team', 'k8s:sa:api', 'k8s:pod-label:app:v2'] }, ...as(admin) });
    expect(patched.status, patched.text).toBe(200);
    await until('tie gone on B', async () => ((await x509(B)).status === 200 ? true : undefined), 5_000);
    expect((await x509(B)).json.spiffeId).toBe('spiffe://example.org/team/api');
    for (const id of [one, two]) expect((await a.call({ path: `/v1/admin/entries/${id}`, method: 'DELETE', ...as(admin) })).status).toBe(200);
  }, 60_000);

  it('refuses bad entries with 400 naming the field, config entries as read-only, and callers without the role', async () => {
    if (a === undefined) throw new Error('broker did not start');
    const A = a;
    const registrar = mintAdminCert(A.material, REGISTRAR);
    const create = (body: Record<string, unknown>) =>
      A.call<{ error: string; message: string; entry: { id: string; allowBroad: boolean } }>({ path: '/v1/admin/entries', body: { spiffeId: 'spiffe://example.org/team/x', ...body }, ...as(registrar) });
    const many = Array.from({ length: 32 }, (_, i) => `k8s:pod-label:l${i}:v`);
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ selectors: ['unix:uid:0'] }, /^selectors\[0\]: unknown selector type "unix"/],
      [{ selectors: ['k8s:ns:team', 'k8s::x'] }, /^selectors\[1\]: the selector key is empty/],
      [{ selectors: ['k8s:ns:team', 'k8s:pod-annotation:a:b\u0007'] }, /^selectors\[1\]: contains a control character/],
      [{ selectors: ['k8s:ns:team', ...many] }, /^selectors: at most 32 selectors \(got 33\)/],
      [{ selectors: ['k8s:sa:api'] }, /^selectors: .*could match workloads in every namespace/],
      [{ selectors: [] }, /^selectors: at least one selector/],
      [{ selectors: ['k8s:ns:team'], dnsNames: ['Bad_Name'] }, /^dnsNames\[0\]/],
      [{ selectors: ['k8s:ns:team'], spiffeId: 'spiffe://other.org/x' }, /^spiffeId: .*not in trust domain/],
    ];
    for (const [body, message] of bad) {
      const r = await create(body);
      expect([r.status, r.json.error, r.json.message], JSON.stringify(body)).toEqual([400, 'bad_request', expect.stringMatching(message)]);
    }
    const broad = await create({ spiffeId: 'spiffe://example.org/any/default', selectors: ['k8s:sa:default'], allowBroad: true });
    expect([broad.status, broad.json.entry.allowBroad]).toEqual([201, true]);
    expect((await A.call({ path: `/v1/admin/entries/${broad.json.entry.id}`, method: 'DELETE', ...as(registrar) })).status).toBe(200);
    const configEdit = await A.call({ path: '/v1/admin/entries/config-1', method: 'PATCH', body: { dnsNames: ['x.y'] }, ...as(registrar) });
    expect([configEdit.status, configEdit.json.message]).toEqual([403, expect.stringMatching(/config-1 comes from the config file/)]);
    // An auditor has no registrar role; a workload SVID never reaches the admin API.
    const auditor = mintAdminCert(A.material, AUDITOR);
    expect((await A.call({ path: '/v1/admin/entries', ...as(auditor) })).json.message).toMatch(/needs registrar or operator/);
    const svid = await workloadSvid(A, { namespace: 'shop', serviceAccount: 'web' });
    const asWorkload = await A.call({ path: '/v1/admin/entries', ...as(svid) });
    expect([asWorkload.status, asWorkload.json.error]).toEqual([403, 'forbidden']);

    // Through the CLI: the broker's refusal is printed with exit 1; usage mistakes exit 2 before any call.
    const [refusedRun, deleteConfig, noSpiffeId, badTtl, plainHttp] = await Promise.all([
      cli(['entry', 'create', '--spiffe-id', 'spiffe://example.org/team/x', '--selector', 'unix:uid:0', ...flagsFor(A)], { cwd: dir }),
      cli(['entry', 'delete', 'config-0', ...flagsFor(A)], { cwd: dir }),
      cli(['entry', 'create', '--selector', 'k8s:ns:team', ...flagsFor(A)], { cwd: dir }),
      cli(['entry', 'create', '--spiffe-id', 'spiffe://example.org/x', '--selector', 'k8s:ns:x', '--x509-ttl', 'soon', ...flagsFor(A)], { cwd: dir }),
      cli(['entry', 'list', '--url', 'http://127.0.0.1:1', ...flagsFor(A).slice(2)], { cwd: dir }),
    ]);
    expect([refusedRun.status, refusedRun.stderr]).toEqual([1, expect.stringMatching(/400 bad_request: selectors\[0\]: unknown selector type "unix"/)]);
    expect([deleteConfig.status, deleteConfig.stderr]).toEqual([1, expect.stringMatching(/403 forbidden: .*config-0 comes from the config file/)]);
    expect([noSpiffeId.status, noSpiffeId.stderr]).toEqual([2, expect.stringMatching(/needs --spiffe-id/)]);
    expect([badTtl.status, badTtl.stderr]).toEqual([2, expect.stringMatching(/--x509-ttl "soon"/)]);
    expect([plainHttp.status, plainHttp.stderr]).toEqual([2, expect.stringMatching(/https:\/\/ only/)]);
  }, 120_000);

  it('in a dev checkout the CLI defaults to certs-dev/bundle.pem and the dev admin certificate', async () => {
    if (a === undefined) throw new Error('broker did not start');
    const checkout = mkdtempSync(path.join(tmpdir(), 'tessera-entries-dev-'));
    try {
      mkdirSync(path.join(checkout, 'certs-dev'));
      copyFileSync(a.material.bundleFile, path.join(checkout, 'certs-dev/bundle.pem'));
      copyFileSync(a.material.adminCertFile, path.join(checkout, 'certs-dev/admin-dev.pem'));
      copyFileSync(a.material.adminKeyFile, path.join(checkout, 'certs-dev/admin-dev.key'));
      const r = await cli(['entry', 'list', '--json'], { cwd: checkout, env: { TESSERA_URL: a.url } });
      expect(r.status, r.stderr).toBe(0);
      expect((JSON.parse(r.stdout) as { source: string }[]).filter((e) => e.source === 'config')).toHaveLength(3);
      const none = await cli(['entry', 'list'], { cwd: dir, env: { TESSERA_URL: a.url } });
      expect([none.status, none.stderr]).toEqual([2, expect.stringMatching(/give --cacert \(or TESSERA_CACERT\)/)]);
    } finally {
      rmSync(checkout, { recursive: true, force: true });
    }
  }, 60_000);
});

describe('Redis for the registration entry tests', () => {
  redisRequiredUnderCi(redis);
});
