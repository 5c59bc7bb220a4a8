/**
 * Property-based hostile input at the HTTP level (fast-check): random JSON (and not-JSON) bodies,
 * random headers, random credentials and random paths against a live broker. Whatever arrives, the
 * answer is a 2xx/3xx/4xx — never a 5xx, a reset or a crash — every 4xx has the `{error, message}`
 * shape, and no credential is ever issued (no `allow` entry appears in the audit log).
 * The parsers behind it have their own unit-level properties (SPIFFE IDs, PEM/CSR, token claims).
 */
import { generateKeyPairSync } from 'node:crypto';
import https from 'node:https';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEV_ISSUER } from '../../src/dev/token-issuer.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { opensslKeyAndCsr } from '../helpers/openssl.js';
import { craftJws, entries } from './helpers.js';

let b: TestBroker;
let agent: https.Agent;
let realToken: string;
let csrPem = '';
const attacker = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;

beforeAll(async () => {
  b = await startBroker();
  agent = new https.Agent({ keepAlive: true, maxSockets: 4, ca: b.ca });
  realToken = await b.token();
  csrPem = opensslKeyAndCsr('ec-p256').csrPem;
});
afterAll(async () => {
  agent?.destroy();
  await b?.close();
});

const allows = async (): Promise<number> => (await entries(b)).filter((e) => e.decision === 'allow').length;

// --- generators --------------------------------------------------------------------------------

const visible = fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c));
const headerValue = fc.string({ unit: visible, maxLength: 120 });
const b64seg = fc.string({ unit: fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'), minLength: 1, maxLength: 200 });
const FORBIDDEN_HEADERS = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'expect', 'upgrade', 'te', 'trailer', 'keep-alive', 'authorization', 'content-type']);
const headerName = fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/).filter((n) => !FORBIDDEN_HEADERS.has(n));

const now = Math.floor(Date.now() / 1000);
const claimsArb = fc.record(
  {
    iss: fc.oneof(fc.constant(DEV_ISSUER), fc.string()),
    sub: fc.oneof(fc.constant('system:serviceaccount:shop:web'), fc.string()),
    aud: fc.oneof(fc.constant(['tessera']), fc.array(fc.string(), { maxLength: 3 }), fc.string()),
    iat: fc.oneof(fc.constant(now), fc.integer(), fc.double()),
    exp: fc.oneof(fc.constant(now + 600), fc.integer(), fc.string()),
    'kubernetes.io': fc.oneof(fc.constant({ namespace: 'shop', serviceaccount: { name: 'web' } }), fc.jsonValue({ maxDepth: 3 })),
  },
  { requiredKeys: [] },
);
const headerArb = fc.record(
  {
    alg: fc.oneof(fc.constantFrom('RS256', 'ES256', 'HS256', 'none', 'PS256'), fc.string()),
    kid: fc.oneof(fc.string(), fc.constant(undefined)),
    jku: fc.oneof(fc.constant(undefined), fc.constant('https://evil.example/jwks')),
    crit: fc.oneof(fc.constant(undefined), fc.array(fc.string(), { maxLength: 2 })),
  },
  { requiredKeys: ['alg'] },
);

/** Never a valid credential: signed by an attacker, or the real token with its signature replaced. */
const authorization = fc.oneof(
  headerValue,
  fc.tuple(b64seg, b64seg, b64seg).map((p) => `Bearer ${p.join('.')}`),
  fc.tuple(headerArb, claimsArb).map(([h, c]) => `Bearer ${craftJws(h, c, { alg: 'RS256', key: attacker })}`),
  b64seg.map((sig) => `Bearer ${realToken.split('.').slice(0, 2).join('.')}.${sig}`),
  fc.constant(undefined),
);

const pemOf = (bytes: Uint8Array): string =>
  `-----BEGIN CERTIFICATE REQUEST-----\n${Buffer.from(bytes).toString('base64').replace(/.{64}/g, '$&\n')}\n-----END CERTIFICATE REQUEST-----\n`;
const mutatedCsr = fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })).map(([at, x]) => {
  const der = Buffer.from(csrPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  const i = at % der.length;
  der[i] = (der[i] ?? 0) ^ x;
  return pemOf(der);
});
const csrArb = fc.oneof(fc.string(), fc.uint8Array({ maxLength: 600 }).map(pemOf), mutatedCsr, fc.constant(csrPem));

const body: fc.Arbitrary<string | Buffer | undefined> = fc.oneof(
  fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)),
  fc
    .record(
      {
        csr: csrArb,
        keyType: fc.oneof(fc.constant('ec-p256'), fc.string()),
        ttlSeconds: fc.oneof(fc.integer(), fc.double(), fc.string()),
        audience: fc.oneof(fc.constant(['payments']), fc.array(fc.string(), { maxLength: 20 }), fc.string()),
        extra: fc.jsonValue({ maxDepth: 2 }),
      },
      { requiredKeys: [] },
    )
    .map((v) => JSON.stringify(v)),
  fc.string({ maxLength: 300 }),
  fc.uint8Array({ maxLength: 300 }).map((u) => Buffer.from(u)),
  fc.constant(undefined),
);

const contentType = fc.oneof(
  fc.constantFrom('application/json', 'application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=latin1'),
  headerValue,
  fc.constant(undefined),
);

const segment = fc.stringMatching(/^[A-Za-z0-9._~-]{0,20}$/);
const pathSegment = fc.oneof(segment, fc.constantFrom('..', '%2e%2e', '%2F', '%00', '%ff', '.', '%5c..%5c', '..%2f..%2f'));
const randomPath = fc.array(pathSegment, { minLength: 1, maxLength: 6 }).map((s) => `/${s.join('/')}`);
const route = fc.oneof(
  fc.constantFrom(
    { method: 'POST', path: '/v1/svid/x509' },
    { method: 'POST', path: '/v1/svid/jwt' },
    { method: 'POST', path: '/v1/admin/break-glass' },
    { method: 'POST', path: '/v1/admin/revoke' },
  ),
  randomPath.map((p) => ({ method: 'GET', path: `/v1/secrets${p}` })),
  segment.map((r) => ({ method: 'POST', path: `/v1/secrets/postgres/${r}/creds` })),
  segment.map((id) => ({ method: 'POST', path: `/v1/leases/${id}/renew` })),
  fc.tuple(fc.string({ unit: visible, maxLength: 12 }), fc.string({ unit: visible, maxLength: 12 })).map(([s, e]) => ({
    method: 'GET',
    path: `/v1/audit/entries?start=${encodeURIComponent(s)}&end=${encodeURIComponent(e)}`,
  })),
  fc.tuple(fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD'), randomPath).map(([method, path]) => ({ method, path })),
);

const extraHeaders = fc.dictionary(headerName, headerValue, { maxKeys: 6 });

interface Sent {
  status: number;
  text: string;
  contentType: string | undefined;
}

function send(req: { method: string; path: string; headers: Record<string, string>; body: string | Buffer | undefined }): Promise<Sent> {
  return new Promise((resolve, reject) => {
    const { hostname, port } = new URL(b.url);
    // The path goes out as given (not normalised by a URL parser): "//", "..", bad escapes and all.
    // Node's client sends a DELETE/OPTIONS body unframed unless told its length: always frame it.
    const headers = req.body !== undefined ? { ...req.headers, 'content-length': String(Buffer.byteLength(req.body)) } : req.headers;
    const r = https.request({ host: hostname, port, path: req.path, method: req.method, headers, agent }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString('utf8')));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text, contentType: res.headers['content-type'] }));
      res.on('error', reject);
    });
    r.on('error', reject);
    r.setTimeout(10_000, () => r.destroy(new Error('no answer within 10 s')));
    if (req.body !== undefined) r.write(req.body);
    r.end();
  });
}

describe('random requests against a live broker', () => {
  it('never get a 5xx, a reset or a credential', async () => {
    const before = await allows();
    let runs = 0;
    const statuses = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(route, authorization, contentType, body, extraHeaders, async (rt, auth, type, payload, extra) => {
        const headers: Record<string, string> = { ...extra };
        if (auth !== undefined) headers.authorization = auth;
        if (type !== undefined) headers['content-type'] = type;
        let res: Sent;
        try {
          res = await send({ method: rt.method, path: rt.path, headers, body: rt.method === 'GET' || rt.method === 'HEAD' ? undefined : payload });
        } catch (err) {
          // Header values the client itself refuses to send are not a test of the server.
          if ((err as NodeJS.ErrnoException).code === 'ERR_INVALID_CHAR' || (err as NodeJS.ErrnoException).code === 'ERR_INVALID_HTTP_TOKEN') {
            fc.pre(false);
          }
          throw err;
        }
        runs++;
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        expect(res.status, `${rt.method} ${rt.path} → ${res.text.slice(0, 300)}`).toBeLessThan(500);
        if (res.status >= 400 && rt.method !== 'HEAD') {
          expect(res.contentType).toMatch(/^application\/json/);
          expect(JSON.parse(res.text)).toEqual({ error: expect.any(String), message: expect.any(String) });
        }
      }),
      { numRuns: 1000, interruptAfterTimeLimit: 40_000, markInterruptAsFailure: false },
    );
    expect(runs).toBeGreaterThan(300);
    console.info(`[fuzz] ${runs} requests, statuses ${JSON.stringify(Object.fromEntries(statuses))}`);
    // Nothing was issued to anyone, and the broker still answers.
    expect(await allows()).toBe(before);
    expect((await send({ method: 'GET', path: '/healthz', headers: {}, body: undefined })).status).toBe(200);
    // Refusals of many kinds were exercised, not one kind over and over.
    expect([...statuses.keys()].filter((s) => s >= 400).length).toBeGreaterThanOrEqual(4);
  }, 60_000);
});
