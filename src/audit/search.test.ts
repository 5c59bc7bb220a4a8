import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmbeddedStore } from '../store/embedded.js';
import { type AuditEntry, canonicalJson } from './entry.js';
import { matchesFilter, parseSearchFilter, parseTime, searchLog } from './search.js';
import { type LogSource, storeSource } from './source.js';

const T0 = Date.parse('2025-03-01T00:00:00Z');
const web = 'spiffe://example.org/ns/shop/sa/web';
const api = 'spiffe://example.org/ns/payments/sa/api';

const entries: AuditEntry[] = [
  { ts: T0, type: 'x509-svid.issued', decision: 'allow', actor: web, subject: web, namespace: 'shop', serial: '0abc01', requestId: 'r0', replica: 'a' },
  { ts: T0 + 60_000, type: 'denial', decision: 'deny', actor: web, subject: null, namespace: 'shop', code: 'forbidden', requestId: 'r1', replica: 'a' },
  { ts: T0 + 120_000, type: 'jwt-svid.issued', decision: 'allow', actor: api, subject: api, namespace: 'payments', jti: 'jti-7', audience: ['bank'], requestId: 'r2', replica: 'b' },
  { ts: T0 + 180_000, type: 'denial', decision: 'deny', actor: null, subject: null, code: 'invalid_token', requestId: 'r3', replica: 'b' },
  { ts: T0 + 240_000, type: 'x509-svid.issued', decision: 'allow', actor: api, subject: web, namespace: 'payments', serial: '0abc02', requestId: 'r4', replica: 'a' },
];

let dir: string;
let store: EmbeddedStore;
let source: LogSource;
beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'tessera-search-'));
  store = await EmbeddedStore.open(dir, { fsync: false });
  await store.appendAuditEntries(entries.map((e) => canonicalJson(e)));
  await store.appendAuditEntries([Buffer.from('not an entry')]);
  source = storeSource(store);
});
afterAll(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

const indexes = async (input: Parameters<typeof parseSearchFilter>[0]): Promise<number[]> =>
  (await searchLog(source, parseSearchFilter(input, T0 + 300_000))).hits.map((h) => h.index);

describe('audit search', () => {
  it('finds a SPIFFE ID as caller or as subject', async () => {
    expect(await indexes({ spiffeId: web })).toEqual([0, 1, 4]);
    expect(await indexes({ spiffeId: api })).toEqual([2, 4]);
    expect(await indexes({ spiffeId: 'spiffe://example.org/ns/payments/*' })).toEqual([2, 4]);
  });

  it('finds a credential by serial (any case, colons allowed) or by jti', async () => {
    expect(await indexes({ serial: '0A:BC:02' })).toEqual([4]);
    expect(await indexes({ serial: 'jti-7' })).toEqual([2]);
    expect(await indexes({ serial: 'ffff' })).toEqual([]);
  });

  it('filters by time range, type, decision and namespace, combined', async () => {
    expect(await indexes({ since: '2025-03-01T00:01:00Z', until: '2025-03-01T00:04:00Z' })).toEqual([1, 2, 3]);
    expect(await indexes({ type: 'denial' })).toEqual([1, 3]);
    expect(await indexes({ decision: 'allow', namespace: 'payments' })).toEqual([2, 4]);
    expect(await indexes({ type: 'denial', spiffeId: web })).toEqual([1]);
    expect(await indexes({ since: '2m' })).toEqual([3, 4]);
  });

  it('skips malformed entries, counts them, and pages with a limit', async () => {
    const r = await searchLog(source, {}, { limit: 2 });
    expect(r).toMatchObject({ truncated: true, next: 2 });
    expect(r.hits.map((h) => h.index)).toEqual([0, 1]);
    const rest = await searchLog(source, {}, { start: 2 });
    expect(rest.hits.map((h) => h.index)).toEqual([2, 3, 4]);
    expect(rest.malformed).toBe(1);
  });

  it('refuses bad filters with a message naming the field', () => {
    expect(() => parseSearchFilter({ spiffeId: 'web' }, T0)).toThrow(/spiffeId/);
    expect(() => parseSearchFilter({ type: 'issued' }, T0)).toThrow(/type: expected one of/);
    expect(() => parseSearchFilter({ decision: 'maybe' }, T0)).toThrow(/decision/);
    expect(() => parseSearchFilter({ since: 'yesterday' }, T0)).toThrow(/since/);
    expect(() => parseSearchFilter({ since: '1h', until: '2h' }, T0)).toThrow(/before until/);
  });

  it('parses times: ISO dates, milliseconds and durations ago', () => {
    expect(parseTime('2025-03-01', T0, 't')).toBe(T0);
    expect(parseTime('2025-03-01T01:00:00Z', T0, 't')).toBe(T0 + 3_600_000);
    expect(parseTime(String(T0), 0, 't')).toBe(T0);
    expect(parseTime('90s', T0, 't')).toBe(T0 - 90_000);
    expect(parseTime('7d', T0, 't')).toBe(T0 - 7 * 86_400_000);
    expect(matchesFilter(entries[0]!, {})).toBe(true);
  });
});
