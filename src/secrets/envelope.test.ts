import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  EnvelopeError,
  KEK_BYTES,
  KeyRing,
  type Kek,
  kekIdOf,
  open,
  parseKek,
  parseSealed,
  readKekFile,
  rewrap,
  type SealedRecord,
  seal,
  serializeSealed,
  writeNewKekFile,
} from './envelope.js';

const kek = (): Kek => {
  const key = randomBytes(KEK_BYTES);
  return { id: kekIdOf(key), key };
};

const dir = mkdtempSync(path.join(tmpdir(), 'tessera-envelope-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Flips one bit of byte `at` inside a base64 field. */
function flip(b64: string, at: number): string {
  const buf = Buffer.from(b64, 'base64');
  const i = ((at % buf.length) + buf.length) % buf.length;
  buf[i] = (buf[i] as number) ^ 0x01;
  return buf.toString('base64');
}

function expectFailure(fn: () => unknown, reason: EnvelopeError['reason']): EnvelopeError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(EnvelopeError);
  expect((caught as EnvelopeError).reason).toBe(reason);
  return caught as EnvelopeError;
}

describe('envelope encryption', () => {
  const ring = KeyRing.of(kek());
  const value = Buffer.from('s3cr3t-api-key\n');

  it('round-trips, with a fresh data key and iv every time', () => {
    const a = seal(ring, value, 'db/key');
    const b = seal(ring, value, 'db/key');
    expect(open(ring, a, 'db/key')).toEqual(value);
    expect(a.kek).toBe(ring.activeId);
    expect(a.ct).not.toBe(b.ct);
    expect(a.dek).not.toBe(b.dek);
    expect(a.iv).not.toBe(b.iv);
    // Nothing of the value is visible in the stored record.
    expect(serializeSealed(a)).not.toContain('s3cr3t');
    expect(Buffer.from(a.ct, 'base64').equals(value)).toBe(false);
  });

  it.each([
    ['ciphertext', (r: SealedRecord) => ({ ...r, ct: flip(r.ct, 3) })],
    ['ciphertext (last byte)', (r: SealedRecord) => ({ ...r, ct: flip(r.ct, -1) })],
    ['tag', (r: SealedRecord) => ({ ...r, tag: flip(r.tag, 0) })],
    ['iv', (r: SealedRecord) => ({ ...r, iv: flip(r.iv, 5) })],
    ['wrapped data key', (r: SealedRecord) => ({ ...r, dek: flip(r.dek, 20) })],
    ['wrapped data key tag', (r: SealedRecord) => ({ ...r, dek: flip(r.dek, -1) })],
    ['wrapped data key iv', (r: SealedRecord) => ({ ...r, dek: flip(r.dek, 0) })],
    ['truncated ciphertext', (r: SealedRecord) => ({ ...r, ct: Buffer.from(r.ct, 'base64').subarray(1).toString('base64') })],
    ['short tag', (r: SealedRecord) => ({ ...r, tag: Buffer.from(r.tag, 'base64').subarray(4).toString('base64') })],
    ['garbage base64', (r: SealedRecord) => ({ ...r, ct: `${r.ct.slice(0, -4)}!!!!` })],
  ])('refuses a record with a modified %s (integrity)', (_what, tamper) => {
    const record = seal(ring, value, 'db/key');
    const err = expectFailure(() => open(ring, tamper(record), 'db/key'), 'integrity');
    expect(err.message).toMatch(/modified or is corrupt/);
    expect(err.message).not.toContain('s3cr3t');
  });

  it('binds the record to its name: a record copied under another name does not open', () => {
    const record = seal(ring, value, 'db/key');
    expectFailure(() => open(ring, record, 'db/other'), 'integrity');
  });

  it('refuses a record relabelled with another KEK id that is in the ring', () => {
    const older = kek();
    const ring2 = KeyRing.of(kek(), [older]);
    const record = seal(ring2, value, 'x');
    expectFailure(() => open(ring2, { ...record, kek: older.id }, 'x'), 'integrity');
  });

  it('says which KEK is missing when a record is wrapped by an unknown one', () => {
    const record = seal(ring, value, 'x');
    const err = expectFailure(() => open(KeyRing.of(kek()), record, 'x'), 'unknown-kek');
    expect(err.kekId).toBe(ring.activeId);
  });

  it('rotation re-wraps the data key only; the old KEK is then not needed', () => {
    const oldKek = kek();
    const newKek = kek();
    const oldRing = KeyRing.of(oldKek);
    const record = seal(oldRing, value, 'app/token');
    const rotated = rewrap(oldRing.withActive(newKek), record, 'app/token');
    expect(rotated.kek).toBe(newKek.id);
    expect(rotated.dek).not.toBe(record.dek);
    expect([rotated.iv, rotated.ct, rotated.tag]).toEqual([record.iv, record.ct, record.tag]);
    expect(open(KeyRing.of(newKek), rotated, 'app/token')).toEqual(value);
    expectFailure(() => open(oldRing, rotated, 'app/token'), 'unknown-kek');
    // Re-wrapping a record already under the active KEK changes nothing.
    expect(rewrap(KeyRing.of(newKek), rotated, 'app/token')).toBe(rotated);
  });

  it('refuses to re-wrap (launder) a tampered record', () => {
    const oldRing = KeyRing.of(kek());
    const record = seal(oldRing, value, 'a');
    expectFailure(() => rewrap(oldRing.withActive(kek()), { ...record, dek: flip(record.dek, 15) }, 'a'), 'integrity');
  });

  it('parses only the exact stored shape', () => {
    const record = seal(ring, value, 'n');
    expect(parseSealed(serializeSealed(record), 'n')).toEqual(record);
    for (const bad of [
      'not json',
      '[]',
      JSON.stringify({ ...record, extra: 1 }),
      JSON.stringify({ ...record, v: 2 }),
      JSON.stringify({ ...record, alg: 'A128GCM' }),
      JSON.stringify({ ...record, kek: 'kek-zz' }),
      JSON.stringify({ ...record, ct: 5 }),
    ]) {
      expectFailure(() => parseSealed(bad, 'n'), 'integrity');
    }
  });
});

describe('KEK files', () => {
  it('writes a new KEK 0600, refuses to overwrite, and reads it back with a stable id', async () => {
    const file = path.join(dir, 'a.kek');
    const made = await writeNewKekFile(file);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const read = readKekFile(file);
    expect(read.id).toBe(made.id);
    expect(read.key.equals(made.key)).toBe(true);
    expect(made.id).toMatch(/^kek-[0-9a-f]{16}$/);
    await expect(writeNewKekFile(file)).rejects.toThrow();
    expect(readFileSync(file, 'utf8').trim()).toBe(made.key.toString('base64'));
  });

  it('refuses a KEK file others can read, and malformed keys', () => {
    const file = path.join(dir, 'open.kek');
    writeFileSync(file, randomBytes(32).toString('base64'), { mode: 0o644 });
    chmodSync(file, 0o644);
    expect(() => readKekFile(file)).toThrow(/chmod 600/);
    expect(() => readKekFile(path.join(dir, 'missing.kek'))).toThrow(/ENOENT/);
    expect(() => parseKek(randomBytes(16).toString('base64'), 'k')).toThrow(/32/);
    expect(() => parseKek('not base64 at all!', 'k')).toThrow(EnvelopeError);
    expect(() => parseKek('', 'k')).toThrow(EnvelopeError);
  });
});
