/**
 * mTLS attestation: the caller's identity is the SPIFFE ID in the X.509-SVID it presented during the
 * TLS handshake. The TLS layer has already verified the chain against our trust bundle (requestCert with
 * `ca` = our roots); this module checks what TLS does not: the leaf is not a CA, it carries exactly one
 * URI SAN, and that URI is a SPIFFE ID in our trust domain. The result is computed once per connection.
 */
import type { TLSSocket } from 'node:tls';
import { BrokerError } from '../errors.js';
import { parseSpiffeId } from '../spiffe/id.js';
import type { Identity } from './identity.js';

const DEFAULT_PATH = /^\/ns\/([a-zA-Z0-9._-]+)\/sa\/([a-zA-Z0-9._-]+)$/;

/** What one TLS connection proved: nothing (no certificate), an identity, or a rejected certificate. */
export type PeerResult =
  | { readonly kind: 'none' }
  | { readonly kind: 'identity'; readonly identity: Identity }
  | { readonly kind: 'rejected'; readonly error: BrokerError };

function reject(message: string): PeerResult {
  return { kind: 'rejected', error: new BrokerError('invalid_client_certificate', 401, message) };
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

export class MtlsAttestor {
  private readonly cache = new WeakMap<TLSSocket, PeerResult>();

  constructor(private readonly trustDomain: string) {}

  /** Resolves (and caches for the connection's life) what the peer of `socket` proved. */
  peer(socket: TLSSocket): PeerResult {
    let result = this.cache.get(socket);
    if (result === undefined) {
      result = this.evaluate(socket);
      this.cache.set(socket, result);
    }
    return result;
  }

  private evaluate(socket: TLSSocket): PeerResult {
    const cert = socket.getPeerX509Certificate();
    if (cert === undefined) return { kind: 'none' };
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
          credentialExpiresAt: Date.parse(cert.validTo),
        },
      },
    };
  }
}
