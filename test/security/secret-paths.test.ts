/**
 * Path traversal in secret names against a live broker (GET /v1/secrets/<name>): the caller is granted
 * `shop/` only, and tries every way of walking out of it — dot segments raw and percent-encoded,
 * encoded slashes and backslashes, NUL bytes, double encoding, empty segments, case and Unicode
 * look-alikes, prefix confusion, oversized names. None of it reads anything outside the grant: each is
 * a 4xx with the `{error, message}` shape, nothing is leased, and the other secrets never appear.
 */
import https from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { entries } from './helpers.js';

const WEB = 'spiffe://example.org/ns/shop/sa/web';
const MINE = 'shop-db-password-1b7e';
const OTHERS = ['admin-root-9c2d', 'shopx-key-44aa', 'top-level-77ee'];

let b: TestBroker;
let token: string;
beforeAll(async () => {
  b = await startBroker({ secrets: { grants: [{ spiffeIds: [WEB], secrets: ['shop/'] }] } });
  const kv = b.broker.secrets.kv;
  await kv.put('shop/db', Buffer.from(MINE));
  await kv.put('admin/root', Buffer.from(OTHERS[0] as string));
  await kv.put('shopx/key', Buffer.from(OTHERS[1] as string));
  await kv.put('toplevel', Buffer.from(OTHERS[2] as string));
  token = await b.token();
});
afterAll(async () => {
  await b?.close();
});

/** GET with the path exactly as written (no client-side normalisation of "..", "//" or escapes). */
function get(path: string): Promise<{ status: number; text: string }> {
  const { hostname, port } = new URL(b.url);
  return new Promise((resolve, reject) => {
    https
      .request({ host: hostname, port, path, method: 'GET', ca: b.ca, agent: false, headers: { authorization: `Bearer ${token}` } }, (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString('utf8')));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      })
      .on('error', reject)
      .end();
  });
}

describe('secret names', () => {
  it('the grant works for what it covers (so the refusals below are about the names)', async () => {
    const res = await get('/v1/secrets/shop/db');
    expect(res.status, res.text).toBe(200);
    expect((JSON.parse(res.text) as { value: string }).value).toBe(MINE);
    const withQuery = await get('/v1/secrets/shop/db?name=../admin/root');
    expect(withQuery.status).toBe(200);
    expect(withQuery.text).not.toContain(OTHERS[0]);
  });

  const attempts = [
    '/v1/secrets/shop/../admin/root',
    '/v1/secrets/shop/%2e%2e/admin/root',
    '/v1/secrets/shop/%2E%2E/admin/root',
    '/v1/secrets/shop/.%2e/admin/root',
    '/v1/secrets/shop%2f..%2fadmin%2froot',
    '/v1/secrets/shop%2F%2E%2E%2Fadmin%2Froot',
    '/v1/secrets/shop/%252e%252e/admin/root',
    '/v1/secrets/shop/..%5cadmin%5croot',
    '/v1/secrets/shop\\..\\admin\\root',
    '/v1/secrets/shop/./db',
    '/v1/secrets/shop//db',
    '/v1/secrets//shop/db',
    '/v1/secrets/shop/',
    '/v1/secrets/',
    '/v1/secrets/shop/db%00',
    '/v1/secrets/shop/db%00/../../admin/root',
    '/v1/secrets/shop/db/..',
    '/v1/secrets/SHOP/db',
    '/v1/secrets/shop/%E2%80%A4%E2%80%A4/admin/root',
    '/v1/secrets/shop/%EF%BC%8E%EF%BC%8E/admin/root',
    '/v1/secrets/shop/%C0%AE%C0%AE/admin/root',
    '/v1/secrets/shop/%ff',
    '/v1/secrets/shop',
    '/v1/secrets/shopx/key',
    '/v1/secrets/admin/root',
    '/v1/secrets/toplevel',
    '/v1/secrets/postgres/../admin/root',
    `/v1/secrets/shop/${'a'.repeat(300)}`,
    `/v1/secrets/shop/${'a/'.repeat(2000)}x`,
  ];

  const cases = attempts.map((p) => [p.length > 80 ? `${p.slice(0, 60)}… (${p.length} chars)` : p, p] as const);
  it.each(cases)('%s → 4xx, nothing leased, nothing outside the grant', async (_label, path) => {
    const before = b.broker.audit.size;
    const res = await get(path);
    expect(res.status, res.text).toBeGreaterThanOrEqual(400);
    expect(res.status, res.text).toBeLessThan(500);
    expect(JSON.parse(res.text)).toEqual({ error: expect.any(String), message: expect.any(String) });
    for (const other of [MINE, ...OTHERS]) expect(res.text).not.toContain(other);
    const added = await entries(b, before);
    expect(added.filter((e) => e.decision === 'allow')).toEqual([]);
    // A refusal after authentication names the caller; a malformed name is never copied into the log
    // (a well-formed one that is simply not granted, like admin/root, is).
    for (const e of added) {
      expect(e).toMatchObject({ type: 'denial', actor: WEB });
      expect(JSON.stringify(e)).not.toMatch(/\.\.|%2e|%00|\\\\|aaaaaaaaaa/i);
    }
  });
});
