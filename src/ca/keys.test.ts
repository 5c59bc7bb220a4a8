/**
 * The one place that picks a key's backend: file keys and token keys open as Signers, and every key
 * that does not fit its use is a ConfigError naming the setting (token cases against real SoftHSM2).
 */
import { generateKeyPairSync, verify } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken, removeTokens, softhsmMissing, softhsmRequiredUnderCi, type TestToken } from '../../test/helpers/softhsm.js';
import type { AuditConfig, CaConfig } from '../config/config.js';
import { ConfigError } from '../config/load.js';
import { generateDevPki } from '../dev/pki.js';
import { keyRef, openAuditSigner, openCertificateAuthority, openJwtSigner, openSigner } from './keys.js';

const dir = mkdtempSync(path.join(tmpdir(), 'tessera-keys-'));

describe('openSigner and keyRef', () => {
  it('opens a PEM file as a local signer', async () => {
    const file = path.join(dir, 'k.pem');
    writeFileSync(file, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    const { signer, close } = await openSigner({ file }, 'config.x.keyFile');
    const sig = await signer.sign(Buffer.from('a'));
    expect(signer.algorithm).toBe('ES256');
    expect(verify('sha256', Buffer.from('a'), signer.publicKey, sig)).toBe(true);
    close();
  });

  it('names the setting when a key cannot be opened', async () => {
    await expect(openSigner({ file: path.join(dir, 'absent.pem') }, 'config.x.keyFile')).rejects.toThrow(/^config\.x\.keyFile: cannot load the private key in .*absent\.pem/);
    const ref = { module: path.join(dir, 'no-such-module.so'), tokenLabel: 't', pinFile: path.join(dir, 'pin'), keyLabel: 'k', sessions: 4 };
    writeFileSync(ref.pinFile, '1234\n', { mode: 0o600 });
    await expect(openSigner({ pkcs11: ref }, 'config.ca.pkcs11')).rejects.toThrow(/^config\.ca\.pkcs11: cannot load PKCS#11 module .*no-such-module\.so: /);
    await expect(openSigner({ pkcs11: ref }, 'config.ca.pkcs11')).rejects.toBeInstanceOf(ConfigError);
    expect(() => keyRef(undefined, undefined, 'config.ca.keyFile')).toThrow('config.ca.keyFile: no key configured');
  });
});

const missing = softhsmMissing();
softhsmRequiredUnderCi();

describe.skipIf(missing !== undefined)('token keys that do not fit their use', () => {
  let token: TestToken;
  let pki: string;
  beforeAll(async () => {
    token = createToken('keys-unit');
    token.generate('p256', 'EC:prime256v1');
    token.generate('ed', 'EC:edwards25519');
    pki = path.join(dir, 'pki');
    await generateDevPki(pki, { trustDomain: 'example.org' });
  });
  afterAll(() => {
    token?.remove();
    removeTokens();
  });

  const ca = (over: Partial<CaConfig>): CaConfig => ({ certFile: path.join(pki, 'intermediate.pem'), bundleFile: path.join(pki, 'root.pem'), threads: 0, expiryWarningSeconds: [], ...over });

  it('refuses an Ed25519 JWT key and a P-256 audit key, naming the setting', async () => {
    await expect(openJwtSigner(ca({ jwtPkcs11: { ...token.pkcs11('ed'), sessions: 1 } }))).rejects.toThrow(
      'config.ca.jwtPkcs11: the JWT-SVID signing key must be an EC P-256 key',
    );
    const audit = { origin: 'example.org/tessera/audit', signingPkcs11: { ...token.pkcs11('p256'), sessions: 1 } } as unknown as AuditConfig;
    await expect(openAuditSigner(audit)).rejects.toThrow('config.audit.signingPkcs11: the audit signing key must be an Ed25519 private key');
    const ok = await openAuditSigner({ ...audit, signingPkcs11: { ...token.pkcs11('ed'), sessions: 1 } });
    expect(ok.signer.verifierKey).toMatch(/^example\.org\/tessera\/audit\+[0-9a-f]{8}\+/);
    ok.close();
  });

  it('refuses a CA certificate that does not certify the token key', async () => {
    // The dev intermediate certifies a file key, not the token's.
    await expect(openCertificateAuthority(ca({ pkcs11: { ...token.pkcs11('p256'), sessions: 1 } }))).rejects.toThrow(
      'config.ca.pkcs11: issuer private key does not match the issuer certificate',
    );
  });
});

describe('AuthorityKeys (CA rotation) without touching a token', () => {
  const token = { module: '/nonexistent/libpkcs11.so', tokenLabel: 't', pinFile: '/nonexistent/pin', keyLabel: 'ca-1', sessions: 1 };

  it('makes PEM keys where no token is configured', async () => {
    const { AuthorityKeys } = await import('./keys.js');
    const key = await new AuthorityKeys({ x509: token }).make('jwt', 'next-00');
    if (!('pem' in key)) throw new Error('expected a PEM');
    expect(key.pem).toMatch(/^-----BEGIN PRIVATE KEY-----/);
  });

  it('never destroys the configured pair, a label it did not generate, or a key of a kind without a token', async () => {
    const { AuthorityKeys } = await import('./keys.js');
    const keys = new AuthorityKeys({ x509: token });
    // Each answer comes before any PKCS#11 call (the module path does not exist).
    expect(await keys.destroy('x509', 'ca-1')).toBe(false);
    expect(await keys.destroy('x509', 'ca-10.next-00')).toBe(false);
    expect(await keys.destroy('x509', 'other')).toBe(false);
    expect(await keys.destroy('jwt', 'ca-1.next-00')).toBe(false);
    await expect(keys.destroy('x509', 'ca-1.next-00')).rejects.toThrow(/^config\.ca\.pkcs11: /);
  });

  it('refuses a stored token key when the config has no token for it, naming the setting', async () => {
    const { AuthorityKeys } = await import('./keys.js');
    const keys = new AuthorityKeys({ x509: token });
    await expect(keys.open('jwt', { token: { keyLabel: 'jwt-1.next-00' } })).rejects.toThrow(
      'config.ca.jwtPkcs11: the CA state names a key pair "jwt-1.next-00" in a PKCS#11 token, but config.ca.jwtPkcs11 is not configured',
    );
    await expect(keys.open('jwt', { token: { keyLabel: 'x' } })).rejects.toBeInstanceOf(ConfigError);
    expect(await keys.open('x509', { pem: 'PEM' })).toEqual({ pem: 'PEM' });
  });
});
