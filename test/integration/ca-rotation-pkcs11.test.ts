/**
 * Automatic CA rotation with the CA key and the JWT-SVID key in a real SoftHSM2 token, on a real broker
 * in real time. The first signing CA (for the configured token key `ca`) lives 25 s and each next one
 * 30 s; an old authority stays published until its last JWT-SVID (30 s) has expired. The test runs
 * until the second authority — the first one Tessera generated in the token — has been prepared,
 * activated, replaced and dropped (about 75 s), under continuous X.509- and JWT-SVID issuance. Each
 * new authority's first SVID passes `openssl verify` against the bundle, its first JWT-SVID verifies
 * with the bundle's new kid; the bundle sequence steps up one at a time; the dropped generated pairs
 * are gone from the token and the configured pairs are still there. Then two replicas on one Redis:
 * one generates the next pair, the other opens it by its label, both switch within a second.
 */
import { X509Certificate } from 'node:crypto';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { afterAll, describe, expect, it } from 'vitest';
import { InlineMinter } from '../../src/ca/minter.js';
import { RedisStore } from '../../src/store/redis.js';
import { countKeyObjects } from '../../src/ca/pkcs11-keygen.js';
import { nextKeyStep, type AuthorityRecord } from '../../src/ca/rotation.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { opensslVerify } from '../helpers/openssl.js';
import { SHARED_REDIS_URL, deletePrefix, redisRequiredUnderCi, sharedRedis, uniquePrefix } from '../helpers/redis.js';
import { cleanRotationTemps, rotatingConfig } from '../helpers/rotation.js';
import { createToken, removeTokens, softhsmMissing, softhsmRequiredUnderCi, type TestToken } from '../helpers/softhsm.js';

const missing = softhsmMissing();
softhsmRequiredUnderCi();
const redis = await sharedRedis();

const S = 1000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const tokens: TestToken[] = [];
afterAll(() => {
  for (const t of tokens) t.remove();
  removeTokens();
  cleanRotationTemps();
});

type Bundle = { spiffe_sequence: number; keys: { use: string; kid?: string; kty: string; crv?: string; x?: string; y?: string }[] };

async function waitFor(what: string, cond: () => boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

describe.skipIf(missing !== undefined)('CA rotation with the CA and JWT keys in a SoftHSM2 token (real time)', () => {
  it('rotates until a generated authority is dropped, under continuous issuance: no failure, SVIDs from each new authority verify against the bundle, the sequence steps, the dropped generated pairs destroyed, the configured pairs kept', async () => {
    const token = createToken('rotating');
    tokens.push(token);
    // The first CA (for the token key `ca`) lives 25 s; each next one 30 s.
    const { config } = await rotatingConfig(24, {}, 1, token);
    (config.ca as { rotation: { caTtlSeconds: number } }).rotation.caTtlSeconds = 30;
    const b: TestBroker = await startBroker({ config });
    const rotation = b.broker.rotation;
    if (rotation === undefined) throw new Error('no rotation');
    // A CA key in the token mints inline (no minting threads hold a copy of it).
    expect(b.broker.minter).toBeInstanceOf(InlineMinter);
    const firstRecord = rotation.current().state.authorities[0] as AuthorityRecord;
    expect(firstRecord.key).toEqual({ token: { keyLabel: 'ca' } });

    const failures: string[] = [];
    const x509: { requestedAt: number; notAfter: number; issuer: string }[] = [];
    const verifiedIssuers = new Map<string, { ok: boolean; output: string }>();
    const verifiedKids = new Map<string, string | undefined>();
    const sequences: number[] = [];
    let stop = false;
    const loop = async (fn: () => Promise<void>): Promise<void> => {
      while (!stop) {
        try {
          await fn();
        } catch (err) {
          failures.push((err as Error).message);
        }
      }
    };
    const bundle = async (): Promise<Bundle> => (await b.call<Bundle>({ method: 'GET', path: '/v1/bundle' })).json;
    const loops = [
      loop(async () => {
        const requestedAt = Date.now();
        const r = await b.call<{ certificates: string[]; expiresAt: string }>({ path: '/v1/svid/x509', token: await b.token(), body: { keyType: 'ec-p256' } });
        if (r.status !== 200) throw new Error(`x509 ${r.status} ${JSON.stringify(r.json)}`);
        const issuer = r.json.certificates[1] ?? '';
        x509.push({ requestedAt, notAfter: Date.parse(r.json.expiresAt), issuer });
        // The first SVID of each authority, checked by openssl against the trust bundle at once (wall clock).
        if (!verifiedIssuers.has(issuer)) verifiedIssuers.set(issuer, opensslVerify(b.ca, r.json.certificates));
      }),
      loop(async () => {
        const r = await b.call<{ token: string }>({ path: '/v1/svid/jwt', token: await b.token(), body: { audience: ['payments'] } });
        if (r.status !== 200) throw new Error(`jwt ${r.status} ${JSON.stringify(r.json)}`);
        const { kid } = JSON.parse(Buffer.from(r.json.token.split('.')[0] ?? '', 'base64url').toString()) as { kid: string };
        if (!verifiedKids.has(kid)) {
          // Verified with the bundle a relying party fetches now: it must already hold the new kid.
          const jwks = createLocalJWKSet({ keys: (await bundle()).keys.filter((k) => k.use === 'jwt-svid').map((k) => ({ ...k, use: 'sig' })) });
          const { protectedHeader } = await jwtVerify(r.json.token, jwks, { algorithms: ['ES256'], audience: 'payments' });
          verifiedKids.set(kid, protectedHeader.kid);
        }
        await sleep(100);
      }),
      loop(async () => {
        const seq = (await bundle()).spiffe_sequence;
        if (sequences[sequences.length - 1] !== seq) sequences.push(seq);
        await sleep(100);
      }),
    ];
    let secondId: string | undefined;
    try {
      await waitFor('the second authority to be prepared', () => (secondId = rotation.current().state.authorities[1]?.id) !== undefined, 30 * S);
      await waitFor('the second authority to be dropped', () => !rotation.current().state.authorities.some((a) => a.id === secondId), 150 * S);
      await sleep(1500);
    } finally {
      stop = true;
      await Promise.all(loops);
    }
    try {
      expect(failures).toEqual([]);
      const state = rotation.current().state;
      // The bundle sequence went up one step at a time (prepare: +1, drop: +1), from 1 to where the state is.
      expect(sequences[0]).toBe(1);
      expect(sequences[sequences.length - 1]).toBe(state.sequence);
      for (let i = 1; i < sequences.length; i++) expect(sequences[i]).toBeGreaterThan(sequences[i - 1] as number);
      expect(state.sequence).toBeGreaterThanOrEqual(5);
      const active = state.authorities.find((a) => a.state === 'active') as AuthorityRecord;
      // At least three authorities issued, each one's first SVID verified by openssl against the bundle.
      expect(verifiedIssuers.size).toBeGreaterThanOrEqual(3);
      for (const [issuer, v] of verifiedIssuers) expect(v, issuer.slice(0, 80)).toMatchObject({ ok: true });
      expect(verifiedIssuers.has(active.certPem)).toBe(true);
      // At least three JWT keys signed, each verified through the bundle under its own kid.
      expect(verifiedKids.size).toBeGreaterThanOrEqual(3);
      for (const [kid, verifiedAs] of verifiedKids) expect(verifiedAs).toBe(kid);
      expect(verifiedKids.has(active.jwtKid)).toBe(true);
      // No X.509-SVID was cut short by its CA's end (whole seconds).
      for (const s of x509) expect(s.notAfter).toBeGreaterThanOrEqual(Math.floor((s.requestedAt + 5 * S) / S) * S - S);

      // The second authority (generated) was dropped: its pairs are gone; the configured ones stay; the third's are there.
      const secondStep = nextKeyStep(firstRecord);
      for (const label of [`ca.${secondStep}`, `jwt.${secondStep}`]) expect(await countKeyObjects(token.pkcs11(label))).toEqual({ privateKeys: 0, publicKeys: 0 });
      for (const label of ['ca', 'jwt']) expect(await countKeyObjects(token.pkcs11(label))).toEqual({ privateKeys: 1, publicKeys: 1 });
      // Every authority still in the state has its pairs in the token, under generated labels.
      for (const a of state.authorities) {
        for (const key of [a.key, a.jwtKey]) {
          if (!('token' in key)) throw new Error(`authority ${a.id} has a key outside the token`);
          expect(key.token.keyLabel).toMatch(/^(ca|jwt)\.next-[0-9a-f]{16}$/);
          expect(await countKeyObjects(token.pkcs11(key.token.keyLabel))).toEqual({ privateKeys: 1, publicKeys: 1 });
        }
        expect(new X509Certificate(a.certPem).ca).toBe(true);
      }

      const steps: string[] = [];
      for (let i = 0; i < b.broker.audit.size; i++) {
        const [raw] = await b.broker.store.readAuditEntries(i, i + 1);
        const e = JSON.parse((raw as Buffer).toString()) as { type: string; action?: string };
        if (e.type === 'ca.rotated') steps.push(e.action ?? '');
      }
      // Authorities overlap (an old one is published 35 s after the switch): prepare and activate first, the drops later.
      expect(steps.slice(0, 2)).toEqual(['prepare', 'activate']);
      expect(steps.filter((s) => s === 'drop')).toHaveLength(2);
      expect(1 + steps.filter((s) => s !== 'activate').length).toBe(state.sequence);
    } finally {
      await b.close();
    }
  }, 240_000);
});

describe.skipIf(missing !== undefined || !redis.ok)('CA rotation with token keys, two replicas on one Redis', () => {
  const prefix = uniquePrefix('ca-rotation-pkcs11');
  afterAll(() => deletePrefix(prefix));

  it('one replica generates the next pair, the other opens it by label; both switch within a second; issuance never fails', async () => {
    const token = createToken('replicas');
    tokens.push(token);
    const { config } = await rotatingConfig(24, {}, 1, token);
    const store = () => RedisStore.connect({ url: SHARED_REDIS_URL, prefix });
    const r1 = await startBroker({ config: { ...config, replicaId: 'r1' }, store });
    const r2 = await startBroker({ config: { ...config, replicaId: 'r2' }, store });
    const first = r1.broker.ca.authorityId;
    const firstRecord = r1.broker.rotation?.current().state.authorities[0] as AuthorityRecord;
    const failures: string[] = [];
    const switchedAt = new Map<string, number>();
    let stop = false;
    const loops = [r1, r2].map(async (b, i) => {
      while (!stop) {
        const name = `r${i + 1}`;
        if (!switchedAt.has(name) && b.broker.ca.authorityId !== first) switchedAt.set(name, Date.now());
        const r = await b.call<{ certificates: string[] }>({ path: '/v1/svid/x509', token: await b.token(), body: { keyType: 'ec-p256' } });
        if (r.status !== 200) failures.push(`${name} x509 ${r.status} ${JSON.stringify(r.json)}`);
        const j = await b.call<{ token: string }>({ path: '/v1/svid/jwt', token: await b.token(), body: { audience: ['payments'] } });
        if (j.status !== 200) failures.push(`${name} jwt ${j.status} ${JSON.stringify(j.json)}`);
        await sleep(20);
      }
    });
    try {
      await waitFor('both replicas to switch', () => switchedAt.size === 2, 60 * S);
      await sleep(1000);
    } finally {
      stop = true;
      await Promise.all(loops);
    }
    try {
      expect(failures).toEqual([]);
      // Within a second of each other (each side is sampled between two issuances).
      expect(Math.abs((switchedAt.get('r1') as number) - (switchedAt.get('r2') as number))).toBeLessThan(1000);
      expect(r1.broker.ca.authorityId).toBe(r2.broker.ca.authorityId);
      expect(r1.broker.bundle).toEqual(r2.broker.bundle);
      // Both sign with the pair in the token; exactly one pair was generated under the step's label.
      expect(r1.broker.ca.localKey).toBe(false);
      expect(r2.broker.ca.localKey).toBe(false);
      const label = `ca.${nextKeyStep(firstRecord)}`;
      expect(r1.broker.rotation?.current().state.authorities[1]?.key).toEqual({ token: { keyLabel: label } });
      expect(await countKeyObjects(token.pkcs11(label))).toEqual({ privateKeys: 1, publicKeys: 1 });
      expect(await countKeyObjects(token.pkcs11(`jwt.${nextKeyStep(firstRecord)}`))).toEqual({ privateKeys: 1, publicKeys: 1 });
    } finally {
      await r1.close();
      await r2.close();
    }
  }, 120_000);
});

describe('Redis for the token-key replica test', () => {
  redisRequiredUnderCi(redis);
});
