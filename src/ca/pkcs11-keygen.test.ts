/**
 * Key pairs generated inside a real SoftHSM2 token (test/helpers/softhsm.ts): what the token says about
 * them (read with pkcs11-tool, not with Tessera's code), reuse of the pair a crashed step left behind,
 * half a pair made whole, and destruction.
 */
import { spawnSync } from 'node:child_process';
import { verify } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken, removeTokens, softhsmMissing, softhsmRequiredUnderCi, USER_PIN, type TestToken } from '../../test/helpers/softhsm.js';
import { countKeyObjects, destroyKeyPair, generateOrReuseKeyPair } from './pkcs11-keygen.js';

const missing = softhsmMissing();
softhsmRequiredUnderCi();

describe.skipIf(missing !== undefined)('generateOrReuseKeyPair in a SoftHSM2 token', () => {
  let token: TestToken;
  beforeAll(() => {
    token = createToken('keygen');
  });
  afterAll(() => {
    token?.remove();
    removeTokens();
  });

  /** pkcs11-tool's listing of the objects labelled `label` (it lists them all; the blocks are picked here). */
  const listed = (label: string): string => {
    const r = spawnSync('pkcs11-tool', ['--module', token.module, '--token-label', token.label, '--login', '--pin', USER_PIN, '--list-objects'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const blocks = r.stdout.split(/\n(?=\S)/);
    return blocks.filter((b) => b.includes(`label:      ${label}\n`)).join('\n');
  };

  it('makes a sensitive, never-extractable EC P-256 pair that signs, and reuses it when asked again', async () => {
    const ref = token.pkcs11('ca.next-0011223344556677');
    const first = await generateOrReuseKeyPair(ref);
    try {
      expect(first.created).toBe(true);
      expect(first.signer.algorithm).toBe('ES256');
      const data = Buffer.from('to be signed');
      expect(verify('sha256', data, first.signer.publicKey, await first.signer.sign(data))).toBe(true);
    } finally {
      first.signer.close();
    }
    const text = listed(ref.keyLabel);
    expect(text).toMatch(/Private Key Object; EC/);
    expect(text).toMatch(/Public Key Object; EC {2}EC_POINT 256 bits/);
    expect(text).toMatch(/Access:\s+sensitive, always sensitive, never extractable/);
    expect(text).toMatch(/Usage:\s+sign\n/);
    expect(text).toMatch(/Usage:\s+verify\n/);
    // Both halves carry the same CKA_ID.
    const ids = [...text.matchAll(/ID:\s+([0-9a-f]+)/g)].map((m) => m[1]);
    expect(ids).toHaveLength(2);
    expect(ids[0]).toBe(ids[1]);

    const again = await generateOrReuseKeyPair(ref);
    try {
      expect(again.created).toBe(false);
      expect(again.signer.publicKey.export({ format: 'jwk' })).toEqual(first.signer.publicKey.export({ format: 'jwk' }));
    } finally {
      again.signer.close();
    }
    expect(await countKeyObjects(ref)).toEqual({ privateKeys: 1, publicKeys: 1 });
  });

  it('destroys a pair, and reports 0 objects for a label that is not there', async () => {
    const ref = token.pkcs11('jwt.next-aa');
    (await generateOrReuseKeyPair(ref)).signer.close();
    expect(await countKeyObjects(ref)).toEqual({ privateKeys: 1, publicKeys: 1 });
    expect(await destroyKeyPair(ref)).toBe(2);
    expect(await countKeyObjects(ref)).toEqual({ privateKeys: 0, publicKeys: 0 });
    expect(await destroyKeyPair(ref)).toBe(0);
    expect(listed(ref.keyLabel)).not.toMatch(/Key Object/);
  });

  it('replaces half a pair (a crash inside generation) by a whole one', async () => {
    const ref = token.pkcs11('half');
    token.generate('half', 'EC:prime256v1');
    const r = spawnSync('pkcs11-tool', ['--module', token.module, '--token-label', token.label, '--login', '--pin', USER_PIN, '--delete-object', '--type', 'pubkey', '--label', 'half'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(await countKeyObjects(ref)).toEqual({ privateKeys: 1, publicKeys: 0 });
    const made = await generateOrReuseKeyPair(ref);
    made.signer.close();
    expect(made.created).toBe(true);
    expect(await countKeyObjects(ref)).toEqual({ privateKeys: 1, publicKeys: 1 });
  });

  it('refuses a pair under the label that can leave the token, or that is not P-256, and leaves it alone', async () => {
    token.generate('foreign', 'EC:prime256v1', { extractable: true });
    await expect(generateOrReuseKeyPair(token.pkcs11('foreign'))).rejects.toThrow(/can leave the token/);
    expect(await countKeyObjects(token.pkcs11('foreign'))).toEqual({ privateKeys: 1, publicKeys: 1 });
    token.generate('p384', 'EC:secp384r1');
    await expect(generateOrReuseKeyPair(token.pkcs11('p384'))).rejects.toThrow('the key pair labelled "p384" in token "keygen" is not EC P-256, so Tessera did not make it: remove it by hand');
    expect(await countKeyObjects(token.pkcs11('p384'))).toEqual({ privateKeys: 1, publicKeys: 1 });
  });
});
