/**
 * Development stand-in for a cluster's service account issuer: an RS256 key on disk and tokens
 * shaped like Kubernetes projected service account tokens, so `npm start` and `tessera dev token`
 * exercise the same verification path as production. Never trust this issuer outside development.
 */
import { createPrivateKey, createPublicKey, generateKeyPair, randomInt, randomUUID } from 'node:crypto';
import { link, mkdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { calculateJwkThumbprint, importPKCS8, SignJWT, type JWK } from 'jose';
import { BrokerError } from '../errors.js';
import { isDnsLabel, isDnsSubdomain } from '../attest/k8s-token.js';

/** Looks like an in-cluster issuer so configs written against it carry over. */
export const DEV_ISSUER = 'https://kubernetes.default.svc.cluster.local';
export const DEV_AUDIENCE = 'tessera';
export const DEV_KEY_FILE = 'dev-issuer.key';
export const DEV_JWKS_FILE = 'dev-issuer.jwks.json';
export const DEFAULT_DEV_TOKEN_TTL_SECONDS = 3600;

const generateKeyPairAsync = promisify(generateKeyPair);

export interface DevIssuerFiles {
  keyFile: string;
  jwksFile: string;
  kid: string;
}

export interface MintDevTokenOptions {
  keyFile: string;
  namespace: string;
  serviceAccount: string;
  podName?: string;
  audience?: string;
  issuer?: string;
  ttlSeconds?: number;
  /** Current time in ms since the epoch (the broker's Clock unit); defaults to Date.now(). */
  now?: number;
}

function isErrno(err: unknown, code: string): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === code;
}

/** Public RSA JWK of a PKCS#8 PEM private key, with its RFC 7638 thumbprint as kid. */
async function publicJwkOf(privatePem: string): Promise<{ jwk: JWK; kid: string }> {
  const exported = createPublicKey(createPrivateKey(privatePem)).export({ format: 'jwk' });
  if (exported.kty !== 'RSA' || typeof exported.n !== 'string' || typeof exported.e !== 'string') {
    throw new Error('dev issuer key is not an RSA key');
  }
  const jwk: JWK = { kty: 'RSA', n: exported.n, e: exported.e };
  return { jwk, kid: await calculateJwkThumbprint(jwk, 'sha256') };
}

/**
 * Creates `dev-issuer.key` (RSA 2048, PKCS#8 PEM, mode 0600) in `dir` if it is missing, and
 * writes `dev-issuer.jwks.json` when it is missing or does not carry the key (derived file).
 */
export async function ensureDevIssuer(dir: string): Promise<DevIssuerFiles> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const keyFile = path.join(dir, DEV_KEY_FILE);
  const jwksFile = path.join(dir, DEV_JWKS_FILE);

  let pem: string;
  try {
    pem = await readFile(keyFile, 'utf8');
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
    const { privateKey } = await generateKeyPairAsync('rsa', { modulusLength: 2048 });
    pem = privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    // Write a private temp file, then link(): the key appears complete or not at all, and link
    // never overwrites, so a concurrent start that won the race keeps its key.
    const tmp = `${keyFile}.${process.pid}.${randomUUID()}.tmp`;
    await writeFile(tmp, pem, { mode: 0o600, flag: 'wx' });
    try {
      await link(tmp, keyFile);
    } catch (linkErr) {
      if (!isErrno(linkErr, 'EEXIST')) throw linkErr;
      pem = await readFile(keyFile, 'utf8');
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
  }

  const { jwk, kid } = await publicJwkOf(pem);
  if (!(await jwksHasKid(jwksFile, kid))) {
    const document = { keys: [{ ...jwk, kid, alg: 'RS256', use: 'sig' }] };
    // Write-then-rename so a reader never sees a half-written JWKS.
    const tmp = `${jwksFile}.${process.pid}.${randomUUID()}.tmp`;
    await writeFile(tmp, `${JSON.stringify(document, null, 2)}\n`, { mode: 0o644 });
    await rename(tmp, jwksFile);
  }
  return { keyFile, jwksFile, kid };
}

async function jwksHasKid(jwksFile: string, kid: string): Promise<boolean> {
  try {
    const document: unknown = JSON.parse(await readFile(jwksFile, 'utf8'));
    if (typeof document !== 'object' || document === null) return false;
    const keys: unknown = (document as { keys?: unknown }).keys;
    return Array.isArray(keys) && keys.some((k: unknown) => typeof k === 'object' && k !== null && (k as { kid?: unknown }).kid === kid);
  } catch {
    return false;
  }
}

/** Kubernetes' pod-name suffix alphabet (no vowels, no look-alikes). */
const SUFFIX_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789';

function randomSuffix(length: number): string {
  let out = '';
  for (let i = 0; i < length; i += 1) out += SUFFIX_ALPHABET[randomInt(SUFFIX_ALPHABET.length)] ?? 'x';
  return out;
}

/** Mints a token shaped like a projected service account token, signed by the dev issuer key. */
export async function mintDevToken(opts: MintDevTokenOptions): Promise<string> {
  const { namespace, serviceAccount } = opts;
  if (!isDnsLabel(namespace)) throw new BrokerError('bad_request', 'namespace must be a DNS label (lowercase a-z, 0-9, "-")');
  if (!isDnsSubdomain(serviceAccount)) {
    throw new BrokerError('bad_request', 'service account must be a DNS subdomain (lowercase a-z, 0-9, "-", ".")');
  }
  const podName = opts.podName ?? `${serviceAccount.slice(0, 240).replace(/[.-]+$/, '')}-${randomSuffix(5)}`;
  if (!isDnsSubdomain(podName)) throw new BrokerError('bad_request', 'pod name must be a DNS subdomain');
  const ttl = opts.ttlSeconds ?? DEFAULT_DEV_TOKEN_TTL_SECONDS;
  if (!Number.isInteger(ttl) || ttl <= 0) throw new BrokerError('bad_request', 'ttlSeconds must be a positive integer');

  const pem = await readFile(opts.keyFile, 'utf8');
  const { kid } = await publicJwkOf(pem);
  const key = await importPKCS8(pem, 'RS256');
  const now = Math.floor((opts.now ?? Date.now()) / 1000);

  return new SignJWT({
    'kubernetes.io': {
      namespace,
      serviceaccount: { name: serviceAccount, uid: randomUUID() },
      pod: { name: podName, uid: randomUUID() },
    },
  })
    .setProtectedHeader({ alg: 'RS256', kid, typ: 'JWT' })
    .setIssuer(opts.issuer ?? DEV_ISSUER)
    .setSubject(`system:serviceaccount:${namespace}:${serviceAccount}`)
    .setAudience([opts.audience ?? DEV_AUDIENCE])
    .setIssuedAt(now)
    .setNotBefore(now)
    .setExpirationTime(now + ttl)
    .setJti(randomUUID())
    .sign(key);
}
