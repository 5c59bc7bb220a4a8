/**
 * The caller, as the rest of the broker sees it. policy/, issue/ and audit/ know nothing else
 * about a request's origin: never an IP address.
 */
export type IdentitySource = 'k8s-sa-token' | 'mtls' | 'break-glass';

export interface WorkloadClaims {
  /** Kubernetes namespace and service account (present for every workload identity). */
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly serviceAccountUid?: string;
  readonly podName?: string;
  readonly podUid?: string;
  /** Token issuer (k8s-sa-token) or the serial of the presented SVID (mtls). */
  readonly issuer?: string;
  readonly presentedSerial?: string;
  /** Token id, used for the replay cache and for audit correlation (never the token itself). */
  readonly tokenId?: string;
  /** When the presented credential expires (ms since epoch). */
  readonly credentialExpiresAt?: number;
}

export interface Identity {
  readonly spiffeId: string;
  readonly trustDomain: string;
  readonly source: IdentitySource;
  readonly claims: WorkloadClaims;
  /**
   * SPIRE-style `type:key:value` selectors the attestor proved (k8s:ns:…, k8s:sa:…, k8s:pod-uid:…);
   * absent: policy derives namespace, service account and pod from the claims.
   */
  readonly selectors?: readonly string[];
}

/** A Kubernetes selector as attestors state it and registration entries name it: `k8s:<key>:<value>`. */
export const selectorText = (key: 'ns' | 'sa' | 'pod-name' | 'pod-uid' | 'pod-label' | 'pod-annotation' | 'node-name' | 'container-image', value: string): string =>
  `k8s:${key}:${value}`;
