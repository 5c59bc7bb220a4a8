/**
 * An https.Agent whose connections always use the client's current SVID and trust bundle.
 *
 * - A new connection takes the current `tls.SecureContext` at connect time.
 * - On rotation, idle keep-alive connections made with the old SVID are closed; a connection busy
 *   with a request finishes that request and is then closed instead of going back to the pool. No
 *   request is cut, and no request starts on an old connection after the pool has been flushed.
 * - TLS session resumption is off: a resumed session would carry the old client certificate.
 * - With `allowedServerIds`, the server is authorised by SPIFFE ID (chain re-verified against the
 *   bundle of the server's own trust domain, one URI SAN, allow-list) instead of by host name, as SPIFFE
 *   prescribes.
 */
import { X509Certificate } from 'node:crypto';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import { checkServerIdentity, type DetailedPeerCertificate, type PeerCertificate, type SecureContext } from 'node:tls';
import { type BundleSet, MAX_CHAIN_DEPTH, verifySvidInTrustDomain, walkChain } from './x509.js';

export interface CredentialSource {
  /** Current context (SVID + bundle); throws when there is none yet. */
  context(): SecureContext;
  /** Increases on every rotation. */
  generation(): number;
  /** Current trust bundles by trust domain (own and federated). */
  bundles(): BundleSet;
  /** The own trust domain's roots: a server authorised by host name must chain to these (never to a federated bundle). */
  roots(): readonly X509Certificate[];
}

/** The presented chain of a peer, leaf first, from Node's linked `issuerCertificate` objects. */
export function chainOf(cert: PeerCertificate | DetailedPeerCertificate): X509Certificate[] {
  const out: X509Certificate[] = [];
  const seen = new Set<string>();
  let c: DetailedPeerCertificate | PeerCertificate | undefined = cert;
  while (c !== undefined && c.raw !== undefined && !seen.has(c.fingerprint256) && out.length <= MAX_CHAIN_DEPTH) {
    seen.add(c.fingerprint256);
    out.push(new X509Certificate(c.raw));
    c = 'issuerCertificate' in c ? c.issuerCertificate : undefined;
  }
  return out;
}

export class RotatingAgent extends https.Agent {
  readonly #source: CredentialSource;
  readonly #allowed: ReadonlySet<string> | undefined;
  readonly #generationOf = new WeakMap<Duplex, number>();

  readonly #onDestroy: (() => void) | undefined;

  constructor(
    source: CredentialSource,
    allowedServerIds: ReadonlySet<string> | undefined,
    options: https.AgentOptions,
    onDestroy?: () => void,
  ) {
    super({ keepAlive: true, ...options, maxCachedSessions: 0 });
    this.#source = source;
    this.#allowed = allowedServerIds;
    this.#onDestroy = onDestroy;
  }

  override destroy(): void {
    super.destroy();
    this.#onDestroy?.();
  }

  override createConnection(
    options: https.RequestOptions,
    callback?: (err: Error | null, stream: Duplex) => void,
  ): Duplex | null | undefined {
    const generation = this.#source.generation();
    const allowed = this.#allowed;
    const opts: https.RequestOptions & { secureContext: SecureContext } = {
      ...options,
      secureContext: this.#source.context(),
      rejectUnauthorized: true,
      ...(allowed !== undefined
        ? {
            checkServerIdentity: (_host: string, cert: PeerCertificate): Error | undefined => {
              try {
                const [leaf, ...intermediates] = chainOf(cert);
                if (leaf === undefined) return new Error('the server presented no certificate');
                verifySvidInTrustDomain({ leaf, intermediates, bundles: this.#source.bundles(), allowed });
                return undefined;
              } catch (err) {
                return err instanceof Error ? err : new Error(String(err));
              }
            },
          }
        : {
            // By host name: the TLS context trusts federated roots too (for SPIFFE-authorised peers), so a
            // server named by host must also chain to our own trust domain's roots: a federated CA cannot
            // vouch for one of our host names.
            checkServerIdentity: (host: string, cert: PeerCertificate): Error | undefined => {
              const byName = checkServerIdentity(host, cert);
              if (byName !== undefined) return byName;
              try {
                const [leaf, ...intermediates] = chainOf(cert);
                if (leaf === undefined) return new Error('the server presented no certificate');
                walkChain(leaf, intermediates, this.#source.roots(), Date.now());
                return undefined;
              } catch (err) {
                return err instanceof Error ? err : new Error(String(err));
              }
            },
          }),
    };
    const socket = super.createConnection(opts, callback);
    if (socket) this.#generationOf.set(socket, generation);
    return socket;
  }

  /** A connection made with an older SVID is not put back in the pool. */
  override keepSocketAlive(socket: Duplex): boolean {
    if (this.#generationOf.get(socket) !== this.#source.generation()) return false;
    return (super.keepSocketAlive(socket) as unknown as boolean | undefined) !== false;
  }

  /** Closes idle pooled connections made with an older SVID (busy ones close after their request). */
  rotate(): void {
    const current = this.#source.generation();
    for (const sockets of Object.values(this.freeSockets)) {
      for (const socket of sockets ?? []) {
        if (this.#generationOf.get(socket) !== current) socket.destroy();
      }
    }
  }
}
