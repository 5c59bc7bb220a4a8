/**
 * Finding audit entries by identity metadata: SPIFFE ID (as caller or as subject), credential
 * identifier (serial, JWT jti or lease id), time range, event type, decision, namespace. Entries are
 * keyed by workload identity, never by IP address, so results stay meaningful after pods are gone.
 *
 * A linear scan over any LogSource (store, export, remote broker). The filter is parsed and checked
 * here once, for the CLI and for the admin HTTP route alike.
 */
import { BrokerError, badRequest } from '../errors.js';
import { AUDIT_EVENT_TYPES, type AuditEntry, type AuditEventType, parseAuditEntry } from './entry.js';
import type { LogSource } from './source.js';

export interface SearchFilter {
  /** Exact SPIFFE ID, or a prefix when it ends in "/*". Matches actor or subject. */
  readonly spiffeId?: string;
  /** Lowercase hex serial (colons allowed in input), JWT jti or lease id. */
  readonly serial?: string;
  /** UTC ms, inclusive. */
  readonly since?: number;
  /** UTC ms, exclusive. */
  readonly until?: number;
  readonly type?: AuditEventType;
  readonly decision?: 'allow' | 'deny';
  readonly namespace?: string;
}

export interface SearchFilterInput {
  readonly spiffeId?: string;
  readonly serial?: string;
  readonly since?: string;
  readonly until?: string;
  readonly type?: string;
  readonly decision?: string;
  readonly namespace?: string;
}

export interface SearchHit {
  readonly index: number;
  readonly entry: AuditEntry;
}

export interface SearchResult {
  readonly hits: readonly SearchHit[];
  /** Entries looked at. */
  readonly scanned: number;
  /** Entries that did not parse (the verifier says more about them). */
  readonly malformed: number;
  /** True if the limit stopped the scan. */
  readonly truncated: boolean;
  /** Index to resume from when truncated. */
  readonly next?: number;
}

const DURATION = /^(\d{1,9})(s|m|h|d)$/;
const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A point in time: ISO-8601 ("2025-01-31", "2025-01-31T12:00:00Z"), UTC ms, or a duration ago ("15m", "2h", "7d"). */
export function parseTime(value: string, now: number, name: string): number {
  const v = value.trim();
  const rel = DURATION.exec(v);
  if (rel) return now - Number(rel[1]) * (UNIT_MS[rel[2] as string] as number);
  if (/^\d{1,16}$/.test(v)) return Number(v);
  if (/^\d{4}-\d{2}-\d{2}([T ][\d:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(v)) {
    const t = Date.parse(v.length === 10 ? `${v}T00:00:00Z` : v);
    if (Number.isFinite(t)) return t;
  }
  throw badRequest(`${name}: expected an ISO-8601 time (2025-01-31T12:00:00Z), UTC milliseconds, or a duration ago like 15m, 2h, 7d`);
}

/** Checks and normalises user input into a filter; every mistake is a 400 naming the field. */
export function parseSearchFilter(input: SearchFilterInput, now: number): SearchFilter {
  const out: { -readonly [K in keyof SearchFilter]: SearchFilter[K] } = {};
  if (input.spiffeId !== undefined) {
    if (!/^spiffe:\/\/[^\s]+$/.test(input.spiffeId) || input.spiffeId.length > 2048) throw badRequest('spiffeId: expected spiffe://trust-domain/path (a trailing /* matches a prefix)');
    out.spiffeId = input.spiffeId;
  }
  if (input.serial !== undefined) {
    const s = input.serial.trim().toLowerCase().replaceAll(':', '');
    if (s.length === 0 || s.length > 256 || /\s/.test(s)) throw badRequest('serial: expected a certificate serial (hex), JWT jti or lease id');
    out.serial = s;
  }
  if (input.since !== undefined) out.since = parseTime(input.since, now, 'since');
  if (input.until !== undefined) out.until = parseTime(input.until, now, 'until');
  if (out.since !== undefined && out.until !== undefined && out.since >= out.until) throw badRequest('since must be before until');
  if (input.type !== undefined) {
    if (!AUDIT_EVENT_TYPES.includes(input.type as AuditEventType)) throw badRequest(`type: expected one of ${AUDIT_EVENT_TYPES.join(', ')}`);
    out.type = input.type as AuditEventType;
  }
  if (input.decision !== undefined) {
    if (input.decision !== 'allow' && input.decision !== 'deny') throw badRequest('decision: expected allow or deny');
    out.decision = input.decision;
  }
  if (input.namespace !== undefined) {
    if (input.namespace.length === 0 || input.namespace.length > 253) throw badRequest('namespace: expected a Kubernetes namespace');
    out.namespace = input.namespace;
  }
  return out;
}

function idMatches(pattern: string, id: string | null): boolean {
  if (id === null) return false;
  return pattern.endsWith('/*') ? id.startsWith(pattern.slice(0, -1)) : id === pattern;
}

export function matchesFilter(entry: AuditEntry, f: SearchFilter): boolean {
  if (f.spiffeId !== undefined && !idMatches(f.spiffeId, entry.actor) && !idMatches(f.spiffeId, entry.subject)) return false;
  if (f.serial !== undefined && entry.serial?.toLowerCase() !== f.serial && entry.jti !== f.serial && entry.leaseId !== f.serial) return false;
  if (f.since !== undefined && entry.ts < f.since) return false;
  if (f.until !== undefined && entry.ts >= f.until) return false;
  if (f.type !== undefined && entry.type !== f.type) return false;
  if (f.decision !== undefined && entry.decision !== f.decision) return false;
  if (f.namespace !== undefined && entry.namespace !== f.namespace) return false;
  return true;
}

/** Scans entries [start, size) and returns at most `limit` matches, oldest first. */
export async function searchLog(
  source: LogSource,
  filter: SearchFilter,
  opts: { limit?: number; start?: number } = {},
): Promise<SearchResult> {
  const limit = opts.limit ?? 1000;
  const start = opts.start ?? 0;
  if (!Number.isSafeInteger(limit) || limit < 1) throw badRequest('limit must be a positive integer');
  const end = source.expectedSize !== undefined ? Number.POSITIVE_INFINITY : await source.size();
  const hits: SearchHit[] = [];
  let scanned = 0;
  let malformed = 0;
  let index = start;
  for await (const bytes of source.entries(start, end)) {
    if (hits.length >= limit) return { hits, scanned, malformed, truncated: true, next: index };
    scanned++;
    let entry: AuditEntry;
    try {
      entry = parseAuditEntry(bytes);
    } catch (err) {
      if (!(err instanceof BrokerError)) throw err;
      malformed++;
      index++;
      continue;
    }
    if (matchesFilter(entry, filter)) hits.push({ index, entry });
    index++;
  }
  return { hits, scanned, malformed, truncated: false };
}
