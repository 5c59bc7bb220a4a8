/**
 * One process per embedded store directory. Two brokers appending to the same audit.log would each
 * write at offsets the other does not know about and destroy the log, so the directory is claimed with
 * a lock file created exclusively (O_EXCL) and naming its holder: host, pid, and on Linux the boot and
 * the process start time, so that a holder that died (SIGKILL, power loss) or whose pid was reused is
 * recognised as gone and its lock taken over, while a live holder is refused with a clear error.
 *
 * Limits: a holder on another host (a shared network volume) cannot be checked and is always refused;
 * remove the lock file by hand once you know that process is gone.
 */
import { constants as fsConstants, promises as fsp, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import { storeUnavailable } from '../errors.js';

export const LOCK_FILE = 'tessera.lock';

/** What a lock file says about its holder. */
export interface LockHolder {
  readonly pid: number;
  readonly hostname: string;
  /** /proc/sys/kernel/random/boot_id (Linux): a holder from an earlier boot is gone. */
  readonly bootId?: string;
  /** Start time of the holder (clock ticks since boot, /proc/<pid>/stat field 22): tells a reused pid. */
  readonly startTicks?: string;
  readonly since: string;
}

export interface DirLock {
  readonly file: string;
  release(): Promise<void>;
}

/** A lock file this young that cannot be parsed is being written by its creator; an older one is debris. */
const UNREADABLE_GRACE_MS = 5_000;
/** How long after taking over a stale lock to check that nobody else took it over at the same moment. */
const TAKEOVER_SETTLE_MS = 50;

function readProc(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

function startTicksOf(pid: number): string | undefined {
  const stat = readProc(`/proc/${pid}/stat`);
  if (stat === undefined) return undefined;
  // The command name (field 2) may contain spaces and parentheses: count fields after the last ')'.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
}

function me(): LockHolder {
  const bootId = readProc('/proc/sys/kernel/random/boot_id')?.trim();
  const startTicks = startTicksOf(process.pid);
  return {
    pid: process.pid,
    hostname: hostname(),
    ...(bootId !== undefined ? { bootId } : {}),
    ...(startTicks !== undefined ? { startTicks } : {}),
    since: new Date().toISOString(),
  };
}

function parseHolder(text: string): LockHolder | undefined {
  try {
    const v = JSON.parse(text) as Partial<LockHolder>;
    if (!Number.isSafeInteger(v.pid) || typeof v.hostname !== 'string' || typeof v.since !== 'string') return undefined;
    return v as LockHolder;
  } catch {
    return undefined;
  }
}

/** Could the process that wrote `holder` still be running? Errs on the side of "yes". */
export function holderAlive(holder: LockHolder, self: LockHolder = me()): boolean {
  if (holder.hostname !== self.hostname) return true; // cannot look at another host's processes
  if (holder.bootId !== undefined && self.bootId !== undefined && holder.bootId !== self.bootId) return false;
  if (holder.startTicks !== undefined) {
    const now = startTicksOf(holder.pid);
    // /proc answers for this pid: alive only if it is the same process (same start time).
    if (now !== undefined) return now === holder.startTicks;
    if (readProc('/proc/self/stat') !== undefined) return false; // /proc works, so the pid is gone
  }
  if (holder.pid === self.pid) return false; // an earlier life of this pid (a restarted container's pid 1)
  try {
    process.kill(holder.pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function refuse(dir: string, file: string, holder: LockHolder): never {
  throw storeUnavailable(
    `store directory ${dir} is in use by process ${holder.pid} on ${holder.hostname} (since ${holder.since}); ` +
      `one broker per embedded store: stop that process first (or, if it is gone, delete ${file})`,
  );
}

async function createExclusive(file: string, holder: LockHolder): Promise<boolean> {
  let handle: fsp.FileHandle;
  try {
    handle = await fsp.open(file, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    await handle.writeFile(`${JSON.stringify(holder)}\n`);
  } finally {
    await handle.close();
  }
  return true;
}

/** Claims `dir` (which must exist) for this process; throws 503 store_unavailable if another holds it. */
export async function lockDataDir(dir: string): Promise<DirLock> {
  const file = path.join(dir, LOCK_FILE);
  const self = me();
  const mine = `${JSON.stringify(self)}\n`;
  for (let attempt = 0; attempt < 3; attempt++) {
    if (await createExclusive(file, self)) {
      if (attempt > 0) {
        // We removed a dead holder's lock; another process may have done the same at the same moment
        // and removed ours. Whoever's lock file is there after a pause holds the directory.
        await new Promise((r) => setTimeout(r, TAKEOVER_SETTLE_MS));
        const now = await fsp.readFile(file, 'utf8').catch(() => '');
        if (now !== mine) {
          const other = parseHolder(now);
          if (other !== undefined) refuse(dir, file, other);
          continue;
        }
      }
      return { file, release: () => fsp.rm(file, { force: true }) };
    }
    let text: string;
    let ageMs: number;
    try {
      text = await fsp.readFile(file, 'utf8');
      ageMs = Date.now() - (await fsp.stat(file)).mtimeMs;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // released meanwhile
      throw err;
    }
    const holder = parseHolder(text);
    if (holder === undefined) {
      if (ageMs < UNREADABLE_GRACE_MS) {
        throw storeUnavailable(`store directory ${dir} is being claimed by another process (${file} is being written); try again`);
      }
    } else if (holderAlive(holder, self)) {
      refuse(dir, file, holder);
    }
    await fsp.rm(file, { force: true });
  }
  throw storeUnavailable(`could not claim store directory ${dir}: its lock file ${file} keeps changing`);
}
