/**
 * X.509-SVID minting from a request: take the subject key (verify the workload's CSR, or make a key
 * for it), mint the leaf and sign it. This is the CPU-heavy half of an issuance (~200 µs: OpenSSL 3's
 * EC key import, the CSR signature check and the CA signature), so the broker runs it on minting
 * threads (minter-pool.ts) and keeps the event loop for TLS, attestation and the audit log. The same
 * function, `mintX509Svid`, runs in those threads and inline, so both give the same answers and errors.
 */
import { createHash, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { BrokerError } from '../errors.js';
import type { CertificateAuthority, X509SvidResult } from './authority.js';
import { spkiOf, verifyCsrPem } from './csr.js';

export type ServerKeyType = 'ec-p256';

/** Where the certified key comes from: the workload's CSR (PEM), or a key the broker makes. */
export type SubjectKeySource = { readonly csrPem: string } | { readonly generate: ServerKeyType };

export interface X509MintRequest {
  readonly key: SubjectKeySource;
  readonly spiffeId: string;
  readonly dnsNames: readonly string[];
  readonly ttlMs: number;
  readonly now: number;
}

export interface X509Minted extends X509SvidResult {
  /** `sha256:<hex>` of the certified SubjectPublicKeyInfo (what the audit entry records). */
  readonly keyFingerprint: string;
  /** PKCS#8 PEM of a broker-made key; absent for a CSR. */
  readonly privateKeyPem?: string;
}

/** What the caller knows about the load when it asks for a job (idle-inline-minter.ts). */
export interface MintHint {
  /** No other issuance is in flight in this process: a hop to a minting thread would only add latency. */
  readonly alone: boolean;
}

export interface X509Minter {
  mint(req: X509MintRequest, hint?: MintHint): Promise<X509Minted>;
  /** Mints with `ca` from now on (CA rotation); jobs already handed out finish with the one they had. */
  setAuthority(ca: CertificateAuthority): void;
  close(): Promise<void>;
}

function checkKeyType(kind: string): void {
  if (kind !== 'ec-p256') throw new BrokerError('internal', `unsupported server key kind ${kind}`);
}

function minted(ca: CertificateAuthority, req: X509MintRequest, publicKey: KeyObject, privateKeyPem?: string): X509Minted {
  const svid = ca.issueX509Svid({ spiffeId: req.spiffeId, dnsNames: req.dnsNames, publicKey, ttlMs: req.ttlMs, now: req.now });
  return {
    ...svid,
    keyFingerprint: `sha256:${createHash('sha256').update(spkiOf(publicKey)).digest('hex')}`,
    ...(privateKeyPem !== undefined ? { privateKeyPem } : {}),
  };
}

/**
 * The whole minting step, what a minting thread runs for each job. CPU-bound throughout: the only
 * await is WebCrypto's key import, which does its work before its promise settles.
 */
export async function mintX509Svid(ca: CertificateAuthority, req: X509MintRequest): Promise<X509Minted> {
  if ('csrPem' in req.key) return minted(ca, req, (await verifyCsrPem(req.key.csrPem)).publicKey);
  checkKeyType(req.key.generate);
  const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return minted(ca, req, pair.publicKey, pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString());
}

/**
 * Mints on the event loop (config `ca.threads: 0`), for single-core machines and for tests that want
 * no threads.
 */
export class InlineMinter implements X509Minter {
  constructor(private ca: CertificateAuthority) {}

  setAuthority(ca: CertificateAuthority): void {
    this.ca = ca;
  }

  async mint(req: X509MintRequest): Promise<X509Minted> {
    if ('csrPem' in req.key) return mintX509Svid(this.ca, req);
    // Key generation goes to libuv's pool instead of blocking the event loop.
    const made = await this.ca.generateServerKey(req.key.generate);
    return minted(this.ca, req, made.publicKey, made.privateKeyPem);
  }

  async close(): Promise<void> {}
}
