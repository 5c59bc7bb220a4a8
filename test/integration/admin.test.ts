/**
 * The admin API over real mutual TLS: each role allowed and refused, workload SVIDs refused on admin
 * routes, admin certificates refused on workload routes, revocations seen by renewals and new issuance,
 * the kill switch, every call audited with the admin's identity, and responses matching openapi.yaml.
 */
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { Ajv } from 'ajv';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';
import { auditEntries, type ClientCert, mintAdminCert, mintForeignCert, workloadSvid } from '../helpers/admin.js';

const TD = 'spiffe://example.org';
const ALICE = `${TD}/admin/alice`; // auditor
const OLIVE = `${TD}/admin/olive`; // operator
const SAM = `${TD}/admin/sam`; // secrets-admin
const MALLORY = `${TD}/admin/mallory`; // valid admin-CA certificate, not a configured principal

interface Spec {
  paths: Record<string, Record<string, { responses: Record<string, { $ref?: string; content?: Record<string, { schema: unknown }> }> }>>;
  components: { schemas: Record<string, unknown>; responses: Record<string, { content?: Record<string, { schema: unknown }> }> };
}
const spec = parse(readFileSync(new URL('../../openapi.yaml', import.meta.url), 'utf8')) as Spec;
const ajv = new Ajv({ strict: false, validateFormats: false });
ajv.addSchema({ components: spec.components }, 'openapi');

/** Validates a real response against openapi.yaml (path as written in the spec). */
function expectSpec(path: string, method: string, res: { status: number; json: unknown }): void {
  const op = spec.paths[path]?.[method.toLowerCase()];
  expect(op, `spec has ${method} ${path}`).toBeDefined();
  let response = op?.responses[String(res.status)];
  expect(response, `spec has ${res.status} for ${method} ${path}`).toBeDefined();
  if (response?.$ref !== undefined) response = spec.components.responses[response.$ref.split('/').pop() as string];
  const schema = Object.values(response?.content ?? {})[0]?.schema ?? {};
  const validate = ajv.compile(JSON.parse(JSON.stringify(schema).replaceAll('"#/components/', '"openapi#/components/')) as object);
  expect(validate(res.json), `${method} ${path} ${res.status}: ${ajv.errorsText(validate.errors)}`).toBe(true);
}

/** One raw HTTPS request over a fresh TLS connection, optionally resuming `session`. */
function rawRequest(
  url: string,
  ca: string,
  c: ClientCert,
  request: string,
  session?: Buffer,
): Promise<{ status: number; reused: boolean; session?: Buffer }> {
  const port = Number(new URL(url).port);
  return new Promise((resolve, reject) => {
    let next: Buffer | undefined;
    const s = tls.connect({ host: '127.0.0.1', port, ca, cert: c.cert, key: c.key, servername: 'localhost', ...(session ? { session } : {}) }, () => {
      s.write(request);
    });
    s.on('session', (x: Buffer) => (next = x));
    let text = '';
    s.on('data', (d: Buffer) => (text += d.toString()));
    s.on('end', () => resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), reused: s.isSessionReused(), ...(next ? { session: next } : {}) }));
    s.on('error', reject);
  });
}

let b: TestBroker;
let certs: Record<'alice' | 'olive' | 'sam' | 'mallory', ClientCert>;

beforeAll(async () => {
  const { material: m } = await devMaterial();
  b = await startBroker({
    secrets: { grants: [{ selector: { namespace: 'shop', serviceAccount: 'web' }, secrets: ['app/'] }] },
    config: {
      admin: {
        caBundleFile: m.adminCaCertFile,
        caCertFile: m.adminCaCertFile,
        caKeyFile: m.adminCaKeyFile,
        principals: [
          { id: ALICE, roles: ['auditor'] },
          { id: OLIVE, roles: ['operator'] },
          { id: SAM, roles: ['secrets-admin'] },
        ],
      },
    },
  });
  certs = {
    alice: mintAdminCert(b.material, ALICE),
    olive: mintAdminCert(b.material, OLIVE),
    sam: mintAdminCert(b.material, SAM),
    mallory: mintAdminCert(b.material, MALLORY),
  };
});

afterAll(async () => {
  await b?.close();
});

const as = (c: ClientCert) => ({ cert: c.cert, key: c.key });

describe('admin roles over mTLS', () => {
  type Call = { name: string; method: string; path: string; spec: string; body?: unknown; allowed: ('alice' | 'olive' | 'sam')[] };
  const calls: Call[] = [
    { name: 'whoami', method: 'GET', path: '/v1/admin/whoami', spec: '/v1/admin/whoami', allowed: ['alice', 'olive', 'sam'] },
    { name: 'list revocations', method: 'GET', path: '/v1/admin/revocations', spec: '/v1/admin/revocations', allowed: ['alice', 'olive'] },
    { name: 'failed lease revokes', method: 'GET', path: '/v1/admin/leases/failed', spec: '/v1/admin/leases/failed', allowed: ['alice', 'olive'] },
    {
      name: 'revoke',
      method: 'POST',
      path: '/v1/admin/revoke',
      spec: '/v1/admin/revoke',
      body: { kind: 'spiffeId', value: `${TD}/ns/nobody/sa/none`, reason: 'role matrix' },
      allowed: ['olive'],
    },
    {
      name: 'unrevoke',
      method: 'POST',
      path: '/v1/admin/unrevoke',
      spec: '/v1/admin/unrevoke',
      body: { kind: 'spiffeId', value: `${TD}/ns/nobody/sa/none`, reason: 'role matrix' },
      allowed: ['olive'],
    },
    { name: 'freeze status', method: 'GET', path: '/v1/admin/freeze', spec: '/v1/admin/freeze', allowed: ['alice', 'olive'] },
    { name: 'freeze', method: 'POST', path: '/v1/admin/freeze', spec: '/v1/admin/freeze', body: { namespace: 'nobody', reason: 'role matrix' }, allowed: ['olive'] },
    { name: 'thaw', method: 'POST', path: '/v1/admin/thaw', spec: '/v1/admin/thaw', body: { namespace: 'nobody', reason: 'role matrix' }, allowed: ['olive'] },
    { name: 'write secret', method: 'PUT', path: '/v1/admin/secrets/app/db-password', spec: '/v1/admin/secrets/{name}', body: { value: 's3cret-value' }, allowed: ['sam'] },
    { name: 'delete secret', method: 'DELETE', path: '/v1/admin/secrets/app/nothing-here', spec: '/v1/admin/secrets/{name}', allowed: ['sam'] },
    { name: 'break-glass events', method: 'GET', path: '/v1/admin/break-glass/events', spec: '/v1/admin/break-glass/events', allowed: ['alice', 'olive'] },
    { name: 'audit search', method: 'GET', path: '/v1/audit/search?type=admin&limit=5', spec: '/v1/audit/search', allowed: ['alice'] },
  ];

  for (const who of ['alice', 'olive', 'sam'] as const) {
    it(`${who}: allowed exactly the calls of their role, each audited with their identity`, async () => {
      const id = { alice: ALICE, olive: OLIVE, sam: SAM }[who];
      for (const c of calls) {
        const before = b.broker.audit.size;
        const res = await b.call({ method: c.method, path: c.path, ...(c.body !== undefined ? { body: c.body } : {}), ...as(certs[who]) });
        const allowed = c.allowed.includes(who);
        expect(res.status, `${who} ${c.name}: ${res.text}`).toBe(allowed ? 200 : 403);
        if (!allowed) expect(res.json.error).toBe('forbidden');
        expectSpec(c.spec, c.method, res);
        // The call's own entry: type admin, the admin as actor, allow or deny.
        const mine = (await auditEntries(b)).slice(before).filter((e) => e.entry.type === 'admin' && e.entry.actor === id);
        expect(mine.map((e) => e.entry.decision), `${who} ${c.name}`).toEqual([allowed ? 'allow' : 'deny']);
        expect(mine[0]?.entry.source).toBe('admin');
      }
    });
  }

  it('whoami names the admin and their roles', async () => {
    const res = await b.call<{ spiffeId: string; roles: string[]; via: string }>({ path: '/v1/admin/whoami', ...as(certs.olive) });
    expect(res.json).toMatchObject({ spiffeId: OLIVE, roles: ['operator'], via: 'certificate' });
  });

  it('an admin-CA certificate of an unlisted principal gets nothing (403), and is audited', async () => {
    const res = await b.call({ path: '/v1/admin/whoami', ...as(certs.mallory) });
    expect(res.status).toBe(403);
    const last = (await auditEntries(b)).at(-1)?.entry;
    expect(last).toMatchObject({ type: 'admin', decision: 'deny', actor: MALLORY, action: 'whoami', code: 'forbidden' });
  });

  it('no client certificate → 401; a certificate from an unknown CA → 401 on admin and workload routes', async () => {
    const none = await b.call({ path: '/v1/admin/revocations' });
    expect(none.status).toBe(401);
    expectSpec('/v1/admin/revocations', 'GET', none);
    const foreign = mintForeignCert(OLIVE);
    const a = await b.call({ path: '/v1/admin/whoami', ...as(foreign) });
    expect([a.status, a.json.error]).toEqual([401, 'invalid_client_certificate']);
    const w = await b.call({ path: '/v1/svid/x509', body: { keyType: 'ec-p256' }, ...as(foreign) });
    expect([w.status, w.json.error]).toEqual([401, 'invalid_client_certificate']);
  });

  it('a workload SVID never reaches admin routes (403, audited with the workload ID)', async () => {
    const svid = await workloadSvid(b);
    for (const [method, path, body] of [
      ['GET', '/v1/admin/whoami', undefined],
      ['POST', '/v1/admin/freeze', { reason: 'workload trying' }],
      ['GET', '/v1/audit/search', undefined],
    ] as const) {
      const res = await b.call({ method, path, ...(body !== undefined ? { body } : {}), ...as(svid) });
      expect([res.status, res.json.error], `${method} ${path}`).toEqual([403, 'forbidden']);
    }
    const last = (await auditEntries(b)).at(-1)?.entry;
    expect(last).toMatchObject({ type: 'admin', decision: 'deny', actor: svid.spiffeId, source: 'mtls' });
    // Nothing was frozen by it.
    expect((await b.call({ path: '/v1/svid/x509', token: await b.token(), body: { keyType: 'ec-p256' } })).status).toBe(200);
  });

  it('an admin certificate is never a workload identity on /v1/svid/*, with or without a token', async () => {
    const alone = await b.call({ path: '/v1/svid/x509', body: { keyType: 'ec-p256' }, ...as(certs.olive) });
    expect([alone.status, alone.json.error]).toEqual([401, 'invalid_client_certificate']);
    const withToken = await b.call({ path: '/v1/svid/jwt', token: await b.token(), body: { audience: ['payments'] }, ...as(certs.olive) });
    expect([withToken.status, withToken.json.error]).toEqual([401, 'invalid_client_certificate']);
    const secret = await b.call({ path: '/v1/secrets/app/db-password', ...as(certs.sam) });
    expect([secret.status, secret.json.error]).toEqual([401, 'invalid_client_certificate']);
  });

  it('a resumed TLS session (no chain presented) keeps its class: admin stays admin, workload stays workload', async () => {
    const whoami = 'GET /v1/admin/whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n';
    const first = await rawRequest(b.url, b.ca, certs.olive, whoami);
    expect(first.status).toBe(200);
    const resumed = await rawRequest(b.url, b.ca, certs.olive, whoami, first.session);
    expect([resumed.reused, resumed.status]).toEqual([true, 200]);
    const svid = await workloadSvid(b);
    const renew = 'POST /v1/svid/x509 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\ncontent-type: application/json\r\ncontent-length: 22\r\n\r\n{"keyType":"ec-p256"}\n';
    const w1 = await rawRequest(b.url, b.ca, svid, renew);
    expect(w1.status).toBe(200);
    const w2 = await rawRequest(b.url, b.ca, svid, whoami, w1.session);
    expect([w2.reused, w2.status]).toEqual([true, 403]);
    const w3 = await rawRequest(b.url, b.ca, svid, renew, w1.session);
    expect([w3.reused, w3.status]).toEqual([true, 200]);
  });

  it('audit search finds entries by identity (auditor)', async () => {
    const res = await b.call<{ hits: { entry: { actor: string; type: string } }[] }>({
      path: `/v1/audit/search?spiffeId=${encodeURIComponent(OLIVE)}&type=admin`,
      ...as(certs.alice),
    });
    expect(res.status).toBe(200);
    expect(res.json.hits.length).toBeGreaterThan(3);
    expect(res.json.hits.every((h) => h.entry.actor === OLIVE && h.entry.type === 'admin')).toBe(true);
    const bad = await b.call({ path: '/v1/audit/search?since=yesterday', ...as(certs.alice) });
    expect([bad.status, bad.json.error]).toEqual([400, 'bad_request']);
  });
});

describe('revocation', () => {
  const revoke = (kind: string, value: string) =>
    b.call<{ revocation: { value: string }; leases: { revoked: string[] }; error?: string }>({ path: '/v1/admin/revoke', body: { kind, value, reason: 'test' }, ...as(certs.olive) });
  const unrevoke = (kind: string, value: string) => b.call({ path: '/v1/admin/unrevoke', body: { kind, value, reason: 'test done' }, ...as(certs.olive) });
  const renew = (c: ClientCert) => b.call<{ serial: string; error?: string }>({ path: '/v1/svid/x509', body: { keyType: 'ec-p256' }, ...as(c) });

  it('a revoked SPIFFE ID: renewals, new SVIDs, JWT-SVIDs and secret reads refused at once; its leases revoked', async () => {
    const svid = await workloadSvid(b);
    expect((await renew(svid)).status).toBe(200);
    const put = await b.call({ method: 'PUT', path: '/v1/admin/secrets/app/api-key', body: { value: 'k-123' }, ...as(certs.sam) });
    expect(put.status).toBe(200);
    const read = await b.call<{ leaseId: string }>({ path: '/v1/secrets/app/api-key', token: await b.token() });
    expect(read.status).toBe(200);

    const r = await revoke('spiffeId', svid.spiffeId);
    expect(r.status).toBe(200);
    expect(r.json.leases.revoked).toContain(read.json.leaseId);

    const token = await b.token();
    for (const res of [
      await renew(svid),
      await b.call({ path: '/v1/svid/x509', token, body: { keyType: 'ec-p256' } }),
      await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } }),
      await b.call({ path: '/v1/secrets/app/api-key', token }),
    ]) {
      expect([res.status, res.json.error], res.text).toEqual([403, 'revoked']);
    }
    // Other identities are untouched.
    expect((await b.call({ path: '/v1/svid/x509', token: await b.token({ namespace: 'payments', serviceAccount: 'api' }), body: { keyType: 'ec-p256' } })).status).toBe(200);
    const list = await b.call<{ revocations: { kind: string; value: string; by: string }[] }>({ path: '/v1/admin/revocations', ...as(certs.alice) });
    expect(list.json.revocations).toContainEqual(expect.objectContaining({ kind: 'spiffeId', value: svid.spiffeId, by: OLIVE }));
    // The admin entry names the target and comes before the change.
    const entry = (await auditEntries(b)).find((e) => e.entry.action === 'revoke' && e.entry.subject === svid.spiffeId)?.entry;
    expect(entry).toMatchObject({ type: 'admin', decision: 'allow', actor: OLIVE, reason: 'test' });

    expect((await unrevoke('spiffeId', svid.spiffeId)).status).toBe(200);
    expect((await renew(svid)).status).toBe(200);
  });

  it('a revoked serial: that certificate cannot renew, a sibling certificate of the same ID can', async () => {
    const a = await workloadSvid(b);
    const sibling = await workloadSvid(b);
    // Serials are matched as numbers: colons and upper case are fine.
    const colons = a.serial.toUpperCase().match(/.{1,2}/g)?.join(':') ?? a.serial;
    expect((await revoke('serial', colons)).status).toBe(200);
    const refused = await renew(a);
    expect([refused.status, refused.json.error]).toEqual([403, 'revoked']);
    expect((await renew(sibling)).status).toBe(200);
    expect((await unrevoke('serial', a.serial)).status).toBe(200);
    expect((await renew(a)).status).toBe(200);
  });

  it('a revoked namespace: every identity in it, by token or by SVID; other namespaces unaffected', async () => {
    const svid = await workloadSvid(b, { namespace: 'shop', serviceAccount: 'cart' });
    expect((await revoke('namespace', 'shop')).status).toBe(200);
    expect((await renew(svid)).json.error).toBe('revoked');
    expect((await b.call({ path: '/v1/svid/jwt', token: await b.token({ namespace: 'shop', serviceAccount: 'web' }), body: { audience: ['payments'] } })).json.error).toBe('revoked');
    expect((await b.call({ path: '/v1/svid/x509', token: await b.token({ namespace: 'payments', serviceAccount: 'api' }), body: { keyType: 'ec-p256' } })).status).toBe(200);
    expect((await unrevoke('namespace', 'shop')).status).toBe(200);
    expect((await renew(svid)).status).toBe(200);
  });

  it('a revoked admin (by ID or certificate serial) loses the admin API', async () => {
    const extra = mintAdminCert(b.material, OLIVE);
    expect((await revoke('serial', extra.serial)).status).toBe(200);
    const res = await b.call({ path: '/v1/admin/whoami', ...as(extra) });
    expect([res.status, res.json.error]).toEqual([403, 'revoked']);
    expect((await b.call({ path: '/v1/admin/whoami', ...as(certs.olive) })).status).toBe(200);
  });

  it('bad targets are 400s naming the problem', async () => {
    for (const [kind, value] of [['spiffeId', 'https://example.org/x'], ['spiffeId', 'spiffe://example.org'], ['namespace', 'a/b'], ['serial', 'xyz']]) {
      const res = await revoke(kind as string, value as string);
      expect([res.status, res.json.error], `${kind} ${value}`).toEqual([400, 'bad_request']);
    }
    const unknownKind = await revoke('ip', '10.0.0.1');
    expect(unknownKind.status).toBe(400);
  });
});

describe('freeze (kill switch)', () => {
  const x509 = async (ns: string, sa: string) => b.call({ path: '/v1/svid/x509', token: await b.token({ namespace: ns, serviceAccount: sa }), body: { keyType: 'ec-p256' } });

  it('global freeze: 503 issuance_frozen for X.509, JWT and secrets; thaw restores', async () => {
    const f = await b.call({ path: '/v1/admin/freeze', body: { reason: 'incident INC-1' }, ...as(certs.olive) });
    expect(f.status).toBe(200);
    const token = await b.token();
    const refused = [
      await x509('shop', 'web'),
      await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } }),
      await b.call({ path: '/v1/secrets/app/db-password', token }),
    ];
    for (const res of refused) expect([res.status, res.json.error], res.text).toEqual([503, 'issuance_frozen']);
    expectSpec('/v1/svid/x509', 'POST', refused[0] as { status: number; json: unknown });
    const status = await b.call<{ frozen: boolean; global: { by: string } | null }>({ path: '/v1/admin/freeze', ...as(certs.alice) });
    expect(status.json).toMatchObject({ frozen: true, global: { by: OLIVE } });
    expectSpec('/v1/admin/freeze', 'GET', status);
    const t = await b.call<{ thawed: boolean }>({ path: '/v1/admin/thaw', body: { reason: 'resolved' }, ...as(certs.olive) });
    expect(t.json.thawed).toBe(true);
    expect((await x509('shop', 'web')).status).toBe(200);
  });

  it('namespace freeze refuses only that namespace', async () => {
    expect((await b.call({ path: '/v1/admin/freeze', body: { namespace: 'shop', reason: 'contain' }, ...as(certs.olive) })).status).toBe(200);
    expect((await x509('shop', 'web')).json.error).toBe('issuance_frozen');
    expect((await x509('payments', 'api')).status).toBe(200);
    expect((await b.call({ path: '/v1/admin/thaw', body: { namespace: 'shop', reason: 'ok' }, ...as(certs.olive) })).status).toBe(200);
    expect((await x509('shop', 'web')).status).toBe(200);
  });
});
