import { createHash, generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  ed25519PrivateKeyFromSeed,
  formatCheckpoint,
  formatVerifierKey,
  keyId,
  NoteSigner,
  openCheckpoint,
  openNote,
  parseCheckpoint,
  parseNote,
  parseVerifierKey,
  parseVerifierKeyFile,
  signCheckpoint,
} from './note.js';

// The reference vector of golang.org/x/mod/sumdb/note (note_test.go), which every C2SP signed-note
// implementation reproduces: Ed25519 is deterministic, so signing TEXT with this seed must give SIG
// byte for byte.
const GO_VKEY = 'PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW';
const GO_SKEY = 'PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz';
const GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const GO_SIG = '— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n';
const GO_NOTE = `${GO_TEXT}\n${GO_SIG}`;

function goSigner(): NoteSigner {
  const blob = Buffer.from(GO_SKEY.slice('PRIVATE+KEY+PeterNeumann+c74f20a3+'.length), 'base64');
  expect(blob[0]).toBe(0x01);
  return new NoteSigner('PeterNeumann', ed25519PrivateKeyFromSeed(blob.subarray(1)));
}

describe('signed notes: Go reference vector', () => {
  it('parses the verifier key and its key ID matches the spec formula', () => {
    const v = parseVerifierKey(GO_VKEY);
    expect(v.name).toBe('PeterNeumann');
    // The spec's rule, computed here independently of keyId().
    const h = createHash('sha256').update('PeterNeumann\n').update(Buffer.from([0x01])).update(v.rawPublicKey).digest();
    expect(h.subarray(0, 4).toString('hex')).toBe('c74f20a3');
    expect(keyId('PeterNeumann', v.rawPublicKey)).toBe(0xc74f20a3);
  });

  it('reproduces the published signature byte for byte, and the verifier key', async () => {
    const signer = goSigner();
    expect(await signer.sign(GO_TEXT)).toBe(GO_NOTE);
    expect(signer.verifierKey).toBe(GO_VKEY);
    expect(formatVerifierKey('PeterNeumann', signer.publicKey)).toBe(GO_VKEY);
  });

  it('opens the published note and rejects any change to it', () => {
    const v = parseVerifierKey(GO_VKEY);
    expect(openNote(GO_NOTE, v)).toBe(GO_TEXT);
    expect(() => openNote(GO_NOTE.replace('cryptography', 'cryptographY'), v)).toThrow(/does not verify/);
    // Flip one bit of the signature itself.
    const parsed = parseNote(GO_NOTE);
    const sig = parsed.signatures[0]!;
    const blob = Buffer.concat([Buffer.from([0xc7, 0x4f, 0x20, 0xa3]), sig.signature]);
    blob[10] = (blob[10] as number) ^ 1;
    expect(() => openNote(`${GO_TEXT}\n— PeterNeumann ${blob.toString('base64')}\n`, v)).toThrow(/does not verify/);
  });

  it('ignores signatures from unknown keys, and needs one from the known key', async () => {
    const v = parseVerifierKey(GO_VKEY);
    const other = new NoteSigner('example.org/other', generateKeyPairSync('ed25519').privateKey);
    const both = `${GO_TEXT}\n${await other.signatureLine(GO_TEXT)}${GO_SIG}`;
    expect(openNote(both, v)).toBe(GO_TEXT);
    const fromOther = await other.sign(GO_TEXT);
    expect(() => openNote(fromOther, v)).toThrow(/no signature from the audit key/);
    // Same name, different key (so a different key ID): unknown, ignored.
    const impostor = new NoteSigner('PeterNeumann', generateKeyPairSync('ed25519').privateKey);
    const fromImpostor = await impostor.sign(GO_TEXT);
    expect(() => openNote(fromImpostor, v)).toThrow(/no signature/);
  });

  it('refuses mangled verifier keys', () => {
    for (const bad of [
      GO_VKEY.slice(0, -1),
      GO_VKEY.replace('c74f20a3', 'c74f20a4'),
      GO_VKEY.replace('c74f20a3', 'C74F20A3'),
      GO_VKEY.replace('PeterNeumann', 'PeterNeumanm'),
      GO_VKEY.replace('+ARpc', '+AhpC'),
      `${GO_VKEY}+extra`,
      'PeterNeumann+c74f20a3',
      'Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW',
    ]) {
      expect(() => parseVerifierKey(bad), bad).toThrow();
    }
  });

  it('refuses malformed notes', () => {
    for (const bad of [
      GO_TEXT,
      `${GO_TEXT}\n`,
      `${GO_TEXT}\n${GO_SIG.slice(0, -1)}`,
      `${GO_TEXT}\n${GO_SIG.replace('— ', '-- ')}`,
      `${GO_TEXT}\n${GO_SIG.replace('— PeterNeumann ', '— PeterNeumann  ')}`,
      `${GO_TEXT}\n${GO_SIG.replace('=\n', '\n')}`,
      `${GO_TEXT.replace('\n', '\t\n')}\n${GO_SIG}`,
    ]) {
      expect(() => openNote(bad, parseVerifierKey(GO_VKEY)), JSON.stringify(bad)).toThrow();
    }
  });
});

describe('tlog checkpoints', () => {
  const root = createHash('sha256').update('x').digest();

  it('parses the example from c2sp.org/tlog-checkpoint', () => {
    const note =
      'example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n' +
      '— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n';
    const { text, signatures } = parseNote(note);
    expect(signatures).toHaveLength(1);
    expect(signatures[0]?.name).toBe('example.com/behind-the-sofa');
    const cp = parseCheckpoint(text);
    expect(cp).toMatchObject({ origin: 'example.com/behind-the-sofa', size: 20852163, extensions: [] });
    expect(cp.rootHash.toString('base64')).toBe('CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=');
  });

  it('signs and opens a checkpoint; the key name is the origin', async () => {
    const signer = new NoteSigner('example.org/tessera/audit', generateKeyPairSync('ed25519').privateKey);
    const cp = await signCheckpoint(signer, 42, root);
    expect(cp.note).toBe(`example.org/tessera/audit\n42\n${root.toString('base64')}\n\n${await signer.signatureLine(formatCheckpoint({ origin: 'example.org/tessera/audit', size: 42, rootHash: root }))}`);
    const opened = openCheckpoint(cp.note, parseVerifierKey(signer.verifierKey));
    expect(opened.size).toBe(42);
    expect(opened.rootHash.equals(root)).toBe(true);
    // A PEM public key works too: the key ID must then match the line's name.
    const pem = signer.publicKey.export({ type: 'spki', format: 'pem' }).toString();
    expect(openCheckpoint(cp.note, parseVerifierKeyFile(pem)).size).toBe(42);
    const forged = cp.note.replace('\n42\n', '\n43\n');
    expect(() => openCheckpoint(forged, parseVerifierKeyFile(pem))).toThrow(/does not verify/);
  });

  it.each([
    ['leading zero', 'o\n042\nROOT\n'],
    ['negative', 'o\n-1\nROOT\n'],
    ['not a number', 'o\nabc\nROOT\n'],
    ['short root', `o\n1\n${Buffer.alloc(31).toString('base64')}\n`],
    ['missing root', 'o\n1\n'],
    ['empty extension', 'o\n1\nROOT\n\n'],
    ['no final newline', 'o\n1\nROOT'],
  ])('refuses a body with %s', (_name, body) => {
    expect(() => parseCheckpoint(body.replace('ROOT', root.toString('base64')))).toThrow();
  });

  it('accepts size 0 and rejects origins that cannot be key names', () => {
    expect(parseCheckpoint(`o\n0\n${root.toString('base64')}\n`).size).toBe(0);
    expect(() => formatCheckpoint({ origin: 'a b', size: 1, rootHash: root })).toThrow();
    expect(() => formatCheckpoint({ origin: 'a+b', size: 1, rootHash: root })).toThrow();
  });
});
