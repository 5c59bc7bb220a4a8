/**
 * TLS session-ticket keys shared by every replica through the Store, so a client that reconnects to
 * another replica (behind one load balancer address) resumes its session instead of a full handshake.
 *
 *   - A key is 48 random bytes (Node's ticket key: name, HMAC key, AES key), made by whichever replica
 *     first claims the period (Store.consumeOnce on the period number), never derived from config, and
 *     never logged. It lives in kv space `tls-ticket` under `period:<n>` (n = ⌊now / periodMs⌋) and
 *     expires two periods later. Other replicas read it; until it appears they keep their current key.
 *   - Rotation: every replica checks the period on a timer and installs the period's key
 *     (`server.setTicketKeys`). Node keeps exactly one ticket key per server and drops the previous one
 *     at once (nodejs/node#1465, #2227: no list of past keys, no ticket-key callback), so a ticket from
 *     the previous period falls back to a full handshake — the previous key is NOT kept for decryption.
 *   - A ticket made by another deployment (another Store) does not decrypt: full handshake.
 *
 * A resumed session skips no check: the client certificate's validity window, revocations and the
 * identity are judged on every request (attest/mtls.ts, server/auth.ts), from the session's certificate.
 */
import { randomBytes } from 'node:crypto';
import { type Clock, systemClock } from '../clock.js';
import type { Store } from '../store/store.js';

export const TICKET_SPACE = 'tls-ticket';
const KEY_BYTES = 48;

/** What this module needs from the HTTPS server (node:tls Server). */
export interface TicketKeyTarget {
  setTicketKeys(keys: Buffer): void;
}

export interface SharedTicketKeysOptions {
  readonly periodMs: number;
  readonly clock?: Clock;
  /** A failed refresh (the server keeps its current key meanwhile). Never given key material. */
  readonly onError?: (err: unknown) => void;
}

export class SharedTicketKeys {
  readonly #store: Store;
  readonly #target: TicketKeyTarget;
  readonly #periodMs: number;
  readonly #clock: Clock;
  readonly #onError: (err: unknown) => void;
  #installed = -1;
  #timer: NodeJS.Timeout | undefined;
  #refreshing: Promise<void> | null = null;

  private constructor(store: Store, target: TicketKeyTarget, o: SharedTicketKeysOptions) {
    this.#store = store;
    this.#target = target;
    this.#periodMs = o.periodMs;
    this.#clock = o.clock ?? systemClock;
    this.#onError = o.onError ?? (() => {});
  }

  /** Installs the current period's shared key (making it if no replica has), then follows rotations. */
  static async start(store: Store, target: TicketKeyTarget, o: SharedTicketKeysOptions): Promise<SharedTicketKeys> {
    if (!Number.isSafeInteger(o.periodMs) || o.periodMs < 1000) throw new TypeError('periodMs must be an integer of at least 1000');
    const keys = new SharedTicketKeys(store, target, o);
    await keys.refresh();
    // Checked ten times a period, so a replica follows a new period within a tenth of it.
    keys.#timer = setInterval(() => {
      keys.refresh().catch((err: unknown) => keys.#onError(err));
    }, Math.max(1000, Math.floor(o.periodMs / 10)));
    keys.#timer.unref();
    return keys;
  }

  /** The period number installed (tests). */
  get period(): number {
    return this.#installed;
  }

  /** Installs the current period's key if it is not installed yet. One refresh at a time. */
  refresh(): Promise<void> {
    this.#refreshing ??= this.#refresh().finally(() => {
      this.#refreshing = null;
    });
    return this.#refreshing;
  }

  async #refresh(): Promise<void> {
    const period = Math.floor(this.#clock.now() / this.#periodMs);
    if (period === this.#installed) return;
    const key = await this.#keyFor(period);
    if (key === undefined) return; // another replica is making it: keep the current key until it is stored
    this.#target.setTicketKeys(key);
    key.fill(0);
    this.#installed = period;
  }

  /** The stored key of `period`, made here if this replica is the first to claim the period. */
  async #keyFor(period: number): Promise<Buffer | undefined> {
    const name = `period:${period}`;
    const expiresAt = (period + 2) * this.#periodMs;
    const stored = await this.#store.kvGet(TICKET_SPACE, name);
    if (stored !== undefined) return decode(stored);
    if (await this.#store.consumeOnce(`${TICKET_SPACE}:claim:${period}`, expiresAt)) {
      const key = randomBytes(KEY_BYTES);
      await this.#store.kvPut(TICKET_SPACE, name, key.toString('base64'), expiresAt);
      return key;
    }
    const again = await this.#store.kvGet(TICKET_SPACE, name);
    return again === undefined ? undefined : decode(again);
  }

  close(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
  }
}

function decode(stored: string): Buffer | undefined {
  const key = Buffer.from(stored, 'base64');
  return key.length === KEY_BYTES ? key : undefined;
}
