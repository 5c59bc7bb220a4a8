/**
 * Minting threads under load, the event loop for a lone request.
 *
 * A minting thread (minter-pool.ts) pays for itself when requests overlap: the event loop serves TLS,
 * tokens and the audit log while the thread mints. A lone request gains nothing from it and pays the
 * hop twice — post the job, wake the thread, clone the answer back, wake the event loop — ~0.1 ms of
 * latency and several context switches at concurrency 1. So when the caller says it is the only
 * issuance in flight and no job is with the threads, the job runs on the event loop (InlineMinter,
 * the same `mintX509Svid`, so the certificate and every refusal are the ones a thread would give);
 * otherwise it goes to the threads as before.
 */
import { BrokerError } from '../errors.js';
import type { CertificateAuthority } from './authority.js';
import type { MinterPool } from './minter-pool.js';
import type { InlineMinter, MintHint, X509MintRequest, X509Minted, X509Minter } from './minter.js';

export interface MintCounts {
  /** Jobs minted on the event loop because they were alone. */
  readonly inline: number;
  /** Jobs handed to the minting threads. */
  readonly threaded: number;
}

export class IdleInlineMinter implements X509Minter {
  readonly #pool: MinterPool;
  readonly #inline: InlineMinter;
  #closed = false;
  #inlineJobs = 0;
  #threadedJobs = 0;

  constructor(pool: MinterPool, inline: InlineMinter) {
    this.#pool = pool;
    this.#inline = inline;
  }

  /** Jobs with the minting threads and not yet answered. */
  get inFlight(): number {
    return this.#pool.inFlight;
  }

  get counts(): MintCounts {
    return { inline: this.#inlineJobs, threaded: this.#threadedJobs };
  }

  mint(req: X509MintRequest, hint?: MintHint): Promise<X509Minted> {
    if (this.#closed) return Promise.reject(new BrokerError('ca_unavailable', 'the broker is shutting down; nothing was issued'));
    if (hint?.alone === true && this.#pool.inFlight === 0) {
      this.#inlineJobs++;
      return this.#inline.mint(req);
    }
    this.#threadedJobs++;
    return this.#pool.mint(req);
  }

  setAuthority(ca: CertificateAuthority): void {
    this.#inline.setAuthority(ca);
    this.#pool.setAuthority(ca);
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#pool.close();
  }
}
