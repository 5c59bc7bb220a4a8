/**
 * Static secrets over real TLS: the grant matrix (allowed, other namespace, other service account,
 * unregistered, revoked — each refusal a 403 with an audit denial), mTLS callers, hostile names,
 * tampered ciphertexts (a clear 409, audited, never a value or a 5xx), KEK rotation under a running
 * broker, leases (renew capped at the max TTL, holder-only renew/revoke), restart, and fail-closed audit.
 * Responses are validated against openapi.yaml.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyRing, kekIdOf, parseSealed, readKekFile, seal, serializeSealed, writeNewKekFile } from '../../src/secrets/envelope.js';
import { LEASE_SPACE } from '../../src/secrets/leases.js';
import { SECRET_SPACE, SecretKv } from '../../src/secrets/kv.js';
import { EmbeddedStore } from '../../src/store/embedded.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { FaultyStore } from '../helpers/failing-store.js';
import { expectError, expectSpec, WEB } from '../helpers/secrets.js';

const VALUE = 'reporting-api-key-VALUE-7f3a9c\n';

const secretsConfig = {
  lease: { defaultTtlSeconds: 600, maxTtlSeconds: 1800 },
  grants: [
    { spiffeIds: [WEB], secrets: ['db/reporting-api-key', 'shared/'] },
    { selector: { namespace: 'payments', serviceAccount: 'api' }, secrets: ['payments/'] },
  ],
};

interface SecretBody {
  name: string;
  value: string;
  encoding: 'utf8' | 'base64';
  leaseId: string;
  expiresAt: string;
  maxExpiresAt: string;
  audit: { index: number };
}

let b: TestBroker;
let faulty: FaultyStore | undefined;
let kv: SecretKv;
beforeAll(async () => {
  b = await startBroker({
    secrets: secretsConfig,
    store: async (dir) => {
      faulty = new FaultyStore(await EmbeddedStore.open(dir));
      return faulty;
    },
  });
  kv = b.broker.secrets.kv;
  await kv.put('db/reporting-api-key', Buffer.from(VALUE));
  await kv.put('payments/stripe', Buffer.from('sk_live_payments'));
  await kv.put('shared/binary', Buffer.from([0xff, 0x00, 0xfe, 0x80]));
  await kv.put('paymentsx/key', Buffer.from('not for payments'));
});
afterAll(async () => {
  await b?.close();
});

async function auditEntries(from = 0): Promise<Record<string, unknown>[]> {
  const raw = await b.broker.audit.entries(from, b.broker.audit.size);
  return raw.map((e) => JSON.parse(e.toString('utf8')) as Record<string, unknown>);
}

async function allAuditText(): Promise<string> {
  return (await b.broker.audit.entries(0, b.broker.audit.size)).map((e) => e.toString('utf8')).join('\n');
}

async function read(name: string, opts: { namespace?: string; serviceAccount?: string } = {}) {
  return b.call<SecretBody>({ path: `/v1/secrets/${name}`, token: await b.token(opts) });
}

describe('reading a granted secret', () => {
  it('returns {value, leaseId, expiresAt} and audits the secret name, lease and TTL — never the value', async () => {
    const before = b.broker.audit.size;
    const res = await read('db/reporting-api-key');
    expect(res.status, res.text).toBe(200);
    expectSpec('/v1/secrets/{name}', 'get', res);
    expect(res.headers['cache-control']).toBe('no-store');
    expect(res.json).toMatchObject({ name: 'db/reporting-api-key', value: VALUE, encoding: 'utf8' });
    expect(res.json.leaseId).toMatch(/^[0-9a-f]{32}$/);
    const ttl = Date.parse(res.json.expiresAt) - Date.now();
    expect(ttl).toBeGreaterThan(590_000);
    expect(ttl).toBeLessThanOrEqual(600_000);
    expect(Date.parse(res.json.maxExpiresAt) - Date.parse(res.json.expiresAt)).toBeGreaterThanOrEqual(1_199_000);
    const lease = JSON.parse((await b.broker.store.kvGet(LEASE_SPACE, res.json.leaseId)) as string) as Record<string, unknown>;
    expect(lease).toMatchObject({ kind: 'kv', identity: WEB, secret: 'db/reporting-api-key', state: 'active' });
    const [entry] = await auditEntries(before);
    expect(entry).toMatchObject({
      type: 'secret.issued',
      decision: 'allow',
      actor: WEB,
      subject: WEB,
      secret: 'db/reporting-api-key',
      leaseId: res.json.leaseId,
      namespace: 'shop',
      serviceAccount: 'web',
    });
    expect(entry?.ttlMs).toBeGreaterThan(590_000);
    expect(res.json.audit.index).toBe(before);
    expect(await allAuditText()).not.toContain('reporting-api-key-VALUE');
  });

  it('the stored record is ciphertext only', async () => {
    const raw = (await b.broker.store.kvGet(SECRET_SPACE, 'db/reporting-api-key')) as string;
    expect(raw).not.toContain('VALUE');
    expect(parseSealed(raw, 'db/reporting-api-key').kek).toBe(readKekFile(b.material.kekFile).id);
  });

  it('serves the same secret to the same workload calling with its SVID over mTLS', async () => {
    const svid = await b.call<{ svid: string; privateKey: string }>({ path: '/v1/svid/x509', token: await b.token(), body: { keyType: 'ec-p256' } });
    expect(svid.status).toBe(200);
    const res = await b.call<SecretBody>({ path: '/v1/secrets/db/reporting-api-key', cert: svid.json.svid, key: svid.json.privateKey });
    expect(res.status, res.text).toBe(200);
    expect(res.json.value).toBe(VALUE);
  });

  it('returns binary secrets as base64, byte for byte', async () => {
    const res = await read('shared/binary');
    expect(res.status).toBe(200);
    expect(res.json.encoding).toBe('base64');
    expect(Buffer.from(res.json.value, 'base64')).toEqual(Buffer.from([0xff, 0x00, 0xfe, 0x80]));
  });

  it('has no HEAD variant (a read always creates a lease and an audit entry, so it must return the value)', async () => {
    const leasesBefore = (await b.broker.store.kvList(LEASE_SPACE)).length;
    const res = await b.call({ path: '/v1/secrets/db/reporting-api-key', token: await b.token(), method: 'HEAD' });
    expect(res.status).toBe(404);
    expect((await b.broker.store.kvList(LEASE_SPACE)).length).toBe(leasesBefore);
  });

  it('404s a granted name that does not exist (audited)', async () => {
    const before = b.broker.audit.size;
    expectError(await read('shared/missing'), 404, 'not_found');
    expect(await auditEntries(before)).toEqual([expect.objectContaining({ type: 'denial', code: 'not_found', secret: 'shared/missing' })]);
  });
});

describe('grant matrix', () => {
  it.each([
    ['another service account in the same namespace', { namespace: 'shop', serviceAccount: 'cart' }, 'db/reporting-api-key'],
    ['another namespace', { namespace: 'payments', serviceAccount: 'api' }, 'db/reporting-api-key'],
    ['an unregistered workload', { namespace: 'kube-system', serviceAccount: 'default' }, 'db/reporting-api-key'],
    ['a name outside the granted prefix', { namespace: 'payments', serviceAccount: 'api' }, 'paymentsx/key'],
    ['a name that is not granted even though it exists', { namespace: 'shop', serviceAccount: 'web' }, 'payments/stripe'],
  ])('refuses %s with 403 and an audit denial', async (_why, who, name) => {
    const before = b.broker.audit.size;
    const res = await read(name, who);
    expectError(res, 403, 'forbidden');
    expectSpec('/v1/secrets/{name}', 'get', res);
    expect(res.text).not.toContain('VALUE');
    expect(res.text).not.toContain('sk_live');
    const entries = await auditEntries(before);
    expect(entries).toEqual([
      expect.objectContaining({ type: 'denial', decision: 'deny', code: 'forbidden', secret: name, namespace: who.namespace, serviceAccount: who.serviceAccount }),
    ]);
  });

  it('grants by selector: payments/api reads under payments/', async () => {
    const res = await read('payments/stripe', { namespace: 'payments', serviceAccount: 'api' });
    expect(res.status).toBe(200);
    expect(res.json.value).toBe('sk_live_payments');
  });

  it('refuses a caller without credentials (401, audited with no actor)', async () => {
    const before = b.broker.audit.size;
    const res = await b.call({ path: '/v1/secrets/db/reporting-api-key' });
    expectError(res, 401, 'unauthenticated');
    expectSpec('/v1/secrets/{name}', 'get', res);
    expect(await auditEntries(before)).toEqual([expect.objectContaining({ type: 'denial', actor: null, code: 'unauthenticated' })]);
  });

  it('refuses hostile names with 400 (or a path the router never maps to a secret)', async () => {
    const token = await b.token();
    for (const p of [
      '/v1/secrets/DB/reporting-api-key',
      '/v1/secrets/db/reporting-api-key%00',
      "/v1/secrets/db/reporting-api-key'--",
      '/v1/secrets/db/a..b',
      '/v1/secrets/db//reporting-api-key',
      '/v1/secrets/db%2Freporting-api-key%2F',
      '/v1/secrets/postgres/reporting/creds',
      '/v1/secrets/',
      `/v1/secrets/${'a'.repeat(300)}`,
      '/v1/secrets/%2e%2e/%2e%2e/etc/passwd',
      '/v1/secrets/db/%2e%2e/%2e%2e/secret/db/reporting-api-key',
    ]) {
      const res = await b.call({ path: p, token });
      expect([400, 404], `${p}: ${res.status} ${res.text}`).toContain(res.status);
      expect(res.text).not.toContain('VALUE');
      expect((res.json as { error: string }).error).toMatch(/^(bad_request|not_found)$/);
    }
    // Names that reach the handler are refused as bad requests, not looked up.
    expectError(await b.call({ path: '/v1/secrets/DB/x', token }), 400, 'bad_request');
    expectError(await b.call({ path: '/v1/secrets/db/a..b', token }), 400, 'bad_request');
  });
});

describe('tampering', () => {
  /** Stores a fresh granted secret, then rewrites one field of its record with a flipped byte. */
  async function tampered(name: string, field: 'ct' | 'tag' | 'dek' | 'iv'): Promise<void> {
    await kv.put(name, Buffer.from(`tamper-target-${field}`));
    const record = parseSealed((await b.broker.store.kvGet(SECRET_SPACE, name)) as string, name);
    const bytes = Buffer.from(record[field], 'base64');
    bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) ^ 0x80;
    await b.broker.store.kvPut(SECRET_SPACE, name, serializeSealed({ ...record, [field]: bytes.toString('base64') }));
  }

  it.each(['ct', 'tag', 'dek', 'iv'] as const)('a flipped byte in the %s fails loudly: 409, audited, nothing served', async (field) => {
    const name = `shared/tamper-${field}`;
    await tampered(name, field);
    const before = b.broker.audit.size;
    const res = await read(name);
    expectError(res, 409, 'secret_integrity_failed');
    expectSpec('/v1/secrets/{name}', 'get', res);
    expect((res.json as unknown as { message: string }).message).toMatch(/integrity check/);
    expect(res.text).not.toContain('tamper-target');
    expect(await auditEntries(before)).toEqual([
      expect.objectContaining({ type: 'denial', code: 'secret_integrity_failed', secret: name, actor: WEB }),
    ]);
    // No lease was handed out for it.
    const leases = (await b.broker.store.kvList(LEASE_SPACE)).map((r) => JSON.parse(r.value) as { secret: string });
    expect(leases.filter((l) => l.secret === name)).toEqual([]);
  });

  it('a record moved under another name does not open', async () => {
    const raw = (await b.broker.store.kvGet(SECRET_SPACE, 'payments/stripe')) as string;
    await b.broker.store.kvPut(SECRET_SPACE, 'shared/stolen', raw);
    expectError(await read('shared/stolen'), 409, 'secret_integrity_failed');
  });

  it('a secret wrapped by a KEK this broker lacks is 503 kek_unavailable (retry another replica), not served', async () => {
    const other = KeyRing.of({ id: kekIdOf(Buffer.alloc(32, 7)), key: Buffer.alloc(32, 7) });
    await b.broker.store.kvPut(SECRET_SPACE, 'shared/foreign', serializeSealed(seal(other, Buffer.from('x'), 'shared/foreign')));
    const res = await read('shared/foreign');
    expectError(res, 503, 'kek_unavailable');
    expectSpec('/v1/secrets/{name}', 'get', res);
  });
});

describe('leases', () => {
  it('renew extends up to the max TTL, never beyond; only the holder may renew or revoke', async () => {
    const got = await read('db/reporting-api-key');
    const leaseId = got.json.leaseId;
    const token = await b.token();
    const renewed = await b.call<{ expiresAt: string; maxExpiresAt: string }>({ path: `/v1/leases/${leaseId}/renew`, token, body: { ttlSeconds: 1200 } });
    expect(renewed.status, renewed.text).toBe(200);
    expectSpec('/v1/leases/{leaseId}/renew', 'post', renewed);
    expect(Date.parse(renewed.json.expiresAt)).toBeGreaterThan(Date.parse(got.json.expiresAt));
    const capped = await b.call<{ expiresAt: string; maxExpiresAt: string }>({ path: `/v1/leases/${leaseId}/renew`, token, body: { ttlSeconds: 100_000 } });
    expect(capped.status).toBe(200);
    expect(capped.json.expiresAt).toBe(got.json.maxExpiresAt);
    // No body at all is fine too (curl -X POST).
    expect((await b.call({ path: `/v1/leases/${leaseId}/renew`, token, method: 'POST' })).status).toBe(200);

    const before = b.broker.audit.size;
    const otherToken = await b.token({ namespace: 'payments', serviceAccount: 'api' });
    const stolenRenew = await b.call({ path: `/v1/leases/${leaseId}/renew`, token: otherToken, method: 'POST' });
    expectError(stolenRenew, 403, 'forbidden');
    expectSpec('/v1/leases/{leaseId}/renew', 'post', stolenRenew);
    expectError(await b.call({ path: `/v1/leases/${leaseId}/revoke`, token: otherToken, method: 'POST' }), 403, 'forbidden');
    expect((await auditEntries(before)).map((e) => [e.type, e.code, e.leaseId])).toEqual([
      ['denial', 'forbidden', leaseId],
      ['denial', 'forbidden', leaseId],
    ]);

    const revoked = await b.call({ path: `/v1/leases/${leaseId}/revoke`, token, method: 'POST' });
    expect(revoked.status, revoked.text).toBe(200);
    expectSpec('/v1/leases/{leaseId}/revoke', 'post', revoked);
    expect(await b.broker.store.kvGet(LEASE_SPACE, leaseId)).toBeUndefined();
    const gone = await b.call({ path: `/v1/leases/${leaseId}/renew`, token, method: 'POST' });
    expectError(gone, 404, 'not_found');
    expectSpec('/v1/leases/{leaseId}/renew', 'post', gone);
    const entries = await auditEntries(before);
    expect(entries.find((e) => e.type === 'lease.revoked')).toMatchObject({ leaseId, actor: WEB, subject: WEB, secret: 'db/reporting-api-key' });
  });

  it('refuses malformed and unknown lease ids', async () => {
    const token = await b.token();
    expectError(await b.call({ path: '/v1/leases/not-a-lease/renew', token, method: 'POST' }), 400, 'bad_request');
    expectError(await b.call({ path: `/v1/leases/${'0'.repeat(32)}/revoke`, token, method: 'POST' }), 404, 'not_found');
    expectError(await b.call({ path: `/v1/leases/${'0'.repeat(32)}/renew`, token, body: { ttlSeconds: 0 } }), 400, 'bad_request');
  });
});

describe('revoked identity', () => {
  it('is refused every secret (403, audited) and loses its leases', async () => {
    const token = await b.token({ namespace: 'payments', serviceAccount: 'api' });
    const got = await b.call<SecretBody>({ path: '/v1/secrets/payments/stripe', token });
    expect(got.status).toBe(200);
    const spiffeId = 'spiffe://example.org/ns/payments/sa/api';
    // What the admin API records when an operator revokes an identity, then the leases go.
    await b.broker.store.kvPut(
      'revocation',
      `spiffeId:${spiffeId}`,
      JSON.stringify({ kind: 'spiffeId', value: spiffeId, reason: 'test', by: 'spiffe://example.org/admin/alice', at: Date.now(), requestId: 'r' }),
    );
    const out = await b.broker.secrets.revokeIdentity(spiffeId, { actor: 'spiffe://example.org/admin/alice', requestId: 'r', reason: 'identity revoked' });
    expect(out.revoked).toContain(got.json.leaseId);
    expect(out.pending).toEqual([]);
    const before = b.broker.audit.size;
    const res = await b.call({ path: '/v1/secrets/payments/stripe', token: await b.token({ namespace: 'payments', serviceAccount: 'api' }) });
    expectError(res, 403, (res.json as { error: string }).error === 'revoked' ? 'revoked' : 'forbidden');
    expect(res.text).not.toContain('sk_live');
    expect(await auditEntries(before)).toEqual([expect.objectContaining({ type: 'denial', decision: 'deny' })]);
    expect((await b.call({ path: `/v1/leases/${got.json.leaseId}/renew`, token, method: 'POST' })).status).toBe(403);
    // Others are unaffected.
    expect((await read('db/reporting-api-key')).status).toBe(200);
  });
});

describe('KEK rotation', () => {
  it('re-wraps every data key under a new KEK without touching ciphertexts; the old KEK is then not needed', async () => {
    const dataDir = path.join(b.dir, 'rotation-data');
    const names = ['db/reporting-api-key', 'shared/a', 'shared/b'];
    const first = await startBroker({ secrets: secretsConfig, dataDir });
    const records = async (store: typeof first.broker.store) =>
      new Map(await Promise.all(names.map(async (n) => [n, parseSealed((await store.kvGet(SECRET_SPACE, n)) as string, n)] as const)));
    let old: Awaited<ReturnType<typeof records>>;
    const newKekFile = path.join(b.dir, 'rotated.kek');
    let newKekId: string;
    try {
      for (const n of names) await first.broker.secrets.kv.put(n, Buffer.from(`rotation value ${n}`));
      old = await records(first.broker.store);
      const oldKek = readKekFile(b.material.kekFile);
      const newKek = await writeNewKekFile(newKekFile);
      newKekId = newKek.id;
      // What `tessera secrets rotate-kek` does, through the same store.
      const report = await first.broker.secrets.kv.rewrapAll(KeyRing.of(oldKek).withActive(newKek));
      expect(report).toEqual({ rewrapped: 3, unchanged: 0, failed: [] });
      const now = await records(first.broker.store);
      for (const n of names) {
        const o = old.get(n);
        const r = now.get(n);
        expect(r?.kek).toBe(newKek.id);
        expect([r?.iv, r?.ct, r?.tag]).toEqual([o?.iv, o?.ct, o?.tag]);
        expect(r?.dek).not.toBe(o?.dek);
      }
      // This broker still runs with the old KEK only: it cannot unwrap the new records (and says so).
      expectError(await first.call({ path: '/v1/secrets/db/reporting-api-key', token: await first.token() }), 503, 'kek_unavailable');
    } finally {
      await first.close();
    }
    // Restarted with only the new KEK configured: everything reads, the old KEK is not needed.
    const second = await startBroker({ secrets: { ...secretsConfig, kekFile: newKekFile }, dataDir });
    try {
      for (const n of ['db/reporting-api-key', 'shared/a']) {
        const res = await second.call<SecretBody>({ path: `/v1/secrets/${n}`, token: await second.token() });
        expect(res.status, res.text).toBe(200);
        expect(res.json.value).toBe(`rotation value ${n}`);
      }
      expect(parseSealed((await second.broker.store.kvGet(SECRET_SPACE, 'shared/b')) as string, 'shared/b').kek).toBe(newKekId);
    } finally {
      await second.close();
    }
  });

  it('refuses to re-wrap (launder) a tampered record: it is reported and left as it was', async () => {
    const oldKek = readKekFile(b.material.kekFile);
    await kv.put('shared/victim', Buffer.from('v'));
    const record = parseSealed((await b.broker.store.kvGet(SECRET_SPACE, 'shared/victim')) as string, 'shared/victim');
    const dek = Buffer.from(record.dek, 'base64');
    dek[20] = (dek[20] as number) ^ 1;
    await b.broker.store.kvPut(SECRET_SPACE, 'shared/victim', serializeSealed({ ...record, dek: dek.toString('base64') }));
    const snapshot = new Map((await b.broker.store.kvList(SECRET_SPACE)).map((r) => [r.key, r.value]));
    const target = { id: kekIdOf(Buffer.alloc(32, 9)), key: Buffer.alloc(32, 9) };
    const out = await kv.rewrapAll(KeyRing.of(oldKek).withActive(target));
    expect(out.failed.map((f) => f.name)).toContain('shared/victim');
    expect(out.failed.find((f) => f.name === 'shared/victim')?.error).toMatch(/modified or is corrupt/);
    expect(await b.broker.store.kvGet(SECRET_SPACE, 'shared/victim')).toBe(snapshot.get('shared/victim'));
    // Put every record back under the broker's own KEK so later tests still read.
    for (const [n, v] of snapshot) await b.broker.store.kvPut(SECRET_SPACE, n, v);
  });
});

describe('restart', () => {
  it('leases survive a broker restart on the same store', async () => {
    const dataDir = path.join(b.dir, 'restart-data');
    const first = await startBroker({ secrets: secretsConfig, dataDir });
    await first.broker.secrets.kv.put('db/reporting-api-key', Buffer.from(VALUE));
    const got = await first.call<SecretBody>({ path: '/v1/secrets/db/reporting-api-key', token: await first.token() });
    expect(got.status).toBe(200);
    await first.close();
    const second = await startBroker({ secrets: secretsConfig, dataDir });
    try {
      const renewed = await second.call({ path: `/v1/leases/${got.json.leaseId}/renew`, token: await second.token(), method: 'POST' });
      expect(renewed.status, renewed.text).toBe(200);
      expect((await second.call<SecretBody>({ path: '/v1/secrets/db/reporting-api-key', token: await second.token() })).json.value).toBe(VALUE);
    } finally {
      await second.close();
    }
  });
});

describe('fail closed', () => {
  it('answers 503 and records no lease while the audit log cannot write', async () => {
    const token = await b.token();
    const leasesBefore = (await b.broker.store.kvList(LEASE_SPACE)).length;
    (faulty as FaultyStore).failAppends = true;
    try {
      const res = await b.call({ path: '/v1/secrets/db/reporting-api-key', token });
      expectError(res, 503, 'audit_unavailable');
      expect(res.text).not.toContain('VALUE');
    } finally {
      (faulty as FaultyStore).failAppends = false;
    }
    expect((await b.broker.store.kvList(LEASE_SPACE)).length).toBe(leasesBefore);
  });
});
