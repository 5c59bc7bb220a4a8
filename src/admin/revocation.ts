/**
 * Revocations: SPIFFE IDs, whole namespaces and certificate serials an operator has cut off.
 *
 * They live in the Store (space 'revocation'), so every replica sees a revocation on its next request
 * and it survives restarts. There is deliberately no cache: a check is up to three point reads issued
 * together (one round trip to Redis, a map lookup in the embedded store), and "revoked" means at once.
 * A store that cannot answer fails the request closed (503), never open.
 */
import type { Clock } from '../clock.js';
import { BrokerError, badRequest } from '../errors.js';
import { parseSpiffeId, validatePathSegment } from '../spiffe/id.js';
import type { KvRef, Store } from '../store/store.js';

export type RevocationKind = 'spiffeId' | 'namespace' | 'serial';
export const REVOCATION_KINDS: readonly RevocationKind[] = ['spiffeId', 'namespace', 'serial'];

export interface Revocation {
  readonly kind: RevocationKind;
  readonly value: string;
  readonly reason: string;
  /** SPIFFE ID of the admin who revoked it. */
  readonly by: string;
  readonly at: number;
  readonly requestId: string;
}

/** What a check looks at: every name a caller or a credential goes by. Empty/undefined entries are skipped. */
export interface RevocationSubject {
  readonly spiffeIds?: readonly (string | undefined)[];
  readonly namespaces?: readonly (string | undefined)[];
  readonly serials?: readonly (string | undefined)[];
}

const SPACE = 'revocation';
const SERIAL = /^[0-9a-f]{1,64}$/;

/** Serials compare as numbers: lowercase hex, no colons, no leading zeros ("0A:1b" and "a1b" differ; "00a1b" = "a1b"). */
export function normalizeSerial(serial: string): string | undefined {
  const hex = serial.replaceAll(':', '').toLowerCase().replace(/^0+(?=.)/, '');
  return SERIAL.test(hex) ? hex : undefined;
}

/** Validates and canonicalizes a revocation target; a 400 names what is wrong. */
export function normalizeTarget(kind: RevocationKind, value: string): string {
  switch (kind) {
    case 'spiffeId': {
      let id;
      try {
        id = parseSpiffeId(value);
      } catch (err) {
        throw badRequest(`value is not a SPIFFE ID: ${(err as Error).message}`);
      }
      if (id.path === '') throw badRequest('revoke a workload or admin ID, not a whole trust domain');
      return id.uri;
    }
    case 'namespace':
      try {
        validatePathSegment(value);
      } catch {
        throw badRequest('value is not a namespace name (letters, digits, ".", "-", "_")');
      }
      return value;
    case 'serial': {
      const serial = normalizeSerial(value);
      if (serial === undefined) throw badRequest('value is not a certificate serial (hex, optionally with colons)');
      return serial;
    }
  }
}

const keyOf = (kind: RevocationKind, value: string): string => `${kind}:${value}`;

function parse(raw: string | undefined): Revocation | undefined {
  if (raw === undefined) return undefined;
  try {
    const r = JSON.parse(raw) as Revocation;
    if (typeof r === 'object' && r !== null && REVOCATION_KINDS.includes(r.kind) && typeof r.value === 'string') return r;
  } catch {
    // fall through: a record we cannot read still revokes (see find()).
  }
  return undefined;
}

export class Revocations {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
  ) {}

  async add(r: { kind: RevocationKind; value: string; reason: string; by: string; requestId: string }): Promise<Revocation> {
    const record: Revocation = { ...r, value: normalizeTarget(r.kind, r.value), at: this.clock.now() };
    await this.store.kvPut(SPACE, keyOf(record.kind, record.value), JSON.stringify(record));
    return record;
  }

  /** Lifts a revocation; resolves false if there was none. */
  remove(kind: RevocationKind, value: string): Promise<boolean> {
    return this.store.kvDelete(SPACE, keyOf(kind, normalizeTarget(kind, value)));
  }

  async list(): Promise<Revocation[]> {
    const out: Revocation[] = [];
    for (const { value } of await this.store.kvList(SPACE)) {
      const r = parse(value);
      if (r !== undefined) out.push(r);
    }
    return out.sort((a, b) => a.at - b.at);
  }

  /** The first revocation that applies to `subject`, if any. All reads go out at once. */
  async find(subject: RevocationSubject): Promise<Revocation | undefined> {
    return (await this.findWith(subject, [])).revocation;
  }

  /**
   * find(), reading `extra` records in the same store call (one Redis command): the issuance guard
   * reads the freeze records with the revocations. Resolves with their values in order.
   */
  async findWith(subject: RevocationSubject, extra: readonly KvRef[]): Promise<{ revocation: Revocation | undefined; extra: (string | undefined)[] }> {
    const { refs, judge } = Revocations.lookup(subject);
    const found = await this.store.kvGetMany([...refs, ...extra]);
    return { revocation: judge(found.slice(0, refs.length)), extra: found.slice(refs.length) };
  }

  /**
   * The records that decide whether `subject` is revoked, and the judgement over their values (in
   * order): for reading them together with other records, or inside an atomic audit append.
   */
  static lookup(subject: RevocationSubject): { refs: KvRef[]; judge: (values: readonly (string | undefined)[]) => Revocation | undefined } {
    const keys: { kind: RevocationKind; value: string }[] = [];
    const add = (kind: RevocationKind, values: readonly (string | undefined)[] | undefined): void => {
      for (const v of values ?? []) {
        if (v === undefined || v === '') continue;
        const value = kind === 'serial' ? normalizeSerial(v) : v;
        if (value !== undefined && !keys.some((k) => k.kind === kind && k.value === value)) keys.push({ kind, value });
      }
    };
    add('spiffeId', subject.spiffeIds);
    add('namespace', subject.namespaces);
    add('serial', subject.serials);
    return {
      refs: keys.map((k) => ({ space: SPACE, key: keyOf(k.kind, k.value) })),
      judge: (values) => {
        for (const [i, k] of keys.entries()) {
          const raw = values[i];
          if (raw === undefined) continue;
          // An unreadable record still revokes: fail closed.
          return parse(raw) ?? { kind: k.kind, value: k.value, reason: '', by: '', at: 0, requestId: '' };
        }
        return undefined;
      },
    };
  }

  /** The 403 for a revocation find() returned. */
  static refusal(r: Revocation): BrokerError {
    const what = r.kind === 'spiffeId' ? r.value : r.kind === 'namespace' ? `namespace ${r.value}` : `certificate serial ${r.value}`;
    return new BrokerError('revoked', `${what} has been revoked by an operator`);
  }

  async assertNotRevoked(subject: RevocationSubject): Promise<void> {
    const r = await this.find(subject);
    if (r !== undefined) throw Revocations.refusal(r);
  }
}
