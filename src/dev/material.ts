/**
 * Everything `npm start` needs to run with no configuration: dev root + intermediate CA, the broker's
 * TLS certificate, the JWT-SVID signing key and a dev token issuer. Created once under certs-dev/
 * (git-ignored, keys 0600) and reused after that. Never used when a config file is given.
 */
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ensureDevAdminPki } from '../admin/pki.js';
import { NoteSigner } from '../audit/note.js';
import { writeNewKekFile } from '../secrets/envelope.js';
import { generateDevPki } from './pki.js';
import { ensureDevIssuer } from './token-issuer.js';

export interface DevMaterial {
  readonly dir: string;
  readonly bundleFile: string;
  readonly issuerKeyFile: string;
  readonly issuerJwksFile: string;
  /** Dev key-encryption key for static secrets (secrets.kek, 32 random bytes base64, 0600). */
  readonly kekFile: string;
  /** Ed25519 key that signs audit checkpoints (0600), and its public verifier key (audit.pub). */
  readonly auditKeyFile: string;
  readonly auditPubFile: string;
  /** The separate admin CA (self-signed; cert + key) and a dev admin client certificate for spiffe://<td>/admin/dev. */
  readonly adminCaCertFile: string;
  readonly adminCaKeyFile: string;
  readonly adminCertFile: string;
  readonly adminKeyFile: string;
}

export async function ensureJwtSigningKey(file: string): Promise<void> {
  if (existsSync(file)) return;
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  await writeFile(file, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
}

/**
 * The audit checkpoint signing key (Ed25519, PKCS#8 PEM, 0600) and `audit.pub` beside it: the C2SP
 * verifier key "<origin>+<key ID>+<base64 key>" that `tessera audit verify --key` reads. audit.pub is
 * derived from the key, so it is rewritten if it does not match (e.g. after a trust domain change).
 */
export async function ensureAuditSigningKey(keyFile: string, pubFile: string, origin: string): Promise<void> {
  if (!existsSync(keyFile)) {
    const { privateKey } = generateKeyPairSync('ed25519');
    await writeFile(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
  }
  const vkey = `${new NoteSigner(origin, createPrivateKey(await readFile(keyFile, 'utf8'))).verifierKey}\n`;
  const current = existsSync(pubFile) ? await readFile(pubFile, 'utf8') : undefined;
  if (current !== vkey) await writeFile(pubFile, vkey, { mode: 0o644 });
}

export async function ensureDevMaterial(dir: string, trustDomain: string): Promise<DevMaterial> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await generateDevPki(dir, { trustDomain });
  await ensureJwtSigningKey(path.join(dir, 'jwt-signing.key'));
  const issuer = await ensureDevIssuer(dir);
  const auditKeyFile = path.join(dir, 'audit-signing.key');
  const auditPubFile = path.join(dir, 'audit.pub');
  await ensureAuditSigningKey(auditKeyFile, auditPubFile, `${trustDomain}/tessera/audit`);
  const admin = await ensureDevAdminPki(dir, trustDomain);
  const kekFile = path.join(dir, 'secrets.kek');
  if (!existsSync(kekFile)) await writeNewKekFile(kekFile);
  return {
    dir,
    bundleFile: path.join(dir, 'bundle.pem'),
    issuerKeyFile: issuer.keyFile,
    issuerJwksFile: issuer.jwksFile,
    kekFile,
    auditKeyFile,
    auditPubFile,
    adminCaCertFile: admin.caCertFile,
    adminCaKeyFile: admin.caKeyFile,
    adminCertFile: admin.certFile,
    adminKeyFile: admin.keyFile,
  };
}
