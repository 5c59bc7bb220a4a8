/**
 * Registration entries kept in the Store (space 'registration-entry', one record per entry), shared by
 * every replica. A write also stores a new random version (space 'registration-meta'); each replica
 * polls that one key (every 250 ms by default) and reloads the entry set when it changed, so a change
 * made on one replica is in force on all of them within a second, without a restart. The replica that
 * made the change reloads before it answers.
 *
 * The config file's entries stay a read-only seed beside them (RegistrationPolicy keeps both).
 * Admin routes validate (prepare*), audit, then write: nothing changes unaudited.
 */
import { randomUUID } from 'node:crypto';
import type { Clock } from '../clock.js';
import { BrokerError, forbidden } from '../errors.js';
import type { Store } from '../store/store.js';
import { checkEntry, type EntryInput, type EntryPatch, type EntryView, parseStoredEntry, type StoredEntry } from './entry.js';
import { type PolicyEntry, type RegistrationPolicy, storedPolicyEntry } from './registration.js';
import { isBroad, parseSelectors } from './selectors.js';

export const ENTRY_SPACE = 'registration-entry';
const META_SPACE = 'registration-meta';
const VERSION_KEY = 'version';
export const DEFAULT_ENTRY_POLL_MS = 250;
/** Entry ids are UUIDs (the broker assigns them) or config-<index> for the seed. */
const ENTRY_ID = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|config-\d{1,6})$/;

export interface EntryRegistryOptions {
  readonly store: Store;
  readonly policy: RegistrationPolicy;
  readonly trustDomain: string;
  readonly clock: Clock;
  readonly pollMs?: number;
  /** A poll that failed or a stored record that does not parse (the last good entry set stays). */
  readonly onError?: (err: unknown, what: string) => void;
}

export interface EntryFilter {
  readonly spiffeId?: string | undefined;
  readonly selectors?: readonly string[] | undefined;
}

const iso = (ms: number): string => new Date(ms).toISOString();

function view(e: StoredEntry): EntryView {
  return {
    id: e.id,
    source: 'api',
    spiffeId: e.spiffeId,
    selectors: [...e.selectors],
    dnsNames: [...e.dnsNames],
    jwtAudiences: [...e.jwtAudiences],
    ...(e.x509TtlSeconds !== undefined ? { x509TtlSeconds: e.x509TtlSeconds } : {}),
    ...(e.jwtTtlSeconds !== undefined ? { jwtTtlSeconds: e.jwtTtlSeconds } : {}),
    allowBroad: e.allowBroad,
    federatesWith: [...(e.federatesWith ?? [])],
    revision: e.revision,
    createdAt: iso(e.createdAt),
    createdBy: e.createdBy,
    updatedAt: iso(e.updatedAt),
    updatedBy: e.updatedBy,
  };
}

export class EntryRegistry {
  readonly #o: EntryRegistryOptions;
  #version: string | undefined = undefined;
  #entries: readonly StoredEntry[] = [];
  #timer: NodeJS.Timeout | undefined;
  #polling: Promise<void> | undefined;
  #closed = false;

  constructor(opts: EntryRegistryOptions) {
    this.#o = opts;
  }

  /** Loads the stored entries (a store that cannot answer fails the start), then polls for changes. */
  async start(): Promise<void> {
    await this.reload();
    const ms = this.#o.pollMs ?? DEFAULT_ENTRY_POLL_MS;
    this.#timer = setInterval(() => {
      if (this.#polling !== undefined || this.#closed) return;
      this.#polling = this.poll()
        .catch((err: unknown) => this.#o.onError?.(err, 'registration entries: poll failed (the last loaded entries stay in force)'))
        .finally(() => {
          this.#polling = undefined;
        });
    }, ms);
    this.#timer.unref();
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    await this.#polling;
  }

  /** Reloads when the stored version differs from the one loaded. */
  async poll(): Promise<void> {
    const version = await this.#o.store.kvGet(META_SPACE, VERSION_KEY);
    if (version !== this.#version) await this.reload(version);
  }

  /** Reads every stored entry and puts them in force. */
  async reload(version?: string): Promise<void> {
    const v = version ?? (await this.#o.store.kvGet(META_SPACE, VERSION_KEY));
    const records = await this.#o.store.kvList(ENTRY_SPACE);
    const entries: StoredEntry[] = [];
    const policyEntries: PolicyEntry[] = [];
    for (const { key, value } of records) {
      const parsed = parseStoredEntry(value);
      if (!parsed.ok || parsed.value.id !== key) {
        this.#o.onError?.(new Error(`stored registration entry ${key} is malformed (${parsed.ok ? 'id differs' : parsed.why}); it is ignored`), 'registration entries');
        continue;
      }
      let selectors;
      try {
        // Checked when written; checked again so a record edited in the store cannot widen anything.
        selectors = parseSelectors(parsed.value.selectors, parsed.value.allowBroad);
      } catch (err) {
        this.#o.onError?.(new Error(`stored registration entry ${key}: ${(err as Error).message}; it is ignored`), 'registration entries');
        continue;
      }
      entries.push(parsed.value);
      policyEntries.push(storedPolicyEntry(parsed.value, selectors));
    }
    entries.sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id));
    this.#entries = entries;
    this.#version = v;
    this.#o.policy.replaceStored(policyEntries);
  }

  /** Config seed first (config order), then stored entries (oldest first), filtered. */
  list(filter: EntryFilter = {}): EntryView[] {
    const td = `spiffe://${this.#o.trustDomain}`;
    const seed: EntryView[] = this.#o.policy.seed.map((e) => ({
      id: e.id,
      source: 'config',
      spiffeId: `${td}${e.spiffePath ?? ''}`,
      selectors: e.selectors.map((s) => s.text),
      dnsNames: [...e.dnsNames],
      jwtAudiences: [...e.jwtAudiences],
      ...(e.x509TtlSeconds !== undefined ? { x509TtlSeconds: e.x509TtlSeconds } : {}),
      ...(e.jwtTtlSeconds !== undefined ? { jwtTtlSeconds: e.jwtTtlSeconds } : {}),
      allowBroad: isBroad(e.selectors),
      federatesWith: [...e.federatesWith],
      revision: 0,
    }));
    const all = [...seed, ...this.#entries.map(view)];
    return all.filter(
      (e) => (filter.spiffeId === undefined || e.spiffeId === filter.spiffeId) && (filter.selectors ?? []).every((s) => e.selectors.includes(s)),
    );
  }

  /** One entry (as loaded on this replica, or read from the store for the freshest), 404 if none. */
  async get(id: string): Promise<EntryView> {
    checkId(id);
    if (id.startsWith('config-')) {
      const found = this.list().find((e) => e.id === id);
      if (found === undefined) throw new BrokerError('not_found', `no registration entry ${id}`);
      return found;
    }
    return view(await this.#read(id));
  }

  async #read(id: string): Promise<StoredEntry> {
    const raw = await this.#o.store.kvGet(ENTRY_SPACE, id);
    if (raw === undefined) throw new BrokerError('not_found', `no registration entry ${id}`);
    const parsed = parseStoredEntry(raw);
    if (!parsed.ok) throw new BrokerError('internal', `stored registration entry ${id} is malformed (${parsed.why})`);
    return parsed.value;
  }

  /** A new entry from an admin's request, checked (400 naming the field); not yet stored. */
  prepareCreate(input: EntryInput, by: string): StoredEntry {
    const now = this.#o.clock.now();
    const fields = {
      spiffeId: input.spiffeId,
      selectors: input.selectors,
      dnsNames: input.dnsNames ?? [],
      jwtAudiences: input.jwtAudiences ?? [],
      ...(input.x509TtlSeconds !== undefined ? { x509TtlSeconds: input.x509TtlSeconds } : {}),
      ...(input.jwtTtlSeconds !== undefined ? { jwtTtlSeconds: input.jwtTtlSeconds } : {}),
      allowBroad: input.allowBroad === true,
      ...(input.federatesWith !== undefined && input.federatesWith.length > 0 ? { federatesWith: input.federatesWith } : {}),
    };
    const checked = checkEntry(fields, this.#o.trustDomain);
    return {
      id: randomUUID(),
      ...fields,
      spiffeId: checked.spiffeId,
      selectors: checked.selectors.map((s) => s.text),
      revision: 1,
      createdAt: now,
      createdBy: by,
      updatedAt: now,
      updatedBy: by,
    };
  }

  /** The stored entry and what `patch` makes of it, checked; not yet stored. Config entries are read-only (403). */
  async prepareUpdate(id: string, patch: EntryPatch, by: string): Promise<{ before: StoredEntry; after: StoredEntry }> {
    checkId(id);
    if (id.startsWith('config-')) throw readOnly(id);
    const before = await this.#read(id);
    const { x509TtlSeconds, jwtTtlSeconds, ...rest } = before;
    const x509 = patch.x509TtlSeconds === undefined ? x509TtlSeconds : (patch.x509TtlSeconds ?? undefined);
    const jwt = patch.jwtTtlSeconds === undefined ? jwtTtlSeconds : (patch.jwtTtlSeconds ?? undefined);
    const merged = {
      ...rest,
      ...(patch.spiffeId !== undefined ? { spiffeId: patch.spiffeId } : {}),
      ...(patch.selectors !== undefined ? { selectors: patch.selectors } : {}),
      ...(patch.dnsNames !== undefined ? { dnsNames: patch.dnsNames } : {}),
      ...(patch.jwtAudiences !== undefined ? { jwtAudiences: patch.jwtAudiences } : {}),
      ...(patch.allowBroad !== undefined ? { allowBroad: patch.allowBroad } : {}),
      ...(patch.federatesWith !== undefined ? { federatesWith: patch.federatesWith } : {}),
      ...(x509 !== undefined ? { x509TtlSeconds: x509 } : {}),
      ...(jwt !== undefined ? { jwtTtlSeconds: jwt } : {}),
    };
    const checked = checkEntry(merged, this.#o.trustDomain);
    const after: StoredEntry = {
      ...merged,
      spiffeId: checked.spiffeId,
      selectors: checked.selectors.map((s) => s.text),
      revision: before.revision + 1,
      updatedAt: this.#o.clock.now(),
      updatedBy: by,
    };
    return { before, after };
  }

  /** The entry a delete would remove (404 if none; 403 for config entries). */
  async prepareDelete(id: string): Promise<StoredEntry> {
    checkId(id);
    if (id.startsWith('config-')) throw readOnly(id);
    return this.#read(id);
  }

  /** Stores a created or updated entry and puts it in force here (other replicas within a poll). */
  async put(entry: StoredEntry): Promise<EntryView> {
    await this.#o.store.kvPut(ENTRY_SPACE, entry.id, JSON.stringify(entry));
    await this.#changed();
    return view(entry);
  }

  /** Removes an entry; resolves false if it was already gone. */
  async remove(id: string): Promise<boolean> {
    const removed = await this.#o.store.kvDelete(ENTRY_SPACE, id);
    await this.#changed();
    return removed;
  }

  async #changed(): Promise<void> {
    const version = randomUUID();
    await this.#o.store.kvPut(META_SPACE, VERSION_KEY, version);
    await this.reload(version);
  }
}

function checkId(id: string): void {
  if (!ENTRY_ID.test(id)) throw new BrokerError('not_found', `no registration entry ${JSON.stringify(id.slice(0, 80))} (ids are UUIDs, or config-<n> for config entries)`);
}

function readOnly(id: string): BrokerError {
  return forbidden(`registration entry ${id} comes from the config file (source: config); change it in the file`);
}

export { view as entryView };
