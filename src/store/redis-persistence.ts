/**
 * Can this Redis keep the audit log? Checked once when the broker starts on Redis (docs/redis.md,
 * "Durability"): `CONFIG GET appendonly / appendfsync / save` on every primary the broker writes to.
 *
 *   appendonly yes, appendfsync always     durable: starts quietly
 *   appendonly yes, appendfsync everysec   starts, with a warning (a host crash can lose ~1 s of entries)
 *   appendonly yes, appendfsync no         refused: the OS decides when the AOF reaches the disk
 *   appendonly no  (RDB snapshots only)    refused: a crash loses everything since the last snapshot
 *   appendonly no, save ""                 refused: a restart comes back empty
 *   CONFIG not permitted (managed Redis,   starts, with a loud warning naming what could not be checked
 *     ACLs without +config)
 *
 * `store.redis.allowVolatile: true` turns a refusal into a loud warning, for tests and demos on a
 * Redis without persistence.
 */
import { storeUnavailable } from '../errors.js';
import { RedisStore, type RedisStoreOptions } from './redis.js';

/** What `CONFIG GET` said on one node. */
export interface RedisPersistenceSettings {
  readonly appendonly: string;
  readonly appendfsync: string;
  readonly save: string;
}

/** One primary's settings, or why they could not be read. */
export type RedisNodePersistence =
  | { readonly node: string; readonly settings: RedisPersistenceSettings }
  | { readonly node: string; readonly error: string };

export type PersistenceJudgement =
  | { readonly kind: 'durable' }
  | { readonly kind: 'weak'; readonly reason: string }
  | { readonly kind: 'volatile'; readonly reason: string }
  | { readonly kind: 'unknown'; readonly reason: string };

/** The verdict on one node's settings; `reason` names the settings and what they lose. */
export function judgePersistence(s: RedisPersistenceSettings): PersistenceJudgement {
  const appendonly = s.appendonly.trim().toLowerCase();
  const fsync = s.appendfsync.trim().toLowerCase();
  const save = s.save.trim();
  if (appendonly === 'yes') {
    if (fsync === 'always') return { kind: 'durable' };
    if (fsync === 'everysec') {
      return {
        kind: 'weak',
        reason:
          'appendonly yes with appendfsync everysec: a crash of the Redis host can lose up to ~1 s of acknowledged audit entries, ' +
          'and the replicas then stop issuing until an operator recovers (docs/redis.md "Data loss"); appendfsync always loses none',
      };
    }
    if (fsync === 'no') {
      return {
        kind: 'volatile',
        reason: 'appendonly yes but appendfsync no: Redis leaves flushing the AOF to the operating system, so a crash can lose many seconds of acknowledged audit entries',
      };
    }
    return { kind: 'unknown', reason: `appendonly yes with an appendfsync value Tessera does not know (${JSON.stringify(s.appendfsync)})` };
  }
  if (appendonly === 'no') {
    if (save === '') return { kind: 'volatile', reason: 'appendonly no and save "": Redis keeps nothing across a restart, so the audit log would come back empty' };
    return {
      kind: 'volatile',
      reason: `appendonly no (RDB snapshots only, save ${JSON.stringify(save)}): a crash loses every audit entry written since the last snapshot`,
    };
  }
  return { kind: 'unknown', reason: `an appendonly value Tessera does not know (${JSON.stringify(s.appendonly)})` };
}

export interface PersistenceVerdict {
  /** Set when the broker must not start: names the node, the settings, the fix and the opt-out. */
  readonly refusal?: string;
  /** Loud lines to print at startup (weak settings, unknown settings, the opt-out in use). */
  readonly warnings: readonly string[];
}

const FIX = 'run Redis with appendonly yes and appendfsync always (docs/redis.md "Durability")';

/** The startup decision over every primary's settings. */
export function persistenceVerdict(nodes: readonly RedisNodePersistence[], opts: { allowVolatile: boolean }): PersistenceVerdict {
  const warnings: string[] = [];
  const volatile: string[] = [];
  for (const n of nodes) {
    if ('error' in n) {
      warnings.push(
        `Redis persistence NOT CHECKED on ${n.node}: CONFIG GET was refused (${n.error}). The broker starts, but cannot tell whether ` +
          `this Redis keeps the audit log: make sure it does (${FIX}; on a managed Redis, its AOF setting)`,
      );
      continue;
    }
    const j = judgePersistence(n.settings);
    if (j.kind === 'weak') warnings.push(`Redis persistence on ${n.node} is weak: ${j.reason}`);
    else if (j.kind === 'unknown') warnings.push(`Redis persistence on ${n.node} could not be judged: ${j.reason}; ${FIX}`);
    else if (j.kind === 'volatile') volatile.push(`${n.node}: ${j.reason}`);
  }
  if (volatile.length === 0) return { warnings };
  if (opts.allowVolatile) {
    warnings.push(
      `store.redis.allowVolatile is set: starting on a Redis that CANNOT KEEP THE AUDIT LOG (${volatile.join('; ')}). ` +
        'For tests and throwaway demos only; never in production',
    );
    return { warnings };
  }
  return {
    refusal:
      `Redis store: refusing to start on a Redis that cannot keep the audit log (${volatile.join('; ')}). ` +
      `Fix: ${FIX}. For a test or throwaway demo only, set store.redis.allowVolatile: true`,
    warnings,
  };
}

/**
 * The broker's way onto Redis: connect, read every primary's persistence settings, print the warnings
 * (each through `warn`), and refuse (503 store_unavailable, the connection closed) when Redis cannot
 * keep the audit log and `allowVolatile` is not set.
 */
export async function connectCheckedRedis(o: RedisStoreOptions & { readonly allowVolatile: boolean }, warn: (message: string) => void): Promise<RedisStore> {
  const store = await RedisStore.connect(o);
  try {
    const verdict = persistenceVerdict(await store.persistence(), { allowVolatile: o.allowVolatile });
    for (const w of verdict.warnings) warn(w);
    if (verdict.refusal !== undefined) throw storeUnavailable(verdict.refusal);
  } catch (err) {
    await store.close().catch(() => {});
    throw err;
  }
  return store;
}
