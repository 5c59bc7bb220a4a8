/**
 * The admin connection pool of a SQL engine (PostgreSQL, MySQL) that follows root rotation: when the
 * store holds another admin password than the pool logs in with (rotated here or on another replica),
 * a new pool is made with it and the old one is ended a little later, once its checked-out
 * connections are likely back.
 */
import type { AdminPasswordSource } from './engine.js';

/** How long a replaced pool lives on for the connections checked out of it. */
export const RETIRED_POOL_GRACE_MS = 30_000;

export interface EndablePool {
  end(): Promise<void>;
}

export class RotatingAdminPool<P extends EndablePool> {
  readonly #make: (password: string | undefined) => P;
  readonly #configPassword: string;
  readonly #source: AdminPasswordSource | undefined;
  #pool: P;
  /** The admin password the current pool logs in with. */
  #inForce: string;
  readonly #retired = new Set<P>();

  /**
   * `make(undefined)` builds the pool with the configured password (`configPassword`, as the URL or
   * password file give it); `make(password)` with a rotated one. Without `source` the pool never changes.
   */
  constructor(make: (password: string | undefined) => P, configPassword: string, source: AdminPasswordSource | undefined) {
    this.#make = make;
    this.#configPassword = configPassword;
    this.#source = source;
    this.#pool = make(undefined);
    this.#inForce = configPassword;
  }

  /** The pool for the admin password in force now. */
  async current(): Promise<P> {
    if (this.#source === undefined) return this.#pool;
    const want = (await this.#source()) ?? this.#configPassword;
    if (want === this.#inForce) return this.#pool;
    const old = this.#pool;
    this.#pool = this.#make(want);
    this.#inForce = want;
    this.#retired.add(old);
    setTimeout(() => {
      this.#retired.delete(old);
      old.end().catch(() => undefined);
    }, RETIRED_POOL_GRACE_MS).unref();
    return this.#pool;
  }

  /** Ends the current pool and every retired one. */
  async end(): Promise<void> {
    await Promise.all([this.#pool, ...this.#retired].map((p) => p.end().catch(() => undefined)));
    this.#retired.clear();
  }
}
