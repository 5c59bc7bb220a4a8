import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatAddCheckpoint, MAX_REQUEST_BYTES, parseAddCheckpoint, WitnessRefusal } from './request.js';

// The example request body of c2sp.org/tlog-witness (two signature lines by the log).
const SPEC_EXAMPLE = `old 20852014
PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=
jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=
5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=
/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=

example.com/behind-the-sofa
20852163
CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=
— example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks+49/V6267UEjw6QUXTS5Rovnzv++qbSzm9Q=
`;

const status = (body: string | Buffer): number => {
  try {
    parseAddCheckpoint(Buffer.from(body));
    return 200;
  } catch (err) {
    if (err instanceof WitnessRefusal) return err.status;
    throw err;
  }
};

const NOTE = 'log.example\n5\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n— log.example Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n';
const H = 'PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=';

describe('add-checkpoint request body', () => {
  it("parses the spec's example", () => {
    const r = parseAddCheckpoint(Buffer.from(SPEC_EXAMPLE));
    expect(r.oldSize).toBe(20852014);
    expect(r.proof.map((h) => h.toString('base64'))).toEqual(SPEC_EXAMPLE.split('\n').slice(1, 5));
    expect(r.checkpoint).toMatchObject({ origin: 'example.com/behind-the-sofa', size: 20852163 });
    expect(r.parsed.signatures).toHaveLength(2);
    expect(r.note).toBe(SPEC_EXAMPLE.slice(SPEC_EXAMPLE.indexOf('example.com')));
    expect(formatAddCheckpoint(r.oldSize, r.proof, r.note)).toBe(SPEC_EXAMPLE);
  });

  it.each([
    ['no old line', NOTE],
    ['leading zero', `old 05\n\n${NOTE}`],
    ['negative', `old -1\n\n${NOTE}`],
    ['two spaces', `old  5\n\n${NOTE}`],
    ['CRLF', `old 5\r\n\r\n${NOTE}`],
    ['no blank line', `old 5\n${NOTE}`],
    ['short hash', `old 5\n${H.slice(4)}\n\n${NOTE}`],
    ['non-canonical base64', `old 5\n${H.slice(0, -2)}x=\n\n${NOTE}`],
    ['64 proof lines', `old 5\n${`${H}\n`.repeat(64)}\n${NOTE}`],
    ['unsigned checkpoint', 'old 0\n\nlog.example\n5\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n'],
    ['checkpoint without size', 'old 0\n\nlog.example\n\n— log.example AAAAAAAA\n'],
    ['size beyond 2^53', `old 0\n\n${NOTE.replace('\n5\n', '\n99999999999999999\n')}`],
    ['empty', ''],
  ])('refuses %s with 400', (_what, body) => {
    expect(status(body)).toBe(400);
  });

  it('accepts 63 proof lines and size 0', () => {
    expect(parseAddCheckpoint(Buffer.from(`old 5\n${`${H}\n`.repeat(63)}\n${NOTE}`)).proof).toHaveLength(63);
    expect(parseAddCheckpoint(Buffer.from(`old 0\n\n${NOTE}`)).oldSize).toBe(0);
  });

  it('refuses an oversized body with 413 before parsing it', () => {
    expect(status(Buffer.alloc(MAX_REQUEST_BYTES + 1, 0x41))).toBe(413);
  });

  it('property: any bytes give a parse or a 400/413, never another error', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
        expect([200, 400, 413]).toContain(status(Buffer.from(bytes)));
      }),
      { numRuns: 2000 },
    );
  });

  it('property: mutations of a valid body give a parse or a 400, never a throw of another kind', () => {
    const valid = Buffer.from(`old 3\n${H}\n${H}\n\n${NOTE}`);
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(valid.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }), (edits) => {
        const b = Buffer.from(valid);
        for (const [i, v] of edits) b[i] = v;
        const s = status(b);
        expect([200, 400]).toContain(s);
        if (s === 200) {
          // What parses round-trips exactly: nothing was silently dropped.
          const r = parseAddCheckpoint(b);
          expect(Buffer.from(formatAddCheckpoint(r.oldSize, r.proof, r.note)).equals(b)).toBe(true);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('property: well-formed bodies parse to what was sent', () => {
    fc.assert(
      fc.property(fc.nat({ max: 2 ** 40 }), fc.array(fc.uint8Array({ minLength: 32, maxLength: 32 }), { maxLength: 63 }), (old, hashes) => {
        const r = parseAddCheckpoint(Buffer.from(formatAddCheckpoint(old, hashes, NOTE)));
        expect(r.oldSize).toBe(old);
        expect(r.proof.map((h) => h.toString('hex'))).toEqual(hashes.map((h) => Buffer.from(h).toString('hex')));
      }),
      { numRuns: 300 },
    );
  });
});
