/**
 * The issuance kill switch: freeze everything, or one namespace. While frozen, new credentials
 * (X.509-SVIDs, JWT-SVIDs, secret leases) are refused with 503 `issuance_frozen`.
 *
 * State lives in the Store (space 'freeze'), so every replica sees it on its next request and it
 * survives restarts. No cache, for the same reason as revocations: a check is two point reads sent
 * together. If the store cannot answer, issuance fails closed (503).
 */
import type { Clock } from '../clock.js';
import { BrokerError, badRequest } from '../errors.js';
import { validatePathSegment } from '../spiffe/id.js';
import type { KvRef, Store } from '../store/store.js';

export interface FreezeRecord {
  /** Absent: the global freeze. */
  readonly namespace?: string;
  readonly reason: string;
  readonly by: string;
  readonly at: number;
  readonly requestId: string;
}

export interface FreezeStatus {
  readonly global: FreezeRecord | null;
  readonly namespaces: readonly FreezeRecord[];
}

const SPACE = 'freeze';
const GLOBAL = 'global';
const nsKey = (namespace: string): string => `ns:${namespace}`;

export function checkNamespace(namespace: string): string {
  try {
    return validatePathSegment(namespace);
  } catch {
    throw badRequest('namespace is not a namespace name (letters, digits, ".", "-", "_")');
  }
}

function parse(raw: string): FreezeRecord | undefined {
  try {
    const r = JSON.parse(raw) as FreezeRecord;
    return typeof r === 'object' && r !== null && typeof r.at === 'number' ? r : undefined;
  } catch {
    return undefined;
  }
}

export class IssuanceFreeze {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
  ) {}

  async freeze(r: { namespace?: string; reason: string; by: string; requestId: string }): Promise<FreezeRecord> {
    const record: FreezeRecord = {
      ...(r.namespace !== undefined ? { namespace: checkNamespace(r.namespace) } : {}),
      reason: r.reason,
      by: r.by,
      at: this.clock.now(),
      requestId: r.requestId,
    };
    await this.store.kvPut(SPACE, record.namespace !== undefined ? nsKey(record.namespace) : GLOBAL, JSON.stringify(record));
    return record;
  }

  /** Lifts the global freeze (no namespace) or one namespace's; resolves false if it was not frozen. */
  thaw(namespace?: string): Promise<boolean> {
    return this.store.kvDelete(SPACE, namespace !== undefined ? nsKey(checkNamespace(namespace)) : GLOBAL);
  }

  async status(): Promise<FreezeStatus> {
    let global: FreezeRecord | null = null;
    const namespaces: FreezeRecord[] = [];
    for (const { key, value } of await this.store.kvList(SPACE)) {
      const r = parse(value);
      if (key === GLOBAL) global = r ?? { reason: '', by: '', at: 0, requestId: '' };
      else if (key.startsWith('ns:')) namespaces.push(r ?? { namespace: key.slice(3), reason: '', by: '', at: 0, requestId: '' });
    }
    return { global, namespaces: namespaces.sort((a, b) => (a.namespace ?? '').localeCompare(b.namespace ?? '')) };
  }

  /** Throws 503 `issuance_frozen` if issuance is frozen globally or for `namespace`. */
  async assertNotFrozen(namespace: string | undefined): Promise<void> {
    const refs = IssuanceFreeze.refs(namespace);
    const refusal = IssuanceFreeze.refusal(namespace, await this.store.kvGetMany(refs));
    if (refusal !== undefined) throw refusal;
  }

  /** The records that decide whether `namespace` is frozen: the global switch, then the namespace's. */
  static refs(namespace: string | undefined): KvRef[] {
    return [{ space: SPACE, key: GLOBAL }, ...(namespace !== undefined && namespace !== '' ? [{ space: SPACE, key: nsKey(namespace) }] : [])];
  }

  /** The 503 for the values of refs(namespace), in order, if any is set. */
  static refusal(namespace: string | undefined, values: readonly (string | undefined)[]): BrokerError | undefined {
    const [global, ns] = values;
    if (global !== undefined) return new BrokerError('issuance_frozen', 'issuance is frozen by an operator (kill switch); try again after it is thawed');
    if (ns !== undefined) return new BrokerError('issuance_frozen', `issuance for namespace ${namespace ?? ''} is frozen by an operator (kill switch)`);
    return undefined;
  }
}
