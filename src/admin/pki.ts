/**
 * The admin CA: a CA kept apart from the workload CA. Its roots decide who is an admin (mTLS on
 * /v1/admin/*); its key (optional) signs the short-lived admin certificates break-glass hands out.
 * Dev material: a self-signed admin CA and one admin client certificate, spiffe://<td>/admin/dev.
 */
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CertificateAuthority } from '../ca/authority.js';
import { splitPemCertificates, mintCa } from '../ca/x509.js';
import type { AdminConfig } from '../config/config.js';
import { BrokerError } from '../errors.js';

export interface AdminPki {
  /** Admin CA roots (PEM), added to the TLS server's `ca` list so admin chains verify. */
  readonly rootsPem: string;
  /** The same roots, parsed: attest/mtls.ts classifies every verified chain against them. */
  readonly roots: readonly X509Certificate[];
  /** Signs break-glass admin certificates; absent when admin.caCertFile/caKeyFile are not set. */
  readonly signer?: CertificateAuthority;
}

const internal = (message: string, cause?: unknown): BrokerError =>
  new BrokerError('internal', message, cause === undefined ? undefined : { cause });

function read(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw internal(`cannot read admin ${what} file ${file}`, err);
  }
}

/** Public keys (SPKI DER, base64) of a set of certificates: two CAs are "the same" if they share a key. */
function keyIds(certs: readonly X509Certificate[]): Set<string> {
  return new Set(certs.map((c) => c.publicKey.export({ type: 'spki', format: 'der' }).toString('base64')));
}

/**
 * Loads the admin CA from config, or undefined when no admin CA is configured. Refuses an admin CA
 * that shares a key with the workload trust anchors: then a workload SVID could pass as an admin.
 */
export function loadAdminPki(admin: AdminConfig, workloadAnchors: readonly X509Certificate[]): AdminPki | undefined {
  if (admin.caBundleFile === undefined) return undefined;
  const rootsPem = read(admin.caBundleFile, 'CA bundle');
  const roots = splitPemCertificates(rootsPem, 'admin CA bundle').map((der) => new X509Certificate(der));
  if (roots.length === 0) throw internal('admin CA bundle holds no certificate');
  for (const r of roots) if (!r.ca) throw internal('every admin CA root must be a CA certificate');
  const workloadKeys = keyIds(workloadAnchors);
  for (const k of keyIds(roots)) {
    if (workloadKeys.has(k)) throw internal('the admin CA must be separate from the workload CA (same key found in both)');
  }
  const signer =
    admin.caCertFile !== undefined && admin.caKeyFile !== undefined
      ? CertificateAuthority.fromPem({
          certPem: read(admin.caCertFile, 'CA certificate'),
          keyPem: read(admin.caKeyFile, 'CA key'),
          rootsPem,
        })
      : undefined;
  return { rootsPem: roots.map((r) => r.toString()).join(''), roots, ...(signer !== undefined ? { signer } : {}) };
}

export interface DevAdminPaths {
  readonly caCertFile: string;
  readonly caKeyFile: string;
  readonly certFile: string;
  readonly keyFile: string;
}

const YEAR_MS = 365 * 86_400_000;

/**
 * Dev only: admin-ca.pem/.key (self-signed, 10 years) and admin-dev.pem/.key, a client certificate
 * for spiffe://<td>/admin/dev (1 year). Files are created when missing (keys 0600) and never overwritten.
 */
export async function ensureDevAdminPki(dir: string, trustDomain: string): Promise<DevAdminPaths> {
  const paths: DevAdminPaths = {
    caCertFile: path.join(dir, 'admin-ca.pem'),
    caKeyFile: path.join(dir, 'admin-ca.key'),
    certFile: path.join(dir, 'admin-dev.pem'),
    keyFile: path.join(dir, 'admin-dev.key'),
  };
  const now = Date.now();
  if (!existsSync(paths.caCertFile) || !existsSync(paths.caKeyFile)) {
    if (existsSync(paths.caCertFile) !== existsSync(paths.caKeyFile)) {
      throw internal(`dev admin CA is incomplete in ${dir}; delete admin-ca.* and admin-dev.* to regenerate`);
    }
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const cert = mintCa(
      {
        commonName: 'Tessera Dev Admin CA',
        trustDomain,
        subjectPublicKey: publicKey,
        notBefore: new Date(now - 60_000),
        notAfter: new Date(now + 10 * YEAR_MS),
        pathLen: 0,
      },
      { selfSignedKey: privateKey },
    );
    await writeFile(paths.caKeyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
    await writeFile(paths.caCertFile, cert.pem, { mode: 0o644, flag: 'wx' });
  }
  if (!existsSync(paths.certFile) || !existsSync(paths.keyFile)) {
    const caPem = readFileSync(paths.caCertFile, 'utf8');
    const ca = CertificateAuthority.fromPem({ certPem: caPem, keyPem: readFileSync(paths.caKeyFile, 'utf8'), rootsPem: caPem });
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const leaf = ca.issueX509Svid({ spiffeId: `spiffe://${trustDomain}/admin/dev`, dnsNames: [], publicKey, ttlMs: YEAR_MS, now });
    await writeFile(paths.keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    await writeFile(paths.certFile, leaf.chainPem.join(''), { mode: 0o644 });
  }
  return paths;
}
