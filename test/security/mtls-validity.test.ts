/**
 * The client SVID's validity window is checked against the broker's clock on every request, not only in
 * the TLS handshake: a kept-alive connection and a resumed TLS session outlive the certificate they were
 * made with, and OpenSSL checks dates only in a full handshake. Regression for issue 12.1 (an expired
 * SVID renewed for minutes after its notAfter). The clock is injected: time moves without sleeping.
 *
 * Also: one request, one identity. A valid SVID next to a valid token for another SPIFFE ID is refused
 * (400 ambiguous_identity, audited) instead of letting the token win (issue 12.5).
 */
import { X509Certificate } from 'node:crypto';
import https from 'node:https';
import type { TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintAdminCert } from '../helpers/admin.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { allowCount, denialOf, expectError } from './helpers.js';

const TTL_SECONDS = 60;

/**
 * The broker's clock: real time plus an offset the test moves, so the TLS layer (which uses real time)
 * accepts the SVIDs while the broker sees them expire.
 */
const clock = { offset: 0, now(): number { return Date.now() + this.offset; } };
/** Moves the broker's clock to `at` (ms since the epoch). */
const setClock = (at: number): void => {
  clock.offset = at - Date.now();
};

let b: TestBroker;
beforeAll(async () => {
  b = await startBroker({ clock });
});
afterAll(async () => {
  await b?.close();
});

interface Svid {
  readonly svid: string;
  readonly privateKey: string;
  readonly expiresAt: string;
}

async function svidFor(serviceAccount = 'web'): Promise<Svid> {
  const res = await b.call<Svid>({
    path: '/v1/svid/x509',
    token: await b.token({ serviceAccount, now: clock.now() }),
    body: { keyType: 'ec-p256', ttlSeconds: TTL_SECONDS },
  });
  expect(res.status, res.text).toBe(200);
  return res.json;
}

/** One renewal request through `agent`, reporting which socket carried it. */
function renew(agent: https.Agent): Promise<{ status: number; json: unknown; socket: TLSSocket; requestId: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(new URL('/v1/svid/jwt', b.url), { method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        try {
          resolve({
            status: res.statusCode ?? 0,
            json: JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown,
            socket: res.socket as TLSSocket,
            requestId: String(res.headers['x-request-id']),
          });
        } catch (err) {
          reject(err instanceof Error ? err : new Error(String(err)));
        }
      });
    });
    req.on('error', reject);
    req.end(JSON.stringify({ audience: ['payments'] }));
  });
}

async function expectExpiredRefusal(r: Awaited<ReturnType<typeof renew>>): Promise<void> {
  expect(r.status).toBe(401);
  expect(r.json).toMatchObject({ error: 'invalid_client_certificate', message: expect.stringMatching(/expired/) });
  const denial = await denialOf(b, { status: r.status, headers: { 'x-request-id': r.requestId }, text: '', json: r.json });
  expect(denial).toMatchObject({ code: 'invalid_client_certificate', actor: null });
}

/**
 * Runs `use` with a fresh 60 s SVID in an https.Agent (kept alive on one socket, or a new connection per
 * request that resumes the cached TLS session), then destroys the agent and puts the clock back.
 */
async function withSvidAgent(mode: 'keep-alive' | 'resume', use: (agent: https.Agent, svid: Svid) => Promise<void>): Promise<void> {
  const svid = await svidFor();
  const tls = { ca: b.ca, cert: svid.svid, key: svid.privateKey };
  const agent =
    mode === 'keep-alive' ? new https.Agent({ keepAlive: true, maxSockets: 1, ...tls }) : new https.Agent({ keepAlive: false, maxCachedSessions: 10, ...tls });
  try {
    await use(agent, svid);
  } finally {
    agent.destroy();
    clock.offset = 0;
  }
}

describe('an SVID past its notAfter (injected clock)', () => {
  it('is refused on the same kept-alive connection it renewed on before', () =>
    withSvidAgent('keep-alive', async (agent, svid) => {
      const before = await renew(agent);
      expect(before.status).toBe(200);
      const issued = await allowCount(b);
      setClock(Date.parse(svid.expiresAt) + 10_000);
      const after = await renew(agent);
      expect(after.socket, 'the same TLS connection').toBe(before.socket);
      await expectExpiredRefusal(after);
      // Minutes later, on that connection, still refused; nothing issued since.
      setClock(Date.parse(svid.expiresAt) + 330_000);
      await expectExpiredRefusal(await renew(agent));
      expect(await allowCount(b)).toBe(issued);
    }));

  it('is refused on a resumed TLS session', () =>
    withSvidAgent('resume', async (agent, svid) => {
      expect((await renew(agent)).status).toBe(200);
      const resumedOk = await renew(agent);
      expect(resumedOk.socket.isSessionReused(), 'second connection resumed the session').toBe(true);
      expect(resumedOk.status).toBe(200);
      setClock(Date.parse(svid.expiresAt) + 120_000);
      const resumed = await renew(agent);
      expect(resumed.socket.isSessionReused(), 'third connection resumed the session').toBe(true);
      await expectExpiredRefusal(resumed);
    }));

  it('revoked (by serial) after the session was established: refused on a resumed TLS session', () =>
    withSvidAgent('resume', async (agent, svid) => {
      expect((await renew(agent)).status).toBe(200);
      const serial = new X509Certificate(svid.svid).serialNumber;
      const admin = mintAdminCert(b.material, 'spiffe://example.org/admin/dev');
      const revoke = await b.call({ path: '/v1/admin/revoke', body: { kind: 'serial', value: serial, reason: 'key leaked' }, cert: admin.cert, key: admin.key });
      expect(revoke.status, revoke.text).toBe(200);
      const resumed = await renew(agent);
      expect(resumed.socket.isSessionReused(), 'the connection resumed the session made before the revocation').toBe(true);
      expect(resumed.status).toBe(403);
      expect(resumed.json).toMatchObject({ error: 'revoked', message: expect.stringMatching(/serial/) });
    }));

  it('is refused before its notBefore too (a clock behind the certificate)', () =>
    withSvidAgent('keep-alive', async (agent) => {
      setClock(Date.now() - 3_600_000);
      const r = await renew(agent);
      expect(r.status).toBe(401);
      expect(r.json).toMatchObject({ error: 'invalid_client_certificate', message: expect.stringMatching(/not valid before/) });
    }));
});

describe('an admin certificate past its notAfter (injected clock)', () => {
  it('is refused on the admin API like an expired SVID on workload routes', async () => {
    const admin = mintAdminCert(b.material, 'spiffe://example.org/admin/dev', 120_000);
    const whoami = (): ReturnType<TestBroker['call']> => b.call({ path: '/v1/admin/whoami', cert: admin.cert, key: admin.key });
    expect((await whoami()).status).toBe(200);
    try {
      setClock(Date.now() + 180_000);
      const res = await whoami();
      expect(res.status, res.text).toBe(401);
      expect(res.json).toMatchObject({ error: 'invalid_client_certificate', message: expect.stringMatching(/expired/) });
    } finally {
      clock.offset = 0;
    }
  });
});

describe('two identities in one request', () => {
  it('an SVID for shop/web plus a token for payments/api → 400 ambiguous_identity, audited, nothing issued', async () => {
    const web = await svidFor('web');
    const issued = await allowCount(b);
    const token = await b.token({ namespace: 'payments', serviceAccount: 'api', now: clock.now() });
    for (const route of ['x509', 'jwt'] as const) {
      const res = await b.call({
        path: `/v1/svid/${route}`,
        body: route === 'x509' ? { keyType: 'ec-p256' } : { audience: ['payments'] },
        cert: web.svid,
        key: web.privateKey,
        token,
      });
      expectError(res, 400, 'ambiguous_identity');
      const denial = await denialOf(b, res);
      expect(denial).toMatchObject({ code: 'ambiguous_identity' });
      expect(denial.reason).toContain('spiffe://example.org/ns/shop/sa/web');
      expect(denial.reason).toContain('spiffe://example.org/ns/payments/sa/api');
    }
    expect(await allowCount(b)).toBe(issued);
  });

  it('an SVID and a token for the same SPIFFE ID are one identity and are served', async () => {
    const web = await svidFor('web');
    const token = await b.token({ serviceAccount: 'web', now: clock.now() });
    const res = await b.call<{ spiffeId: string }>({ path: '/v1/svid/jwt', body: { audience: ['payments'] }, cert: web.svid, key: web.privateKey, token });
    expect(res.status, res.text).toBe(200);
    expect(res.json.spiffeId).toBe('spiffe://example.org/ns/shop/sa/web');
  });
});
