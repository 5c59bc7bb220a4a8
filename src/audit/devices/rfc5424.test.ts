import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type AuditEntry, canonicalJson } from '../entry.js';
import { leafHash } from '../merkle.js';
import { type ShipRecord, canonicalEntry, recordJson } from './record.js';
import { escapeParamValue, formatSyslog, headerField, octetCounted, prival, SD_ID, structuredData } from './rfc5424.js';

const record = (entry: AuditEntry, index = 7): ShipRecord => {
  const bytes = canonicalJson(entry);
  const parsed = canonicalEntry(bytes);
  return { index, bytes, ...(parsed !== undefined ? { entry: parsed } : {}), leafHash: leafHash(bytes).toString('base64'), replicaId: 'r1' };
};

const base: AuditEntry = { ts: 1_700_000_000_123, type: 'x509-svid.issued', decision: 'allow', actor: 'spiffe://example.org/ns/a/sa/b', subject: 'spiffe://example.org/ns/a/sa/b', requestId: 'req-1', replica: 'r1' };

/** Undoes §6.3.3 escaping: '\' followed by '"', '\' or ']' stands for that character; any other '\' is itself. */
function unescape(v: string): string {
  return v.replace(/\\(["\\\]])/g, '$1');
}

/** Parses one SD-ELEMENT the way a receiver would: PARAM-VALUE ends at the first unescaped '"'. */
function parseSd(sd: string): { id: string; params: Record<string, string>; rest: string } {
  expect(sd[0]).toBe('[');
  let i = 1;
  let id = '';
  while (sd[i] !== ' ' && sd[i] !== ']') id += sd[i++];
  const params: Record<string, string> = {};
  while (sd[i] === ' ') {
    i++;
    let name = '';
    while (sd[i] !== '=') name += sd[i++];
    expect(name).toMatch(/^[\x21-\x7e]{1,32}$/);
    expect(name).not.toMatch(/[= \]"]/);
    i++;
    expect(sd[i++]).toBe('"');
    let raw = '';
    while (sd[i] !== '"') {
      if (sd[i] === '\\' && i + 1 < sd.length) raw += sd[i++];
      raw += sd[i++];
      if (i >= sd.length) throw new Error('unterminated PARAM-VALUE');
    }
    i++;
    params[name] = unescape(raw);
  }
  expect(sd[i]).toBe(']');
  return { id, params, rest: sd.slice(i + 1) };
}

describe('RFC 5424 formatting', () => {
  it('escapes ", \\ and ] in PARAM-VALUEs so any value survives a receiver\'s parse (property)', () => {
    fc.assert(
      fc.property(fc.string({ unit: fc.constantFrom('"', '\\', ']', '[', '=', ' ', 'a', 'é', '\u2028', '}') }), fc.string(), (tricky, any) => {
        for (const v of [tricky, any]) {
          const escaped = escapeParamValue(v);
          expect(unescape(escaped)).toBe(v);
          // No unescaped '"' or ']' is left to end the value or the element early.
          expect(/(^|[^\\])(\\\\)*["\]]/.test(escaped)).toBe(false);
        }
        const r = record({ ...base, actor: tricky, subject: any, requestId: `${tricky}]"\\` });
        const { id, params, rest } = parseSd(structuredData(r));
        expect(id).toBe(SD_ID);
        expect(rest).toBe('');
        expect(params.actor).toBe(tricky);
        expect(params.subject).toBe(any);
        expect(params.requestId).toBe(`${tricky}]"\\`);
        expect(params.index).toBe('7');
      }),
    );
  });

  it('PRIVAL = facility × 8 + severity, always within 0..191; facilities out of range are refused', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 23 }), fc.constantFrom<(0 | 1 | 2 | 3 | 4 | 5 | 6 | 7)[]>(0, 1, 2, 3, 4, 5, 6, 7), (f, s) => {
        const p = prival(f, s);
        expect(p).toBe(f * 8 + s);
        expect(p).toBeGreaterThanOrEqual(0);
        expect(p).toBeLessThanOrEqual(191);
      }),
    );
    expect(() => prival(24, 6)).toThrow(RangeError);
    expect(() => prival(-1, 6)).toThrow(RangeError);
    // Severity follows the entry: allow info, deny warning, break-glass crit.
    const h = { facility: 4, hostname: 'h', appName: 'tessera', procId: '1' };
    expect(formatSyslog(record(base), h).startsWith('<38>1 ')).toBe(true);
    expect(formatSyslog(record({ ...base, type: 'denial', decision: 'deny' }), h).startsWith('<36>1 ')).toBe(true);
    expect(formatSyslog(record({ ...base, type: 'break-glass', severity: 'critical' }), h).startsWith('<34>1 ')).toBe(true);
  });

  it('header fields are PRINTUSASCII within their maximum lengths, "-" when empty (property)', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 400 }), fc.string({ maxLength: 100 }), fc.integer({ min: 0, max: 10_000 }), (host, app, pid) => {
        const r = record(base);
        const line = formatSyslog(r, { facility: 16, hostname: host, appName: app, procId: String(pid) });
        const m = /^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (\[.*)$/s.exec(line);
        expect(m).not.toBeNull();
        const [, pri, ts, hostname, appName, procId, msgId, tail] = m as unknown as string[];
        expect(Number(pri)).toBe(16 * 8 + 6);
        expect(ts).toBe('2023-11-14T22:13:20.123Z');
        expect(hostname?.length).toBeLessThanOrEqual(255);
        expect(appName?.length).toBeLessThanOrEqual(48);
        expect(procId?.length).toBeLessThanOrEqual(128);
        expect(msgId).toBe('x509-svid.issued');
        for (const f of [hostname, appName, procId]) expect(f).toMatch(/^[\x21-\x7e]+$/);
        // After the SD element: one space, then the record JSON, which verifies against the leaf hash.
        const { rest } = parseSd(tail as string);
        expect(rest[0]).toBe(' ');
        const rec = JSON.parse(rest.slice(1)) as { index: number; leafHash: string; entry: unknown };
        expect(rec.index).toBe(7);
        expect(leafHash(canonicalJson(rec.entry)).toString('base64')).toBe(rec.leafHash);
      }),
      { numRuns: 200 },
    );
    expect(headerField('', 48)).toBe('-');
    expect(headerField('a b\u00e9', 48)).toBe('a_b_');
  });

  it('octet counting frames carry the byte length of the UTF-8 message, and split back exactly (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.string({ unit: 'grapheme', maxLength: 60 }), { minLength: 1, maxLength: 10 }), (actors) => {
        const frames = actors.map((a, i) => octetCounted(formatSyslog(record({ ...base, actor: a }, i), { facility: 4, hostname: 'h', appName: 'tessera', procId: '1' })));
        const stream = Buffer.concat(frames);
        const out: string[] = [];
        for (let off = 0; off < stream.length; ) {
          const sp = stream.indexOf(0x20, off);
          const len = Number(stream.toString('ascii', off, sp));
          expect(String(len)).toMatch(/^[1-9]\d*$/);
          out.push(stream.toString('utf8', sp + 1, sp + 1 + len));
          off = sp + 1 + len;
        }
        expect(out).toHaveLength(actors.length);
        out.forEach((m, i) => expect(parseSd(m.slice(m.indexOf('['))).params.actor).toBe(actors[i]));
      }),
      { numRuns: 100 },
    );
  });

  it('a record embeds the stored bytes verbatim; bytes that are not a canonical entry travel as base64', () => {
    const r = record(base, 3);
    const line = recordJson(r);
    const parsed = JSON.parse(line) as { entry: unknown };
    expect(canonicalJson(parsed.entry)).toEqual(r.bytes);
    expect(line).not.toContain('\n');
    const junk = Buffer.from('{"a":1}\n{"b":2}');
    expect(canonicalEntry(junk)).toBeUndefined();
    const bad: ShipRecord = { index: 4, bytes: junk, leafHash: leafHash(junk).toString('base64'), replicaId: 'r1' };
    const out = JSON.parse(recordJson(bad)) as { entryBase64: string };
    expect(Buffer.from(out.entryBase64, 'base64')).toEqual(junk);
    expect(formatSyslog(bad, { facility: 4, hostname: 'h', appName: 't', procId: '1' })).toMatch(/^<35>1 - h t 1 damaged-entry \[/);
  });
});
