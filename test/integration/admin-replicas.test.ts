/**
 * Revocations and the freeze are store state: they survive a restart (embedded store reopened on the
 * same data directory) and a second replica sees them on its very next request (two brokers in this
 * process, each with its own RedisStore connection on one unique prefix of the shared Redis).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../../src/store/redis.js';
import { type ClientCert, mintAdminCert, workloadSvid } from '../helpers/admin.js';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';
import { SHARED_REDIS_URL, deletePrefix, redisRequiredUnderCi, sharedRedis, uniquePrefix } from '../helpers/redis.js';

const redis = await sharedRedis();
const OPERATOR = 'spiffe://example.org/admin/dev';
const as = (c: ClientCert) => ({ cert: c.cert, key: c.key });
const x509 = async (b: TestBroker, ns = 'shop', sa = 'web') =>
  b.call({ path: '/v1/svid/x509', token: await b.token({ namespace: ns, serviceAccount: sa }), body: { keyType: 'ec-p256' } });

describe('freeze and revocations survive a restart (embedded store)', () => {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'tessera-admin-restart-'));
  afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

  it('freeze → restart → still frozen; thaw → restart → issuing; a revocation persists too', async () => {
    const { material } = await devMaterial();
    const admin = mintAdminCert(material, OPERATOR);
    let b = await startBroker({ dataDir });
    try {
      expect((await x509(b)).status).toBe(200);
      expect((await b.call({ path: '/v1/admin/freeze', body: { reason: 'INC-7 kill switch' }, ...as(admin) })).status).toBe(200);
      expect((await b.call({ path: '/v1/admin/revoke', body: { kind: 'namespace', value: 'payments', reason: 'INC-7' }, ...as(admin) })).status).toBe(200);
      expect((await x509(b)).json.error).toBe('issuance_frozen');
    } finally {
      await b.close();
    }

    b = await startBroker({ dataDir });
    try {
      const after = await x509(b);
      expect([after.status, after.json.error]).toEqual([503, 'issuance_frozen']);
      const status = await b.call<{ frozen: boolean; global: { reason: string } | null }>({ path: '/v1/admin/freeze', ...as(admin) });
      expect(status.json).toMatchObject({ frozen: true, global: { reason: 'INC-7 kill switch' } });
      expect((await b.call({ path: '/v1/admin/thaw', body: { reason: 'INC-7 resolved' }, ...as(admin) })).status).toBe(200);
      expect((await x509(b)).status).toBe(200);
      expect((await x509(b, 'payments', 'api')).json.error).toBe('revoked');
    } finally {
      await b.close();
    }

    b = await startBroker({ dataDir });
    try {
      expect((await x509(b)).status).toBe(200);
      expect((await x509(b, 'payments', 'api')).json.error).toBe('revoked');
      // The whole story is in the audit log, with the admin's identity.
      const search = await b.call<{ hits: { entry: { action: string; actor: string } }[] }>({
        path: `/v1/audit/search?type=admin&spiffeId=${encodeURIComponent(OPERATOR)}`,
        ...as(admin),
      });
      expect(search.json.hits.map((h) => h.entry.action)).toEqual(expect.arrayContaining(['freeze', 'revoke', 'thaw']));
    } finally {
      await b.close();
    }
  });
});

describe('namespace revocation and freeze cover SVIDs whose ID does not name the namespace', () => {
  it('a custom spiffePath workload (spiffe://example.org/shop-frontend) is cut off with its namespace', async () => {
    const b = await startBroker({
      config: {
        registration: [
          { selector: { namespace: 'shop', serviceAccount: 'frontend' }, spiffePath: '/shop-frontend', jwtAudiences: [] },
          { selector: { namespace: 'payments', serviceAccount: 'api' }, jwtAudiences: [] },
        ],
      },
    });
    try {
      const admin = mintAdminCert(b.material, OPERATOR);
      const svid = await workloadSvid(b, { namespace: 'shop', serviceAccount: 'frontend' });
      expect(svid.spiffeId).toBe('spiffe://example.org/shop-frontend');
      const renew = () => b.call({ path: '/v1/svid/x509', body: { keyType: 'ec-p256' }, ...as(svid) });
      expect((await renew()).status).toBe(200);
      expect((await b.call({ path: '/v1/admin/freeze', body: { namespace: 'shop', reason: 'contain' }, ...as(admin) })).status).toBe(200);
      expect((await renew()).json.error).toBe('issuance_frozen');
      expect((await b.call({ path: '/v1/admin/thaw', body: { namespace: 'shop', reason: 'ok' }, ...as(admin) })).status).toBe(200);
      expect((await b.call({ path: '/v1/admin/revoke', body: { kind: 'namespace', value: 'shop', reason: 'contain' }, ...as(admin) })).status).toBe(200);
      expect((await renew()).json.error).toBe('revoked');
      expect((await x509(b, 'payments', 'api')).status).toBe(200);
    } finally {
      await b.close();
    }
  });
});

describe.skipIf(!redis.ok)('two replicas on one Redis', () => {
  const prefix = uniquePrefix('admin');
  let a: TestBroker | undefined;
  let c: TestBroker | undefined;
  afterAll(async () => {
    await a?.close();
    await c?.close();
    await deletePrefix(prefix);
  });

  it('a revocation or a freeze made on one replica is enforced by the other on its next request', async () => {
    const store = () => RedisStore.connect({ url: SHARED_REDIS_URL, prefix });
    a = await startBroker({ store, config: { replicaId: 'replica-a' } });
    c = await startBroker({ store, config: { replicaId: 'replica-b' } });
    const admin = mintAdminCert(a.material, OPERATOR);
    const svid = await workloadSvid(c);
    const renewOnB = () => c?.call({ path: '/v1/svid/x509', body: { keyType: 'ec-p256' }, ...as(svid) });
    expect((await renewOnB())?.status).toBe(200);

    expect((await a.call({ path: '/v1/admin/revoke', body: { kind: 'spiffeId', value: svid.spiffeId, reason: 'compromised' }, ...as(admin) })).status).toBe(200);
    const refused = await renewOnB();
    expect([refused?.status, refused?.json.error]).toEqual([403, 'revoked']);
    expect((await x509(c)).json.error).toBe('revoked');

    expect((await c.call({ path: '/v1/admin/unrevoke', body: { kind: 'spiffeId', value: svid.spiffeId, reason: 'cleared' }, ...as(admin) })).status).toBe(200);
    expect((await renewOnB())?.status).toBe(200);

    expect((await a.call({ path: '/v1/admin/freeze', body: { namespace: 'shop', reason: 'contain' }, ...as(admin) })).status).toBe(200);
    expect((await x509(c)).json.error).toBe('issuance_frozen');
    expect((await x509(c, 'payments', 'api')).status).toBe(200);
    expect((await c.call({ path: '/v1/admin/thaw', body: { namespace: 'shop', reason: 'done' }, ...as(admin) })).status).toBe(200);
    expect((await x509(a)).status).toBe(200);
  });
});

describe('Redis for the replica test', () => {
  redisRequiredUnderCi(redis);
});
