import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { openssl } from '../../test/helpers/openssl.js';
import { parseCsrPem } from '../ca/csr.js';
import { csrFor, newKeyAndCsr } from './csr.js';

describe('newKeyAndCsr', () => {
  it('makes a P-256 CSR that openssl verifies and the broker parses to the same public key', async () => {
    const { privateKey, privateKeyPem, csrPem } = await newKeyAndCsr();
    const r = openssl(['req', '-noout', '-verify', '-text'], csrPem);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout + r.stderr).toMatch(/verify OK/);
    expect(r.stdout).toMatch(/prime256v1|P-256/);
    const parsed = parseCsrPem(csrPem);
    expect(parsed.keyKind).toBe('ec-p256');
    const ours = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
    expect(parsed.spki.equals(ours)).toBe(true);
    expect(privateKeyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
  });

  it('uses a fresh key every time', async () => {
    const [a, b] = await Promise.all([newKeyAndCsr(), newKeyAndCsr()]);
    expect(a.privateKeyPem).not.toBe(b.privateKeyPem);
    expect(a.csrPem).not.toBe(b.csrPem);
  });

  it('signs with the key it carries: a CSR signed by another key is refused', () => {
    const mine = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    expect(parseCsrPem(csrFor(mine.privateKey, mine.publicKey)).keyKind).toBe('ec-p256');
    expect(() => parseCsrPem(csrFor(other.privateKey, mine.publicKey))).toThrow(/signature/i);
  });
});
