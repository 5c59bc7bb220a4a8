/**
 * Certificates as the SDK needs them: split PEM, read the one SPIFFE ID of an SVID, and verify an
 * SVID chain against a trust bundle by hand (the TLS layer also does this; doing it here as well means
 * authorisation never depends on how a server was configured).
 */
import { X509Certificate } from 'node:crypto';
import { parseSpiffeId } from '../spiffe/id.js';
import { TesseraError } from './errors.js';

const PEM_CERT = /-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+?-----END CERTIFICATE-----/g;
/** An SVID chain longer than this is refused: leaf, intermediates, root. */
export const MAX_CHAIN_DEPTH = 8;

/** The PEM certificate blocks of a string, each normalised to end in a newline. */
export function splitPem(pem: string): string[] {
  return [...pem.matchAll(PEM_CERT)].map((m) => `${m[0]}\n`);
}

/** Parses every certificate in `pem`; throws if there is none or one does not parse. */
export function parsePemCertificates(pem: string, what: string): X509Certificate[] {
  const blocks = splitPem(pem);
  if (blocks.length === 0) throw new TesseraError('bad_response', `${what} holds no PEM certificate`);
  return blocks.map((b) => {
    try {
      return new X509Certificate(b);
    } catch (err) {
      throw new TesseraError('bad_response', `${what} holds a certificate that does not parse`, { cause: err });
    }
  });
}

const rejected = (message: string): TesseraError => new TesseraError('peer_rejected', message);

/** URI SANs from Node's "URI:a, DNS:b" text; undefined when a value is quoted (never valid for SPIFFE). */
export function uriSans(cert: X509Certificate): string[] | undefined {
  const text = cert.subjectAltName;
  if (text === undefined || text === '') return [];
  const uris: string[] = [];
  for (const part of text.split(', ')) {
    if (part.startsWith('URI:"')) return undefined;
    if (part.startsWith('URI:')) uris.push(part.slice(4));
  }
  return uris;
}

/** The SPIFFE ID of an X.509-SVID: exactly one URI SAN, a valid workload SPIFFE ID. */
export function spiffeIdOf(cert: X509Certificate): string {
  const uris = uriSans(cert);
  if (uris === undefined || uris.length !== 1) throw rejected('an X.509-SVID carries exactly one URI SAN');
  const uri = uris[0] as string;
  let path: string;
  try {
    path = parseSpiffeId(uri).path;
  } catch {
    throw rejected('the URI SAN is not a valid SPIFFE ID');
  }
  if (path === '') throw rejected('the certificate carries a trust-domain ID, not a workload ID');
  return uri;
}

function checkTime(cert: X509Certificate, now: number, what: string): void {
  const from = Date.parse(cert.validFrom);
  const to = Date.parse(cert.validTo);
  if (!(from <= now)) throw rejected(`${what} is not valid yet`);
  if (!(now <= to)) throw rejected(`${what} has expired`);
}

function issuedBy(child: X509Certificate, parent: X509Certificate): boolean {
  try {
    return child.checkIssued(parent) && child.verify(parent.publicKey);
  } catch {
    return false;
  }
}

/** Walks from `leaf` through `intermediates` (CAs, each in its validity window) to one of `roots`; throws peer_rejected. */
export function walkChain(leaf: X509Certificate, intermediates: readonly X509Certificate[], roots: readonly X509Certificate[], now: number): void {
  let current = leaf;
  for (let depth = 0; ; depth++) {
    if (depth >= MAX_CHAIN_DEPTH) throw rejected('the certificate chain is too long');
    const root = roots.find((r) => issuedBy(current, r));
    if (root !== undefined) {
      checkTime(root, now, 'the trust bundle root');
      return;
    }
    const next = intermediates.find((c) => c !== current && c.ca && issuedBy(current, c));
    if (next === undefined) throw rejected('the certificate does not chain to the trust bundle');
    checkTime(next, now, 'an intermediate certificate');
    current = next;
  }
}

export interface VerifiedSvid {
  readonly spiffeId: string;
  readonly serial: string;
  readonly expiresAt: Date;
}

/**
 * Verifies `leaf` (with the presented `intermediates`) up to one of `roots` at time `now`: every
 * signature, every validity window, CA-ness of every issuer, a leaf that is not a CA, one SPIFFE ID,
 * and — when `allowed` is given — that the ID is on the allow-list (exact match).
 */
export function verifySvid(opts: {
  readonly leaf: X509Certificate;
  readonly intermediates?: readonly X509Certificate[];
  readonly roots: readonly X509Certificate[];
  readonly now?: number;
  readonly allowed?: ReadonlySet<string>;
}): VerifiedSvid {
  const now = opts.now ?? Date.now();
  const { leaf, roots } = opts;
  const intermediates = opts.intermediates ?? [];
  if (leaf.ca) throw rejected('the peer certificate is a CA certificate, not an SVID');
  const spiffeId = spiffeIdOf(leaf);
  checkTime(leaf, now, 'the peer certificate');
  walkChain(leaf, intermediates, roots, now);
  if (opts.allowed !== undefined && !opts.allowed.has(spiffeId)) {
    throw rejected(`SPIFFE ID ${spiffeId} is not allowed`);
  }
  return { spiffeId, serial: leaf.serialNumber.toLowerCase(), expiresAt: new Date(Date.parse(leaf.validTo)) };
}

/** Validates an allow-list of SPIFFE IDs (each must parse) into a set. */
export function allowList(ids: readonly string[], what: string): ReadonlySet<string> {
  // JavaScript callers can pass anything: check the shape, not only the declared type.
  const given: unknown = ids;
  if (!Array.isArray(given) || given.length === 0) throw new TypeError(`${what}: give at least one SPIFFE ID`);
  for (const id of given as unknown[]) {
    try {
      if (typeof id !== 'string') throw new TypeError('not a string');
      parseSpiffeId(id);
    } catch {
      throw new TypeError(`${what}: ${JSON.stringify(id)} is not a valid SPIFFE ID`);
    }
  }
  return new Set(ids);
}

/** Trust bundles keyed by trust domain name (example.org → its X.509 authorities). */
export type BundleSet = ReadonlyMap<string, readonly X509Certificate[]>;

/**
 * Verifies an SVID against the bundle of the PEER's own trust domain only (the trust domain of its one
 * URI SAN): a partner.test SVID is checked against partner.test's authorities and nothing else, so a key
 * of one trust domain never vouches for an ID of another. No bundle for that trust domain: refused.
 */
export function verifySvidInTrustDomain(opts: {
  readonly leaf: X509Certificate;
  readonly intermediates?: readonly X509Certificate[];
  readonly bundles: BundleSet;
  readonly now?: number;
  readonly allowed?: ReadonlySet<string>;
}): VerifiedSvid {
  const trustDomain = parseSpiffeId(spiffeIdOf(opts.leaf)).trustDomain;
  const roots = opts.bundles.get(trustDomain);
  if (roots === undefined || roots.length === 0) throw rejected(`no trust bundle for trust domain ${trustDomain} (not this workload's, nor federated with it)`);
  return verifySvid({ ...opts, roots });
}
