/**
 * Development PKI: a P-256 root (10 years, pathLen 1), an intermediate that signs SVIDs (1 year,
 * pathLen 0), the trust bundle, and the broker's own TLS serving SVID. Files are created only when
 * missing (existing ones are reused and checked for consistency); keys are written 0600.
 * For local use only: the root key sits next to everything else.
 */
import { generateKeyPair, X509Certificate, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { BrokerError } from '../errors.js';
import { CertificateAuthority } from '../ca/authority.js';
import { issuerFromPem, mintCa } from '../ca/x509.js';

export interface DevPkiPaths {
  readonly dir: string;
  readonly rootCertFile: string;
  readonly rootKeyFile: string;
  readonly intermediateCertFile: string;
  readonly intermediateKeyFile: string;
  /** The trust bundle (root certificate). */
  readonly bundleFile: string;
  /** Broker TLS chain: serving leaf then intermediate. */
  readonly serverCertFile: string;
  readonly serverKeyFile: string;
}

const generateKeyPairAsync = promisify(generateKeyPair);
const DAY_MS = 86_400_000;
const BACKDATE_MS = 60_000;

const internal = (message: string, cause?: unknown): BrokerError =>
  new BrokerError('internal', message, cause === undefined ? undefined : { cause });

export function devPkiPaths(dir: string): DevPkiPaths {
  const f = (name: string): string => path.join(dir, name);
  return {
    dir,
    rootCertFile: f('root.pem'),
    rootKeyFile: f('root.key'),
    intermediateCertFile: f('intermediate.pem'),
    intermediateKeyFile: f('intermediate.key'),
    bundleFile: f('bundle.pem'),
    serverCertFile: f('server.pem'),
    serverKeyFile: f('server.key'),
  };
}

/** True when every dev PKI file is present (contents are not checked). */
export function devPkiExists(dir: string): boolean {
  const { dir: _dir, ...files } = devPkiPaths(dir);
  return Object.values(files).every((file) => existsSync(file));
}

function addYears(ms: number, years: number): Date {
  const d = new Date(ms);
  d.setUTCFullYear(d.getUTCFullYear() + years);
  return d;
}

async function newP256(): Promise<{ publicKey: KeyObject; privateKey: KeyObject; keyPem: string }> {
  const { publicKey, privateKey } = await generateKeyPairAsync('ec', { namedCurve: 'P-256' });
  return { publicKey, privateKey, keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

/** Loads a cert/key pair, or returns undefined when neither exists; half a pair is an error. */
async function loadPair(certFile: string, keyFile: string): Promise<{ certPem: string; keyPem: string } | undefined> {
  const haveCert = existsSync(certFile);
  const haveKey = existsSync(keyFile);
  if (!haveCert && !haveKey) return undefined;
  if (haveCert !== haveKey) {
    throw internal(`dev PKI is incomplete: ${haveCert ? keyFile : certFile} is missing; delete ${path.dirname(certFile)} to regenerate`);
  }
  return { certPem: await readFile(certFile, 'utf8'), keyPem: await readFile(keyFile, 'utf8') };
}

// 'wx' never overwrites: a concurrent generator or a stray file surfaces as an error.
const writeKey = (file: string, pem: string): Promise<void> => writeFile(file, pem, { mode: 0o600, flag: 'wx' });
const writeCert = (file: string, pem: string): Promise<void> => writeFile(file, pem, { mode: 0o644, flag: 'wx' });

function checkTrustDomain(certPem: string, trustDomain: string, file: string): void {
  const san = new X509Certificate(certPem).subjectAltName ?? '';
  if (!san.split(', ').includes(`URI:spiffe://${trustDomain}`)) {
    throw internal(`existing ${file} is not for trust domain "${trustDomain}"; delete the dev PKI directory to regenerate`);
  }
}

export async function generateDevPki(
  dir: string,
  opts: { trustDomain: string; serverDnsNames?: string[]; serverIps?: string[] },
): Promise<DevPkiPaths> {
  const paths = devPkiPaths(dir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const now = Date.now();
  const td = opts.trustDomain;

  let root = await loadPair(paths.rootCertFile, paths.rootKeyFile);
  if (root === undefined) {
    const key = await newP256();
    const cert = mintCa(
      {
        commonName: 'Tessera Dev Root CA',
        trustDomain: td,
        subjectPublicKey: key.publicKey,
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: addYears(now, 10),
        pathLen: 1,
      },
      { selfSignedKey: key.privateKey },
    );
    await writeKey(paths.rootKeyFile, key.keyPem);
    await writeCert(paths.rootCertFile, cert.pem);
    root = { certPem: cert.pem, keyPem: key.keyPem };
  } else {
    checkTrustDomain(root.certPem, td, paths.rootCertFile);
  }
  const rootIssuer = issuerFromPem(root.certPem, root.keyPem);

  let intermediate = await loadPair(paths.intermediateCertFile, paths.intermediateKeyFile);
  if (intermediate === undefined) {
    const key = await newP256();
    const cert = mintCa(
      {
        commonName: 'Tessera Dev Intermediate CA',
        trustDomain: td,
        subjectPublicKey: key.publicKey,
        notBefore: new Date(now - BACKDATE_MS),
        notAfter: addYears(now, 1),
        pathLen: 0,
      },
      rootIssuer,
    );
    await writeKey(paths.intermediateKeyFile, key.keyPem);
    await writeCert(paths.intermediateCertFile, cert.pem);
    intermediate = { certPem: cert.pem, keyPem: key.keyPem };
  } else {
    checkTrustDomain(intermediate.certPem, td, paths.intermediateCertFile);
  }
  // Also proves an existing intermediate really chains to the (possibly existing) root.
  const ca = CertificateAuthority.fromPem({ certPem: intermediate.certPem, keyPem: intermediate.keyPem, rootsPem: root.certPem });

  if (!existsSync(paths.bundleFile)) await writeCert(paths.bundleFile, ca.rootsPem);

  if ((await loadPair(paths.serverCertFile, paths.serverKeyFile)) === undefined) {
    const key = await ca.generateServerKey('ec-p256');
    const svid = ca.issueX509Svid({
      spiffeId: `spiffe://${td}/tessera/broker`,
      dnsNames: opts.serverDnsNames ?? ['localhost'],
      ipAddresses: opts.serverIps ?? ['127.0.0.1', '::1'],
      publicKey: key.publicKey,
      ttlMs: 365 * DAY_MS, // capped by the intermediate's notAfter inside issueX509Svid
      now,
    });
    await writeKey(paths.serverKeyFile, key.privateKeyPem);
    await writeCert(paths.serverCertFile, svid.chainPem.join(''));
  }
  return paths;
}
