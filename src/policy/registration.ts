/**
 * Registration policy: which workloads may have which credentials. An identity gets nothing unless a
 * registration entry grants it (default deny). The most specific matching entry wins:
 * exact namespace + service account, then exact namespace, then exact service account, then "*".
 */
import type { Identity } from '../attest/identity.js';
import type { RegistrationEntry, SvidConfig } from '../config/config.js';
import { forbidden } from '../errors.js';
import { formatSpiffeId, parseSpiffeId } from '../spiffe/id.js';

export const DEFAULT_SPIFFE_PATH = '/ns/{namespace}/sa/{serviceAccount}';

export interface X509Grant {
  readonly spiffeId: string;
  readonly dnsNames: readonly string[];
  readonly ttlMs: number;
}

export interface JwtGrant {
  readonly spiffeId: string;
  readonly audiences: readonly string[];
  readonly ttlMs: number;
}

interface Workload {
  readonly namespace: string;
  readonly serviceAccount: string;
}

function specificity(entry: RegistrationEntry): number {
  return (entry.selector.namespace === '*' ? 0 : 2) + (entry.selector.serviceAccount === '*' ? 0 : 1);
}

function matches(entry: RegistrationEntry, w: Workload): boolean {
  const { namespace, serviceAccount } = entry.selector;
  return (namespace === '*' || namespace === w.namespace) && (serviceAccount === '*' || serviceAccount === w.serviceAccount);
}

/** Turns a path template into a matcher that recovers namespace and service account from a SPIFFE path. */
function templateMatcher(template: string): (path: string) => Partial<Workload> | undefined {
  const parts = template.split(/(\{namespace\}|\{serviceAccount\})/);
  const order: (keyof Workload)[] = [];
  const source = parts
    .map((part) => {
      if (part === '{namespace}') { order.push('namespace'); return '([a-zA-Z0-9._-]+)'; }
      if (part === '{serviceAccount}') { order.push('serviceAccount'); return '([a-zA-Z0-9._-]+)'; }
      return part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    })
    .join('');
  const re = new RegExp(`^${source}$`);
  return (path) => {
    const m = re.exec(path);
    if (!m) return undefined;
    const found: Partial<Record<keyof Workload, string>> = {};
    for (const [i, key] of order.entries()) {
      const value = m[i + 1] as string;
      if (found[key] !== undefined && found[key] !== value) return undefined;
      found[key] = value;
    }
    return found;
  };
}

export class RegistrationPolicy {
  private readonly entries: readonly RegistrationEntry[];
  private readonly matchers: ReadonlyMap<RegistrationEntry, (path: string) => Partial<Workload> | undefined>;

  constructor(
    private readonly trustDomain: string,
    entries: readonly RegistrationEntry[],
    private readonly svid: SvidConfig,
  ) {
    // Stable sort: most specific first, config order among equals.
    this.entries = [...entries].sort((a, b) => specificity(b) - specificity(a));
    this.matchers = new Map(this.entries.map((e) => [e, templateMatcher(e.spiffePath ?? DEFAULT_SPIFFE_PATH)]));
  }

  /** The SPIFFE ID an entry assigns to a workload. */
  private spiffeIdFor(entry: RegistrationEntry, w: Workload): string {
    const template = entry.spiffePath ?? DEFAULT_SPIFFE_PATH;
    const segments = template
      .slice(1)
      .split('/')
      .map((s) => s.replaceAll('{namespace}', w.namespace).replaceAll('{serviceAccount}', w.serviceAccount));
    return formatSpiffeId(this.trustDomain, segments);
  }

  /**
   * Finds the entry that governs an identity. Token identities are matched by namespace and service
   * account; an mTLS identity (renewal) by recovering them from its SPIFFE ID through the entry's path,
   * so a renewal is judged by today's policy, not by what the old certificate says.
   */
  private resolve(identity: Identity): { entry: RegistrationEntry; spiffeId: string; workload: Workload } {
    if (identity.trustDomain !== this.trustDomain) {
      throw forbidden(`identity ${identity.spiffeId} is not in trust domain ${this.trustDomain}`);
    }
    if (identity.source === 'mtls') {
      const path = parseSpiffeId(identity.spiffeId).path;
      for (const entry of this.entries) {
        const found = this.matchers.get(entry)?.(path);
        if (found === undefined) continue;
        // A template without {namespace} or {serviceAccount} takes that part from the selector.
        const w: Workload = {
          namespace: found.namespace ?? entry.selector.namespace,
          serviceAccount: found.serviceAccount ?? entry.selector.serviceAccount,
        };
        if (matches(entry, w) && this.spiffeIdFor(entry, w) === identity.spiffeId) {
          return { entry, spiffeId: identity.spiffeId, workload: w };
        }
      }
    } else {
      const w: Workload = { namespace: identity.claims.namespace, serviceAccount: identity.claims.serviceAccount };
      const entry = this.entries.find((e) => matches(e, w));
      if (entry !== undefined) return { entry, spiffeId: this.spiffeIdFor(entry, w), workload: w };
    }
    throw forbidden(`no registration entry grants credentials to ${identity.spiffeId}`);
  }

  /**
   * The SPIFFE ID policy assigns to a registered identity, with its namespace and service account
   * (secret grants and leases are keyed by it: the same for a token caller and its SVID). 403 if none.
   */
  workload(identity: Identity): { readonly spiffeId: string; readonly namespace: string; readonly serviceAccount: string } {
    const { spiffeId, workload } = this.resolve(identity);
    return { spiffeId, namespace: workload.namespace, serviceAccount: workload.serviceAccount };
  }

  x509(identity: Identity, requestedTtlSeconds?: number): X509Grant {
    const { entry, spiffeId } = this.resolve(identity);
    const cap = Math.min(entry.x509TtlSeconds ?? this.svid.x509MaxTtlSeconds, this.svid.x509MaxTtlSeconds);
    const ttl = Math.min(requestedTtlSeconds ?? entry.x509TtlSeconds ?? this.svid.x509DefaultTtlSeconds, cap);
    return { spiffeId, dnsNames: entry.dnsNames, ttlMs: ttl * 1000 };
  }

  jwt(identity: Identity, audiences: readonly string[], requestedTtlSeconds?: number): JwtGrant {
    const { entry, spiffeId } = this.resolve(identity);
    const refused = audiences.filter((a) => !entry.jwtAudiences.includes(a));
    if (refused.length > 0) {
      throw forbidden(`${spiffeId} may not have JWT-SVIDs for audience ${refused.map((a) => JSON.stringify(a)).join(', ')}`);
    }
    const cap = Math.min(entry.jwtTtlSeconds ?? this.svid.jwtMaxTtlSeconds, this.svid.jwtMaxTtlSeconds);
    const ttl = Math.min(requestedTtlSeconds ?? entry.jwtTtlSeconds ?? this.svid.jwtDefaultTtlSeconds, cap);
    return { spiffeId, audiences: [...audiences], ttlMs: ttl * 1000 };
  }
}
