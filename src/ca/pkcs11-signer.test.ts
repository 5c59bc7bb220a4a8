/**
 * Pkcs11Signer against a real SoftHSM2 token (test/helpers/softhsm.ts): signatures that node:crypto
 * verifies with the public key pkcs11-tool reads, and every way a key can fail to open named.
 */
import { generateKeyPairSync, sign, verify } from 'node:crypto';
import { chmodSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken, removeTokens, softhsmMissing, softhsmRequiredUnderCi, type TestToken } from '../../test/helpers/softhsm.js';
import { ecdsaRawToDer, Pkcs11KeyError, Pkcs11Signer, readPinFile } from './pkcs11-signer.js';

describe('ecdsaRawToDer', () => {
  it('gives the DER node:crypto produces for the same r ‖ s', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (data) => {
        const raw = sign('sha256', data, { key: privateKey, dsaEncoding: 'ieee-p1363' });
        const der = ecdsaRawToDer(raw);
        expect(verify('sha256', data, publicKey, der)).toBe(true);
        expect(der).toEqual(derOf(raw));
      }),
      { numRuns: 50 },
    );
  });

  it('refuses an odd or empty signature', () => {
    expect(() => ecdsaRawToDer(Buffer.alloc(0))).toThrow(/malformed/);
    expect(() => ecdsaRawToDer(Buffer.alloc(63))).toThrow(/malformed/);
  });
});

/** Independent DER encoding of r ‖ s (minimal positive INTEGERs), for the comparison above. */
function derOf(raw: Buffer): Buffer {
  const int = (b: Buffer): Buffer => {
    let i = 0;
    while (i < b.length - 1 && b[i] === 0) i++;
    let v = b.subarray(i);
    if ((v[0] ?? 0) & 0x80) v = Buffer.concat([Buffer.from([0]), v]);
    return Buffer.concat([Buffer.from([0x02, v.length]), v]);
  };
  const body = Buffer.concat([int(raw.subarray(0, raw.length / 2)), int(raw.subarray(raw.length / 2))]);
  return Buffer.concat([Buffer.from([0x30, body.length]), body]);
}

describe('readPinFile', () => {
  it('refuses a PIN file readable by others, and an unreadable one, naming the file', async () => {
    const { mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-pin-'));
    const file = path.join(dir, 'pin');
    writeFileSync(file, '1234\n', { mode: 0o644 });
    chmodSync(file, 0o644);
    expect(() => readPinFile(file)).toThrow(`PIN file ${file} is readable by group or others; chmod 600 it`);
    chmodSync(file, 0o600);
    expect(readPinFile(file)).toBe('1234');
    expect(() => readPinFile(path.join(dir, 'absent'))).toThrow(/cannot read PIN file .*absent: ENOENT/);
  });
});

const missing = softhsmMissing();
softhsmRequiredUnderCi();

describe.skipIf(missing !== undefined)('Pkcs11Signer with SoftHSM2', () => {
  let token: TestToken;
  beforeAll(() => {
    token = createToken('signer-unit');
  });
  afterAll(() => {
    token?.remove();
    removeTokens();
  });

  it.each([
    ['EC:prime256v1', 'ES256', 'sha256'],
    ['EC:secp384r1', 'ES384', 'sha384'],
    ['EC:edwards25519', 'EdDSA', null],
    ['rsa:2048', 'RS256', 'sha256'],
  ] as const)('a %s key signs as %s; node:crypto verifies with the public key pkcs11-tool reads', async (type, alg, digest) => {
    const label = `k-${alg}`;
    const publicKey = token.generate(label, type);
    const signer = await Pkcs11Signer.open(token.pkcs11(label));
    try {
      expect(signer.algorithm).toBe(alg);
      expect(signer.publicKey.export({ type: 'spki', format: 'der' })).toEqual(publicKey.export({ type: 'spki', format: 'der' }));
      const data = Buffer.from(`data for ${alg}`);
      // Concurrent signatures share the session pool (more callers than sessions).
      const sigs = await Promise.all(Array.from({ length: 12 }, () => signer.sign(data)));
      for (const sig of sigs) expect(verify(digest, data, publicKey, sig)).toBe(true);
      expect(verify(digest, Buffer.from('other'), publicKey, sigs[0] as Buffer)).toBe(false);
      if (alg === 'ES256') expect((sigs[0] as Buffer)[0]).toBe(0x30); // DER, as Signer promises
    } finally {
      signer.close();
    }
  });

  it('names every reason a key cannot be opened', async () => {
    token.generate('present', 'EC:prime256v1');
    const ref = token.pkcs11('present');
    const fails = (over: Partial<typeof ref>) => Pkcs11Signer.open({ ...ref, ...over });
    await expect(fails({ module: '/nonexistent/libpkcs11.so' })).rejects.toThrow(/^cannot load PKCS#11 module \/nonexistent\/libpkcs11.so: /);
    await expect(fails({ tokenLabel: 'nope' })).rejects.toThrow(/^no token labelled "nope" in PKCS#11 module .* \(tokens present: .*"signer-unit"/);
    await expect(fails({ keyLabel: 'absent' })).rejects.toThrow('no private key labelled "absent" in token "signer-unit"');
    const wrongPin = path.join(token.dir, 'wrong.pin');
    writeFileSync(wrongPin, '999999\n', { mode: 0o600 });
    await expect(fails({ pinFile: wrongPin })).rejects.toThrow(`wrong PIN for token "signer-unit" (CKR_PIN_INCORRECT; PIN from ${wrongPin})`);
    (await fails({})).close(); // the same reference, corrected, opens
    token.generate('leaky', 'EC:prime256v1', { extractable: true });
    await expect(fails({ keyLabel: 'leaky' })).rejects.toThrow(/private key "leaky" in token "signer-unit" can leave the token/);
    token.generate('koblitz', 'EC:secp256k1');
    await expect(fails({ keyLabel: 'koblitz' })).rejects.toThrow('key "koblitz" in token "signer-unit" is on an unsupported curve; use EC P-256, P-384 or Ed25519');
    token.generate('weak', 'rsa:1024');
    await expect(fails({ keyLabel: 'weak' })).rejects.toThrow('key "weak" in token "signer-unit" is an RSA key under 2048 bits');
    await expect(fails({ keyLabel: 'absent' })).rejects.toBeInstanceOf(Pkcs11KeyError);
  });
});
