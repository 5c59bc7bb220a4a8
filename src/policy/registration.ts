/**
 * Registration policy: which workloads may have which credentials. An identity gets nothing unless a
 * registration entry grants it (default deny). Entries come from two places: the config file (a
 * read-only seed, `source: config`, with a SPIFFE path template) and the store (`source: api`, created
 * through the admin API, live on every replica). An entry matches when the workload has all of its
 * selectors (selectors.ts). When several match, the caller may pick one by SPIFFE ID; otherwise the most
 * specific (most selectors) wins, and a tie is refused (409 `ambiguous_registration`): the broker never
 * guesses between two identities.
 *
 * The entry set is one immutable snapshot, swapped whole (replace()): a request resolves against the
 * snapshot it started with.
 */
import type { Identity } from '../attest/identity.js';
import type { RegistrationEntry, SvidConfig } from '../config/config.js';
import { BrokerError, forbidden } from '../errors.js';
import { formatSpiffeId, parseSpiffeId } from '../spiffe/id.js';
import type { StoredEntry } from './entry.js';
import { type Selector, selectorText } from './selectors.js';

export const DEFAULT_SPIFFE_PATH = '/ns/{namespace}/sa/{serviceAccount}';

/** What an issuance was granted by, for the audit entry. */
interface Matched {
  readonly spiffeId: string;
  /** The workload's namespace as policy sees it ('*' when an mTLS renewal's entry names none). */
  readonly namespace: string;
  /** The governing entry's id and its selectors (all of which the workload has). */
  readonly entryId: string;
  readonly selectors: readonly string[];
}

export interface X509Grant extends Matched {
  readonly dnsNames: readonly string[];
  /** Foreign trust domains whose bundles go with the SVID. */
  readonly federatesWith: readonly string[];
  readonly ttlMs: number;
}

export interface JwtGrant extends Matched {
  readonly audiences: readonly string[];
  readonly ttlMs: number;
}

interface Workload {
  readonly namespace: string;
  readonly serviceAccount: string;
}

/** One entry as policy uses it. */
export interface PolicyEntry {
  readonly id: string;
  readonly source: 'config' | 'api';
  readonly selectors: readonly Selector[];
  /** api: the fixed SPIFFE ID. */
  readonly spiffeId?: string;
  /** config: a path template with {namespace} and {serviceAccount}. */
  readonly spiffePath?: string;
  readonly dnsNames: readonly string[];
  readonly jwtAudiences: readonly string[];
  readonly x509TtlSeconds?: number | undefined;
  readonly jwtTtlSeconds?: number | undefined;
  readonly federatesWith: readonly string[];
}

/** The config file's entries as policy entries (config-<index>); "*" is no selector. */
export function seedEntries(entries: readonly RegistrationEntry[]): PolicyEntry[] {
  return entries.map((e, i) => {
    const selectors: Selector[] = [];
    if (e.selector.namespace !== '*') selectors.push({ key: 'ns', value: e.selector.namespace, text: selectorText('ns', e.selector.namespace) });
    if (e.selector.serviceAccount !== '*') selectors.push({ key: 'sa', value: e.selector.serviceAccount, text: selectorText('sa', e.selector.serviceAccount) });
    return {
      id: `config-${i}`,
      source: 'config',
      selectors,
      spiffePath: e.spiffePath ?? DEFAULT_SPIFFE_PATH,
      dnsNames: e.dnsNames,
      jwtAudiences: e.jwtAudiences,
      x509TtlSeconds: e.x509TtlSeconds,
      jwtTtlSeconds: e.jwtTtlSeconds,
      federatesWith: e.federatesWith,
    };
  });
}

/** A stored entry as a policy entry (its selectors were checked when it was written). */
export function storedPolicyEntry(e: StoredEntry, selectors: readonly Selector[]): PolicyEntry {
  return {
    id: e.id,
    source: 'api',
    selectors,
    spiffeId: e.spiffeId,
    dnsNames: e.dnsNames,
    jwtAudiences: e.jwtAudiences,
    x509TtlSeconds: e.x509TtlSeconds,
    jwtTtlSeconds: e.jwtTtlSeconds,
    federatesWith: e.federatesWith ?? [],
  };
}

/** The selectors an identity proves: what its attestor said, or (at least) namespace, service account and pod. */
export function workloadSelectors(identity: Identity): readonly string[] {
  if (identity.selectors !== undefined) return identity.selectors;
  const c = identity.claims;
  return [
    ...(c.namespace !== '' ? [selectorText('ns', c.namespace)] : []),
    ...(c.serviceAccount !== '' ? [selectorText('sa', c.serviceAccount)] : []),
    ...(c.podName !== undefined ? [selectorText('pod-name', c.podName)] : []),
    ...(c.podUid !== undefined ? [selectorText('pod-uid', c.podUid)] : []),
  ];
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

const selectorValue = (entry: PolicyEntry, key: 'ns' | 'sa'): string | undefined => entry.selectors.find((s) => s.key === key)?.value;

interface Candidate {
  readonly entry: PolicyEntry;
  readonly spiffeId: string;
  readonly workload: Workload;
}

/** One immutable entry set, indexed by the namespace an entry names. */
class EntryTable {
  readonly byNamespace = new Map<string, PolicyEntry[]>();
  readonly anyNamespace: PolicyEntry[] = [];
  readonly matchers = new Map<PolicyEntry, (path: string) => Partial<Workload> | undefined>();

  constructor(readonly entries: readonly PolicyEntry[]) {
    for (const e of entries) {
      const ns = selectorValue(e, 'ns');
      if (ns === undefined) this.anyNamespace.push(e);
      else {
        const list = this.byNamespace.get(ns);
        if (list === undefined) this.byNamespace.set(ns, [e]);
        else list.push(e);
      }
      if (e.spiffePath !== undefined) this.matchers.set(e, templateMatcher(e.spiffePath));
    }
  }
}

export class RegistrationPolicy {
  #seed: readonly PolicyEntry[];
  #stored: readonly PolicyEntry[] = [];
  #table: EntryTable;

  constructor(
    private readonly trustDomain: string,
    entries: readonly RegistrationEntry[],
    private readonly svid: SvidConfig,
  ) {
    this.#seed = seedEntries(entries);
    this.#table = new EntryTable(this.#seed);
  }

  /** Replaces the config seed (reload). */
  replaceSeed(entries: readonly RegistrationEntry[]): void {
    this.#seed = seedEntries(entries);
    this.#table = new EntryTable([...this.#seed, ...this.#stored]);
  }

  /** Replaces the stored entries (the registry saw a change in the store). */
  replaceStored(entries: readonly PolicyEntry[]): void {
    this.#stored = entries;
    this.#table = new EntryTable([...this.#seed, ...this.#stored]);
  }

  /** The config seed, in config order. */
  get seed(): readonly PolicyEntry[] {
    return this.#seed;
  }

  /** The SPIFFE ID an entry assigns to a workload. */
  private spiffeIdFor(entry: PolicyEntry, w: Workload): string {
    if (entry.spiffeId !== undefined) return entry.spiffeId;
    const segments = (entry.spiffePath ?? DEFAULT_SPIFFE_PATH)
      .slice(1)
      .split('/')
      .map((s) => s.replaceAll('{namespace}', w.namespace).replaceAll('{serviceAccount}', w.serviceAccount));
    return formatSpiffeId(this.trustDomain, segments);
  }

  /** Every entry that grants this identity something, with the SPIFFE ID each would give it. */
  private candidates(table: EntryTable, identity: Identity): Candidate[] {
    if (identity.trustDomain !== this.trustDomain) {
      throw forbidden(`identity ${identity.spiffeId} is not in trust domain ${this.trustDomain}`);
    }
    const out: Candidate[] = [];
    if (identity.source === 'mtls') {
      // A renewal: the entries that would issue exactly this SPIFFE ID today (judged by today's
      // policy, not by what the old certificate says).
      const path = parseSpiffeId(identity.spiffeId).path;
      for (const entry of table.entries) {
        if (entry.spiffeId !== undefined) {
          if (entry.spiffeId === identity.spiffeId) {
            out.push({ entry, spiffeId: entry.spiffeId, workload: { namespace: selectorValue(entry, 'ns') ?? '*', serviceAccount: selectorValue(entry, 'sa') ?? '*' } });
          }
          continue;
        }
        const found = table.matchers.get(entry)?.(path);
        if (found === undefined) continue;
        // A template without {namespace} or {serviceAccount} takes that part from the selector.
        const ns = selectorValue(entry, 'ns');
        const sa = selectorValue(entry, 'sa');
        const w: Workload = { namespace: found.namespace ?? ns ?? '*', serviceAccount: found.serviceAccount ?? sa ?? '*' };
        if ((ns === undefined || ns === w.namespace) && (sa === undefined || sa === w.serviceAccount) && this.spiffeIdFor(entry, w) === identity.spiffeId) {
          out.push({ entry, spiffeId: identity.spiffeId, workload: w });
        }
      }
      return out;
    }
    const w: Workload = { namespace: identity.claims.namespace, serviceAccount: identity.claims.serviceAccount };
    const have = new Set(workloadSelectors(identity));
    for (const list of [table.byNamespace.get(w.namespace) ?? [], table.anyNamespace]) {
      for (const entry of list) {
        if (entry.selectors.every((s) => have.has(s.text))) out.push({ entry, spiffeId: this.spiffeIdFor(entry, w), workload: w });
      }
    }
    return out;
  }

  /**
   * The entry that governs an identity: among those that match (and give `spiffeId`, when the caller
   * asked for one), the one with the most selectors; 403 if none, 409 if two tie.
   */
  private resolve(identity: Identity, spiffeId?: string): Candidate {
    const table = this.#table;
    const all = this.candidates(table, identity);
    const matching = spiffeId === undefined ? all : all.filter((c) => c.spiffeId === spiffeId);
    if (matching.length === 0) {
      if (spiffeId !== undefined && all.length > 0) {
        throw forbidden(`no registration entry gives ${identity.spiffeId} the SPIFFE ID ${spiffeId} (it may have ${[...new Set(all.map((c) => c.spiffeId))].join(', ')})`);
      }
      throw forbidden(`no registration entry grants credentials to ${identity.spiffeId}`);
    }
    let best = matching[0] as Candidate;
    let tied: Candidate[] = [best];
    for (const c of matching.slice(1)) {
      if (c.entry.selectors.length > best.entry.selectors.length) {
        best = c;
        tied = [c];
      } else if (c.entry.selectors.length === best.entry.selectors.length) tied.push(c);
    }
    if (tied.length > 1) {
      const ids = [...new Set(matching.map((c) => c.spiffeId))];
      throw new BrokerError(
        'ambiguous_registration',
        `registration entries ${tied.map((c) => c.entry.id).join(', ')} match ${identity.spiffeId} equally well; ` +
          `matching SPIFFE IDs: ${ids.join(', ')}${spiffeId === undefined ? ' (ask for one with "spiffeId" in the request, or make one entry more specific)' : ' (make one entry more specific)'}`,
      );
    }
    return best;
  }

  /** Every SPIFFE ID some entry would give this identity (the caller may pick one by `spiffeId`). */
  spiffeIds(identity: Identity): string[] {
    return [...new Set(this.candidates(this.#table, identity).map((c) => c.spiffeId))];
  }

  /**
   * The SPIFFE ID policy assigns to a registered identity, with its namespace and service account
   * (secret grants and leases are keyed by it: the same for a token caller and its SVID). 403 if none.
   */
  workload(identity: Identity, spiffeId?: string): { readonly spiffeId: string; readonly namespace: string; readonly serviceAccount: string } {
    const { spiffeId: id, workload } = this.resolve(identity, spiffeId);
    return { spiffeId: id, namespace: workload.namespace, serviceAccount: workload.serviceAccount };
  }

  private matched(c: Candidate): Matched {
    return { spiffeId: c.spiffeId, namespace: c.workload.namespace, entryId: c.entry.id, selectors: c.entry.selectors.map((s) => s.text) };
  }

  x509(identity: Identity, requestedTtlSeconds?: number, spiffeId?: string): X509Grant {
    const c = this.resolve(identity, spiffeId);
    const { entry } = c;
    const cap = Math.min(entry.x509TtlSeconds ?? this.svid.x509MaxTtlSeconds, this.svid.x509MaxTtlSeconds);
    const ttl = Math.min(requestedTtlSeconds ?? entry.x509TtlSeconds ?? this.svid.x509DefaultTtlSeconds, cap);
    return { ...this.matched(c), dnsNames: entry.dnsNames, federatesWith: entry.federatesWith, ttlMs: ttl * 1000 };
  }

  jwt(identity: Identity, audiences: readonly string[], requestedTtlSeconds?: number, spiffeId?: string): JwtGrant {
    const c = this.resolve(identity, spiffeId);
    const { entry } = c;
    const refused = audiences.filter((a) => !entry.jwtAudiences.includes(a));
    if (refused.length > 0) {
      throw forbidden(`${c.spiffeId} may not have JWT-SVIDs for audience ${refused.map((a) => JSON.stringify(a)).join(', ')}`);
    }
    const cap = Math.min(entry.jwtTtlSeconds ?? this.svid.jwtMaxTtlSeconds, this.svid.jwtMaxTtlSeconds);
    const ttl = Math.min(requestedTtlSeconds ?? entry.jwtTtlSeconds ?? this.svid.jwtDefaultTtlSeconds, cap);
    return { ...this.matched(c), audiences: [...audiences], ttlMs: ttl * 1000 };
  }
}
