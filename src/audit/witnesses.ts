/**
 * The broker's side of witnessing (c2sp.org/tlog-witness): every checkpoint this replica signs is sent to
 * each configured witness with a consistency proof from the size that witness last cosigned, and the
 * cosignatures that come back are kept with the checkpoint in the store.
 *
 * Nothing here is on the issuance path: `submit` only records the newest checkpoint for each witness's
 * worker, which sends it when it is free (an older one still waiting is simply replaced: a witness only
 * needs the newest). A failed call is retried with exponential backoff (0.5 s doubling to 30 s), each call
 * bounded by `timeoutMs`. A 409 tells the size the witness holds: the worker retries once from that size.
 * A witness that holds a size larger than this log has, or refuses the proof (422), has seen a different
 * history than this store holds: the log was rolled back or forked, and that is reported loudly.
 *
 * Cosigned checkpoints are kept in the store's key-value space `audit-cosigned` (embedded or Redis), one
 * record per checkpoint size, merged under a store lock, pruned to those that are the newest with their
 * number of cosignatures (so at most one per possible count). Every read verifies the log's signature
 * and every cosignature again: the store is not trusted to vouch for anything.
 *
 * Idle logs: witnesses vouch "as of time t". With no new checkpoint nothing would be resent, so the
 * newest checkpoint is resent every `refreshMs` to keep the cosignatures fresh for requireWitnesses.
 */
import { randomUUID } from 'node:crypto';
import { type Clock, systemClock } from '../clock.js';
import { BrokerError } from '../errors.js';
import type { Store } from '../store/store.js';
import { type Cosignature, type CosignerKey, verifyCosignatures } from './cosignature.js';
import type { AuditLog } from './log.js';
import { type NoteVerifier, openCheckpoint, type SignedCheckpoint } from './note.js';

export const COSIGNED_SPACE = 'audit-cosigned';
const LOCK = 'audit-cosigned';
const LOCK_TTL_MS = 5_000;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;
/** Cosignatures dated more than this after our clock are refused (witness clocks drift a little). */
const FUTURE_SLACK_SECONDS = 300;

export interface WitnessPeer {
  readonly name: string;
  /** URL prefix: add-checkpoint is POSTed to `<url>/add-checkpoint`. */
  readonly url: string;
  readonly key: CosignerKey;
}

/** A checkpoint with the cosignatures gathered for it (verified when read). */
export interface CosignedCheckpoint extends SignedCheckpoint {
  readonly cosigners: readonly Cosignature[];
}

export type WitnessOutcome = 'cosigned' | 'conflict' | 'inconsistent' | 'refused' | 'error';

export interface WitnessEvent {
  readonly witness: string;
  readonly outcome: WitnessOutcome;
  readonly size: number;
  readonly message: string;
}

export interface WitnessCollectorOptions {
  readonly store: Store;
  readonly audit: AuditLog;
  /** The audit log's own key: every stored note is re-verified with it. */
  readonly logKey: NoteVerifier;
  readonly witnesses: readonly WitnessPeer[];
  readonly quorum: number;
  readonly timeoutMs: number;
  /** How often the newest checkpoint is resent and the store re-read (ms). */
  readonly refreshMs: number;
  readonly replicaId: string;
  readonly clock?: Clock;
  /** Every call's outcome (metrics, log lines). Must not throw. */
  readonly onEvent?: (e: WitnessEvent) => void;
  /** The newest checkpoint, for the periodic resend. */
  readonly latest?: () => SignedCheckpoint | undefined;
  /** Test seam: the HTTP call. */
  readonly fetch?: typeof fetch;
}

interface StoredRecord {
  readonly note: string;
  /** Witness name → its cosignature line (final newline included). */
  readonly cosigs: Record<string, string>;
}

const sizeKey = (size: number): string => String(size).padStart(16, '0');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref());

class Peer {
  pending: SignedCheckpoint | undefined;
  running = false;
  /** The size this witness last cosigned for us, as far as we know (a 409 corrects it). */
  knownSize = 0;
  failures = 0;
  lastOutcome: WitnessOutcome | undefined;
  lastMessage = '';
  constructor(readonly peer: WitnessPeer) {}
}

export class WitnessCollector {
  readonly #o: WitnessCollectorOptions;
  readonly #clock: Clock;
  readonly #fetch: typeof fetch;
  readonly #peers: Peer[];
  readonly #owner: string;
  #closed = false;
  #timer: NodeJS.Timeout | undefined;
  /** The newest checkpoint with at least `quorum` cosignatures, as last read or written. */
  #quorum: CosignedCheckpoint | undefined;
  readonly #wakers = new Set<() => void>();
  /** Merges run one at a time in this process (the store lock below is per process owner, not per call). */
  #merging: Promise<unknown> = Promise.resolve();

  constructor(opts: WitnessCollectorOptions) {
    if (!Number.isSafeInteger(opts.quorum) || opts.quorum < 1 || opts.quorum > opts.witnesses.length) throw new TypeError('quorum must be in [1, number of witnesses]');
    this.#o = opts;
    this.#clock = opts.clock ?? systemClock;
    this.#fetch = opts.fetch ?? fetch;
    this.#peers = opts.witnesses.map((w) => new Peer(w));
    this.#owner = `${opts.replicaId}/${randomUUID()}`;
  }

  /** Reads the stored cosigned checkpoints and starts the periodic resend. */
  async start(): Promise<void> {
    await this.reload().catch((err: unknown) => this.#event('(store)', 'error', 0, `cosigned checkpoints could not be read: ${(err as Error).message}`));
    this.#timer = setInterval(() => {
      void this.reload().catch(() => {});
      const cp = this.#o.latest?.();
      if (cp !== undefined) this.submit(cp);
    }, this.#o.refreshMs);
    this.#timer.unref();
  }

  get quorum(): number {
    return this.#o.quorum;
  }

  get witnessCount(): number {
    return this.#peers.length;
  }

  /** The newest checkpoint with a quorum of cosignatures known to this replica (cached, no I/O). */
  get latestQuorum(): CosignedCheckpoint | undefined {
    return this.#quorum;
  }

  /** Per witness: the size it last cosigned for us and how the last call went. */
  get status(): { name: string; size: number; outcome?: WitnessOutcome; message: string }[] {
    return this.#peers.map((p) => ({ name: p.peer.name, size: p.knownSize, ...(p.lastOutcome !== undefined ? { outcome: p.lastOutcome } : {}), message: p.lastMessage }));
  }

  /** Hands `cp` to every witness's worker; returns at once. */
  submit(cp: SignedCheckpoint): void {
    if (this.#closed) return;
    for (const p of this.#peers) {
      if (p.pending === undefined || p.pending.size <= cp.size) p.pending = cp;
      if (!p.running) void this.#run(p);
    }
  }

  /**
   * Throws 503 witness_quorum_unavailable unless a quorum of witnesses has cosigned the log within
   * `maxLagSeconds`: the quorum-th newest cosignature on the newest quorum-cosigned checkpoint is that young.
   */
  assertWitnessed(maxLagSeconds: number): void {
    const q = this.#quorum;
    const nowS = Math.floor(this.#clock.now() / 1000);
    if (q === undefined) throw new BrokerError('witness_quorum_unavailable', `no audit checkpoint has been cosigned by ${this.#o.quorum} witness(es) yet; nothing is issued until one is (audit.requireWitnesses)`);
    const times = q.cosigners.map((c) => c.timestamp).sort((a, b) => b - a);
    const at = times[this.#o.quorum - 1] ?? 0;
    if (nowS - at > maxLagSeconds) {
      throw new BrokerError(
        'witness_quorum_unavailable',
        `the audit log was last cosigned by ${this.#o.quorum} witness(es) ${nowS - at} s ago, more than audit.maxWitnessLagSeconds (${maxLagSeconds}); nothing is issued until they catch up`,
      );
    }
  }

  /** The newest stored checkpoint with at least `k` valid cosignatures (read from the store). */
  async newest(k: number): Promise<CosignedCheckpoint | undefined> {
    const all = await this.#readAll();
    return all.find((c) => c.cosigners.length >= k);
  }

  /** Re-reads the store (other replicas gather too) and refreshes the cached quorum checkpoint. */
  async reload(): Promise<void> {
    const all = await this.#readAll();
    this.#setQuorum(all.find((c) => c.cosigners.length >= this.#o.quorum));
  }

  close(): void {
    this.#closed = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    for (const wake of this.#wakers) wake();
  }

  #setQuorum(c: CosignedCheckpoint | undefined): void {
    if (c === undefined) return;
    if (this.#quorum === undefined || c.size > this.#quorum.size || (c.size === this.#quorum.size && newestTime(c) >= newestTime(this.#quorum))) this.#quorum = c;
  }

  #event(witness: string, outcome: WitnessOutcome, size: number, message: string): void {
    // A call that was in flight at shutdown fails against the closed store: nothing to report.
    if (this.#closed) return;
    try {
      this.#o.onEvent?.({ witness, outcome, size, message });
    } catch {
      // An observer's bug must not stop the workers.
    }
  }

  /** Sends the newest pending checkpoint until none is left; backs off after failures. */
  async #run(p: Peer): Promise<void> {
    p.running = true;
    try {
      while (!this.#closed && p.pending !== undefined) {
        const cp = p.pending;
        p.pending = undefined;
        let outcome: WitnessOutcome;
        let message: string;
        try {
          ({ outcome, message } = await this.#send(p, cp));
        } catch (err) {
          outcome = 'error';
          message = `${p.peer.name}: ${(err as Error).message}`;
        }
        p.lastOutcome = outcome;
        p.lastMessage = message;
        this.#event(p.peer.name, outcome, cp.size, message);
        if (outcome === 'cosigned') {
          p.failures = 0;
          continue;
        }
        p.failures++;
        // Try again later with this checkpoint or a newer one.
        if (p.pending === undefined) p.pending = cp;
        await this.#sleep(Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** (p.failures - 1)) * (0.75 + Math.random() * 0.5));
      }
    } finally {
      p.running = false;
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(t);
        this.#wakers.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      t.unref();
      this.#wakers.add(done);
    });
  }

  /** One add-checkpoint exchange (at most one retry after a 409). */
  async #send(p: Peer, cp: SignedCheckpoint): Promise<{ outcome: WitnessOutcome; message: string }> {
    const w = p.peer;
    for (let attempt = 0; attempt < 2; attempt++) {
      const old = p.knownSize;
      if (old > cp.size) {
        // It already holds a newer checkpoint of ours (another replica's, or an earlier round).
        if (old <= (await this.#o.audit.refresh())) return { outcome: 'cosigned', message: `${w.name} already cosigned size ${old}` };
        return this.#rolledBack(w, old, cp);
      }
      const proof = old === 0 || old === cp.size ? [] : this.#o.audit.consistencyProof(old, cp.size);
      const body = `old ${old}\n${proof.map((h) => `${h.toString('base64')}\n`).join('')}\n${cp.note}`;
      const res = await this.#fetch(`${w.url.replace(/\/+$/, '')}/add-checkpoint`, {
        method: 'POST',
        body,
        headers: { 'content-type': 'text/plain; charset=utf-8' },
        signal: AbortSignal.timeout(this.#o.timeoutMs),
        redirect: 'error',
      });
      const text = await readLimited(res, 64 * 1024);
      if (res.status === 200) {
        const lines = text.split('\n').filter((l) => l !== '').map((l) => `${l}\n`);
        const mine = lines.filter((l) => l.startsWith(`\u2014 ${w.name} `));
        const got = verifyCosignatures(cp.note + mine.join(''), [w.key], { maxTimestamp: Math.floor(this.#clock.now() / 1000) + FUTURE_SLACK_SECONDS });
        if (got.length === 0) return { outcome: 'error', message: `${w.name} answered 200 without a cosignature by its key` };
        // Keep the line whose timestamp is the newest one that verified.
        const line = mine.find((l) => verifyCosignatures(cp.note + l, [w.key]).some((c) => c.timestamp === got[0]?.timestamp)) as string;
        p.knownSize = cp.size;
        await this.#merge(cp, w.name, line);
        return { outcome: 'cosigned', message: `${w.name} cosigned size ${cp.size}` };
      }
      if (res.status === 409) {
        const m = /^(0|[1-9][0-9]{0,15})\n$/.exec(text);
        if (m === null) return { outcome: 'error', message: `${w.name} answered 409 without its size` };
        const size = Number(m[1]);
        if (size > cp.size) {
          p.knownSize = size;
          if (size <= (await this.#o.audit.refresh())) return { outcome: 'cosigned', message: `${w.name} already cosigned size ${size}` };
          return this.#rolledBack(w, size, cp);
        }
        p.knownSize = size;
        continue;
      }
      if (res.status === 422) {
        return {
          outcome: 'inconsistent',
          message: `${w.name} refused checkpoint size ${cp.size}: it does not extend the checkpoint (size ${old}) the witness cosigned before (${text.trim()}); the audit log was rolled back or forked`,
        };
      }
      if (res.status === 403 || res.status === 404) {
        return { outcome: 'refused', message: `${w.name} answered ${res.status}: it does not follow this log or this audit key (${text.trim()})` };
      }
      return { outcome: 'error', message: `${w.name} answered ${res.status}: ${text.trim().slice(0, 200)}` };
    }
    return { outcome: 'error', message: `${w.name} kept answering 409` };
  }

  #rolledBack(w: WitnessPeer, size: number, cp: SignedCheckpoint): { outcome: WitnessOutcome; message: string } {
    return {
      outcome: 'conflict',
      message: `${w.name} has cosigned size ${size} of this log, larger than the ${cp.size} entries this store holds: the audit log was rolled back (entries dropped) or forked`,
    };
  }

  /** Adds `line` by `witness` to the stored record of `cp`, then prunes records that newer ones make redundant. */
  #merge(cp: SignedCheckpoint, witness: string, line: string): Promise<void> {
    const run = this.#merging.then(
      () => this.#mergeLocked(cp, witness, line),
      () => this.#mergeLocked(cp, witness, line),
    );
    this.#merging = run.catch(() => {});
    return run;
  }

  async #mergeLocked(cp: SignedCheckpoint, witness: string, line: string): Promise<void> {
    if (this.#closed) return;
    const store = this.#o.store;
    let locked = false;
    for (let i = 1; i <= 20 && !locked; i++) {
      locked = await store.tryLock(LOCK, this.#owner, LOCK_TTL_MS);
      if (!locked) await sleep(5 * i);
    }
    try {
      const key = sizeKey(cp.size);
      const prev = parseRecord(await store.kvGet(COSIGNED_SPACE, key));
      // A record for another root at this size is a fork we must not mix into: the new one replaces it.
      const base = prev !== undefined && prev.note === cp.note ? prev.cosigs : {};
      const rec: StoredRecord = { note: cp.note, cosigs: { ...base, [witness]: line } };
      await store.kvPut(COSIGNED_SPACE, key, JSON.stringify(rec));
      const all = await this.#readAll();
      // Keep a record only if it has more cosignatures than every newer one.
      let best = -1;
      for (const c of all) {
        if (c.cosigners.length > best) best = c.cosigners.length;
        else await store.kvDelete(COSIGNED_SPACE, sizeKey(c.size));
      }
      this.#setQuorum(all.find((c) => c.cosigners.length >= this.#o.quorum));
    } finally {
      if (locked) await store.unlock(LOCK, this.#owner).catch(() => {});
    }
  }

  /** Every stored record that verifies, newest first, with its valid cosignatures. */
  async #readAll(): Promise<CosignedCheckpoint[]> {
    const out: CosignedCheckpoint[] = [];
    const keys = this.#peers.map((p) => p.peer.key);
    for (const { value } of await this.#o.store.kvList(COSIGNED_SPACE)) {
      const rec = parseRecord(value);
      if (rec === undefined) continue;
      try {
        const cp = openCheckpoint(rec.note, this.#o.logKey);
        const note = rec.note + Object.keys(rec.cosigs).sort().map((k) => rec.cosigs[k]).join('');
        const cosigners = verifyCosignatures(note, keys);
        out.push({ ...cp, note, cosigners });
      } catch {
        // Not signed by our key, or a cosignature that does not verify: not evidence of anything.
      }
    }
    return out.sort((a, b) => b.size - a.size);
  }
}

function parseRecord(value: string | undefined): StoredRecord | undefined {
  if (value === undefined) return undefined;
  try {
    const v = JSON.parse(value) as StoredRecord;
    if (typeof v.note !== 'string' || typeof v.cosigs !== 'object' || v.cosigs === null) return undefined;
    for (const l of Object.values(v.cosigs)) if (typeof l !== 'string') return undefined;
    return v;
  } catch {
    return undefined;
  }
}

const newestTime = (c: CosignedCheckpoint): number => Math.max(0, ...c.cosigners.map((x) => x.timestamp));

/** The response body, at most `limit` bytes (a larger one is cut off: no valid answer is that large). */
async function readLimited(res: Response, limit: number): Promise<string> {
  if (res.body === null) return '';
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const chunks: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (n > limit) {
      await reader.cancel();
      break;
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}
