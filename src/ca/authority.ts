/**
 * The broker's certificate authority: one signing CA (usually an intermediate), the intermediates
 * between it and a root, and the trust bundle. Construction verifies the whole chain so that a
 * misconfigured CA fails at startup, not on the first issuance.
 */
import { generateKeyPair, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { BrokerError } from '../errors.js';
import { keyKindOf } from './csr.js';
import { toPem } from './der.js';
import type { Signer } from './signer.js';
import { issuerFromPem, issuerFromSigner, mintLeaf, mintLeafAsync, splitPemCertificates, type IssuerMaterial, type LeafProfile, type MintedCertificate } from './x509.js';

export interface X509SvidResult {
  readonly spiffeId: string;
  readonly certPem: string;
  /** Leaf first, then intermediates up to (not including) the root. */
  readonly chainPem: readonly string[];
  readonly serialHex: string;
  /** Milliseconds since the epoch, as encoded in the certificate (whole seconds). */
  readonly notBefore: number;
  readonly notAfter: number;
}

export interface IssueX509SvidRequest {
  spiffeId: string;
  dnsNames: readonly string[];
  ipAddresses?: readonly string[];
  publicKey: KeyObject;
  ttlMs: number;
  now: number;
}

/** Backdating absorbs clock skew between the broker and relying parties. */
export const CLOCK_SKEW_BACKDATE_MS = 60_000;

// Chains longer than this are a misconfiguration (and would loop on cross-signed sets).
const MAX_CHAIN_LENGTH = 8;

const internal = (message: string, cause?: unknown): BrokerError =>
  new BrokerError('internal', message, cause === undefined ? undefined : { cause });

const generateKeyPairAsync = promisify(generateKeyPair);

function parseCerts(pem: string, what: string): X509Certificate[] {
  return splitPemCertificates(pem, what).map((der) => {
    try {
      return new X509Certificate(der);
    } catch (err) {
      throw internal(`${what} contains a malformed certificate`, err);
    }
  });
}

function issued(child: X509Certificate, parent: X509Certificate): boolean {
  return child.checkIssued(parent) && child.verify(parent.publicKey);
}

/** The PEM inputs a CertificateAuthority was built from; minting threads build their own copy from them. */
export interface CaSource {
  readonly certPem: string;
  readonly keyPem: string;
  readonly intermediatesPem?: string | undefined;
  readonly rootsPem: string;
}

export class CertificateAuthority {
  readonly rootsPem: string;
  readonly rootCertsDer: readonly Buffer[];
  readonly signingCertNotAfter: number;
  /** The signing certificate's subject key identifier (hex): names this authority in metrics and logs. */
  readonly authorityId: string;

  readonly #issuer: IssuerMaterial;
  /** PEMs of the signing cert and intermediates above it (never the root). */
  readonly #intermediatesChain: readonly string[];
  readonly #signingCertNotBefore: number;
  readonly #source: CaSource | undefined;

  private constructor(source: CaSource | undefined, issuer: IssuerMaterial, intermediatesChain: readonly string[], roots: readonly Buffer[]) {
    this.#source = source;
    this.#issuer = issuer;
    this.#intermediatesChain = intermediatesChain;
    this.rootCertsDer = roots;
    this.rootsPem = roots.map((der) => toPem('CERTIFICATE', der)).join('');
    this.signingCertNotAfter = issuer.notAfter.getTime();
    this.authorityId = issuer.subjectKeyId.toString('hex');
    this.#signingCertNotBefore = issuer.notBefore.getTime();
  }

  /**
   * Loads the signing CA and verifies: the key matches the certificate, the certificate is a CA,
   * and it chains (through `intermediatesPem`, in any order) to one of `rootsPem` by signature.
   */
  static fromPem(opts: CaSource): CertificateAuthority {
    return CertificateAuthority.#build(opts, issuerFromPem(opts.certPem, opts.keyPem));
  }

  /**
   * The same checks for a signing key behind a Signer (a PKCS#11 token): the certificate must certify
   * its public key. Such a CA mints only through issueX509SvidAsync, and has no `source` for threads.
   */
  static fromSigner(opts: Omit<CaSource, 'keyPem'>, signer: Signer): CertificateAuthority {
    return CertificateAuthority.#build(opts, issuerFromSigner(opts.certPem, signer));
  }

  static #build(opts: CaSource | Omit<CaSource, 'keyPem'>, issuer: IssuerMaterial): CertificateAuthority {
    const roots = parseCerts(opts.rootsPem, 'roots PEM');
    if (roots.length === 0) throw internal('roots PEM holds no certificate');
    for (const r of roots) if (!r.ca) throw internal('every trust-bundle root must be a CA certificate');
    const intermediates = parseCerts(opts.intermediatesPem ?? '', 'intermediates PEM');

    let current = new X509Certificate(issuer.certDer);
    const chain: X509Certificate[] = [];
    const used = new Set<X509Certificate>();
    for (;;) {
      // A signing cert that is itself a trusted root has nothing to add to the chain.
      if (!roots.some((r) => r.raw.equals(current.raw))) chain.push(current);
      if (roots.some((r) => issued(current, r))) break;
      if (chain.length >= MAX_CHAIN_LENGTH) throw internal('certificate chain too long');
      const parent = intermediates.find((c) => !used.has(c) && issued(current, c));
      if (parent === undefined) throw internal('signing certificate does not chain to any configured root');
      if (!parent.ca) throw internal('an intermediate in the chain is not a CA certificate');
      used.add(parent);
      current = parent;
    }
    return new CertificateAuthority(
      'keyPem' in opts ? { ...opts } : undefined,
      issuer,
      chain.map((c) => toPem('CERTIFICATE', c.raw)),
      roots.map((r) => Buffer.from(r.raw)),
    );
  }

  static fromFiles(opts: { certFile: string; keyFile: string; intermediatesFile?: string; rootsFile: string }): CertificateAuthority {
    const read = (file: string, what: string): string => {
      try {
        return readFileSync(file, 'utf8');
      } catch (err) {
        throw internal(`cannot read CA ${what} file ${file}`, err);
      }
    };
    return CertificateAuthority.fromPem({
      certPem: read(opts.certFile, 'certificate'),
      keyPem: read(opts.keyFile, 'key'),
      intermediatesPem: opts.intermediatesFile === undefined ? undefined : read(opts.intermediatesFile, 'intermediates'),
      rootsPem: read(opts.rootsFile, 'roots'),
    });
  }

  /** Milliseconds since the epoch: when the signing certificate becomes valid. */
  get signingCertNotBefore(): number {
    return this.#signingCertNotBefore;
  }

  /**
   * What this CA was loaded from (including the signing key): only for minting threads in this process.
   * Only for a local key (`localKey`): threads cannot hold a copy of a key in a PKCS#11 token.
   */
  get source(): CaSource {
    if (this.#source === undefined) throw internal('this CA key is in a PKCS#11 token: it cannot be copied to minting threads');
    return this.#source;
  }

  /** The key signs synchronously in this process (a PEM key), so minting threads can hold a copy. */
  get localKey(): boolean {
    return this.#source !== undefined;
  }

  /**
   * Mints an X509-SVID. Validity: [now − 60 s, now + ttl], never starting before or ending after the
   * signing certificate. Key strength is enforced again here (weak_key) as a last line of defence.
   */
  issueX509Svid(req: IssueX509SvidRequest): X509SvidResult {
    const profile = this.#leafProfile(req);
    return this.#result(req, profile, mintLeaf(this.#issuer, profile));
  }

  /** issueX509Svid for any key, local or in a token: the same checks and certificate, the signature awaited. */
  async issueX509SvidAsync(req: IssueX509SvidRequest): Promise<X509SvidResult> {
    const profile = this.#leafProfile(req);
    return this.#result(req, profile, await mintLeafAsync(this.#issuer, profile));
  }

  #leafProfile(req: IssueX509SvidRequest): LeafProfile {
    if (!Number.isFinite(req.ttlMs) || req.ttlMs <= 0) throw internal('X.509-SVID TTL must be positive');
    if (!Number.isFinite(req.now)) throw internal('issuance time is not a finite number');
    keyKindOf(req.publicKey);
    // The CA's own validity is not the caller's fault, nor a bug: 503 with a message that says what to fix.
    if (req.now >= this.signingCertNotAfter) {
      throw new BrokerError('ca_expired', `the signing CA certificate expired at ${new Date(this.signingCertNotAfter).toISOString()}; no X.509-SVID can be issued until it is replaced`);
    }
    if (req.now < this.#signingCertNotBefore) {
      throw new BrokerError('ca_unavailable', `the signing CA certificate is not valid before ${new Date(this.#signingCertNotBefore).toISOString()}; check the broker's clock`);
    }
    // Whole seconds, rounded inwards, so the returned times equal what the certificate encodes.
    const notBefore = Math.ceil(Math.max(req.now - CLOCK_SKEW_BACKDATE_MS, this.#signingCertNotBefore) / 1000) * 1000;
    const notAfter = Math.floor(Math.min(req.now + req.ttlMs, this.signingCertNotAfter) / 1000) * 1000;
    if (notAfter <= notBefore) throw internal('X.509-SVID validity window is empty');
    return {
      spiffeId: req.spiffeId,
      dnsNames: req.dnsNames,
      ipAddresses: req.ipAddresses,
      subjectPublicKey: req.publicKey,
      notBefore: new Date(notBefore),
      notAfter: new Date(notAfter),
    };
  }

  #result(req: IssueX509SvidRequest, profile: LeafProfile, leaf: MintedCertificate): X509SvidResult {
    return {
      spiffeId: req.spiffeId,
      certPem: leaf.pem,
      chainPem: [leaf.pem, ...this.#intermediatesChain],
      serialHex: leaf.serialHex,
      notBefore: profile.notBefore.getTime(),
      notAfter: profile.notAfter.getTime(),
    };
  }

  /** A fresh key pair for the broker's own serving certificate. */
  async generateServerKey(kind: 'ec-p256'): Promise<{ publicKey: KeyObject; privateKeyPem: string }> {
    if (kind !== 'ec-p256') throw internal(`unsupported server key kind ${String(kind)}`);
    const { publicKey, privateKey } = await generateKeyPairAsync('ec', { namedCurve: 'P-256' });
    return { publicKey, privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
  }
}
