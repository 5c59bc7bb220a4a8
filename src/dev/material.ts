/**
 * Everything `npm start` needs to run with no configuration: dev root + intermediate CA, the broker's
 * TLS certificate, the JWT-SVID signing key and a dev token issuer. Created once under certs-dev/
 * (git-ignored, keys 0600) and reused after that. Never used when a config file is given.
 */
import { generateKeyPairSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { generateDevPki } from './pki.js';
import { ensureDevIssuer } from './token-issuer.js';

export interface DevMaterial {
  readonly dir: string;
  readonly bundleFile: string;
  readonly issuerKeyFile: string;
  readonly issuerJwksFile: string;
}

export async function ensureJwtSigningKey(file: string): Promise<void> {
  if (existsSync(file)) return;
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  await writeFile(file, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
}

export async function ensureDevMaterial(dir: string, trustDomain: string): Promise<DevMaterial> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await generateDevPki(dir, { trustDomain });
  await ensureJwtSigningKey(path.join(dir, 'jwt-signing.key'));
  const issuer = await ensureDevIssuer(dir);
  return { dir, bundleFile: path.join(dir, 'bundle.pem'), issuerKeyFile: issuer.keyFile, issuerJwksFile: issuer.jwksFile };
}
