/**
 * The seam between the server and the ways a caller proves who it is: each attestor takes one kind of
 * evidence and says what it proves, and createAttestors() is the one place that picks them from config.
 */
import type { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { Clock } from '../clock.js';
import type { Config } from '../config/config.js';
import type { Identity } from './identity.js';
import { ServiceAccountTokenAttestor } from './k8s-token.js';
import { KubernetesApi, TokenReviewAttestor } from './k8s-tokenreview.js';
import { MtlsAttestor, type PeerResult } from './mtls.js';

export interface Attestor<Evidence, Proof> {
  /** What the evidence proves, as of now; a 4xx BrokerError when it proves nothing acceptable. */
  attest(evidence: Evidence): Promise<Proof>;
}

/** A bearer token (Kubernetes service-account token) → the workload's Identity. */
export type TokenAttestor = Attestor<string, Identity>;

/** A TLS connection → what its peer certificate proves: nothing, a workload, an admin, or a refusal. */
export type PeerAttestor = Attestor<TLSSocket, PeerResult>;

export interface Attestors {
  readonly token: TokenAttestor;
  readonly peer: PeerAttestor;
}

/**
 * The token attestor in force, replaceable on reload (new issuers, re-read JWKS files): a request
 * that has started attesting finishes with the attestor it started with.
 */
export class ReplaceableTokenAttestor implements TokenAttestor {
  constructor(private current: TokenAttestor) {}

  attest(token: string): Promise<Identity> {
    return this.current.attest(token);
  }

  /** The attestor in force. */
  get inForce(): TokenAttestor {
    return this.current;
  }

  replace(next: TokenAttestor): void {
    this.current = next;
  }
}

/**
 * The one place that picks the token attestor for the configured issuers: token signatures by JWKS,
 * and for issuers with `kubernetes:` the API server's TokenReview and pod metadata on top.
 */
export function createTokenAttestor(config: Pick<Config, 'trustDomain' | 'issuers'>, clock: Clock, previous?: TokenAttestor): TokenAttestor {
  const jwks = new ServiceAccountTokenAttestor({ trustDomain: config.trustDomain, issuers: config.issuers, clock, previous: signatureAttestor(previous) });
  const apis = new Map(
    config.issuers.flatMap((i) => (i.kubernetes !== undefined ? [[i.issuer, { api: new KubernetesApi(i.kubernetes), audiences: i.audiences }] as const] : [])),
  );
  return apis.size === 0 ? jwks : new TokenReviewAttestor(jwks, apis, clock);
}

/** The JWKS attestor inside a (replaceable, TokenReview-wrapped) token attestor: whose fetched keys a reload keeps. */
function signatureAttestor(att: TokenAttestor | undefined): ServiceAccountTokenAttestor | undefined {
  if (att instanceof ReplaceableTokenAttestor) return signatureAttestor(att.inForce);
  if (att instanceof TokenReviewAttestor) return signatureAttestor(att.verifier);
  return att instanceof ServiceAccountTokenAttestor ? att : undefined;
}

/**
 * The attestors of this broker. `workload` are the CA certificates that issue SVIDs (roots, signing CA,
 * intermediates), `admin` the admin CA roots: peer certificates are classified by signature against both.
 */
export function createAttestors(
  config: Pick<Config, 'trustDomain' | 'issuers'>,
  anchors: { readonly workload: readonly X509Certificate[]; readonly admin: readonly X509Certificate[] },
  clock: Clock,
): Attestors & { readonly token: ReplaceableTokenAttestor } {
  return {
    token: new ReplaceableTokenAttestor(createTokenAttestor(config, clock)),
    peer: new MtlsAttestor(config.trustDomain, anchors, clock),
  };
}
