/**
 * Config for brokers that rotate their CA (config `ca.rotation`) on the shared dev material: the first
 * signing CA is minted from the dev root (throwaway keys in a temp folder) with a short life, so a
 * whole rotation takes under a minute.
 */
import { generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { issuerFromPem, mintCa } from '../../src/ca/x509.js';
import { devMaterial, materialConfig } from './broker.js';
import type { TestToken } from './softhsm.js';

const S = 1000;
const temps: string[] = [];

/** Removes the folders rotatingConfig made (call in afterAll). */
export function cleanRotationTemps(): void {
  for (const d of temps.splice(0)) rmSync(d, { recursive: true, force: true });
}

/**
 * Config for a rotating broker whose first signing CA (minted from the dev root) began `agoS` seconds
 * ago and ends `lifeS` seconds from now. With `token`, the CA and JWT-SVID keys are pairs generated in
 * it (labels `ca` and `jwt`: ca.pkcs11 / ca.jwtPkcs11) instead of files.
 */
export async function rotatingConfig(
  lifeS: number,
  extra: Record<string, unknown> = {},
  agoS = 1,
  token?: TestToken,
): Promise<{ config: Record<string, unknown>; firstCa: X509Certificate }> {
  const { dir: pkiDir, material } = await devMaterial();
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-rotation-ca-'));
  temps.push(dir);
  const base = materialConfig(pkiDir, material) as unknown as { ca: Record<string, unknown> };
  const { keyFile: _keyFile, jwtKeyFile, ...common } = base.ca;
  let publicKey: KeyObject;
  let keys: Record<string, unknown>;
  if (token === undefined) {
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    writeFileSync(path.join(dir, 'ca.key'), key.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), { mode: 0o600 });
    publicKey = key.publicKey;
    keys = { keyFile: path.join(dir, 'ca.key'), jwtKeyFile };
  } else {
    publicKey = token.generate('ca', 'EC:prime256v1');
    token.generate('jwt', 'EC:prime256v1');
    keys = { pkcs11: { ...token.pkcs11('ca'), sessions: 2 }, jwtPkcs11: { ...token.pkcs11('jwt'), sessions: 2 } };
  }
  const now = Date.now();
  const cert = mintCa(
    { commonName: 'Short CA', trustDomain: 'example.org', subjectPublicKey: publicKey, notBefore: new Date(now - agoS * S), notAfter: new Date(now + lifeS * S), pathLen: 0 },
    issuerFromPem(readFileSync(path.join(pkiDir, 'root.pem'), 'utf8'), readFileSync(path.join(pkiDir, 'root.key'), 'utf8')),
  );
  writeFileSync(path.join(dir, 'ca.pem'), cert.pem);
  return {
    firstCa: new X509Certificate(cert.pem),
    config: {
      ca: {
        ...common,
        certFile: path.join(dir, 'ca.pem'),
        ...keys,
        threads: 2,
        rotation: { rootKeyFile: path.join(pkiDir, 'root.key'), caTtlSeconds: 300, pollIntervalMs: 200 },
      },
      svid: { x509DefaultTtlSeconds: 5, x509MaxTtlSeconds: 5, jwtDefaultTtlSeconds: 30, jwtMaxTtlSeconds: 30 },
      registration: [
        { selector: { namespace: 'shop', serviceAccount: 'web' }, jwtAudiences: ['payments'] },
        { selector: { namespace: 'payments', serviceAccount: 'api' }, jwtAudiences: [] },
      ],
      secrets: { kekFile: material.kekFile },
      // Issuance runs back to back for a minute: the per-identity limit is not what these tests measure.
      limits: { issuancesPerIdentity: 0, attemptsPerSource: 0 },
      ...extra,
    },
  };
}

