import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BrokerError } from '../errors.js';
import { type AuditEntry, canonicalJson, parseAuditEntry } from './entry.js';

const s = (v: unknown): string => canonicalJson(v).toString('utf8');

describe('canonicalJson', () => {
  it('sorts keys at every depth and emits no whitespace', () => {
    expect(s({ b: 1, a: { d: [3, { z: true, y: null }], c: 'x' } })).toBe('{"a":{"c":"x","d":[3,{"y":null,"z":true}]},"b":1}');
  });

  it('orders keys by UTF-16 code units (RFC 8785), not locale', () => {
    expect(s({ b: 0, B: 0, a: 0, '\u00e9': 0, _: 0, '1': 0, '\u{1F600}': 0, '\uFFFD': 0 })).toBe(
      '{"1":0,"B":0,"_":0,"a":0,"b":0,"é":0,"😀":0,"�":0}',
    );
  });

  it('is UTF-8 and escapes only what JSON requires', () => {
    const buf = canonicalJson({ k: 'é\n"\\\u0001😀' });
    expect(buf.toString('utf8')).toBe('{"k":"é\\n\\"\\\\\\u0001😀"}');
    expect(buf.includes(Buffer.from('é', 'utf8'))).toBe(true);
    // A lone surrogate cannot be UTF-8: it is escaped, deterministically.
    expect(s('\ud800')).toBe('"\\ud800"');
  });

  it('omits properties whose value is undefined', () => {
    expect(s({ a: undefined, b: 2 })).toBe('{"b":2}');
    expect(s({ a: undefined })).toBe('{}');
  });

  it('accepts safe integers only', () => {
    expect(s([0, -0, 1, -1, Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER])).toBe('[0,0,1,-1,9007199254740991,-9007199254740991]');
    for (const bad of [1.5, 0.1, Number.NaN, Infinity, -Infinity, 2 ** 53, -(2 ** 53), 1e300]) {
      expect(() => canonicalJson({ n: bad }), String(bad)).toThrow(TypeError);
    }
  });

  it('rejects values JSON would coerce or drop', () => {
    class Thing {
      x = 1;
    }
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const holey: unknown[] = [1, 2];
    holey[3] = 4;
    for (const bad of [
      undefined,
      [undefined],
      holey,
      { f: () => 1 },
      () => 1,
      Symbol('x'),
      { s: Symbol('x') },
      10n,
      new Date(0),
      new Map(),
      new Set(),
      new Thing(),
      Buffer.from('x'),
      new Uint8Array(1),
      cyclic,
      new (class Sub extends Array {})(),
    ]) {
      expect(() => canonicalJson(bad)).toThrow(TypeError);
    }
  });

  it('allows a repeated (non-cyclic) reference and null-prototype objects', () => {
    const shared = { x: 1 };
    expect(s({ a: shared, b: shared })).toBe('{"a":{"x":1},"b":{"x":1}}');
    const bare = Object.create(null) as Record<string, unknown>;
    bare.k = 'v';
    expect(s(bare)).toBe('{"k":"v"}');
  });

  it('round-trips through JSON.parse and is independent of insertion order (property)', () => {
    const json = fc.letrec((tie) => ({
      value: fc.oneof(
        { depthSize: 'small' },
        fc.constant(null),
        fc.boolean(),
        fc.maxSafeInteger(),
        fc.string({ unit: 'binary' }),
        fc.array(tie('value'), { maxLength: 4 }),
        fc.dictionary(fc.string(), tie('value'), { maxKeys: 4, noNullPrototype: true }),
      ),
    })).value;
    fc.assert(
      fc.property(json, (v) => {
        const bytes = canonicalJson(v);
        const back: unknown = JSON.parse(bytes.toString('utf8'));
        expect(canonicalJson(back)).toEqual(bytes);
        // Reverse every object's key insertion order: same bytes.
        const reorder = (x: unknown): unknown =>
          Array.isArray(x)
            ? x.map(reorder)
            : x !== null && typeof x === 'object'
              ? Object.fromEntries(Object.entries(x).reverse().map(([k, y]) => [k, reorder(y)]))
              : x;
        expect(canonicalJson(reorder(v))).toEqual(bytes);
      }),
      { numRuns: 300 },
    );
  });
});

describe('AuditEntry', () => {
  const entry: AuditEntry = {
    ts: 1_700_000_000_000,
    type: 'x509-svid.issued',
    decision: 'allow',
    actor: 'spiffe://example.org/ns/a/sa/b',
    subject: 'spiffe://example.org/ns/a/sa/b',
    serial: '0a1b',
    audience: ['x', 'y'],
    ttlMs: 3_600_000,
    requestId: 'req-1',
    replica: 'r1',
    // A member set to undefined is dropped by the encoding, as by JSON.stringify.
    reason: undefined as unknown as string,
  };

  it('encodes to stable canonical bytes', () => {
    expect(s(entry)).toBe(
      '{"actor":"spiffe://example.org/ns/a/sa/b","audience":["x","y"],"decision":"allow","replica":"r1",' +
        '"requestId":"req-1","serial":"0a1b","subject":"spiffe://example.org/ns/a/sa/b","ts":1700000000000,' +
        '"ttlMs":3600000,"type":"x509-svid.issued"}',
    );
  });

  it('parseAuditEntry round-trips and rejects malformed entries', () => {
    const { reason: _r, ...rest } = entry;
    expect(parseAuditEntry(canonicalJson(entry))).toEqual(rest);
    for (const bad of ['nope', '[]', '{}', JSON.stringify({ ...rest, type: 'other' }), JSON.stringify({ ...rest, ttlMs: 1.5 }), JSON.stringify({ ...rest, audience: [1] })]) {
      expect(() => parseAuditEntry(Buffer.from(bad))).toThrow(BrokerError);
    }
  });
});
