/**
 * Static secrets: values encrypted with envelope.ts, kept in the Store (space "secret", key = name).
 * Names are validated (names.ts) before any store access, so a name can never address anything but
 * its own record. The store only ever sees ciphertext.
 */
import { BrokerError } from '../errors.js';
import type { Store } from '../store/store.js';
import { EnvelopeError, type KeyRing, open, parseSealed, rewrap, seal, serializeSealed } from './envelope.js';
import { validateSecretName } from './names.js';

export { validateSecretName } from './names.js';

export const SECRET_SPACE = 'secret';
/** Secrets are small (keys, passwords, tokens, certificates): 64 KiB is plenty and keeps records small. */
export const MAX_SECRET_BYTES = 64 * 1024;

export interface RewrapReport {
  /** Records whose data key is now wrapped by the active KEK (this run). */
  readonly rewrapped: number;
  /** Records that already were. */
  readonly unchanged: number;
  /** Records that could not be re-wrapped (tampered, or wrapped by a KEK not in the ring), by name. */
  readonly failed: readonly { readonly name: string; readonly error: string }[];
}

export class SecretKv {
  constructor(
    private readonly store: Store,
    private readonly ring: KeyRing | undefined,
  ) {}

  /** The ring, or a 503 explaining that static secrets need a KEK. */
  private keys(): KeyRing {
    if (this.ring === undefined) {
      throw new BrokerError('kek_unavailable', 'static secrets are not enabled: set secrets.kekFile in the config');
    }
    return this.ring;
  }

  get activeKekId(): string | undefined {
    return this.ring?.activeId;
  }

  /** Encrypts and stores `value` under `name` (replacing any previous value). */
  async put(name: string, value: Buffer): Promise<{ kek: string }> {
    validateSecretName(name);
    if (value.length === 0) throw new BrokerError('bad_request', 'a secret value may not be empty');
    if (value.length > MAX_SECRET_BYTES) throw new BrokerError('bad_request', `a secret value is at most ${MAX_SECRET_BYTES} bytes`);
    const sealed = seal(this.keys(), value, name);
    await this.store.kvPut(SECRET_SPACE, name, serializeSealed(sealed));
    return { kek: sealed.kek };
  }

  /**
   * The plaintext, or undefined if there is no such secret. Throws EnvelopeError when the record does
   * not verify (the caller decides how loudly to report it) — never returns unauthenticated bytes.
   */
  async get(name: string): Promise<Buffer | undefined> {
    validateSecretName(name);
    const keys = this.keys();
    const text = await this.store.kvGet(SECRET_SPACE, name);
    if (text === undefined) return undefined;
    return open(keys, parseSealed(text, name), name);
  }

  async delete(name: string): Promise<boolean> {
    validateSecretName(name);
    return this.store.kvDelete(SECRET_SPACE, name);
  }

  async names(): Promise<string[]> {
    return (await this.store.kvList(SECRET_SPACE)).map((r) => r.key).sort();
  }

  /** Which KEK wraps each stored secret (for rotation checks; no decryption). */
  async kekIds(): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    for (const { key, value } of await this.store.kvList(SECRET_SPACE)) {
      try {
        out.set(key, parseSealed(value, key).kek);
      } catch {
        out.set(key, 'malformed');
      }
    }
    return out;
  }

  /**
   * Re-wraps every stored data key under `ring`'s active KEK (the ring must also hold the old KEKs).
   * Ciphertexts are not touched. A record that fails verification is reported, never rewritten.
   */
  async rewrapAll(ring: KeyRing): Promise<RewrapReport> {
    let rewrapped = 0;
    let unchanged = 0;
    const failed: { name: string; error: string }[] = [];
    for (const { key: name, value } of await this.store.kvList(SECRET_SPACE)) {
      try {
        const sealed = parseSealed(value, name);
        if (sealed.kek === ring.activeId) {
          unchanged++;
          continue;
        }
        const next = rewrap(ring, sealed, name);
        await this.store.kvPut(SECRET_SPACE, name, serializeSealed(next));
        rewrapped++;
      } catch (err) {
        if (err instanceof EnvelopeError) failed.push({ name, error: err.message });
        else throw err;
      }
    }
    return { rewrapped, unchanged, failed };
  }
}
