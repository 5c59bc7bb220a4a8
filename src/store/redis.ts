/**
 * Redis Store: all state several broker replicas must agree on, in one Redis (standalone, Sentinel or
 * Cluster) via ioredis. Every key lives under `{<prefix>}:` — the braces are a Cluster hash tag, so all
 * keys share one slot and multi-key scripts work in Cluster too. Key layout (see docs/redis.md):
 *
 *   {p}:audit                  list    canonical audit entries; index = position (RPUSH is the total order)
 *   {p}:checkpoints            list    signed checkpoint notes (tree sizes never decrease; see tesseraCheckpointIfNewer)
 *   {p}:once:<sha256(key)>     string  consumed single-use key, expires at the caller's expiry (PXAT)
 *   {p}:kv:<space>:<key>       string  kv record value, optional expiry (PXAT)
 *   {p}:kvi:<space>            set     keys of a space (kvList reads this, never KEYS/SCAN)
 *   {p}:hit:<windowMs>:<key>   string  fixed-window counter, expires with its window
 *   {p}:lock:<name>            string  lock owner, expires after the lease (PX)
 *   {p}:probe                  string  written by checkWritable (readiness)
 *
 * Atomicity: a single command where one suffices (SET NX PXAT consumes a nonce), Lua (defineCommand) where a step
 * touches two keys or must compare before writing (kv + index, counter + expiry, lock renew, unlock).
 * Nothing is read in Node and then written back. An audit append is a script: RPUSH (whose reply, the
 * new length, gives the first index without a read) only if the list is at least as long as this
 * client has ever seen it — a Redis that came back with less data than before (restarted without
 * persistence) is refused with audit_history_lost and gets nothing pushed (docs/redis.md "Data loss").
 *
 * Fail closed, never hang: no offline queue (commands while disconnected fail at once), no automatic
 * resend of in-flight commands after a reconnect (a resent RPUSH could append an entry twice), every
 * command bounded by commandTimeoutMs and by an outer deadline; any failure is a 503 BrokerError
 * (audit_unavailable for the audit log, store_unavailable otherwise). The client reconnects forever
 * with a short backoff, so the broker recovers by itself when Redis is back.
 *
 * A command that times out may still have run: an audit append that failed with 503 can therefore
 * appear in the log (an entry for a credential that was never handed out), but a credential is never
 * handed out without its entry. Values are opaque strings; secrets reach the store already encrypted.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import { Cluster, Redis, type ChainableCommander, type ClusterOptions, type RedisOptions } from 'ioredis';
import { type Clock, systemClock } from '../clock.js';
import { BrokerError, auditHistoryLost, auditUnavailable, storeUnavailable } from '../errors.js';
import { MAX_PAYLOAD } from './embedded.js';
import { checkCheckpointSize, checkCursor, checkDuration, checkExpiry, checkName, checkSpace, checkValue } from './limits.js';
import type { RedisNodePersistence } from './redis-persistence.js';
import type { KvRef, Store } from './store.js';

export interface RedisAddress {
  readonly host: string;
  readonly port: number;
}

export interface RedisTlsOptions {
  /** PEM file of the CA(s) that sign the Redis server certificate (default: Node's roots). */
  readonly caFile?: string;
  /** Client certificate and key for Redis servers that require mutual TLS. */
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly serverName?: string;
}

/** Exactly one of `url`, `sentinels` (+ `name`) or `nodes` selects the topology. */
export interface RedisStoreOptions {
  /** redis://[user:password@]host:port[/db] or rediss:// for TLS. */
  readonly url?: string;
  readonly sentinels?: readonly RedisAddress[];
  /** Sentinel master group name. */
  readonly name?: string;
  /** Cluster seed nodes. */
  readonly nodes?: readonly RedisAddress[];
  /** Key prefix; keys are `{prefix}:…`. Default "tessera". */
  readonly prefix?: string;
  /** After every write, `WAIT 1` for a replica's acknowledgement; fail with 503 if none acks in time. */
  readonly requireReplicaAck?: boolean;
  /** Bound on every command (default 1500 ms). */
  readonly commandTimeoutMs?: number;
  /** Bound on a connection attempt (default 1500 ms). */
  readonly connectTimeoutMs?: number;
  /** How long `connect()` waits for the first connection before giving up (default 10 s). */
  readonly startupTimeoutMs?: number;
  readonly username?: string;
  /** File holding the Redis password (kept out of the config file). */
  readonly passwordFile?: string;
  /** TLS to Redis (rediss:// URLs enable it too). */
  readonly tls?: RedisTlsOptions | undefined;
  /** Time source for nonce expiry checks (default: system clock). */
  readonly clock?: Clock;
}

const PREFIX_RE = /^[A-Za-z0-9._-]{1,64}$/;
const MAX_NONCE_KEY = 4096;
/** One append is one RPUSH; this bounds the command's size. */
const MAX_APPEND_ENTRIES = 1024;
/** Reads of the audit list per LRANGE (AuditLog reads in batches of up to 16384). */
const READ_CHUNK = 4096;
/** Reconnect backoff: quick first tries, never more than a second apart. */
const retryStrategy = (times: number): number => Math.min(50 * times, 1000);

/** Lua for steps that touch two keys or compare before writing. All keys share one hash slot. */
const SCRIPTS = {
  // KEYS: audit list. ARGV: minimum length, entries… RPUSH only onto a list at least as long as the
  // caller has seen it; otherwise an error reply (the prefix is matched in appendAuditEntries).
  tesseraAuditAppend: {
    numberOfKeys: 1,
    lua: `
      local n = redis.call('LLEN', KEYS[1])
      if n < tonumber(ARGV[1]) then
        return redis.error_reply('TESSERA_HISTORY_LOST the audit list holds ' .. n .. ' entries, fewer than the ' .. ARGV[1] .. ' seen before')
      end
      return redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))`,
  },
  // KEYS: audit list, then the guard records (kv keys). ARGV: minimum length, entries… (numkeys is the
  // first argument.) If any guard record exists nothing is pushed and the reply is every guard record's
  // value in order (nil where absent); otherwise it is tesseraAuditAppend, replying the new length. The
  // check and the append are one atomic step: no revocation can land between them.
  tesseraAuditAppendUnless: {
    numberOfKeys: 0,
    lua: `
      local vals, blocked = {}, false
      for i = 2, #KEYS do
        local v = redis.call('GET', KEYS[i])
        if v then blocked = true; vals[i - 1] = v else vals[i - 1] = false end
      end
      if blocked then return vals end
      local n = redis.call('LLEN', KEYS[1])
      if n < tonumber(ARGV[1]) then
        return redis.error_reply('TESSERA_HISTORY_LOST the audit list holds ' .. n .. ' entries, fewer than the ' .. ARGV[1] .. ' seen before')
      end
      return redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))`,
  },
  // KEYS: checkpoint list, audit list. ARGV: note, size. Refuses a size beyond the audit list (a Redis
  // that lost entries never gets a checkpoint of them). Stores the note unless the newest stored one is larger (or
  // the same size and the same bytes); returns nil when stored, else the newest note. Replicas sign
  // without a lock: this compare-and-append keeps the stored list from ever shrinking.
  tesseraCheckpointIfNewer: {
    numberOfKeys: 2,
    lua: `
      local entries = redis.call('LLEN', KEYS[2])
      if entries < tonumber(ARGV[2]) then
        return redis.error_reply('TESSERA_HISTORY_LOST the audit list holds ' .. entries .. ' entries, fewer than the checkpoint size ' .. ARGV[2])
      end
      local last = redis.call('LINDEX', KEYS[1], -1)
      if last then
        local n = tonumber(string.match(last, '^[^\\n]*\\n(%d+)\\n'))
        if n == nil then return redis.error_reply('TESSERA_CHECKPOINT_MALFORMED the newest stored checkpoint declares no tree size') end
        local want = tonumber(ARGV[2])
        if n > want or (n == want and last == ARGV[1]) then return last end
      end
      redis.call('RPUSH', KEYS[1], ARGV[1])
      return false`,
  },
  // KEYS: record, index. ARGV: key, value, pxat ('' for none). The index gains the key with the record.
  tesseraKvPut: {
    numberOfKeys: 2,
    lua: `
      if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[2])
      else redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3]) end
      redis.call('SADD', KEYS[2], ARGV[1])
      return 1`,
  },
  // KEYS: record, index. ARGV: key. Returns 1 if a live record was removed.
  tesseraKvDelete: {
    numberOfKeys: 2,
    lua: `
      local n = redis.call('DEL', KEYS[1])
      redis.call('SREM', KEYS[2], ARGV[1])
      return n`,
  },
  // KEYS: index. ARGV: record key prefix ("{p}:kv:<space>:"). Returns key, value, key, value, …;
  // index entries whose record has expired are removed on the way (same hash slot as the index).
  tesseraKvList: {
    numberOfKeys: 1,
    lua: `
      local out = {}
      local keys = redis.call('SMEMBERS', KEYS[1])
      for _, k in ipairs(keys) do
        local v = redis.call('GET', ARGV[1] .. k)
        if v then out[#out + 1] = k; out[#out + 1] = v
        else redis.call('SREM', KEYS[1], k) end
      end
      return out`,
  },
  // KEYS: counter. ARGV: windowMs. The first hit opens the window; returns {count, ms until reset}.
  tesseraHit: {
    numberOfKeys: 1,
    lua: `
      local c = redis.call('INCR', KEYS[1])
      local ttl = redis.call('PTTL', KEYS[1])
      if c == 1 or ttl < 0 then
        redis.call('PEXPIRE', KEYS[1], ARGV[1])
        ttl = tonumber(ARGV[1])
      end
      return {c, ttl}`,
  },
  // KEYS: cursor. ARGV: position. Moves an audit device's position forward only; returns the stored one.
  tesseraCursorAdvance: {
    numberOfKeys: 1,
    lua: `
      local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
      local want = tonumber(ARGV[1])
      if want > cur then
        redis.call('SET', KEYS[1], ARGV[1])
        return ARGV[1]
      end
      return tostring(cur)`,
  },
  // KEYS: lock. ARGV: owner, ttlMs. Acquire if free, renew if ours; 1 if we hold it afterwards.
  tesseraTryLock: {
    numberOfKeys: 1,
    lua: `
      local cur = redis.call('GET', KEYS[1])
      if cur == false or cur == ARGV[1] then
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return 1
      end
      return 0`,
  },
  // KEYS: lock. ARGV: owner. Compare-and-delete: never releases someone else's lock.
  tesseraUnlock: {
    numberOfKeys: 1,
    lua: `
      if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
      return 0`,
  },
} as const;

type ScriptName = keyof typeof SCRIPTS;
type Client = Redis | Cluster;
/** A pipeline with our scripts on it (defineCommand adds them at run time; TypeScript cannot see that). */
type ScriptPipeline = ChainableCommander & { [K in ScriptName]: (...args: (string | number | Buffer)[]) => ScriptPipeline };
type ScriptClient = Client & { [K in ScriptName]: (...args: (string | number)[]) => Promise<unknown> };
/** One caller's commands in a group send (RedisStore.#batch). */
interface QueuedStep {
  readonly build: (p: ScriptPipeline) => void;
  readonly write: boolean;
  readonly unavailable: Unavailable;
  readonly resolve: (replies: unknown[]) => void;
  readonly reject: (err: unknown) => void;
}

type Unavailable = (message: string, cause?: unknown) => BrokerError;

function readSecretFile(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    throw storeUnavailable(`cannot read Redis ${what} file ${file}`, err);
  }
}

function tlsOptions(t: RedisTlsOptions | undefined): ConnectionOptions | undefined {
  if (t === undefined) return undefined;
  return {
    ...(t.caFile !== undefined ? { ca: readSecretFile(t.caFile, 'TLS CA') } : {}),
    ...(t.certFile !== undefined ? { cert: readSecretFile(t.certFile, 'TLS certificate') } : {}),
    ...(t.keyFile !== undefined ? { key: readSecretFile(t.keyFile, 'TLS key') } : {}),
    ...(t.serverName !== undefined ? { servername: t.serverName } : {}),
    minVersion: 'TLSv1.2',
  };
}

/**
 * Options shared by every connection: bounded, no offline queue, no resend, reconnect forever. Never
 * `enableAutoPipelining`: beside the explicit pipelines writes go through, it broke the command order
 * the store's checks rely on (the broker failed closed with audit_history_lost; docs/performance.md).
 */
function baseOptions(o: RedisStoreOptions, commandTimeout: number): RedisOptions {
  const password = o.passwordFile !== undefined ? readSecretFile(o.passwordFile, 'password') : undefined;
  const tls = tlsOptions(o.tls);
  return {
    commandTimeout,
    connectTimeout: o.connectTimeoutMs ?? 1500,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    retryStrategy,
    lazyConnect: true,
    ...(o.username !== undefined ? { username: o.username } : {}),
    ...(password !== undefined ? { password } : {}),
    ...(tls !== undefined ? { tls } : {}),
  };
}

function createClient(o: RedisStoreOptions, commandTimeout: number): Client {
  const chosen = [o.url !== undefined, o.sentinels !== undefined, o.nodes !== undefined].filter(Boolean).length;
  if (chosen !== 1) throw storeUnavailable('Redis store: set exactly one of url, sentinels (+ name) or nodes');
  const base = baseOptions(o, commandTimeout);
  if (o.url !== undefined) {
    if (!/^rediss?:\/\//.test(o.url)) throw storeUnavailable('Redis store: url must start with redis:// or rediss://');
    return new Redis(o.url, base);
  }
  if (o.sentinels !== undefined) {
    if (o.name === undefined || o.sentinels.length === 0) throw storeUnavailable('Redis store: sentinels need a master group name and at least one address');
    return new Redis({
      ...base,
      sentinels: o.sentinels.map((s) => ({ host: s.host, port: s.port })),
      name: o.name,
      sentinelRetryStrategy: retryStrategy,
      sentinelCommandTimeout: commandTimeout,
      ...(base.tls !== undefined ? { enableTLSForSentinelMode: true, sentinelTLS: base.tls } : {}),
    });
  }
  const nodes = o.nodes ?? [];
  if (nodes.length === 0) throw storeUnavailable('Redis store: nodes needs at least one address');
  const { retryStrategy: _r, enableOfflineQueue: _q, lazyConnect: _l, ...redisOptions } = base;
  const clusterOptions: ClusterOptions = {
    enableOfflineQueue: false,
    lazyConnect: true,
    clusterRetryStrategy: retryStrategy,
    // Nodes that drop come back without a topology change (a restart): reconnect to them too.
    clusterNodeRetryStrategy: retryStrategy,
    slotsRefreshTimeout: commandTimeout,
    redisOptions,
  };
  return new Cluster(nodes.map((n) => ({ host: n.host, port: n.port })), clusterOptions);
}

export class RedisStore implements Store {
  readonly kind = 'redis' as const;
  readonly prefix: string;
  readonly #client: ScriptClient;
  readonly #clock: Clock;
  readonly #ack: boolean;
  readonly #commandTimeout: number;
  /** Outer bound on every operation, a little above the command timeout (a pipeline is several commands). */
  readonly #deadline: number;
  readonly #k: (suffix: string) => string;
  #closed = false;
  #lastError: string | undefined;
  /**
   * Set when Redis stopped answering (timeout, lost connection). While set, operations are refused at
   * once instead of each waiting out its own timeout — a request making several store calls against a
   * hung Redis still fails within one command timeout — and one PING at a time checks for recovery.
   */
  #suspect = false;
  #probing: Promise<void> | null = null;
  /** Longest the audit list has been seen (append replies, LLEN): appends refuse a shorter list. */
  #auditSeen = 0;
  /** 'ready' events so far: the first is the initial connection, every later one a reconnect. */
  #readyCount = 0;
  readonly #reconnectListeners: Array<() => void> = [];
  /** Steps queued this event-loop turn, sent together when it ends (#batch). */
  #queued: QueuedStep[] = [];

  private constructor(client: Client, o: RedisStoreOptions, prefix: string, commandTimeout: number) {
    this.#client = client as ScriptClient;
    this.prefix = prefix;
    this.#clock = o.clock ?? systemClock;
    this.#ack = o.requireReplicaAck ?? false;
    this.#commandTimeout = commandTimeout;
    this.#deadline = commandTimeout + 400;
    const base = `{${prefix}}:`;
    this.#k = (suffix) => base + suffix;
    // numberOfKeys 0: the caller passes the key count first (a variable number of keys).
    for (const [name, s] of Object.entries(SCRIPTS)) client.defineCommand(name, s.numberOfKeys === 0 ? { lua: s.lua } : { numberOfKeys: s.numberOfKeys, lua: s.lua });
    // ioredis reports connection errors as events; without a listener Node would treat them as fatal.
    client.on('error', (err: Error) => {
      this.#lastError = err.message;
    });
    client.on('ready', () => {
      this.#lastError = undefined;
      this.#suspect = false;
      if (this.#readyCount++ === 0) return;
      for (const listener of this.#reconnectListeners) {
        try {
          listener();
        } catch {
          // A listener's bug must not break the connection handling.
        }
      }
    });
  }

  /**
   * Connects and resolves once Redis answers (bounded by startupTimeoutMs). Afterwards the client
   * reconnects by itself whenever the connection drops.
   */
  static async connect(o: RedisStoreOptions): Promise<RedisStore> {
    const prefix = o.prefix ?? 'tessera';
    if (!PREFIX_RE.test(prefix)) throw storeUnavailable('Redis store: prefix must match ^[A-Za-z0-9._-]{1,64}$');
    const commandTimeout = o.commandTimeoutMs ?? 1500;
    if (!Number.isSafeInteger(commandTimeout) || commandTimeout < 100 || commandTimeout > 60_000) {
      throw storeUnavailable('Redis store: commandTimeoutMs must be an integer in [100, 60000]');
    }
    const client = createClient(o, commandTimeout);
    const store = new RedisStore(client, o, prefix, commandTimeout);
    const startup = o.startupTimeoutMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      // lazyConnect: connect() starts the first attempt; retryStrategy keeps trying until the deadline.
      const ready = new Promise<void>((resolve) => client.once('ready', () => resolve()));
      client.connect().catch(() => {});
      await Promise.race([
        ready,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(store.#lastError ?? 'no answer')), startup);
        }),
      ]);
    } catch (err) {
      client.disconnect();
      throw storeUnavailable(`Redis store: cannot connect within ${startup} ms (${(err as Error).message})`, err);
    } finally {
      clearTimeout(timer);
    }
    return store;
  }

  /** Runs `op` bounded by the deadline; every failure becomes a 503 (or the BrokerError it already is). */
  async #run<T>(what: string, op: () => Promise<T>, unavailable: Unavailable = storeUnavailable): Promise<T> {
    if (this.#closed) throw unavailable('store is closed');
    if (this.#suspect) {
      this.#probe();
      throw unavailable(`Redis unavailable: ${what} refused while Redis is not answering (${this.#lastError ?? 'timeout'})`);
    }
    try {
      return await this.#bounded(op());
    } catch (err) {
      if (err instanceof BrokerError) throw err;
      // A reply error (OOM, READONLY, MISCONF…) means Redis answered: no reason to stop talking to it.
      if ((err as Error).name !== 'ReplyError') {
        this.#suspect = true;
        this.#lastError = (err as Error).message;
      }
      throw unavailable(`Redis unavailable: ${what} failed (${(err as Error).message})`, err);
    }
  }

  async #bounded<T>(p: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        p,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${this.#deadline} ms`)), this.#deadline);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** One PING at a time while suspect; success lets operations through again. Failures are paced. */
  #probe(): void {
    if (this.#probing !== null || this.#closed) return;
    this.#probing = (async () => {
      try {
        await this.#bounded(this.#client.ping());
        this.#suspect = false;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      } finally {
        this.#probing = null;
      }
    })();
  }

  /**
   * Runs writes as one pipeline step (one round trip, one connection), followed by `WAIT 1` when replica
   * acknowledgement is required; returns each command's reply. See #batch for how steps are sent.
   */
  #write(build: (p: ScriptPipeline) => void, unavailable: Unavailable = storeUnavailable): Promise<unknown[]> {
    return this.#batch(build, true, unavailable);
  }

  /** A read sent the way writes are (#batch): the per-request reads of the issuance path. */
  #read(build: (p: ScriptPipeline) => void): Promise<unknown[]> {
    return this.#batch(build, false, storeUnavailable);
  }

  /**
   * Group send: the steps queued in one event-loop turn go to Redis as ONE pipeline, in the order they
   * were queued, when the turn ends (setImmediate). Under load that is one socket write and one read
   * event in Redis for several requests' commands instead of one each — the CPU the Redis path spent
   * beyond the embedded store went largely to those writes (docs/performance.md). Each step keeps its
   * own replies and its own errors; every script stays one atomic command, so batching changes no
   * outcome, only how many commands share a write. With replica acknowledgement on, one `WAIT 1` at
   * the end covers every write in the batch (WAIT waits for all earlier writes on the connection).
   * Not ioredis's auto-pipelining: beside explicit pipelines it broke command order (see baseOptions).
   */
  #batch(build: (p: ScriptPipeline) => void, write: boolean, unavailable: Unavailable): Promise<unknown[]> {
    return new Promise<unknown[]>((resolve, reject) => {
      this.#queued.push({ build, write, unavailable, resolve, reject });
      if (this.#queued.length === 1) setImmediate(() => this.#sendQueued());
    });
  }

  #sendQueued(): void {
    const steps = this.#queued;
    this.#queued = [];
    // Whatever goes wrong, every step is settled (settling twice is a no-op): none may hang or crash.
    this.#sendSteps(steps).catch((err: unknown) => {
      for (const s of steps) s.reject(err);
    });
  }

  async #sendSteps(steps: readonly QueuedStep[]): Promise<void> {
    const p = this.#client.pipeline() as ScriptPipeline;
    const spans: { readonly step: QueuedStep; readonly from: number; readonly to: number }[] = [];
    for (const step of steps) {
      const from = p.length;
      try {
        step.build(p);
      } catch (err) {
        // A step that added nothing fails alone; one that added part of itself cannot be sent.
        if (p.length !== from) {
          for (const s of steps) s.reject(err);
          return;
        }
        step.reject(err);
        continue;
      }
      spans.push({ step, from, to: p.length });
    }
    if (spans.length === 0) return;
    const writes = spans.some((s) => s.step.write);
    const n = p.length;
    // WAIT's own timeout stays inside the command timeout so a missing replica is reported, not timed out.
    if (this.#ack && writes) p.wait(1, Math.max(50, this.#commandTimeout - 300));
    let res: [Error | null, unknown][] | null;
    try {
      res = await p.exec();
    } catch (err) {
      for (const s of spans) s.step.reject(err);
      return;
    }
    if (res === null) {
      for (const s of spans) s.step.reject(s.step.unavailable('Redis unavailable: pipeline was discarded'));
      return;
    }
    const replies = res;
    // Fail closed: a WAIT that errored or is missing counts as no replica having acknowledged.
    const wait = this.#ack && writes ? replies[n] : undefined;
    const waitError = wait?.[0] ?? undefined;
    const unacknowledged = this.#ack && writes && (wait === undefined || waitError !== undefined || !(Number(wait[1]) >= 1));
    for (const { step, from, to } of spans) {
      const out: unknown[] = [];
      let failed: Error | null = null;
      for (let i = from; i < to; i++) {
        const [err, value] = replies[i] ?? [new Error('Redis returned fewer replies than commands'), undefined];
        if (err) {
          failed = err; // #run classifies it (a timeout marks Redis as not answering)
          break;
        }
        out.push(value);
      }
      if (failed !== null) step.reject(failed);
      else if (step.write && unacknowledged) {
        step.reject(step.unavailable(`Redis: no replica acknowledged the write in time (requireReplicaAck)${waitError !== undefined ? `: ${waitError.message}` : ''}`, waitError));
      }
      else step.resolve(out);
    }
  }

  appendAuditEntries(entries: readonly Buffer[]): Promise<number> {
    return this.#run(
      'audit append',
      async () => {
        const r = await this.#append(entries, []);
        if (!('index' in r)) throw auditUnavailable('Redis refused an unguarded audit append');
        return r.index;
      },
      auditUnavailable,
    );
  }

  /** One command (a script): the guard records read and, only if none exists, the entries pushed. */
  appendAuditEntriesUnless(entries: readonly Buffer[], unless: readonly KvRef[]): Promise<{ index: number } | { blocked: (string | undefined)[] }> {
    return this.#run('audit append', () => this.#append(entries, unless), auditUnavailable);
  }

  async #append(entries: readonly Buffer[], unless: readonly KvRef[]): Promise<{ index: number } | { blocked: (string | undefined)[] }> {
    if (entries.length === 0 || entries.length > MAX_APPEND_ENTRIES) {
      throw new BrokerError('bad_request', `one append carries 1..${MAX_APPEND_ENTRIES} entries`);
    }
    for (const e of entries) {
      if (!(e instanceof Uint8Array) || e.length > MAX_PAYLOAD) {
        throw new BrokerError('bad_request', `audit entries must be buffers of at most ${MAX_PAYLOAD} bytes`);
      }
    }
    for (const r of unless) {
      checkSpace(r.space);
      checkName('kv key', r.key);
    }
    const args = entries.map((e) => Buffer.from(e));
    // The script's RPUSH is atomic and returns the new length: our entries are the last `entries.length`.
    let len: unknown;
    try {
      [len] = await this.#write(
        (p) =>
          void (unless.length === 0
            ? p.tesseraAuditAppend(this.#k('audit'), this.#auditSeen, ...args)
            : p.tesseraAuditAppendUnless(1 + unless.length, this.#k('audit'), ...unless.map((r) => this.#k(`kv:${r.space}:${r.key}`)), this.#auditSeen, ...args)),
        auditUnavailable,
      );
    } catch (err) {
      if (err instanceof Error && err.name === 'ReplyError' && err.message.includes('TESSERA_HISTORY_LOST')) {
        throw auditHistoryLost(`Redis lost audit entries: ${err.message.slice(err.message.indexOf('TESSERA_HISTORY_LOST') + 21)}; nothing was appended`, err);
      }
      throw err;
    }
    if (Array.isArray(len)) {
      if (len.length !== unless.length) throw auditUnavailable('Redis returned a malformed guarded append');
      return { blocked: len.map((v: unknown) => (typeof v === 'string' ? v : Buffer.isBuffer(v) ? v.toString('utf8') : undefined)) };
    }
    const first = Number(len) - entries.length;
    if (!Number.isSafeInteger(first) || first < 0) throw auditUnavailable(`Redis returned an invalid audit length ${String(len)}`);
    this.#sawAuditSize(Number(len));
    return { index: first };
  }

  auditSize(): Promise<number> {
    return this.#run(
      'audit size',
      async () => {
        const n = await this.#client.llen(this.#k('audit'));
        this.#sawAuditSize(n);
        return n;
      },
      auditUnavailable,
    );
  }

  #sawAuditSize(n: number): void {
    if (n > this.#auditSeen) this.#auditSeen = n;
  }

  /** `listener` runs after every reconnect (not the first connection); see Store.onReconnect. */
  onReconnect(listener: () => void): void {
    this.#reconnectListeners.push(listener);
  }

  readAuditEntries(start: number, end: number): Promise<Buffer[]> {
    return this.#run(
      'audit read',
      async () => {
        if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
          throw new BrokerError('bad_request', 'record range must satisfy 0 <= start <= end');
        }
        const out: Buffer[] = [];
        for (let i = start; i < end; i += READ_CHUNK) {
          const to = Math.min(end, i + READ_CHUNK);
          const got = await this.#client.lrangeBuffer(this.#k('audit'), i, to - 1);
          out.push(...got);
          if (got.length !== to - i) {
            throw new BrokerError('bad_request', `record range must satisfy 0 <= start <= end <= ${i + got.length}`);
          }
        }
        return out;
      },
      auditUnavailable,
    );
  }

  appendCheckpoint(note: string): Promise<void> {
    return this.#run('checkpoint append', async () => {
      if (typeof note !== 'string' || note.length === 0) throw new BrokerError('bad_request', 'checkpoint note must be a non-empty string');
      if (Buffer.byteLength(note, 'utf8') > MAX_PAYLOAD) throw new BrokerError('bad_request', 'checkpoint note too large');
      await this.#write((p) => void p.rpush(this.#k('checkpoints'), note));
    });
  }

  appendCheckpointIfNewer(note: string, size: number): Promise<string | undefined> {
    return this.#run('checkpoint append', async () => {
      if (typeof note !== 'string' || note.length === 0) throw new BrokerError('bad_request', 'checkpoint note must be a non-empty string');
      if (Buffer.byteLength(note, 'utf8') > MAX_PAYLOAD) throw new BrokerError('bad_request', 'checkpoint note too large');
      checkCheckpointSize(size);
      let newest: unknown;
      try {
        [newest] = await this.#write((p) => void p.tesseraCheckpointIfNewer(this.#k('checkpoints'), this.#k('audit'), note, size));
      } catch (err) {
        if (err instanceof Error && err.name === 'ReplyError' && err.message.includes('TESSERA_HISTORY_LOST')) {
          throw auditHistoryLost(`Redis lost audit entries: ${err.message.slice(err.message.indexOf('TESSERA_HISTORY_LOST') + 21)}; no checkpoint was stored`, err);
        }
        throw err;
      }
      if (newest === null || newest === undefined) return undefined;
      if (typeof newest !== 'string') throw storeUnavailable('Redis returned a malformed checkpoint');
      return newest;
    });
  }

  listCheckpoints(): Promise<string[]> {
    return this.#run('checkpoint list', () => this.#client.lrange(this.#k('checkpoints'), 0, -1));
  }

  auditCursor(device: string): Promise<number> {
    return this.#run('auditCursor', async () => {
      checkCursor(device);
      const v = await this.#client.get(this.#k(`cursor:${device}`));
      return v === null ? 0 : Number(v);
    });
  }

  advanceAuditCursor(device: string, position: number): Promise<number> {
    return this.#run('advanceAuditCursor', async () => {
      checkCursor(device, position);
      const [res] = await this.#write((p) => void p.tesseraCursorAdvance(this.#k(`cursor:${device}`), position));
      const n = Number(res);
      if (!Number.isSafeInteger(n)) throw storeUnavailable('Redis returned a malformed audit cursor');
      return n;
    });
  }

  /** SET NX PXAT: one atomic command. Keys are stored as SHA-256 (bounded size, no raw token IDs). */
  consumeOnce(key: string, expiresAtMs: number): Promise<boolean> {
    return this.#run('consumeOnce', async () => {
      checkName('key', key, MAX_NONCE_KEY);
      if (!Number.isSafeInteger(expiresAtMs)) throw new BrokerError('bad_request', 'expiresAtMs must be an integer');
      if (expiresAtMs <= this.#clock.now()) return false;
      const id = createHash('sha256').update(key, 'utf8').digest('base64url');
      const [res] = await this.#write((p) => void p.set(this.#k(`once:${id}`), '1', 'PXAT', expiresAtMs, 'NX'));
      return res === 'OK';
    });
  }

  kvPut(space: string, key: string, value: string, expiresAtMs?: number): Promise<void> {
    return this.#run('kvPut', async () => {
      checkSpace(space);
      checkName('kv key', key);
      checkValue(value);
      checkExpiry(expiresAtMs);
      await this.#write((p) => void p.tesseraKvPut(this.#k(`kv:${space}:${key}`), this.#k(`kvi:${space}`), key, value, expiresAtMs ?? ''));
    });
  }

  kvGet(space: string, key: string): Promise<string | undefined> {
    return this.#run('kvGet', async () => {
      checkSpace(space);
      checkName('kv key', key);
      return (await this.#client.get(this.#k(`kv:${space}:${key}`))) ?? undefined;
    });
  }

  /** MGET: one command (every key shares the prefix's hash slot, so Cluster takes it too). */
  kvGetMany(refs: readonly KvRef[]): Promise<(string | undefined)[]> {
    return this.#run('kvGetMany', async () => {
      for (const r of refs) {
        checkSpace(r.space);
        checkName('kv key', r.key);
      }
      if (refs.length === 0) return [];
      const [got] = await this.#read((p) => void p.mget(...refs.map((r) => this.#k(`kv:${r.space}:${r.key}`))));
      if (!Array.isArray(got) || got.length !== refs.length) throw storeUnavailable('Redis returned a malformed MGET reply');
      return got.map((v: unknown) => (typeof v === 'string' ? v : undefined));
    });
  }

  kvDelete(space: string, key: string): Promise<boolean> {
    return this.#run('kvDelete', async () => {
      checkSpace(space);
      checkName('kv key', key);
      const [n] = await this.#write((p) => void p.tesseraKvDelete(this.#k(`kv:${space}:${key}`), this.#k(`kvi:${space}`), key));
      return Number(n) > 0;
    });
  }

  kvList(space: string): Promise<{ key: string; value: string }[]> {
    return this.#run('kvList', async () => {
      checkSpace(space);
      // Runs as a script because it also drops index entries of expired records (a write).
      const [flat] = await this.#write((p) => void p.tesseraKvList(this.#k(`kvi:${space}`), this.#k(`kv:${space}:`)));
      if (!Array.isArray(flat)) throw storeUnavailable('Redis returned a malformed kv list');
      const out: { key: string; value: string }[] = [];
      for (let i = 0; i + 1 < flat.length; i += 2) out.push({ key: String(flat[i]), value: String(flat[i + 1]) });
      return out;
    });
  }

  hit(key: string, windowMs: number): Promise<{ count: number; resetInMs: number }> {
    return this.#run('hit', async () => {
      checkName('counter key', key);
      checkDuration('windowMs', windowMs);
      const [res] = await this.#write((p) => void p.tesseraHit(this.#k(`hit:${windowMs}:${key}`), windowMs));
      if (!Array.isArray(res) || res.length !== 2) throw storeUnavailable('Redis returned a malformed counter');
      return { count: Number(res[0]), resetInMs: Number(res[1]) };
    });
  }

  tryLock(name: string, owner: string, ttlMs: number): Promise<boolean> {
    return this.#run('tryLock', async () => {
      checkName('lock name', name);
      checkName('lock owner', owner);
      checkDuration('ttlMs', ttlMs);
      const [res] = await this.#write((p) => void p.tesseraTryLock(this.#k(`lock:${name}`), owner, ttlMs));
      return Number(res) === 1;
    });
  }

  unlock(name: string, owner: string): Promise<void> {
    return this.#run('unlock', async () => {
      checkName('lock name', name);
      checkName('lock owner', owner);
      await this.#write((p) => void p.tesseraUnlock(this.#k(`lock:${name}`), owner));
    });
  }

  /**
   * A real write (not just PING): it also catches a read-only replica after a failover, an OOM with
   * `noeviction` and MISCONF (Redis refusing writes because it cannot persist).
   */
  checkWritable(): Promise<void> {
    return this.#run('write probe', async () => {
      if (this.#client.status !== 'ready') {
        throw storeUnavailable(`Redis unavailable: connection is ${this.#client.status}${this.#lastError ? ` (${this.#lastError})` : ''}`);
      }
      await this.#write((p) => void p.set(this.#k('probe'), String(this.#clock.now()), 'PX', 10_000));
    });
  }

  /** Quits gracefully (pending replies arrive first), disconnecting hard if that takes too long. */
  /**
   * `CONFIG GET appendonly / appendfsync / save` on every primary this store writes to (the one server,
   * the Sentinel's master, or each Cluster master): whether Redis can keep the audit log
   * (store/redis-persistence.ts judges it). A node that refuses CONFIG reports why instead.
   */
  async persistence(): Promise<RedisNodePersistence[]> {
    const targets: { node: string; client: Redis }[] =
      this.#client instanceof Cluster
        ? this.#client.nodes('master').map((c) => ({ node: `${c.options.host ?? '?'}:${c.options.port ?? '?'}`, client: c }))
        : [{ node: this.#nodeName(this.#client), client: this.#client }];
    return Promise.all(
      targets.map(async ({ node, client }): Promise<RedisNodePersistence> => {
        try {
          const get = async (name: string): Promise<string> => {
            const reply = await this.#bounded(client.config('GET', name));
            // [name, value] pairs; a setting the server does not have is an empty list.
            const value = Array.isArray(reply) ? (reply as unknown[])[1] : undefined;
            if (typeof value !== 'string') throw new Error(`no value for ${name}`);
            return value;
          };
          const [appendonly, appendfsync, save] = [await get('appendonly'), await get('appendfsync'), await get('save')];
          return { node, settings: { appendonly, appendfsync, save } };
        } catch (err) {
          return { node, error: (err as Error).message };
        }
      }),
    );
  }

  /** How messages name a standalone server (its configured address) or a Sentinel's current master. */
  #nodeName(client: Redis): string {
    const o = client.options;
    if ((o.sentinels ?? []).length === 0) return `${o.host ?? '?'}:${o.port ?? 6379}`;
    const remote = (client.stream as { remoteAddress?: string; remotePort?: number } | undefined) ?? {};
    return `Sentinel master ${o.name ?? '?'} at ${remote.remoteAddress ?? '?'}:${remote.remotePort ?? '?'}`;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.#client.quit(),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, this.#commandTimeout);
        }),
      ]);
    } catch {
      /* already gone */
    } finally {
      clearTimeout(timer);
      this.#client.disconnect();
    }
  }
}
