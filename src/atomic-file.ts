/**
 * Replacing a small file so that a crash (SIGKILL, power loss) at any moment leaves either the old
 * contents or the new ones: write a temporary file beside it, fsync it, rename it over the target, fsync
 * the directory. Used for state that must never go backwards or be half-written (witness records, the
 * agent's newest audit checkpoint).
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import path from 'node:path';

/** Temporary files are named `.tmp-<hex>` in the target's directory. */
export const TEMP_FILE = /^\.tmp-[0-9a-f]+$/;

async function fsyncPath(p: string): Promise<void> {
  const fh = await open(p, constants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Replaces `file` with `data` atomically and durably (mode `mode` for a new file). */
export async function writeFileAtomic(file: string, data: string | Buffer, mode = 0o600): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.tmp-${randomBytes(8).toString('hex')}`);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await fsyncPath(dir);
}
