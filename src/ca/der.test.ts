import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  DerError,
  TAG,
  bitString,
  boolean,
  encodeLength,
  explicit,
  generalizedTime,
  ia5String,
  implicit,
  integer,
  integerFromBytes,
  nullValue,
  octetString,
  oid,
  printableString,
  readBitString,
  readBoolean,
  readDer,
  readInteger,
  readNull,
  readOctetString,
  readOid,
  readString,
  readTime,
  readUnsignedIntegerBytes,
  sequence,
  set,
  time,
  tlv,
  utcTime,
  utf8String,
} from './der.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const h = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('DER writer', () => {
  it('encodes lengths minimally at every boundary', () => {
    expect(hex(encodeLength(0))).toBe('00');
    expect(hex(encodeLength(127))).toBe('7f');
    expect(hex(encodeLength(128))).toBe('8180');
    expect(hex(encodeLength(255))).toBe('81ff');
    expect(hex(encodeLength(256))).toBe('820100');
    expect(hex(encodeLength(65535))).toBe('82ffff');
    expect(hex(encodeLength(65536))).toBe('83010000');
    expect(hex(encodeLength(0xffffff))).toBe('83ffffff');
    expect(hex(encodeLength(0x1000000))).toBe('8401000000');
    expect(() => encodeLength(-1)).toThrow(RangeError);
  });

  it.each([0, 1, 127, 128, 255, 256, 65535, 65536, 70000])('round-trips an OCTET STRING of %i bytes', (n) => {
    const content = Buffer.alloc(n, 0xab);
    const enc = octetString(content);
    const node = readDer(enc);
    expect(node.tag).toBe(TAG.OCTET_STRING);
    expect(node.headerLength).toBe(1 + encodeLength(n).length);
    expect(readOctetString(node).equals(content)).toBe(true);
    expect(node.raw.equals(enc)).toBe(true);
  });

  it('encodes INTEGERs with correct leading-zero handling', () => {
    expect(hex(integer(0))).toBe('020100');
    expect(hex(integer(1))).toBe('020101');
    expect(hex(integer(127))).toBe('02017f');
    expect(hex(integer(128))).toBe('02020080');
    expect(hex(integer(255))).toBe('020200ff');
    expect(hex(integer(256))).toBe('02020100');
    expect(hex(integer(2n ** 64n))).toBe('0209010000000000000000');
    expect(hex(integerFromBytes(h('00 00 01')))).toBe('020101'); // redundant zeros stripped
    expect(hex(integerFromBytes(h('00 80')))).toBe('02020080'); // needed zero kept
    expect(hex(integerFromBytes(h('80 00')))).toBe('0203008000'); // zero added for high bit
    expect(hex(integerFromBytes(h('0000')))).toBe('020100');
    expect(hex(integerFromBytes(Buffer.alloc(0)))).toBe('020100');
    expect(() => integer(-1)).toThrow(RangeError);
    expect(() => integer(1.5)).toThrow(RangeError);
  });

  it('round-trips unsigned INTEGERs (property)', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 2n ** 300n }), (n) => {
        const node = readDer(integer(n));
        expect(readInteger(node)).toBe(n);
        const mag = readUnsignedIntegerBytes(node);
        expect(BigInt(`0x${mag.toString('hex') || '0'}`)).toBe(n);
      }),
    );
  });

  it('encodes well-known OIDs and round-trips arbitrary ones', () => {
    expect(hex(oid('1.2.840.10045.2.1'))).toBe('06072a8648ce3d0201');
    expect(hex(oid('2.5.29.17'))).toBe('0603551d11');
    expect(hex(oid('1.3.101.112'))).toBe('06032b6570');
    expect(hex(oid('2.999.3'))).toBe('0603883703');
    expect(oid('2.5.29.17')).toBe(oid('2.5.29.17')); // cached
    expect(() => oid('3.1')).toThrow(RangeError);
    expect(() => oid('1.40')).toThrow(RangeError);
    expect(() => oid('1')).toThrow(RangeError);
    expect(() => oid('1.02')).toThrow(RangeError);
    fc.assert(
      fc.property(
        fc.constantFrom(0, 1, 2),
        fc.nat(39),
        fc.array(fc.bigInt({ min: 0n, max: 2n ** 128n }), { maxLength: 8 }),
        (a, b, rest) => {
          const dotted = [a, b, ...rest].join('.');
          expect(readOid(readDer(oid(dotted)))).toBe(dotted);
        },
      ),
    );
  });

  it('round-trips BOOLEAN, NULL, BIT STRING and strings', () => {
    expect(hex(boolean(true))).toBe('0101ff');
    expect(readBoolean(readDer(boolean(true)))).toBe(true);
    expect(readBoolean(readDer(boolean(false)))).toBe(false);
    expect(hex(nullValue())).toBe('0500');
    expect(readNull(readDer(nullValue()))).toBeNull();
    const bs = readBitString(readDer(bitString(h('a0'), 5)));
    expect(bs.unusedBits).toBe(5);
    expect(hex(bs.bytes)).toBe('a0');
    expect(() => bitString(h('a1'), 5)).toThrow(RangeError); // non-zero unused bits
    expect(readString(readDer(utf8String('Tessera ✓ 🔐')))).toBe('Tessera ✓ 🔐');
    expect(readString(readDer(printableString("Acme Co. (dev) 'x'")))).toBe("Acme Co. (dev) 'x'");
    expect(() => printableString('a@b')).toThrow(TypeError);
    expect(readString(readDer(ia5String('spiffe://example.org/x')))).toBe('spiffe://example.org/x');
    expect(() => ia5String('é')).toThrow(TypeError);
    expect(() => utf8String('\ud800')).toThrow(TypeError);
  });

  it('round-trips SEQUENCE/SET and context tags with the raw TLV preserved', () => {
    const inner = sequence(integer(5), octetString(h('0102')));
    const enc = sequence(explicit(0, integer(2)), inner, set(oid('2.5.4.3')), implicit(6, Buffer.from('uri')), implicit(3, inner, true));
    const node = readDer(enc);
    expect(node.children).toHaveLength(5);
    const [ex, seq, st, imp, impC] = node.children as [typeof node, typeof node, typeof node, typeof node, typeof node];
    expect(ex.tag).toBe(0xa0);
    expect(ex.tagClass).toBe('context');
    expect(readInteger(ex.children[0]!)).toBe(2n);
    expect(seq.raw.equals(inner)).toBe(true);
    expect(st.tag).toBe(0x31);
    expect(imp.tag).toBe(0x86);
    expect(imp.constructed).toBe(false);
    expect(imp.content.toString()).toBe('uri');
    expect(impC.tag).toBe(0xa3);
    expect(impC.content.equals(inner)).toBe(true);
    expect(impC.children[0]?.raw.equals(inner)).toBe(true);
    expect(() => explicit(31, integer(1))).toThrow(RangeError);
  });

  it('uses UTCTime through 2049 and GeneralizedTime from 2050 (RFC 5280)', () => {
    const last = new Date(Date.UTC(2049, 11, 31, 23, 59, 59));
    const first = new Date(Date.UTC(2050, 0, 1, 0, 0, 0));
    expect(time(last).toString('latin1', 2)).toBe('491231235959Z');
    expect(time(last)[0]).toBe(TAG.UTC_TIME);
    expect(time(first).toString('latin1', 2)).toBe('20500101000000Z');
    expect(time(first)[0]).toBe(TAG.GENERALIZED_TIME);
    const y1950 = new Date(Date.UTC(1950, 0, 1));
    const y1949 = new Date(Date.UTC(1949, 11, 31, 23, 59, 59));
    expect(time(y1950)[0]).toBe(TAG.UTC_TIME);
    expect(time(y1950).toString('latin1', 2)).toBe('500101000000Z');
    expect(time(y1949)[0]).toBe(TAG.GENERALIZED_TIME);
    expect(() => utcTime(first)).toThrow(RangeError);
    expect(() => time(new Date(Number.NaN))).toThrow(RangeError);
    // sub-second precision is dropped, never rounded up
    expect(time(new Date(Date.UTC(2030, 5, 6, 7, 8, 9, 999))).toString('latin1', 2)).toBe('300606070809Z');
    for (const d of [last, first, y1950, y1949]) expect(readTime(readDer(time(d))).getTime()).toBe(d.getTime());
  });

  it('round-trips arbitrary whole-second times (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: Date.parse('0000-01-01T00:00:00Z'), max: Date.parse('9999-12-31T23:59:59Z') }), (ms) => {
        const d = new Date(Math.floor(ms / 1000) * 1000);
        expect(readTime(readDer(time(d))).getTime()).toBe(d.getTime());
        expect(readTime(readDer(generalizedTime(d))).getTime()).toBe(d.getTime());
      }),
    );
  });
});

describe('DER reader strictness', () => {
  const rejects = (bytes: Buffer, msg: RegExp): void => {
    expect(() => readDer(bytes)).toThrow(DerError);
    expect(() => readDer(bytes)).toThrow(msg);
  };

  it('rejects indefinite lengths', () => rejects(h('30 80 02 01 01 00 00'), /indefinite/));
  it('rejects non-minimal long-form lengths', () => {
    rejects(h('04 81 05 0102030405'), /non-minimal/); // < 128 in long form
    rejects(Buffer.concat([h('04 82 00 80'), Buffer.alloc(128)]), /non-minimal/); // leading zero
  });
  it('rejects over-long length fields', () => rejects(h('04 85 0000000001 00'), /too long/));
  it('rejects truncated input everywhere', () => {
    const good = sequence(integer(300), octetString(Buffer.alloc(200, 1)));
    for (let i = 0; i < good.length; i++) expect(() => readDer(good.subarray(0, i))).toThrow(DerError);
    rejects(h('04 82 01'), /truncated/);
  });
  it('rejects trailing garbage', () => rejects(Buffer.concat([integer(1), h('00')]), /trailing/));
  it('rejects children overrunning their parent', () => rejects(h('30 03 04 05 0000'), /truncated/));
  it('rejects too-deep nesting but accepts the limit', () => {
    let deep: Buffer = nullValue();
    for (let i = 0; i < 31; i++) deep = sequence(deep);
    expect(() => readDer(deep)).not.toThrow(); // depth 32
    rejects(sequence(deep), /nesting/);
    expect(() => readDer(deep, { maxDepth: 5 })).toThrow(/nesting/);
  });
  it('rejects too many nodes', () => {
    const many = sequence(...Array.from({ length: 50 }, () => nullValue()));
    expect(() => readDer(many, { maxNodes: 10 })).toThrow(DerError);
  });
  it('rejects BER-only forms', () => {
    rejects(h('24 03 04 01 00'), /constructed/); // constructed OCTET STRING
    rejects(h('10 00'), /constructed/); // primitive SEQUENCE
    rejects(h('00 00'), /end-of-contents/);
    rejects(h('1f 81 00 00'), /high-tag/);
    expect(() => readBoolean(readDer(h('01 01 01')))).toThrow(DerError);
    expect(() => readInteger(readDer(h('02 02 00 01')))).toThrow(/non-minimal/);
    expect(() => readInteger(readDer(h('02 02 ff 80')))).toThrow(/non-minimal/);
    expect(() => readInteger(readDer(h('02 00')))).toThrow(/empty/);
    expect(readInteger(readDer(h('02 01 ff')))).toBe(-1n);
    expect(() => readUnsignedIntegerBytes(readDer(h('02 01 ff')))).toThrow(/negative/);
    expect(() => readOid(readDer(h('06 02 80 01')))).toThrow(/non-minimal/);
    expect(() => readOid(readDer(h('06 01 81')))).toThrow(/truncated/);
    expect(() => readBitString(readDer(h('03 02 07 81')))).toThrow(/unused bits/);
    expect(() => readBitString(readDer(h('03 01 01')))).toThrow(DerError);
    expect(() => readNull(readDer(h('05 01 00')))).toThrow(DerError);
    expect(() => readString(readDer(h('0c 01 ff')))).toThrow(/UTF-8/);
  });
  it('rejects malformed times', () => {
    const t = (tag: number, s: string): Buffer => tlv(tag, Buffer.from(s, 'latin1'));
    for (const bad of ['4912312359Z', '491231235959', '491231235959+0000', '491332000000Z', '490230000000Z', '491231240000Z']) {
      expect(() => readTime(readDer(t(TAG.UTC_TIME, bad)))).toThrow(DerError);
    }
    expect(() => readTime(readDer(t(TAG.GENERALIZED_TIME, '20500101000000.5Z')))).toThrow(DerError);
    expect(readTime(readDer(t(TAG.GENERALIZED_TIME, '20240229120000Z'))).toISOString()).toBe('2024-02-29T12:00:00.000Z');
    expect(() => readTime(readDer(t(TAG.GENERALIZED_TIME, '20230229120000Z')))).toThrow(DerError);
  });

  it('throws nothing but DerError on arbitrary bytes, and returns promptly (property)', () => {
    const accessors = [readInteger, readOid, readBoolean, readNull, readBitString, readString, readTime, readOctetString];
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => {
        const started = performance.now();
        try {
          const node = readDer(bytes);
          const walk = (n: typeof node): void => {
            for (const a of accessors) {
              try {
                a(n);
              } catch (e) {
                if (!(e instanceof DerError)) throw e;
              }
            }
            n.children.forEach(walk);
          };
          walk(node);
        } catch (e) {
          if (!(e instanceof DerError)) throw e;
        }
        expect(performance.now() - started).toBeLessThan(250);
      }),
      { numRuns: 3000 },
    );
  });

  it('never accepts a mutated encoding that does not re-encode identically (property)', () => {
    // Any tree the reader accepts must be byte-identical to its own raw slices: a cheap DER-ness check.
    const base = sequence(integer(123456789n), oid('1.2.840.113549.1.1.11'), octetString(Buffer.alloc(130, 7)), set(boolean(true)));
    fc.assert(
      fc.property(fc.nat(base.length - 1), fc.integer({ min: 0, max: 255 }), (i, v) => {
        const m = Buffer.from(base);
        m[i] = v;
        try {
          const node = readDer(m);
          const rebuild = (n: typeof node): Buffer =>
            n.constructed ? tlv(n.tag, ...n.children.map(rebuild)) : tlv(n.tag, n.content);
          expect(rebuild(node).equals(m)).toBe(true);
        } catch (e) {
          if (!(e instanceof DerError)) throw e;
        }
      }),
      { numRuns: 2000 },
    );
  });
});
