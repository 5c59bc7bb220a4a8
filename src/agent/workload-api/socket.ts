/**
 * The Workload API socket: its address (`unix:///absolute/path`, SPIFFE_Workload_Endpoint.md §4),
 * and the checks before binding it: the directory is not world-writable, the path is not a symlink
 * or anything but a socket, and a socket left by a crashed agent (nobody answers on it) is removed.
 */
import { lstat, mkdir, unlink } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';

/** sun_path holds 108 bytes on Linux, including the terminating NUL. */
export const MAX_SOCKET_PATH_BYTES = 107;

export class SocketPathError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SocketPathError';
  }
}

/** `unix:///run/spiffe/agent.sock` → `/run/spiffe/agent.sock`; anything else throws with the rule it breaks. */
export function socketPathOf(uri: string): string {
  let p: string;
  if (uri.startsWith('unix:///')) p = uri.slice('unix://'.length);
  else if (uri.startsWith('unix://')) throw new SocketPathError('a unix: URI has no authority: write unix:///absolute/path');
  else if (uri.startsWith('unix:/')) p = uri.slice('unix:'.length);
  else throw new SocketPathError('must be a unix:///absolute/path URI (the agent serves only a Unix socket)');
  // Read as written: a URL parser would quietly resolve "..", which must be refused instead.
  if (/[?#%\0]/.test(p)) throw new SocketPathError('a unix: URI has no query, fragment or escapes');
  if (p.endsWith('/')) throw new SocketPathError('needs an absolute path to the socket file');
  if (path.posix.normalize(p) !== p) throw new SocketPathError('the path must be normalised (no "." or ".." segments, no "//")');
  if (Buffer.byteLength(p) > MAX_SOCKET_PATH_BYTES) throw new SocketPathError(`the path is longer than ${MAX_SOCKET_PATH_BYTES} bytes`);
  return p;
}

function answers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1_000, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/**
 * Makes `socketPath` ready to bind. Creates the directory (0750) when missing; refuses a directory
 * anyone can write to, a symlink, a non-socket, or a socket another live process is serving.
 */
export async function prepareSocketPath(socketPath: string): Promise<void> {
  const dir = path.dirname(socketPath);
  await mkdir(dir, { recursive: true, mode: 0o750 });
  const d = await lstat(dir);
  if (!d.isDirectory()) throw new SocketPathError(`${dir} is not a directory`);
  if ((d.mode & 0o002) !== 0) {
    throw new SocketPathError(
      `${dir} is world-writable: anyone could replace the socket; put it in a directory of its own, which the agent creates 0750 (e.g. ${path.join(dir, 'sockets', path.basename(socketPath))})`,
    );
  }
  const existing = await lstat(socketPath).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw e;
  });
  if (existing === undefined) return;
  if (existing.isSymbolicLink()) throw new SocketPathError(`${socketPath} is a symlink; refusing to serve through it`);
  if (!existing.isSocket()) throw new SocketPathError(`${socketPath} exists and is not a socket; refusing to replace it`);
  if (await answers(socketPath)) throw new SocketPathError(`${socketPath} is in use by another process`);
  await unlink(socketPath); // left behind by an agent that did not stop cleanly
}
