/**
 * The audit entry shape and its canonical byte encoding (the bytes that get leaf-hashed).
 *
 * canonicalJson is a deliberately small subset of RFC 8785 (JCS): keys sorted by UTF-16 code units,
 * no whitespace, UTF-8, and numbers restricted to safe integers so no float formatting question can
 * ever arise. Anything that JSON would silently coerce or drop (NaN, Dates, Maps, class instances,
 * functions, holes/undefined in arrays) is rejected instead, so two encoders cannot disagree.
 */
import type { Identity } from '../attest/identity.js';
import Type, { type Static } from 'typebox';
import { BrokerError } from '../errors.js';
import { recordParser, SafeInteger } from '../records.js';

export const AUDIT_EVENT_TYPES = [
  'x509-svid.issued',
  'jwt-svid.issued',
  'denial',
  'admin',
  'break-glass',
  'secret.issued',
  'lease.revoked',
  // Secrets (src/secrets/): a static secret stored, a lease extended, a revoke that failed (retried), a KEK rotation.
  'secret.written',
  'lease.renewed',
  'lease.revoke-failed',
  'kek.rotated',
  // An alert rule fired (see audit/alerts.ts); the broker itself is the author.
  'alert',
  // CA rotation (ca/rotation.ts): a next authority prepared, activated, or an old one dropped (`action`).
  'ca.rotated',
] as const;
export type AuditEventType = (typeof AUDIT_EVENT_TYPES)[number];

const Str = Type.Optional(Type.String());
const Strings = Type.Optional(Type.Array(Type.String()));
const StrOrNull = Type.Union([Type.String(), Type.Null()]);

/**
 * One audit log record. NEVER put secret material here (keys, tokens, secret values, CSR private
 * parts): the log is append-only and replicated to verifiers, so nothing in it can be revoked.
 * Every field is an identifier or metadata — serial, jti, leaseId and keyFingerprint identify a
 * credential without being able to reproduce it. Unknown fields are tolerated when reading.
 */
const AuditEntrySchema = Type.Object({
  /** UTC milliseconds (Clock.now()). */
  ts: SafeInteger(),
  type: Type.Enum([...AUDIT_EVENT_TYPES]),
  decision: Type.Enum(['allow', 'deny']),
  /** Caller SPIFFE ID (null when the caller could not be authenticated). */
  actor: StrOrNull,
  /** SPIFFE ID the credential is for (null for events that are not about one identity). */
  subject: StrOrNull,
  source: Str,
  namespace: Str,
  serviceAccount: Str,
  podName: Str,
  podUid: Str,
  serial: Str,
  jti: Str,
  leaseId: Str,
  /** Name of a static secret, or "postgres/<role>" for dynamic database credentials (never a value). */
  secret: Str,
  /** The PostgreSQL role a dynamic-credentials lease created (an identifier, never its password). */
  dbUsername: Str,
  audience: Strings,
  ttlMs: Type.Optional(SafeInteger()),
  expiresAt: Type.Optional(SafeInteger()),
  keyFingerprint: Str,
  reason: Str,
  code: Str,
  /** Admin API: what the admin did (revoke, freeze, thaw, …); see docs/admin-breakglass.md. */
  action: Str,
  /** Break-glass: the incident ticket, what was granted, and the ids of the keys that signed. */
  ticket: Str,
  grant: Str,
  keyIds: Strings,
  /** 'critical' on break-glass entries: alerting and log pipelines page on it. */
  severity: Str,
  /** Registration: the entry an issuance was granted by (and its selectors, all of which the workload had), or an admin changed. */
  entryId: Str,
  selectors: Strings,
  /** Admin changes to registration entries: the entry before and after (absent for a create / a delete). */
  before: Type.Optional(Type.Unknown()),
  after: Type.Optional(Type.Unknown()),
  requestId: Type.String(),
  replica: Type.String(),
});
export type AuditEntry = Static<typeof AuditEntrySchema>;

const MAX_DEPTH = 64;

function fail(path: string, why: string): never {
  throw new TypeError(`canonicalJson: ${path}: ${why}`);
}

function isPlainObject(v: object): boolean {
  const proto: unknown = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function encode(value: unknown, path: string, stack: Set<object>, out: string[]): void {
  switch (typeof value) {
    case 'string':
      // JSON.stringify of a string is deterministic, and escapes lone surrogates (ES2019).
      out.push(JSON.stringify(value));
      return;
    case 'number':
      if (!Number.isSafeInteger(value)) fail(path, `only safe integers are allowed (got ${String(value)})`);
      out.push(Object.is(value, -0) ? '0' : String(value));
      return;
    case 'boolean':
      out.push(value ? 'true' : 'false');
      return;
    case 'object':
      break;
    default:
      // undefined (as a value, not a property), function, symbol, bigint.
      fail(path, `${typeof value} is not representable`);
  }
  if (value === null) {
    out.push('null');
    return;
  }
  if (stack.has(value)) fail(path, 'cycle');
  if (stack.size >= MAX_DEPTH) fail(path, 'nested too deeply');
  stack.add(value);
  if (Array.isArray(value)) {
    if (Object.getPrototypeOf(value) !== Array.prototype) fail(path, 'array subclass');
    out.push('[');
    for (let i = 0; i < value.length; i++) {
      if (i > 0) out.push(',');
      if (!(i in value) || value[i] === undefined) fail(`${path}[${i}]`, 'undefined/hole in array');
      encode(value[i], `${path}[${i}]`, stack, out);
    }
    out.push(']');
  } else {
    if (!isPlainObject(value)) fail(path, 'only plain objects are allowed');
    const obj = value as Record<string, unknown>;
    // Default sort compares UTF-16 code units, the same order RFC 8785 uses.
    const keys = Object.keys(obj).sort();
    out.push('{');
    let first = true;
    for (const key of keys) {
      const v = obj[key];
      if (v === undefined) continue; // absent optional property
      if (!first) out.push(',');
      first = false;
      out.push(JSON.stringify(key), ':');
      encode(v, `${path}.${key}`, stack, out);
    }
    out.push('}');
  }
  stack.delete(value);
}

/** Canonical UTF-8 JSON bytes of `value`. Throws TypeError on anything outside the subset. */
export function canonicalJson(value: unknown): Buffer {
  const out: string[] = [];
  encode(value, '$', new Set(), out);
  return Buffer.from(out.join(''), 'utf8');
}

const parseEntry = recordParser(AuditEntrySchema);

/**
 * Parses stored entry bytes back into an AuditEntry, checking the shape (for readers and
 * verifiers of the log; the log itself stores and hashes the bytes, never the parsed form).
 */
export function parseAuditEntry(bytes: Uint8Array): AuditEntry {
  const parsed = parseEntry(bytes);
  if (!parsed.ok) throw new BrokerError('bad_request', `malformed audit entry: ${parsed.why}`);
  return parsed.value;
}

/** The identity metadata every entry carries: who, from where in the cluster, never an IP. */
export function identityFields(identity: Identity): Partial<AuditEntry> {
  const c = identity.claims;
  return {
    actor: identity.spiffeId,
    source: identity.source,
    ...(c.namespace ? { namespace: c.namespace } : {}),
    ...(c.serviceAccount ? { serviceAccount: c.serviceAccount } : {}),
    ...(c.podName !== undefined ? { podName: c.podName } : {}),
    ...(c.podUid !== undefined ? { podUid: c.podUid } : {}),
  };
}
