/**
 * Minimal DER (X.690) writer and strict reader, just enough for Tessera's one certificate profile
 * and for PKCS#10 parsing. General ASN.1 libraries are 100x slower than node:crypto's signer, so
 * the hot path builds certificates from these byte-level helpers.
 *
 * Writer: every function returns a complete TLV as a Buffer. Misuse (a negative INTEGER, a
 * non-printable PrintableString, ...) is a programming error and throws RangeError/TypeError.
 *
 * Reader: `readDer` parses a whole buffer into a tree of views (no copies) and throws only
 * `DerError`. It accepts definite, minimally encoded lengths only, rejects trailing bytes and
 * high-tag-number forms, bounds the nesting depth and node count, and checks every length against
 * the buffer. Typed accessors (`readInteger`, `readOid`, ...) check the DER rules of the content.
 */

/** The only error the reader throws; callers map it to their own error (e.g. invalid_csr). */
export class DerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DerError';
  }
}

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

const CONSTRUCTED = 0x20;
const CONTEXT = 0x80;

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

function lengthOctets(len: number): number {
  if (len < 0x80) return 1;
  if (len <= 0xff) return 2;
  if (len <= 0xffff) return 3;
  if (len <= 0xffffff) return 4;
  if (len <= 0xffffffff) return 5;
  throw new RangeError('DER length too large');
}

function writeLength(out: Buffer, offset: number, len: number): number {
  const n = lengthOctets(len);
  if (n === 1) {
    out[offset] = len;
    return offset + 1;
  }
  out[offset] = 0x80 | (n - 1);
  for (let i = n - 1; i >= 1; i--) {
    out[offset + i] = len & 0xff;
    len = Math.floor(len / 256);
  }
  return offset + n;
}

/** The minimal DER length octets for `len` (short form below 128, else long form). */
export function encodeLength(len: number): Buffer {
  if (!Number.isSafeInteger(len) || len < 0) throw new RangeError('DER length must be a non-negative integer');
  const out = Buffer.allocUnsafe(lengthOctets(len));
  writeLength(out, 0, len);
  return out;
}

/** One TLV whose content is the concatenation of `contents` (single allocation). */
export function tlv(tag: number, ...contents: readonly Uint8Array[]): Buffer {
  if (!Number.isInteger(tag) || tag < 0 || tag > 0xff || (tag & 0x1f) === 0x1f) {
    throw new RangeError('tag must be a single identifier octet (low-tag-number form)');
  }
  let len = 0;
  for (const c of contents) len += c.length;
  const out = Buffer.allocUnsafe(1 + lengthOctets(len) + len);
  out[0] = tag;
  let off = writeLength(out, 1, len);
  for (const c of contents) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

export const sequence = (...children: readonly Uint8Array[]): Buffer => tlv(TAG.SEQUENCE, ...children);
export const set = (...children: readonly Uint8Array[]): Buffer => tlv(TAG.SET, ...children);

const ZERO_BYTE = Buffer.from([0]);

/** INTEGER from an unsigned big-endian magnitude: strips redundant zeros, adds one when the high bit is set. */
export function integerFromBytes(magnitude: Uint8Array): Buffer {
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  const body = magnitude.length === 0 ? Buffer.from([0]) : magnitude.subarray(start);
  // A set high bit would read as negative: prefix 0x00 to keep the value positive.
  return (body[0] ?? 0) & 0x80 ? tlv(TAG.INTEGER, ZERO_BYTE, body) : tlv(TAG.INTEGER, body);
}

/** Minimal unsigned big-endian bytes of a non-negative bigint (at least one byte). */
export function bigintToBytes(n: bigint): Buffer {
  if (n < 0n) throw new RangeError('expected a non-negative integer');
  let hex = n.toString(16);
  if (hex.length % 2 === 1) hex = `0${hex}`;
  return Buffer.from(hex, 'hex');
}

/** INTEGER from a non-negative bigint or safe integer. */
export function integer(n: bigint | number): Buffer {
  if (typeof n === 'number') {
    if (!Number.isSafeInteger(n)) throw new RangeError('INTEGER must be a safe integer');
    n = BigInt(n);
  }
  return integerFromBytes(bigintToBytes(n));
}

const oidCache = new Map<string, Buffer>();
const OID_ARC = /^(0|[1-9][0-9]*)$/;

/** Content octets (no tag/length) of an OBJECT IDENTIFIER given in dotted form. */
export function oidContent(dotted: string): Buffer {
  const parts = dotted.split('.');
  if (parts.length < 2 || !parts.every((p) => OID_ARC.test(p))) throw new RangeError(`invalid OID "${dotted}"`);
  const arcs = parts.map((p) => BigInt(p));
  const first = arcs[0] as bigint;
  const second = arcs[1] as bigint;
  if (first > 2n || (first < 2n && second >= 40n)) throw new RangeError(`invalid OID "${dotted}"`);
  const bytes: number[] = [];
  const subids = [first * 40n + second, ...arcs.slice(2)];
  for (const v of subids) {
    const chunk: number[] = [Number(v & 0x7fn)];
    for (let rest = v >> 7n; rest > 0n; rest >>= 7n) chunk.unshift(Number(rest & 0x7fn) | 0x80);
    bytes.push(...chunk);
  }
  return Buffer.from(bytes);
}

/**
 * OBJECT IDENTIFIER TLV. Encodings are cached because the certificate profile reuses a handful of
 * OIDs on every issuance. The returned Buffer is shared: never mutate it.
 */
export function oid(dotted: string): Buffer {
  let cached = oidCache.get(dotted);
  if (cached === undefined) {
    cached = tlv(TAG.OID, oidContent(dotted));
    if (oidCache.size < 1024) oidCache.set(dotted, cached);
  }
  return cached;
}

const TRUE_TLV = Buffer.from([TAG.BOOLEAN, 1, 0xff]);
const FALSE_TLV = Buffer.from([TAG.BOOLEAN, 1, 0x00]);
const NULL_TLV = Buffer.from([TAG.NULL, 0]);

export const boolean = (value: boolean): Buffer => Buffer.from(value ? TRUE_TLV : FALSE_TLV);
export const nullValue = (): Buffer => Buffer.from(NULL_TLV);

/** BIT STRING; DER requires the unused trailing bits to be zero, so they are checked. */
export function bitString(bytes: Uint8Array, unusedBits = 0): Buffer {
  if (!Number.isInteger(unusedBits) || unusedBits < 0 || unusedBits > 7) throw new RangeError('unusedBits must be 0..7');
  if (bytes.length === 0 && unusedBits !== 0) throw new RangeError('empty BIT STRING must have 0 unused bits');
  const last = bytes[bytes.length - 1] ?? 0;
  if ((last & ((1 << unusedBits) - 1)) !== 0) throw new RangeError('unused bits of a DER BIT STRING must be zero');
  return tlv(TAG.BIT_STRING, Buffer.from([unusedBits]), bytes);
}

export const octetString = (bytes: Uint8Array): Buffer => tlv(TAG.OCTET_STRING, bytes);

export function utf8String(s: string): Buffer {
  const bytes = Buffer.from(s, 'utf8');
  // Buffer.from silently replaces lone surrogates; refuse instead of encoding something else.
  if (bytes.toString('utf8') !== s) throw new TypeError('UTF8String input is not well-formed Unicode');
  return tlv(TAG.UTF8_STRING, bytes);
}

const PRINTABLE = /^[A-Za-z0-9 '()+,\-./:=?]*$/;
export function printableString(s: string): Buffer {
  if (!PRINTABLE.test(s)) throw new TypeError('PrintableString contains characters outside its set');
  return tlv(TAG.PRINTABLE_STRING, Buffer.from(s, 'latin1'));
}

// eslint-disable-next-line no-control-regex -- IA5String is exactly the 7-bit range, NUL included
const IA5 = /^[\x00-\x7f]*$/;
export function ia5String(s: string): Buffer {
  if (!IA5.test(s)) throw new TypeError('IA5String must be 7-bit ASCII');
  return tlv(TAG.IA5_STRING, Buffer.from(s, 'latin1'));
}

const pad2 = (n: number): string => (n < 10 ? `0${n}` : `${n}`);

function checkDate(d: Date): void {
  if (!(d instanceof Date) || Number.isNaN(d.getTime())) throw new RangeError('invalid Date');
}

/** UTCTime YYMMDDHHMMSSZ; only for 1950..2049 (the two-digit year window). Sub-second part dropped. */
export function utcTime(d: Date): Buffer {
  checkDate(d);
  const y = d.getUTCFullYear();
  if (y < 1950 || y > 2049) throw new RangeError('UTCTime covers 1950..2049 only');
  const s = `${pad2(y % 100)}${pad2(d.getUTCMonth() + 1)}${pad2(d.getUTCDate())}${pad2(d.getUTCHours())}${pad2(d.getUTCMinutes())}${pad2(d.getUTCSeconds())}Z`;
  return tlv(TAG.UTC_TIME, Buffer.from(s, 'latin1'));
}

/** GeneralizedTime YYYYMMDDHHMMSSZ (no fractional seconds, per RFC 5280). */
export function generalizedTime(d: Date): Buffer {
  checkDate(d);
  const y = d.getUTCFullYear();
  if (y < 0 || y > 9999) throw new RangeError('GeneralizedTime covers years 0..9999');
  const s = `${String(y).padStart(4, '0')}${pad2(d.getUTCMonth() + 1)}${pad2(d.getUTCDate())}${pad2(d.getUTCHours())}${pad2(d.getUTCMinutes())}${pad2(d.getUTCSeconds())}Z`;
  return tlv(TAG.GENERALIZED_TIME, Buffer.from(s, 'latin1'));
}

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050 (and before 1950). */
export function time(d: Date): Buffer {
  checkDate(d);
  const y = d.getUTCFullYear();
  return y >= 1950 && y <= 2049 ? utcTime(d) : generalizedTime(d);
}

function checkTagNumber(n: number): void {
  if (!Number.isInteger(n) || n < 0 || n > 30) throw new RangeError('context tag number must be 0..30');
}

/** [n] EXPLICIT: a constructed context tag wrapping complete TLVs. */
export function explicit(tagNumber: number, ...inner: readonly Uint8Array[]): Buffer {
  checkTagNumber(tagNumber);
  return tlv(CONTEXT | CONSTRUCTED | tagNumber, ...inner);
}

/**
 * [n] IMPLICIT: the context tag replaces the universal one, so `content` is the bare content octets
 * (e.g. the IA5 bytes of a URI GeneralName). Set `constructed` when the replaced type was a SEQUENCE/SET.
 */
export function implicit(tagNumber: number, content: Uint8Array, constructed = false): Buffer {
  checkTagNumber(tagNumber);
  return tlv(CONTEXT | (constructed ? CONSTRUCTED : 0) | tagNumber, content);
}

/** PEM armour with 64-character lines. */
export function toPem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString('base64');
  let body = '';
  for (let i = 0; i < b64.length; i += 64) body += `${b64.slice(i, i + 64)}\n`;
  return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`;
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

export type TagClass = 'universal' | 'application' | 'context' | 'private';
const CLASSES: readonly TagClass[] = ['universal', 'application', 'context', 'private'];

export interface DerNode {
  /** The identifier octet as read (class, constructed bit and tag number). */
  readonly tag: number;
  readonly tagClass: TagClass;
  readonly tagNumber: number;
  readonly constructed: boolean;
  readonly headerLength: number;
  /** Content octets (a view into the input, not a copy). */
  readonly content: Buffer;
  /** The full TLV bytes exactly as they appear in the input: what a signature covers. */
  readonly raw: Buffer;
  /** Parsed children of a constructed element; empty for primitive ones. */
  readonly children: readonly DerNode[];
}

export interface ReadOptions {
  /** Maximum nesting depth; the outermost element is depth 1. Default 32. */
  readonly maxDepth?: number;
  /** Maximum number of elements in the tree. Default 10,000. */
  readonly maxNodes?: number;
}

interface ReadState {
  readonly buf: Buffer;
  readonly maxDepth: number;
  readonly maxNodes: number;
  nodes: number;
}

function readNode(st: ReadState, offset: number, end: number, depth: number): DerNode {
  if (depth > st.maxDepth) throw new DerError(`nesting deeper than ${st.maxDepth}`);
  if (++st.nodes > st.maxNodes) throw new DerError(`more than ${st.maxNodes} elements`);
  const buf = st.buf;
  if (offset >= end) throw new DerError('truncated: missing tag');
  const tag = buf[offset] as number;
  const tagNumber = tag & 0x1f;
  if (tagNumber === 0x1f) throw new DerError('high-tag-number form is not supported');
  const tagClass = CLASSES[tag >> 6] as TagClass;
  const constructed = (tag & CONSTRUCTED) !== 0;
  if (tagClass === 'universal') {
    if (tagNumber === 0) throw new DerError('end-of-contents octets are not DER');
    const mustBeConstructed = tagNumber === 16 || tagNumber === 17;
    if (constructed !== mustBeConstructed) {
      throw new DerError(mustBeConstructed ? 'SEQUENCE/SET must be constructed' : 'DER forbids constructed universal primitives');
    }
  }
  if (offset + 1 >= end) throw new DerError('truncated: missing length');
  const first = buf[offset + 1] as number;
  let len: number;
  let headerLength: number;
  if (first < 0x80) {
    len = first;
    headerLength = 2;
  } else {
    const n = first & 0x7f;
    if (n === 0) throw new DerError('indefinite length is not DER');
    if (n > 4) throw new DerError('length field too long');
    if (offset + 2 + n > end) throw new DerError('truncated: length octets');
    if (buf[offset + 2] === 0) throw new DerError('non-minimal length (leading zero)');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (buf[offset + 2 + i] as number);
    if (len < 0x80) throw new DerError('non-minimal length (long form for short length)');
    headerLength = 2 + n;
  }
  const contentStart = offset + headerLength;
  if (len > end - contentStart) throw new DerError('truncated: length exceeds available bytes');
  const contentEnd = contentStart + len;
  const children: DerNode[] = [];
  if (constructed) {
    let pos = contentStart;
    while (pos < contentEnd) {
      const child = readNode(st, pos, contentEnd, depth + 1);
      children.push(child);
      pos += child.raw.length;
    }
  }
  return {
    tag,
    tagClass,
    tagNumber,
    constructed,
    headerLength,
    content: buf.subarray(contentStart, contentEnd),
    raw: buf.subarray(offset, contentEnd),
    children,
  };
}

/** Parses `input` as exactly one DER element (no trailing bytes) into a tree of views. */
export function readDer(input: Uint8Array, opts: ReadOptions = {}): DerNode {
  if (!(input instanceof Uint8Array)) throw new DerError('input is not bytes');
  const buf = Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  const st: ReadState = { buf, maxDepth: opts.maxDepth ?? 32, maxNodes: opts.maxNodes ?? 10_000, nodes: 0 };
  const node = readNode(st, 0, buf.length, 1);
  if (node.raw.length !== buf.length) throw new DerError('trailing bytes after DER element');
  return node;
}

// --- typed accessors ---------------------------------------------------------------------------

export function expectTag(node: DerNode, tag: number, what: string): DerNode {
  if (node.tag !== tag) throw new DerError(`${what}: expected tag 0x${tag.toString(16)}, got 0x${node.tag.toString(16)}`);
  return node;
}

/** The `index`-th child, or a DerError naming what was expected. */
export function child(node: DerNode, index: number, what: string): DerNode {
  const c = node.children[index];
  if (c === undefined) throw new DerError(`missing ${what}`);
  return c;
}

/** Children of a SEQUENCE with an exact (or bounded) count. */
export function sequenceOf(node: DerNode, what: string, min: number, max = min): readonly DerNode[] {
  expectTag(node, TAG.SEQUENCE, what);
  if (node.children.length < min || node.children.length > max) throw new DerError(`${what}: wrong number of elements`);
  return node.children;
}

function checkIntegerContent(c: Buffer): void {
  if (c.length === 0) throw new DerError('empty INTEGER');
  if (c.length > 1) {
    const a = c[0] as number;
    const b = c[1] as number;
    if ((a === 0x00 && (b & 0x80) === 0) || (a === 0xff && (b & 0x80) !== 0)) throw new DerError('non-minimal INTEGER');
  }
}

/** Signed INTEGER value (two's complement). */
export function readInteger(node: DerNode): bigint {
  expectTag(node, TAG.INTEGER, 'INTEGER');
  const c = node.content;
  checkIntegerContent(c);
  let v = BigInt(`0x${c.toString('hex')}`);
  if ((c[0] as number) & 0x80) v -= 1n << BigInt(c.length * 8);
  return v;
}

/** Magnitude bytes of a non-negative INTEGER with the sign-padding zero removed. */
export function readUnsignedIntegerBytes(node: DerNode): Buffer {
  expectTag(node, TAG.INTEGER, 'INTEGER');
  const c = node.content;
  checkIntegerContent(c);
  if ((c[0] as number) & 0x80) throw new DerError('INTEGER is negative');
  return c.length > 1 && c[0] === 0 ? c.subarray(1) : c;
}

export function readOid(node: DerNode): string {
  expectTag(node, TAG.OID, 'OBJECT IDENTIFIER');
  const c = node.content;
  if (c.length === 0) throw new DerError('empty OBJECT IDENTIFIER');
  if (((c[c.length - 1] as number) & 0x80) !== 0) throw new DerError('truncated OBJECT IDENTIFIER');
  const subids: bigint[] = [];
  let v = 0n;
  let startOfSubid = true;
  for (const b of c) {
    if (startOfSubid && b === 0x80) throw new DerError('non-minimal OBJECT IDENTIFIER arc');
    v = (v << 7n) | BigInt(b & 0x7f);
    startOfSubid = (b & 0x80) === 0;
    if (startOfSubid) {
      subids.push(v);
      v = 0n;
    }
  }
  const head = subids[0] as bigint;
  const [a, b] = head < 40n ? [0n, head] : head < 80n ? [1n, head - 40n] : [2n, head - 80n];
  return [a, b, ...subids.slice(1)].join('.');
}

export function readBoolean(node: DerNode): boolean {
  expectTag(node, TAG.BOOLEAN, 'BOOLEAN');
  if (node.content.length !== 1) throw new DerError('BOOLEAN must be one octet');
  const v = node.content[0];
  if (v === 0xff) return true;
  if (v === 0x00) return false;
  throw new DerError('DER BOOLEAN must be 0x00 or 0xff');
}

export function readNull(node: DerNode): null {
  expectTag(node, TAG.NULL, 'NULL');
  if (node.content.length !== 0) throw new DerError('NULL must be empty');
  return null;
}

export interface BitStringValue {
  readonly unusedBits: number;
  readonly bytes: Buffer;
}

export function readBitString(node: DerNode): BitStringValue {
  expectTag(node, TAG.BIT_STRING, 'BIT STRING');
  const c = node.content;
  if (c.length === 0) throw new DerError('BIT STRING without unused-bits octet');
  const unusedBits = c[0] as number;
  if (unusedBits > 7) throw new DerError('BIT STRING unused bits > 7');
  if (c.length === 1 && unusedBits !== 0) throw new DerError('empty BIT STRING with unused bits');
  if (c.length > 1 && ((c[c.length - 1] as number) & ((1 << unusedBits) - 1)) !== 0) {
    throw new DerError('DER BIT STRING unused bits must be zero');
  }
  return { unusedBits, bytes: c.subarray(1) };
}

export function readOctetString(node: DerNode): Buffer {
  return expectTag(node, TAG.OCTET_STRING, 'OCTET STRING').content;
}

const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

/** UTF8String, PrintableString or IA5String content, with each type's character set enforced. */
export function readString(node: DerNode): string {
  const c = node.content;
  switch (node.tag) {
    case TAG.UTF8_STRING:
      try {
        return utf8Decoder.decode(c);
      } catch {
        throw new DerError('invalid UTF-8 in UTF8String');
      }
    case TAG.PRINTABLE_STRING: {
      const s = c.toString('latin1');
      if (!PRINTABLE.test(s)) throw new DerError('invalid PrintableString');
      return s;
    }
    case TAG.IA5_STRING: {
      const s = c.toString('latin1');
      if (!IA5.test(s)) throw new DerError('invalid IA5String');
      return s;
    }
    default:
      throw new DerError(`unsupported string tag 0x${node.tag.toString(16)}`);
  }
}

const UTC_RE = /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/;
const GEN_RE = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/;

/** UTCTime or GeneralizedTime in the RFC 5280 profile (Zulu, whole seconds). */
export function readTime(node: DerNode): Date {
  const s = node.content.toString('latin1');
  let m: RegExpExecArray | null;
  let year: number;
  if (node.tag === TAG.UTC_TIME) {
    m = UTC_RE.exec(s);
    if (m === null) throw new DerError('UTCTime must be YYMMDDHHMMSSZ');
    const yy = Number(m[1]);
    year = yy < 50 ? 2000 + yy : 1900 + yy;
  } else if (node.tag === TAG.GENERALIZED_TIME) {
    m = GEN_RE.exec(s);
    if (m === null) throw new DerError('GeneralizedTime must be YYYYMMDDHHMMSSZ');
    year = Number(m[1]);
  } else {
    throw new DerError('expected UTCTime or GeneralizedTime');
  }
  const [month, day, hour, minute, second] = [m[2], m[3], m[4], m[5], m[6]].map(Number) as [number, number, number, number, number];
  const d = new Date(0);
  d.setUTCFullYear(year, month - 1, day);
  d.setUTCHours(hour, minute, second, 0);
  // Date rolls 31 Feb into March; a round-trip check rejects impossible calendar values.
  if (
    month < 1 || month > 12 || hour > 23 || minute > 59 || second > 59 ||
    d.getUTCFullYear() !== year || d.getUTCMonth() !== month - 1 || d.getUTCDate() !== day
  ) {
    throw new DerError('time value out of range');
  }
  return d;
}
