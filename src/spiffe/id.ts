/**
 * SPIFFE ID parsing and formatting, following the SPIFFE-ID specification:
 * `spiffe://<trust-domain>/<path>` with a lowercase trust domain of [a-z0-9.-_], path segments of
 * [a-zA-Z0-9.-_] that are neither empty, "." nor "..", no query, fragment, port or user info,
 * and at most 2048 bytes overall.
 */
import { BrokerError } from '../errors.js';

export const MAX_SPIFFE_ID_LENGTH = 2048;
export const MAX_TRUST_DOMAIN_LENGTH = 255;

const SCHEME = 'spiffe://';
const TRUST_DOMAIN_CHARS = /^[a-z0-9._-]+$/;
const PATH_SEGMENT_CHARS = /^[a-zA-Z0-9._-]+$/;

export interface SpiffeId {
  readonly trustDomain: string;
  /** Empty for a trust-domain ID, else starts with "/". */
  readonly path: string;
  readonly uri: string;
}

function invalid(message: string): BrokerError {
  return new BrokerError('bad_request', `invalid SPIFFE ID: ${message}`);
}

export function validateTrustDomain(trustDomain: string): string {
  if (trustDomain.length === 0) throw invalid('trust domain is empty');
  if (trustDomain.length > MAX_TRUST_DOMAIN_LENGTH) throw invalid('trust domain is too long');
  if (!TRUST_DOMAIN_CHARS.test(trustDomain)) {
    throw invalid('trust domain may contain only lowercase letters, digits, ".", "-" and "_"');
  }
  return trustDomain;
}

export function validatePathSegment(segment: string): string {
  if (segment.length === 0) throw invalid('path segment is empty');
  if (segment === '.' || segment === '..') throw invalid('path segment may not be "." or ".."');
  if (!PATH_SEGMENT_CHARS.test(segment)) {
    throw invalid('path segments may contain only letters, digits, ".", "-" and "_"');
  }
  return segment;
}

/** Parses and validates a SPIFFE ID; throws a 400 BrokerError naming the rule it breaks. */
export function parseSpiffeId(input: string): SpiffeId {
  if (typeof input !== 'string') throw invalid('not a string');
  if (input.length > MAX_SPIFFE_ID_LENGTH) throw invalid('longer than 2048 bytes');
  if (!input.startsWith(SCHEME)) throw invalid('scheme must be "spiffe://" (lowercase)');
  const rest = input.slice(SCHEME.length);
  const slash = rest.indexOf('/');
  const trustDomain = slash === -1 ? rest : rest.slice(0, slash);
  const path = slash === -1 ? '' : rest.slice(slash);
  validateTrustDomain(trustDomain);
  if (path !== '') {
    if (path === '/') throw invalid('path may not be a lone "/"');
    for (const segment of path.slice(1).split('/')) validatePathSegment(segment);
  }
  return { trustDomain, path, uri: input };
}

export function isSpiffeId(input: string): boolean {
  try {
    parseSpiffeId(input);
    return true;
  } catch {
    return false;
  }
}

/** Builds a SPIFFE ID from a trust domain and path segments, validating each. */
export function formatSpiffeId(trustDomain: string, segments: readonly string[]): string {
  validateTrustDomain(trustDomain);
  const path = segments.map(validatePathSegment).map((s) => `/${s}`).join('');
  const uri = `${SCHEME}${trustDomain}${path}`;
  if (uri.length > MAX_SPIFFE_ID_LENGTH) throw invalid('longer than 2048 bytes');
  return uri;
}

/** The default workload ID: spiffe://<td>/ns/<namespace>/sa/<serviceaccount>. */
export function workloadSpiffeId(trustDomain: string, namespace: string, serviceAccount: string): string {
  return formatSpiffeId(trustDomain, ['ns', namespace, 'sa', serviceAccount]);
}

/** The namespace in a default-shaped ID (spiffe://<td>/ns/<namespace>/…); undefined for another path or an invalid ID. */
export function namespaceOfSpiffeId(spiffeId: string): string | undefined {
  let path: string;
  try {
    ({ path } = parseSpiffeId(spiffeId));
  } catch {
    return undefined;
  }
  const [first, namespace] = path.split('/').slice(1);
  return first === 'ns' ? namespace : undefined;
}
