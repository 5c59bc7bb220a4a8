/**
 * Break-glass end to end over real TLS: a request signed by this deployment's offline keys is redeemed
 * once for a short-lived admin certificate (or a secret); the use is a critical audit entry written
 * before the response, fires the alert to a real webhook receiver on 127.0.0.1, and is listed as an
 * event. Refused: replays (also across replicas on Redis), stale and future requests, unknown keys,
 * one signature under the two-person rule, another deployment, grants not allowed. TTLs are capped.
 */
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type BreakGlassClaims,
  cosignBreakGlassRequest,
  generateBreakGlassKey,
  newJti,
  signBreakGlassRequest,
} from '../../src/admin/breakglass-jws.js';
import { RedisStore } from '../../src/store/redis.js';
import { auditEntries, auditText, mintAdminCert, startWebhookReceiver, type WebhookReceiver } from '../helpers/admin.js';
import { devMaterial, startBroker, type StartOptions, type TestBroker } from '../helpers/broker.js';
import { SHARED_REDIS_URL, deletePrefix, redisRequiredUnderCi, sharedRedis, uniquePrefix } from '../helpers/redis.js';

const redis = await sharedRedis();

interface TestKey {
  readonly id: string;
  readonly publicKey: string;
  readonly key: KeyObject;
}
const newKey = (id: string): TestKey => {
  const k = generateBreakGlassKey();
  return { id, publicKey: k.publicKey, key: createPrivateKey(k.privateKeyPem) };
};
const k1 = newKey('bg-1');
const k2 = newKey('bg-2');
const stranger = newKey('not-configured');

function claims(over: Partial<BreakGlassClaims> = {}): BreakGlassClaims {
  const iat = Math.floor(Date.now() / 1000);
  return {
    v: 1,
    aud: 'example.org',
    jti: newJti(),
    iat,
    exp: iat + 300,
    reason: 'prod outage: CA key rotation failed, need to freeze issuance',
    ticket: 'INC-123',
    grant: 'operator',
    ttlSeconds: 900,
    ...over,
  };
}

interface Issued {
  grant: string;
  spiffeId: string;
  svid: string;
  privateKey: string;
  serial: string;
  expiresAt: string;
  ttlSeconds: number;
  keyIds: string[];
  audit: { index: number; checkpoint: string };
  secret?: { name: string; value: string; leaseId: string };
  error?: string;
  message?: string;
}

let hook: WebhookReceiver;

function config(breakGlass: Record<string, unknown>, extra: Record<string, unknown> = {}): StartOptions['config'] {
  return {
    breakGlass: { keys: [k1, k2].map(({ id, publicKey }) => ({ id, publicKey })), ...breakGlass },
    ...extra,
  };
}

/** `muteSeconds` of the break-glass alert rule (0 in the docs' example: every use and attempt alerts). */
async function start(breakGlass: Record<string, unknown>, opts: Partial<StartOptions> = {}, muteSeconds = 0): Promise<TestBroker> {
  const { material } = await devMaterial();
  return startBroker({
    ...opts,
    config: config(breakGlass, {
      audit: {
        signingKeyFile: material.auditKeyFile,
        alerts: {
          webhookUrl: hook.url,
          allowInsecureHttp: true,
          retryInitialMs: 20,
          rules: [{ name: 'break-glass', kind: 'break-glass', muteSeconds }],
        },
      },
      ...(opts.config ?? {}),
    }),
  });
}

const redeem = (b: TestBroker, request: unknown, extra: Record<string, unknown> = {}) =>
  b.call<Issued>({ path: '/v1/admin/break-glass', body: { request, ...extra } });

beforeAll(async () => {
  hook = await startWebhookReceiver();
});
afterAll(async () => {
  await hook?.close();
});

describe('break-glass, one signature required', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await start({ requiredSignatures: 1 }, { secrets: {}, config: {} });
  });
  afterAll(async () => {
    await b?.close();
  });

  it('happy path: an operator certificate for ≤ 15 min, a critical entry before the response, an alert, an event', async () => {
    const c = claims();
    const request = await signBreakGlassRequest(c, [k1.key]);
    const t0 = Date.now();
    const res = await redeem(b, request);
    expect(res.status, res.text).toBe(200);
    expect(res.json).toMatchObject({ grant: 'operator', ticket: 'INC-123', keyIds: ['bg-1'], spiffeId: `spiffe://example.org/admin/break-glass/${c.jti}` });
    expect(res.headers['cache-control']).toBe('no-store');
    const ttl = Date.parse(res.json.expiresAt) - t0;
    expect(ttl).toBeGreaterThan(880_000);
    expect(ttl).toBeLessThanOrEqual(901_000);

    // The critical entry is at the receipt's index, durable in the store, with everything but the JWS.
    const entries = await auditEntries(b);
    const entry = entries[res.json.audit.index]?.entry;
    expect(entry).toMatchObject({
      type: 'break-glass',
      decision: 'allow',
      severity: 'critical',
      source: 'break-glass',
      ticket: 'INC-123',
      grant: 'operator',
      keyIds: ['bg-1'],
      jti: c.jti,
      serial: res.json.serial,
    });
    expect(entry?.reason).toContain(c.reason);
    const text = await auditText(b);
    for (const s of request.signatures) expect(text).not.toContain(s.signature);
    expect(text).not.toContain(request.payload);
    expect(text).not.toContain('PRIVATE KEY');

    // The alert reached the real webhook.
    const alert = await hook.waitFor((a) => a.kind === 'break-glass' && (a.trigger as { requestId: string }).requestId === entry?.requestId);
    expect(alert).toMatchObject({ type: 'tessera.alert', rule: 'break-glass', key: { spiffeId: res.json.spiffeId } });

    // The certificate works on the admin API with exactly the granted role.
    const cert = { cert: res.json.svid, key: res.json.privateKey };
    const who = await b.call<{ roles: string[]; via: string; ticket: string }>({ path: '/v1/admin/whoami', ...cert });
    expect(who.json).toMatchObject({ roles: ['operator'], via: 'break-glass', ticket: 'INC-123' });
    expect((await b.call({ path: '/v1/admin/freeze', body: { namespace: 'shop', reason: 'INC-123' }, ...cert })).status).toBe(200);
    expect((await b.call({ path: '/v1/admin/thaw', body: { namespace: 'shop', reason: 'INC-123' }, ...cert })).status).toBe(200);
    expect((await b.call({ path: '/v1/audit/search', ...cert })).status).toBe(403);
    // Every action taken with it is an admin entry from a break-glass source (so it alerts as well).
    const actions = (await auditEntries(b)).filter((e) => e.entry.actor === res.json.spiffeId && e.entry.type === 'admin');
    expect(actions.map((e) => [e.entry.action, e.entry.source, e.entry.ticket])).toContainEqual(['freeze', 'break-glass', 'INC-123']);
    // Never a workload identity.
    expect((await b.call({ path: '/v1/svid/x509', body: { keyType: 'ec-p256' }, ...cert })).json.error).toBe('invalid_client_certificate');

    // Listed as an event (auditor/operator view).
    const admin = mintAdminCert(b.material, 'spiffe://example.org/admin/dev');
    const events = await b.call<{ events: { decision: string; jti?: string; auditIndex: number; keyIds: string[] }[] }>({
      path: '/v1/admin/break-glass/events',
      cert: admin.cert,
      key: admin.key,
    });
    expect(events.json.events).toContainEqual(expect.objectContaining({ decision: 'allow', jti: c.jti, auditIndex: res.json.audit.index, keyIds: ['bg-1'] }));

    // Cleanup path of the runbook: revoking the serial ends it before expiry.
    const r = await b.call({ path: '/v1/admin/revoke', body: { kind: 'serial', value: res.json.serial, reason: 'INC-123 closed' }, cert: admin.cert, key: admin.key });
    expect(r.status).toBe(200);
    expect((await b.call({ path: '/v1/admin/whoami', ...cert })).json.error).toBe('revoked');
  });

  it('a replayed request is refused (409), audited and alerted', async () => {
    const request = await signBreakGlassRequest(claims(), [k1.key]);
    expect((await redeem(b, request)).status).toBe(200);
    const again = await redeem(b, request);
    expect([again.status, again.json.error]).toEqual([409, 'break_glass_replayed']);
    const last = (await auditEntries(b)).filter((e) => e.entry.type === 'break-glass').at(-1)?.entry;
    expect(last).toMatchObject({ decision: 'deny', code: 'break_glass_replayed', severity: 'critical', ticket: 'INC-123' });
    await hook.waitFor((a) => (a.trigger as { requestId: string }).requestId === last?.requestId && (a.trigger as { code?: string }).code === 'break_glass_replayed');
  });

  it('a stale request (signed 6 minutes ago), one from the future, and an expired one are refused', async () => {
    const now = Math.floor(Date.now() / 1000);
    for (const c of [
      claims({ iat: now - 360, exp: now + 10 }), // too old, though not expired
      claims({ iat: now + 600, exp: now + 700 }), // from the future
      claims({ iat: now - 100, exp: now - 1 }), // expired
      claims({ iat: now, exp: now + 3600 }), // exp too far out
    ]) {
      const res = await redeem(b, await signBreakGlassRequest(c, [k1.key]));
      expect([res.status, res.json.error], res.text).toEqual([401, 'break_glass_stale']);
    }
  });

  it('a request signed by a key that is not configured is refused, and alerted', async () => {
    const res = await redeem(b, await signBreakGlassRequest(claims(), [stranger.key]));
    expect([res.status, res.json.error]).toEqual([401, 'break_glass_denied']);
    const last = (await auditEntries(b)).filter((e) => e.entry.type === 'break-glass').at(-1)?.entry;
    expect(last).toMatchObject({ decision: 'deny', code: 'break_glass_denied', actor: null });
    expect(last?.ticket).toBeUndefined(); // unverified claims are not recorded as fact
    await hook.waitFor((a) => (a.trigger as { requestId: string }).requestId === last?.requestId);
    // A good signature next to a bad one does not help.
    const mixed = await signBreakGlassRequest(claims(), [k1.key, stranger.key]);
    expect((await redeem(b, mixed)).json.error).toBe('break_glass_denied');
  });

  it('a tampered payload, another deployment, a disallowed grant, and unprotected headers are refused', async () => {
    const good = await signBreakGlassRequest(claims(), [k1.key]);
    const tampered = { ...good, payload: Buffer.from(JSON.stringify({ ...claims(), grant: 'secrets-admin' })).toString('base64url') };
    expect((await redeem(b, tampered)).json.error).toBe('break_glass_denied');
    expect((await redeem(b, await signBreakGlassRequest(claims({ aud: 'other.example' }), [k1.key]))).json.error).toBe('break_glass_denied');
    const notAllowed = await redeem(b, await signBreakGlassRequest(claims({ grant: 'secret:db/root' }), [k1.key]));
    expect([notAllowed.status, notAllowed.json.error]).toEqual([403, 'forbidden']);
    const withHeader = { ...good, signatures: good.signatures.map((s) => ({ ...s, header: { kid: 'x' } })) };
    expect((await redeem(b, withHeader)).status).toBe(400);
    expect((await redeem(b, { payload: 'x', signatures: [] })).status).toBe(400);
  });

  it('TTL cap: asking for 1 hour gets 15 minutes', async () => {
    const t0 = Date.now();
    const res = await redeem(b, await signBreakGlassRequest(claims({ ttlSeconds: 3600 }), [k1.key]));
    expect(res.status).toBe(200);
    expect(res.json.ttlSeconds).toBe(900);
    expect(Date.parse(res.json.expiresAt) - t0).toBeLessThanOrEqual(901_000);
    const { X509Certificate } = await import('node:crypto');
    const cert = new X509Certificate(res.json.svid);
    expect(Date.parse(cert.validTo) - t0).toBeLessThanOrEqual(901_000);
  });
});

describe('break-glass, two-person rule (2 of 2), lower TTL cap, secret grants', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await start(
      { requiredSignatures: 2, maxTtlSeconds: 300, allowedGrants: ['operator', 'auditor', 'secret:db/'] },
      { secrets: {} },
    );
  });
  afterAll(async () => {
    await b?.close();
  });

  it('one of two signatures is refused; the same key twice still counts once', async () => {
    const one = await redeem(b, await signBreakGlassRequest(claims(), [k1.key]));
    expect([one.status, one.json.error]).toEqual([401, 'break_glass_denied']);
    expect(one.json).toMatchObject({ message: expect.stringContaining('2 distinct keys') });
    const twice = await signBreakGlassRequest(claims(), [k1.key]);
    const doubled = { ...twice, signatures: [twice.signatures[0], twice.signatures[0]] };
    expect((await redeem(b, doubled)).json.error).toBe('break_glass_denied');
    const last = (await auditEntries(b)).filter((e) => e.entry.type === 'break-glass').at(-1)?.entry;
    expect(last).toMatchObject({ decision: 'deny', keyIds: ['bg-1'], ticket: 'INC-123' });
  });

  it('two of two (signed together, or signed then co-signed) are accepted, capped at the configured 5 minutes', async () => {
    const t0 = Date.now();
    const both = await redeem(b, await signBreakGlassRequest(claims(), [k1.key, k2.key]));
    expect(both.status, both.text).toBe(200);
    expect(both.json.keyIds).toEqual(['bg-1', 'bg-2']);
    expect(both.json.ttlSeconds).toBe(300);
    expect(Date.parse(both.json.expiresAt) - t0).toBeLessThanOrEqual(301_000);
    const cosigned = await cosignBreakGlassRequest(await signBreakGlassRequest(claims({ grant: 'auditor' }), [k2.key]), k1.key);
    const res = await redeem(b, cosigned);
    expect(res.status, res.text).toBe(200);
    expect(res.json).toMatchObject({ grant: 'auditor', keyIds: ['bg-1', 'bg-2'] });
  });

  it('a secret grant returns the secret under a lease; the entry names the secret, never its value', async () => {
    const admin = mintAdminCert(b.material, 'spiffe://example.org/admin/dev');
    const put = await b.call({ method: 'PUT', path: '/v1/admin/secrets/db/root-password', body: { value: 'hunter2-very-secret' }, cert: admin.cert, key: admin.key });
    expect(put.status).toBe(200);
    const res = await redeem(b, await signBreakGlassRequest(claims({ grant: 'secret:db/root-password' }), [k1.key, k2.key]));
    expect(res.status, res.text).toBe(200);
    expect(res.json.secret).toMatchObject({ name: 'db/root-password', value: 'hunter2-very-secret' });
    const entry = (await auditEntries(b))[res.json.audit.index]?.entry;
    expect(entry).toMatchObject({ type: 'break-glass', secret: 'db/root-password', leaseId: res.json.secret?.leaseId, grant: 'secret:db/root-password' });
    expect(await auditText(b)).not.toContain('hunter2-very-secret');
    // A missing secret uses up the request and is recorded as a failure.
    const missing = await redeem(b, await signBreakGlassRequest(claims({ grant: 'secret:db/nope' }), [k1.key, k2.key]));
    expect(missing.status).toBe(404);
    expect((await auditEntries(b)).filter((e) => e.entry.type === 'break-glass').at(-1)?.entry).toMatchObject({ decision: 'deny', code: 'not_found' });
  });
});

describe('break-glass failures are capped per minute (no log flooding)', () => {
  it('past maxFailuresPerMinute one summary entry is written, then none; a valid request still works', async () => {
    const b = await start({ requiredSignatures: 1, maxFailuresPerMinute: 2 });
    try {
      const before = (await auditEntries(b)).filter((e) => e.entry.type === 'break-glass').length;
      for (let i = 0; i < 5; i++) {
        const res = await redeem(b, await signBreakGlassRequest(claims(), [stranger.key]));
        expect(res.json.error).toBe('break_glass_denied');
      }
      const denials = (await auditEntries(b)).filter((e) => e.entry.type === 'break-glass').slice(before);
      expect(denials.length).toBe(3);
      expect(denials[2]?.entry.reason).toContain('more than 2 failed break-glass attempts');
      expect((await redeem(b, await signBreakGlassRequest(claims(), [k1.key]))).status).toBe(200);
    } finally {
      await b.close();
    }
  });
});

describe('break-glass attempts with a genuine key are never capped (issue 12)', () => {
  // A frozen clock: the per-minute failure window cannot roll over halfway through.
  const t0 = Date.now();
  const now = Math.floor(t0 / 1000);
  let b: TestBroker;
  const breakGlassEntries = async () => (await auditEntries(b)).filter((e) => e.entry.type === 'break-glass').map((e) => e.entry);
  const junk = async () => {
    const res = await redeem(b, await signBreakGlassRequest(claims(), [stranger.key]));
    expect([res.status, res.json.error]).toEqual([401, 'break_glass_denied']);
  };
  /** The newest break-glass entry must be this attempt's own, and must have reached the webhook. */
  const expectAuditedAndAlerted = async (want: Record<string, unknown>) => {
    const entry = (await breakGlassEntries()).at(-1);
    expect(entry).toMatchObject({ decision: 'deny', severity: 'critical', source: 'break-glass', actor: null, ...want });
    expect(entry?.reason).not.toContain('failed break-glass attempts this minute');
    const alert = await hook.waitFor((a) => (a.trigger as { requestId: string }).requestId === entry?.requestId);
    expect(alert).toMatchObject({ kind: 'break-glass', trigger: { code: want.code } });
    for (const id of want.keyIds as string[]) expect(alert.summary).toContain(id);
    return entry;
  };
  beforeAll(async () => {
    // Muted alerts too: the junk flood takes the rule's mute, the genuine attempts must still alert.
    b = await start({ requiredSignatures: 2, maxFailuresPerMinute: 2 }, { clock: { now: () => t0 } }, 300);
  });
  afterAll(async () => {
    await b?.close();
  });

  it('junk past the cap, then 1 of 2 genuine signatures: 401, its own entry naming key, ticket and jti, and its own alert', async () => {
    const before = (await breakGlassEntries()).length;
    for (let i = 0; i < 31; i++) await junk();
    const flood = (await breakGlassEntries()).slice(before);
    expect(flood).toHaveLength(3); // two entries, then the summary, then nothing
    expect(flood[2]?.reason).toContain('more than 2 failed break-glass attempts');

    const c = claims({ ticket: 'INC-777' });
    const request = await signBreakGlassRequest(c, [k1.key]);
    const res = await redeem(b, request);
    expect([res.status, res.json.error]).toEqual([401, 'break_glass_denied']);
    const entry = await expectAuditedAndAlerted({ code: 'break_glass_denied', keyIds: ['bg-1'], jti: c.jti, ticket: 'INC-777', grant: 'operator' });
    expect(entry?.reason).toContain('2 distinct keys');
    const text = await auditText(b);
    for (const s of request.signatures) expect(text).not.toContain(s.signature);
    expect(text).not.toContain(request.payload);

    // A junk signature in front of the genuine one does not turn it into junk.
    const mixed = await redeem(b, await signBreakGlassRequest(claims({ ticket: 'INC-778' }), [stranger.key, k1.key]));
    expect([mixed.status, mixed.json.error]).toEqual([401, 'break_glass_denied']);
    await expectAuditedAndAlerted({ code: 'break_glass_denied', keyIds: ['bg-1'], ticket: 'INC-778' });
  });

  it('every signature valid but refused (replay, expired, wrong audience): each audited and alerted on its own; junk stays capped', async () => {
    const count = (await breakGlassEntries()).length;
    await junk();
    expect((await breakGlassEntries()).length).toBe(count); // still past the cap: no entry

    const request = await signBreakGlassRequest(claims(), [k1.key, k2.key]);
    expect((await redeem(b, request)).status).toBe(200);
    const replay = await redeem(b, request);
    expect([replay.status, replay.json.error]).toEqual([409, 'break_glass_replayed']);
    await expectAuditedAndAlerted({ code: 'break_glass_replayed', keyIds: ['bg-1', 'bg-2'], ticket: 'INC-123' });

    const expired = await redeem(b, await signBreakGlassRequest(claims({ iat: now - 100, exp: now - 1, ticket: 'INC-779' }), [k1.key, k2.key]));
    expect([expired.status, expired.json.error]).toEqual([401, 'break_glass_stale']);
    await expectAuditedAndAlerted({ code: 'break_glass_stale', keyIds: ['bg-1', 'bg-2'], ticket: 'INC-779' });

    const elsewhere = await redeem(b, await signBreakGlassRequest(claims({ aud: 'other.example', ticket: 'INC-780' }), [k1.key, k2.key]));
    expect([elsewhere.status, elsewhere.json.error]).toEqual([401, 'break_glass_denied']);
    await expectAuditedAndAlerted({ code: 'break_glass_denied', keyIds: ['bg-1', 'bg-2'], ticket: 'INC-780' });

    const after = (await breakGlassEntries()).length;
    await junk();
    expect((await breakGlassEntries()).length).toBe(after);
  });
});

describe.skipIf(!redis.ok)('break-glass replay across replicas (Redis)', () => {
  const prefix = uniquePrefix('breakglass');
  afterAll(async () => {
    await deletePrefix(prefix);
  });

  it('a request redeemed on one replica is refused on the other', async () => {
    const store = () => RedisStore.connect({ url: SHARED_REDIS_URL, prefix });
    const a = await start({ requiredSignatures: 1 }, { store, config: { replicaId: 'bg-a' } });
    const c = await start({ requiredSignatures: 1 }, { store, config: { replicaId: 'bg-b' } });
    try {
      const request = await signBreakGlassRequest(claims(), [k1.key]);
      const [r1, r2] = await Promise.all([redeem(a, request), redeem(c, request)]);
      expect([r1.status, r2.status].sort()).toEqual([200, 409]);
      expect((await redeem(a, request)).status).toBe(409);
      // The certificate minted on one replica is an admin on the other (the grant is in the store).
      const ok = r1.status === 200 ? r1 : r2;
      expect((await c.call({ path: '/v1/admin/whoami', cert: ok.json.svid, key: ok.json.privateKey })).status).toBe(200);
    } finally {
      await a.close();
      await c.close();
    }
  });
});

describe('Redis for the break-glass replica test', () => {
  redisRequiredUnderCi(redis);
});
