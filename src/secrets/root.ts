/**
 * Rotated admin ("root") passwords of the dynamic-secrets engines.
 *
 * `tessera secrets rotate-root ENGINE` makes a new random password, seals it (envelope.ts, under the
 * secrets KEK, context "root/<engine>") and stores it as *pending*; only then does the engine set it on
 * the backend with its current admin credentials; then the pending password becomes *active* and the
 * old one is forgotten. Every replica reads the active password from the store each time an engine
 * opens a backend connection, so a rotation on one replica is used by all, and survives restarts; the
 * password in the config is used only until the first rotation.
 *
 * Crash safety: a broker that dies between "pending written" and "active" leaves a pending record.
 * `settle` (run at start and before each rotation) tries the pending password against the backend; if
 * it logs in, the backend was changed and it becomes active; if not, the backend was not changed and
 * the pending record is dropped (the old password still works).
 *
 * Stored record (space "secret-root", key = engine name): {"active"?: SealedRecord, "pending"?: SealedRecord}.
 * Passwords never enter logs, audit entries or error messages.
 */
import Type, { type Static } from 'typebox';
import { BrokerError } from '../errors.js';
import { recordParser } from '../records.js';
import type { Store } from '../store/store.js';
import type { SecretEngine } from './engine.js';
import { EnvelopeError, type KeyRing, open, rewrap, SealedRecordSchema, seal, serializeSealed } from './envelope.js';
import { randomPassword } from './postgres.js';

export const ROOT_SPACE = 'secret-root';
const LOCK_TTL_MS = 120_000;

const RootRecordSchema = Type.Object(
  { active: Type.Optional(SealedRecordSchema), pending: Type.Optional(SealedRecordSchema) },
  { additionalProperties: false },
);
type RootRecord = Static<typeof RootRecordSchema>;
const parseRootRecord = recordParser(RootRecordSchema);

const context = (engine: string): string => `root/${engine}`;

export type SettleOutcome = 'none' | 'active' | 'promoted' | 'dropped';

export class RootPasswords {
  readonly #store: Store;
  readonly #ring: KeyRing | undefined;
  readonly #owner: string;
  /** While a password is being tried (settle), the engine connects with it instead of the stored one. */
  readonly #trying = new Map<string, string>();

  constructor(store: Store, ring: KeyRing | undefined, owner: string) {
    this.#store = store;
    this.#ring = ring;
    this.#owner = owner;
  }

  async #read(engine: string): Promise<RootRecord> {
    const text = await this.#store.kvGet(ROOT_SPACE, engine);
    if (text === undefined) return {};
    const parsed = parseRootRecord(text);
    if (!parsed.ok) throw new BrokerError('secret_integrity_failed', `the stored admin password of engine "${engine}" is malformed (${parsed.why}); it is not used`);
    return parsed.value;
  }

  async #write(engine: string, record: RootRecord): Promise<void> {
    const out: Record<string, string | object> = {};
    if (record.active !== undefined) out.active = JSON.parse(serializeSealed(record.active)) as object;
    if (record.pending !== undefined) out.pending = JSON.parse(serializeSealed(record.pending)) as object;
    await this.#store.kvPut(ROOT_SPACE, engine, JSON.stringify(out));
  }

  #keys(engine: string): KeyRing {
    if (this.#ring === undefined) {
      throw new BrokerError('kek_unavailable', `engine "${engine}": rotated admin passwords are stored encrypted; set secrets.kekFile in the config`);
    }
    return this.#ring;
  }

  #open(engine: string, sealed: RootRecord['active']): string | undefined {
    if (sealed === undefined) return undefined;
    try {
      return open(this.#keys(engine), sealed, context(engine)).toString('utf8');
    } catch (err) {
      if (!(err instanceof EnvelopeError)) throw err;
      if (err.reason === 'unknown-kek') throw new BrokerError('kek_unavailable', `${err.message}; add it to secrets.oldKekFiles`, { cause: err });
      throw new BrokerError('secret_integrity_failed', `the stored admin password of engine "${engine}" failed its integrity check; it is not used`, { cause: err });
    }
  }

  /**
   * The admin password `engine` connects with now, or undefined (never rotated: use the config's).
   * Engines call this on every (re)connect.
   */
  async current(engine: string): Promise<string | undefined> {
    const trying = this.#trying.get(engine);
    if (trying !== undefined) return trying;
    return this.#open(engine, (await this.#read(engine)).active);
  }

  /** A function for the engine's constructor. */
  source(engine: string): () => Promise<string | undefined> {
    return () => this.current(engine);
  }

  /** Whether a rotated password is stored for `engine` (no decryption). */
  async rotated(engine: string): Promise<boolean> {
    return (await this.#read(engine)).active !== undefined;
  }

  /** Resolves a pending password left by a crash: tried first, kept if it logs in, else dropped. */
  async settle(engine: SecretEngine): Promise<SettleOutcome> {
    const record = await this.#read(engine.name);
    if (record.pending === undefined) return record.active !== undefined ? 'active' : 'none';
    const pending = this.#open(engine.name, record.pending) ?? '';
    this.#trying.set(engine.name, pending);
    let works: boolean;
    try {
      works = (await engine.health()).ok;
    } finally {
      this.#trying.delete(engine.name);
    }
    if (works) {
      await this.#write(engine.name, { active: record.pending });
      return 'promoted';
    }
    await this.#write(engine.name, record.active !== undefined ? { active: record.active } : {});
    return 'dropped';
  }

  /**
   * Rotates `engine`'s admin password: pending → backend → active. One rotation per engine at a time
   * across replicas (a store lock). Throws BrokerError; on a backend failure the pending password is
   * settled (kept if the backend took it, dropped if not).
   */
  async rotate(engine: SecretEngine): Promise<void> {
    const ring = this.#keys(engine.name);
    const lock = `secret-root/${engine.name}`;
    if (!(await this.#store.tryLock(lock, this.#owner, LOCK_TTL_MS))) {
      throw new BrokerError('root_rotation_refused', `engine "${engine.name}": another rotation of its admin password is running; try again shortly`);
    }
    try {
      await this.settle(engine);
      const record = await this.#read(engine.name);
      const password = randomPassword();
      const pending = seal(ring, Buffer.from(password, 'utf8'), context(engine.name));
      await this.#write(engine.name, { ...record, pending });
      try {
        await engine.rotateRoot(password);
      } catch (err) {
        if (err instanceof BrokerError && err.code === 'root_rotation_refused') {
          // Refused before anything changed: the pending password was never set anywhere.
          await this.#write(engine.name, record);
        } else {
          // Unknown whether the backend took it (e.g. the answer was lost): try it, keep it only if it logs in.
          await this.settle(engine).catch(() => undefined);
        }
        throw err;
      }
      await this.#write(engine.name, { active: pending });
    } finally {
      await this.#store.unlock(lock, this.#owner).catch(() => undefined);
    }
  }

  /** Re-wraps every stored admin password under the ring's active KEK (KEK rotation). */
  async rewrapAll(ring: KeyRing): Promise<{ rewrapped: number; failed: { name: string; error: string }[] }> {
    let rewrapped = 0;
    const failed: { name: string; error: string }[] = [];
    for (const { key } of await this.#store.kvList(ROOT_SPACE)) {
      try {
        const r = await this.#read(key);
        const next: RootRecord = {
          ...(r.active !== undefined ? { active: rewrap(ring, r.active, context(key)) } : {}),
          ...(r.pending !== undefined ? { pending: rewrap(ring, r.pending, context(key)) } : {}),
        };
        await this.#write(key, next);
        rewrapped++;
      } catch (err) {
        failed.push({ name: `root/${key}`, error: (err as Error).message });
      }
    }
    return { rewrapped, failed };
  }
}
