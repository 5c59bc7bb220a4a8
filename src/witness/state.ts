/**
 * What a witness remembers: for each log (by origin), the latest checkpoint it cosigned. One file per
 * log, `<hex SHA-256(origin)>.json`, replaced atomically: written to a temporary file, fsynced, renamed
 * over the old one, and the directory fsynced. A SIGKILL or power loss at any point leaves either the
 * old record or the new one, never a mix, so a restarted witness can never be talked into cosigning a
 * size below, or a root beside, one it already cosigned. The directory is held by one process at a time
 * (store/dir-lock.ts): two witnesses on one state would each check against a record the other replaces.
 *
 * A record that does not parse stops the witness from starting: losing its memory would let it cosign a
 * fork, so it refuses rather than start from nothing.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { HASH_SIZE } from '../audit/merkle.js';
import { TEMP_FILE, writeFileAtomic } from '../atomic-file.js';
import { type DirLock, lockDataDir } from '../store/dir-lock.js';

export interface LogRecord {
  readonly origin: string;
  readonly size: number;
  readonly rootHash: Buffer;
  /** The checkpoint as cosigned: the log's signature(s) and this witness's cosignature. */
  readonly note: string;
}

const RECORD = /^[0-9a-f]{64}\.json$/;

export const originHash = (origin: string): string => createHash('sha256').update(origin, 'utf8').digest('hex');

function parseRecord(text: string, file: string): LogRecord {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new Error(`witness state ${file} is not JSON`);
  }
  const r = v as Record<string, unknown>;
  const root = typeof r.rootHash === 'string' ? Buffer.from(r.rootHash, 'base64') : Buffer.alloc(0);
  if (
    typeof r.origin !== 'string' ||
    r.origin.length === 0 ||
    typeof r.size !== 'number' ||
    !Number.isSafeInteger(r.size) ||
    r.size < 0 ||
    root.length !== HASH_SIZE ||
    typeof r.note !== 'string'
  ) {
    throw new Error(`witness state ${file} is malformed`);
  }
  if (`${originHash(r.origin)}.json` !== path.basename(file)) throw new Error(`witness state ${file} holds another log (${r.origin})`);
  return { origin: r.origin, size: r.size, rootHash: root, note: r.note };
}

export class WitnessState {
  readonly dir: string;
  readonly #records = new Map<string, LogRecord>();
  readonly #lock: DirLock;

  private constructor(dir: string, lock: DirLock) {
    this.dir = dir;
    this.#lock = lock;
  }

  /** Creates the directory (0700) if needed, claims it, and loads every record. */
  static async open(dir: string): Promise<WitnessState> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const lock = await lockDataDir(dir);
    const state = new WitnessState(dir, lock);
    try {
      for (const name of await readdir(dir)) {
        if (TEMP_FILE.test(name)) {
          // A write that never reached its rename: the record it would have replaced is still in place.
          await rm(path.join(dir, name), { force: true });
          continue;
        }
        if (!RECORD.test(name)) continue;
        const file = path.join(dir, name);
        const rec = parseRecord(await readFile(file, 'utf8'), file);
        state.#records.set(rec.origin, rec);
      }
    } catch (err) {
      await lock.release();
      throw err;
    }
    return state;
  }

  get(origin: string): LogRecord | undefined {
    return this.#records.get(origin);
  }

  /** Makes `rec` durable, then the one in memory. */
  async put(rec: LogRecord): Promise<void> {
    const text = JSON.stringify({ origin: rec.origin, size: rec.size, rootHash: rec.rootHash.toString('base64'), note: rec.note });
    await writeFileAtomic(path.join(this.dir, `${originHash(rec.origin)}.json`), `${text}\n`);
    this.#records.set(rec.origin, rec);
  }

  /** The record for the log whose origin hashes to `hex`, for the monitoring endpoint. */
  byOriginHash(hex: string): LogRecord | undefined {
    for (const rec of this.#records.values()) if (originHash(rec.origin) === hex) return rec;
    return undefined;
  }

  async close(): Promise<void> {
    await this.#lock.release();
  }
}
