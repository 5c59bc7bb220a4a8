/**
 * mTLS attestation: the caller's identity is the SPIFFE ID in the X.509-SVID it presented during the
 * TLS handshake. The TLS layer has already verified the chain against our trust bundle (requestCert with
 * `ca` = our roots); this module checks what TLS does not: the leaf is not a CA, it carries exactly one
 * URI SAN, and that URI is a SPIFFE ID in our trust domain. What the chain proves is computed once per
 * connection; the certificate's validity window is checked against the clock on EVERY request, because a
 * kept-alive connection or a resumed TLS session outlives the certificate it was made with (OpenSSL
 * checks dates only in a full handshake).
 * When an admin CA is configured, TLS trusts its roots too, and every verified chain is classified by
 * signature: admin-CA chains become an AdminPeer (admin routes only), never a workload identity.
 */
import { X509Certificate } from 'node:crypto';
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls';
import { BrokerError } from '../errors.js';
import { parseSpiffeId } from '../spiffe/id.js';
import { systemClock, type Clock } from '../clock.js';
import type { PeerAttestor } from './attestor.js';
import type { Identity } from './identity.js';

const DEFAULT_PATH = /^\/ns\/([a-zA-Z0-9._-]+)\/sa\/([a-zA-Z0-9._-]+)$/;

/** An admin client certificate: chains to the admin CA, never a workload identity. */
export interface AdminPeer {
  readonly spiffeId: string;
  /** Lowercase hex serial of the presented certificate. */
  readonly serial: string;
  /** The certificate's notAfter; its validity window is checked by MtlsAttestor.peer on every request. */
  readonly expiresAt: number;
}

/**
 * What one TLS connection proved: nothing (no certificate), a workload identity, an admin (a chain to
 * the admin CA — only admin routes accept it), or a rejected certificate.
 */
export type PeerResult =
  | { readonly kind: 'none' }
  | { readonly kind: 'identity'; readonly identity: Identity }
  | { readonly kind: 'admin'; readonly admin: AdminPeer }
  | { readonly kind: 'rejected'; readonly error: BrokerError };

/**
 * The CA certificates a verified chain can end at. With admin roots configured the TLS layer accepts
 * chains to either CA, so every chain is classified here by signature (checkIssued + verify) against
 * these sets: `workload` (roots, and the signing CA and intermediates that issue SVIDs) and `admin`.
 */
export interface TrustAnchors {
  readonly workload: readonly X509Certificate[];
  readonly admin: readonly X509Certificate[];
}

/** Longest chain followed while classifying (leaf included). */
const MAX_CHAIN = 8;

function issuedBy(child: X509Certificate, parent: X509Certificate): boolean {
  try {
    return child.checkIssued(parent) && child.verify(parent.publicKey);
  } catch {
    return false;
  }
}

/** The certificates the peer sent (and the root OpenSSL found), from Node's issuerCertificate links. */
function presentedChain(socket: TLSSocket): X509Certificate[] {
  const out: X509Certificate[] = [];
  let node: DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
  const seen = new Set<DetailedPeerCertificate>();
  while (node !== undefined && node.raw !== undefined && !seen.has(node) && out.length < MAX_CHAIN + 2) {
    seen.add(node);
    try {
      out.push(new X509Certificate(node.raw));
    } catch {
      break;
    }
    node = node.issuerCertificate;
  }
  return out;
}

function reject(message: string): PeerResult {
  return { kind: 'rejected', error: new BrokerError('invalid_client_certificate', message) };
}

/** The URI SANs of a certificate, from Node's `subjectAltName` text ("URI:a, DNS:b"). */
export function uriSans(subjectAltName: string | undefined): string[] | undefined {
  if (subjectAltName === undefined || subjectAltName === '') return [];
  const uris: string[] = [];
  for (const part of subjectAltName.split(', ')) {
    // Node quotes values that contain separators; a SPIFFE ID never needs quoting, so quoted URIs are refused.
    if (part.startsWith('URI:"')) return undefined;
    if (part.startsWith('URI:')) uris.push(part.slice(4));
  }
  return uris;
}

/** What a connection's certificate proved, with the window in which that proof may be used. */
interface Evaluated {
  readonly result: PeerResult;
  readonly notBefore: number;
  readonly notAfter: number;
}

const NO_WINDOW = { notBefore: Number.NEGATIVE_INFINITY, notAfter: Number.POSITIVE_INFINITY };

export class MtlsAttestor implements PeerAttestor {
  private readonly cache = new WeakMap<TLSSocket, Evaluated>();

  constructor(
    private readonly trustDomain: string,
    private readonly anchors: TrustAnchors = { workload: [], admin: [] },
    private readonly clock: Clock = systemClock,
  ) {}

  /**
   * What the peer of `socket` proved, as of now: the chain checks are cached for the connection, the
   * validity window is not — an identity or admin certificate outside it is refused on this request.
   */
  async attest(socket: TLSSocket): Promise<PeerResult> {
    let evaluated = this.cache.get(socket);
    if (evaluated === undefined) {
      evaluated = this.evaluate(socket);
      this.cache.set(socket, evaluated);
    }
    const { result, notBefore, notAfter } = evaluated;
    if (result.kind !== 'identity' && result.kind !== 'admin') return result;
    const now = this.clock.now();
    if (now < notBefore) return reject(`client certificate is not valid before ${new Date(notBefore).toISOString()}`);
    if (now >= notAfter) return reject(`client certificate expired at ${new Date(notAfter).toISOString()}; present a current SVID or a token`);
    return result;
  }

  private evaluate(socket: TLSSocket): Evaluated {
    const cert = socket.getPeerX509Certificate();
    if (cert === undefined) return { result: { kind: 'none' }, ...NO_WINDOW };
    const window = { notBefore: Date.parse(cert.validFrom), notAfter: Date.parse(cert.validTo) };
    // An unparseable date never widens trust: treat it as outside every window.
    if (Number.isNaN(window.notBefore) || Number.isNaN(window.notAfter)) {
      return { result: reject('client certificate has an unreadable validity period'), ...NO_WINDOW };
    }
    return { result: this.classifyPeer(socket, cert, window.notAfter), ...window };
  }

  private classifyPeer(socket: TLSSocket, cert: X509Certificate, notAfter: number): PeerResult {
    if (!socket.authorized) {
      return reject(`client certificate was not accepted: ${String(socket.authorizationError ?? 'unknown error')}`);
    }
    if (cert.ca) return reject('client certificate is a CA certificate, not an SVID');
    const uris = uriSans(cert.subjectAltName);
    if (uris === undefined || uris.length !== 1) return reject('an X.509-SVID must carry exactly one URI SAN');
    let spiffeId;
    try {
      spiffeId = parseSpiffeId(uris[0] as string);
    } catch {
      return reject('the URI SAN of the client certificate is not a valid SPIFFE ID');
    }
    // Only with an admin CA does the TLS layer trust two CAs; then which one issued this chain decides.
    if (this.anchors.admin.length > 0) {
      const anchor = this.classify(socket, cert);
      if (anchor === undefined) return reject('client certificate does not chain to the workload CA or the admin CA');
      if (anchor === 'admin') {
        return {
          kind: 'admin',
          admin: {
            spiffeId: spiffeId.uri,
            serial: cert.serialNumber.toLowerCase(),
            expiresAt: notAfter,
          },
        };
      }
    }
    if (spiffeId.trustDomain !== this.trustDomain) {
      return reject(`client SVID belongs to trust domain ${spiffeId.trustDomain}, not ${this.trustDomain}`);
    }
    if (spiffeId.path === '') return reject('client certificate carries a trust-domain ID, not a workload ID');
    const m = DEFAULT_PATH.exec(spiffeId.path);
    return {
      kind: 'identity',
      identity: {
        spiffeId: spiffeId.uri,
        trustDomain: spiffeId.trustDomain,
        source: 'mtls',
        claims: {
          namespace: m?.[1] ?? '',
          serviceAccount: m?.[2] ?? '',
          presentedSerial: cert.serialNumber.toLowerCase(),
          credentialExpiresAt: notAfter,
        },
      },
    };
  }

  /**
   * Which CA issued the leaf: walks up from the leaf by signature, first against the known CA
   * certificates, then through the certificates the peer presented. A resumed TLS session has no
   * presented chain, which is why the signing CAs themselves are among the known certificates.
   */
  private classify(socket: TLSSocket, leaf: X509Certificate): 'workload' | 'admin' | undefined {
    let presented: X509Certificate[] | undefined;
    let current = leaf;
    for (let depth = 0; depth < MAX_CHAIN; depth++) {
      const admin = this.anchors.admin.some((a) => issuedBy(current, a));
      const workload = this.anchors.workload.some((a) => issuedBy(current, a));
      if (admin !== workload) return admin ? 'admin' : 'workload';
      if (admin && workload) return undefined; // cannot happen with separate keys; never guess
      presented ??= presentedChain(socket);
      const parent = presented.find((c) => c.ca && !c.raw.equals(current.raw) && issuedBy(current, c));
      if (parent === undefined) return undefined;
      current = parent;
    }
    return undefined;
  }
}
