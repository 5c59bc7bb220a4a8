/** Files named on the command line or in the config: a failure to read one names the option or field. */
import { readFileSync } from 'node:fs';
import type { Config } from '../config/config.js';
import { CommandFailed, UsageError } from './usage.js';

const errnoCode = (err: unknown): string | undefined => (err as NodeJS.ErrnoException | undefined)?.code;

/** Reads `file`; "--cacert x.pem: cannot read it (ENOENT)" (exit 2) or "admin.caKeyFile x.key: …" (exit 1). */
export function readNamedFile(file: string, namedBy: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    const message = `${namedBy} ${file}: cannot read it (${errnoCode(err) ?? (err as Error).message})`;
    throw namedBy.startsWith('--') ? new UsageError(message) : new CommandFailed(message);
  }
}

/** A file-system error from reading a file the config names, as CommandFailed naming the field; other errors unchanged. */
export function nameConfigFile(err: unknown, config: () => Config): unknown {
  const { code, path } = (err ?? {}) as NodeJS.ErrnoException;
  if (path === undefined || (code !== 'ENOENT' && code !== 'EACCES' && code !== 'EISDIR')) return err;
  // The config field (dotted path) whose value is that file.
  const walk = (value: unknown, at: string): string | undefined => {
    if (value === path) return at;
    if (typeof value !== 'object' || value === null) return undefined;
    for (const [k, v] of Object.entries(value)) {
      const found = walk(v, at === '' ? k : `${at}.${k}`);
      if (found !== undefined) return found;
    }
    return undefined;
  };
  let field: string | undefined;
  try {
    field = walk(config(), '');
  } catch {
    field = undefined; // the config itself no longer loads: keep the original error
  }
  return field === undefined ? err : new CommandFailed(`${field} ${path}: cannot read it (${code})`);
}
