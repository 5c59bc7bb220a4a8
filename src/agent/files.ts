/**
 * Writes the agent's output directory so that a reader never sees a half-written file, and never a
 * certificate from one rotation next to a key from another:
 *
 *   out/..data        -> ..2025-01-02T03-04-05.678Z-1a2b3c   (symlink, swapped atomically)
 *   out/..2025-…      generation directory: svid.pem svid.key bundle.pem jwt/<aud>.token
 *   out/svid.pem      -> ..data/svid.pem                       (stable paths for consumers)
 *
 * Each publish writes a complete new generation (every file fsynced, key 0600), then replaces the
 * `..data` link with one rename(2) — the single instant at which all files change together — and
 * fsyncs the directory. This is the layout Kubernetes uses for Secret and ConfigMap volumes. The
 * previous generation is kept until the next publish, so a reader that resolved `..data` just before
 * a swap can still finish reading; older ones are removed.
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, mkdir, open, readdir, readlink, rename, rm, symlink, unlink } from 'node:fs/promises';
import path from 'node:path';

export const DATA_LINK = '..data';
const GENERATION = /^\.\.\d{4}-\d{2}-\d{2}T[\d.-]+Z-[0-9a-f]+$/;

export interface OutputFile {
  /** Path relative to the output directory, e.g. "svid.pem" or "jwt/payments.token". */
  readonly path: string;
  readonly data: string | Buffer;
  readonly mode: number;
}

async function fsyncPath(p: string, flags: number = constants.O_RDONLY): Promise<void> {
  const fh = await open(p, flags);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Writes one new file: exclusive create with its final mode, write, fsync, close. */
async function writeNew(file: string, data: string | Buffer, mode: number): Promise<void> {
  const fh = await open(file, 'wx', mode);
  try {
    await fh.chmod(mode); // the umask may have narrowed the mode; never widen beyond `mode`
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Replaces (or creates) symlink `link` -> `target` atomically: temporary link, then rename over. */
async function swapLink(link: string, target: string): Promise<void> {
  const tmp = path.join(path.dirname(link), `.${path.basename(link)}.tmp-${randomBytes(6).toString('hex')}`);
  await symlink(target, tmp);
  try {
    await rename(tmp, link);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}

/** Checks a relative output path: no absolute paths, no "..", no hidden names. */
function checkRelative(rel: string): string[] {
  const parts = rel.split('/');
  if (rel.startsWith('/') || parts.some((p) => p === '' || p === '.' || p === '..' || p.startsWith('.'))) {
    throw new Error(`invalid output path ${JSON.stringify(rel)}`);
  }
  return parts;
}

export class OutputDirectory {
  constructor(readonly dir: string) {}

  /** The generation directory `..data` points at, or undefined before the first publish. */
  async current(): Promise<string | undefined> {
    try {
      return await readlink(path.join(this.dir, DATA_LINK));
    } catch {
      return undefined;
    }
  }

  /** Publishes a complete new set of files as one atomic change. */
  async publish(files: readonly OutputFile[]): Promise<string> {
    await mkdir(this.dir, { recursive: true, mode: 0o755 });
    const stamp = new Date().toISOString().replace(/:/g, '-');
    const generation = `..${stamp}-${randomBytes(4).toString('hex')}`;
    const genDir = path.join(this.dir, generation);
    const topLevel = new Set<string>();
    await mkdir(genDir, { mode: 0o755 });
    try {
      const dirs = new Set<string>([genDir]);
      for (const f of files) {
        const parts = checkRelative(f.path);
        topLevel.add(parts[0] as string);
        const target = path.join(genDir, ...parts);
        const parent = path.dirname(target);
        if (!dirs.has(parent)) {
          await mkdir(parent, { recursive: true, mode: 0o755 });
          dirs.add(parent);
        }
        await writeNew(target, f.data, f.mode);
      }
      for (const d of [...dirs].reverse()) await fsyncPath(d);
    } catch (err) {
      await rm(genDir, { recursive: true, force: true });
      throw err;
    }
    const previous = await this.current();
    await swapLink(path.join(this.dir, DATA_LINK), generation);
    // Stable names point through ..data, so they never need to change again.
    for (const name of topLevel) {
      const link = path.join(this.dir, name);
      const want = `${DATA_LINK}/${name}`;
      const existing = await lstat(link).catch(() => undefined);
      if (existing?.isSymbolicLink() && (await readlink(link)) === want) continue;
      if (existing !== undefined && existing.isDirectory()) throw new Error(`${link} is a directory; the agent needs that name for a link`);
      await swapLink(link, want);
    }
    await fsyncPath(this.dir);
    await this.#prune(new Set([generation, ...(previous !== undefined ? [previous] : [])]));
    return generation;
  }

  async #prune(keep: ReadonlySet<string>): Promise<void> {
    for (const name of await readdir(this.dir)) {
      if (GENERATION.test(name) && !keep.has(name)) {
        await rm(path.join(this.dir, name), { recursive: true, force: true });
      }
    }
  }
}
