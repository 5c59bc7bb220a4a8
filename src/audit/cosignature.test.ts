import { createHash, verify } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  Cosigner,
  cosignatureMessage,
  generateCosignerKey,
  parseCosignerKey,
  parseCosignerSecretKey,
  SIG_TYPE_COSIGNATURE_V1,
  verifyCosignatures,
} from './cosignature.js';
import { ed25519PrivateKeyFromSeed, NoteSigner, parseNote, parseVerifierKey, signCheckpoint } from './note.js';

// Published vectors (transparency-dev/formats note/note_cosigv1_test.go): a native type-0x04 verifier
// key of a running witness, and a cosignature whose timestamp is 1727964367.
const REMORA_VKEY = 'remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2';
const TS_SIG = 'ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA==';
// golang.org/x/mod/sumdb/note's reference key (type 0x01 skey), which transparency-dev also accepts for cosigning.
const GO_SKEY = 'PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz';
const GO_VKEY = 'PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW';

const seed = (n: number): Buffer => Buffer.alloc(32, n);
const TEXT = 'example.org/tessera/audit\n3\nf+7CoKgXKE/tNys9TTXcr/ad6U/K3xvznmzew9y6SP0=\n';

describe('cosignature keys', () => {
  it('parses a published type-0x04 verifier key; its key ID follows the spec formula', () => {
    const k = parseCosignerKey(REMORA_VKEY);
    expect(k.name).toBe('remora.n621.de');
    const h = createHash('sha256').update('remora.n621.de\n').update(Buffer.from([0x04])).update(k.rawPublicKey).digest();
    expect(h.subarray(0, 4).toString('hex')).toBe('da77ade7');
    expect(k.keyId).toBe(0xda77ade7);
  });

  it('refuses a note (type 0x01) key as a witness key, and a 0x04 key as a log key', () => {
    expect(() => parseCosignerKey(GO_VKEY)).toThrow(/type 0x04/);
    expect(() => parseVerifierKey(REMORA_VKEY)).toThrow(/type 0x01/);
    expect(() => parseCosignerKey(REMORA_VKEY.replace('da77ade7', 'da77ade8'))).toThrow(/key ID/);
  });

  it('reads the timestamp of a published cosignature (big-endian after the key ID)', () => {
    expect(Buffer.from(TS_SIG, 'base64').readBigUInt64BE(4)).toBe(1727964367n);
  });

  it('loads a Go type-0x01 skey as the same Ed25519 key, signing with the 0x04 key ID', () => {
    const c = parseCosignerSecretKey(GO_SKEY);
    expect(c.name).toBe('PeterNeumann');
    expect(c.key.rawPublicKey.equals(parseVerifierKey(GO_VKEY).rawPublicKey)).toBe(true);
    expect(c.verifierKey.split('+')[1]).not.toBe('c74f20a3');
    expect(() => parseCosignerSecretKey(GO_SKEY.replace('c74f20a3', '00000000'))).toThrow(/key ID/);
    expect(() => parseCosignerSecretKey('PRIVATE+KEY+x')).toThrow();
  });

  it('keygen: the secret key loads back to the printed verifier key', () => {
    const { skey, vkey } = generateCosignerKey('witness.example/w1');
    expect(skey.startsWith('PRIVATE+KEY+witness.example/w1+')).toBe(true);
    expect(parseCosignerSecretKey(skey).verifierKey).toBe(vkey);
    expect(Buffer.from(vkey.split('+')[2] as string, 'base64')[0]).toBe(SIG_TYPE_COSIGNATURE_V1);
    expect(() => generateCosignerKey('has space')).toThrow();
  });
});

describe('cosign and verify', () => {
  const w1 = new Cosigner('w1.example', ed25519PrivateKeyFromSeed(seed(1)));
  const w2 = new Cosigner('w2.example', ed25519PrivateKeyFromSeed(seed(2)));

  it('signs "cosignature/v1\\ntime <t>\\n" ‖ text, with key ID ‖ u64 timestamp ‖ signature', () => {
    const line = w1.cosign(TEXT, 1679315147);
    const blob = Buffer.from(line.trim().split(' ')[2] as string, 'base64');
    expect(blob.length).toBe(76);
    expect(blob.readUInt32BE(0)).toBe(w1.keyId);
    expect(blob.readBigUInt64BE(4)).toBe(1679315147n);
    const msg = Buffer.from(`cosignature/v1\ntime 1679315147\n${TEXT}`);
    expect(cosignatureMessage(TEXT, 1679315147).equals(msg)).toBe(true);
    expect(verify(null, msg, w1.publicKey, blob.subarray(12))).toBe(true);
  });

  it('verifies a note with a log signature and two cosignatures (note-style: unknown lines ignored)', async () => {
    const log = new NoteSigner('example.org/tessera/audit', ed25519PrivateKeyFromSeed(seed(9)));
    const cp = await signCheckpoint(log, 3, Buffer.alloc(32, 7));
    const text = parseNote(cp.note).text;
    const note = cp.note + w1.cosign(text, 100) + w2.cosign(text, 200);
    expect(verifyCosignatures(note, [w1.key, w2.key])).toEqual([
      { name: 'w1.example', timestamp: 100 },
      { name: 'w2.example', timestamp: 200 },
    ]);
    expect(verifyCosignatures(note, [w2.key])).toEqual([{ name: 'w2.example', timestamp: 200 }]);
    expect(verifyCosignatures(cp.note, [w1.key])).toEqual([]);
    // A cosignature on other text (another size) does not verify: the note is refused.
    const other = text.replace('\n3\n', '\n4\n');
    expect(() => verifyCosignatures(cp.note + w1.cosign(other, 100), [w1.key])).toThrow(/does not verify/);
    // A changed timestamp breaks it too.
    const line = w1.cosign(text, 100);
    const blob = Buffer.from(line.trim().split(' ')[2] as string, 'base64');
    blob.writeBigUInt64BE(101n, 4);
    expect(() => verifyCosignatures(`${cp.note}— w1.example ${blob.toString('base64')}\n`, [w1.key])).toThrow(/does not verify/);
    expect(() => verifyCosignatures(note, [w1.key], { maxTimestamp: 99 })).toThrow(/future/);
  });

  it('a note signature (type 0x01) by the same key is not a cosignature', async () => {
    const asLog = new NoteSigner('w1.example', ed25519PrivateKeyFromSeed(seed(1)));
    const note = await asLog.sign(TEXT);
    // Same name, different key ID (0x01 vs 0x04): ignored, not accepted.
    expect(verifyCosignatures(note, [w1.key])).toEqual([]);
  });
});
