// The one-process-per-directory lock, against real processes: a live holder is refused, a dead one
// (killed, rebooted, or whose pid now belongs to another process) is taken over.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp, readFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BrokerError } from '../errors.js';
import { EmbeddedStore } from './embedded.js';
import { LOCK_FILE, holderAlive, lockDataDir, type LockHolder } from './dir-lock.js';

const linux = readProcOk('/proc/self/stat');
function readProcOk(file: string): boolean {
  try {
    readFileSync(file);
    return true;
  } catch {
    return false;
  }
}
const startTicks = (pid: number): string | undefined => {
  if (!linux) return undefined;
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
};
const bootId = linux ? readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() : undefined;

let dir: string;
const children: ChildProcess[] = [];

function sleeper(): ChildProcess {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  children.push(child);
  return child;
}
async function killed(child: ChildProcess): Promise<void> {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}
const holderFor = (pid: number, over: Partial<LockHolder> = {}): LockHolder => {
  const ticks = startTicks(pid);
  return {
    pid,
    hostname: hostname(),
    ...(bootId !== undefined ? { bootId } : {}),
    ...(ticks !== undefined ? { startTicks: ticks } : {}),
    since: '2026-11-24T00:00:00.000Z',
    ...over,
  };
};
const writeLock = (holder: LockHolder | string): Promise<void> =>
  fsp.writeFile(path.join(dir, LOCK_FILE), typeof holder === 'string' ? holder : JSON.stringify(holder));

async function refusal(p: Promise<unknown>): Promise<BrokerError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BrokerError);
  expect((err as BrokerError).status).toBe(503);
  expect((err as BrokerError).code).toBe('store_unavailable');
  return err as BrokerError;
}

beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(tmpdir(), 'tessera-lock-'));
});
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await fsp.rm(dir, { recursive: true, force: true });
});

describe('lockDataDir', () => {
  it('claims the directory with a file naming this process, and removes it on release', async () => {
    const lock = await lockDataDir(dir);
    const holder = JSON.parse(await fsp.readFile(lock.file, 'utf8')) as LockHolder;
    expect(holder.pid).toBe(process.pid);
    expect(holder.hostname).toBe(hostname());
    expect(((await fsp.stat(lock.file)).mode & 0o777).toString(8)).toBe('600');
    await lock.release();
    await expect(fsp.stat(lock.file)).rejects.toThrow(/ENOENT/);
    await (await lockDataDir(dir)).release(); // free again
  });

  it('refuses while the holder runs, and takes over once it is gone', async () => {
    const child = sleeper();
    await writeLock(holderFor(child.pid!));
    const err = await refusal(lockDataDir(dir));
    expect(err.message).toContain(`in use by process ${child.pid}`);
    expect(err.message).toContain(LOCK_FILE);
    await killed(child);
    const lock = await lockDataDir(dir);
    expect((JSON.parse(await fsp.readFile(lock.file, 'utf8')) as LockHolder).pid).toBe(process.pid);
    await lock.release();
  });

  it.skipIf(!linux)('takes over from a pid that now belongs to another process (start time differs)', async () => {
    const child = sleeper();
    await writeLock(holderFor(child.pid!, { startTicks: '1' }));
    await (await lockDataDir(dir)).release();
  });

  it.skipIf(!linux)('takes over from a holder of an earlier boot, even if its pid is alive now', async () => {
    const child = sleeper();
    await writeLock(holderFor(child.pid!, { bootId: '00000000-0000-0000-0000-000000000000' }));
    await (await lockDataDir(dir)).release();
  });

  it('refuses a holder on another host (it cannot be checked from here)', async () => {
    await writeLock(holderFor(process.pid, { hostname: 'elsewhere.example' }));
    const err = await refusal(lockDataDir(dir));
    expect(err.message).toContain('on elsewhere.example');
  });

  it('treats a fresh unreadable lock as being written, and an old one as debris', async () => {
    await writeLock('{"pid": 12');
    expect((await refusal(lockDataDir(dir))).message).toMatch(/being claimed/);
    const old = new Date(Date.now() - 60_000);
    await fsp.utimes(path.join(dir, LOCK_FILE), old, old);
    await (await lockDataDir(dir)).release();
  });

  it('holderAlive: this very process is alive; an unknown pid is not', () => {
    expect(holderAlive(holderFor(process.pid))).toBe(true);
    const gone: LockHolder = { pid: 2 ** 22 + 12_345, hostname: hostname(), since: '2026-11-24T00:00:00.000Z' };
    expect(holderAlive(gone)).toBe(false);
    expect(holderAlive({ ...gone, ...(bootId !== undefined ? { bootId } : {}), startTicks: '42' })).toBe(false);
  });
});

describe('EmbeddedStore: one process per directory', () => {
  const embeddedJs = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../dist/store/embedded.js');

  it('a second process cannot open a store another process has open; after that one is killed, it can', async () => {
    const data = path.join(dir, 'data');
    const child = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `const { EmbeddedStore } = await import(${JSON.stringify(embeddedJs)});
         const s = await EmbeddedStore.open(${JSON.stringify(data)});
         await s.appendAuditEntries([Buffer.from('from the child')]);
         process.stdout.write('open\\n');
         setInterval(() => {}, 1000);`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    children.push(child);
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => d.toString().includes('open') && resolve());
      child.once('exit', (code) => reject(new Error(`child exited ${code}`)));
    });
    const err = await refusal(EmbeddedStore.open(data));
    expect(err.message).toContain(`in use by process ${child.pid}`);
    await killed(child); // SIGKILL: the lock file stays behind, naming a dead process
    const s = await EmbeddedStore.open(data);
    expect((await s.readAuditEntries(0, 1)).map(String)).toEqual(['from the child']);
    await s.close();
    await expect(fsp.stat(path.join(data, LOCK_FILE))).rejects.toThrow(/ENOENT/);
  });
});
