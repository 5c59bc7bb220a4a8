/**
 * Argument checks shared by every Store implementation, so the embedded and the Redis store accept and
 * refuse exactly the same inputs (the contract test runs against both). Bad input is a caller bug, but
 * it still becomes a 400 BrokerError rather than a crash.
 */
import { BrokerError } from '../errors.js';

/** Space names: short, lowercase, safe inside file records and Redis key names. */
const SPACE_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
export const MAX_KEY_CHARS = 1024;
/** Values are small records (encrypted secrets, lease metadata); 256 KiB is far above any of them. */
export const MAX_VALUE_BYTES = 256 * 1024;
/** Longest lock lease and rate-limit window: a week. Anything longer is a unit mistake. */
export const MAX_DURATION_MS = 7 * 24 * 3600 * 1000;
export const MAX_NAME_CHARS = 4096;

const bad = (message: string): BrokerError => new BrokerError('bad_request', message);

export function checkSpace(space: string): void {
  if (typeof space !== 'string' || !SPACE_RE.test(space)) {
    throw bad('kv space must match ^[a-z0-9][a-z0-9._-]{0,63}$');
  }
}

/** Non-empty string of at most `max` characters (nonce keys, kv keys, counter and lock names). */
export function checkName(what: string, name: string, max = MAX_KEY_CHARS): void {
  if (typeof name !== 'string' || name.length === 0 || name.length > max) {
    throw bad(`${what} must be a non-empty string of at most ${max} chars`);
  }
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export function checkValue(value: string): void {
  if (typeof value !== 'string') throw bad('kv value must be a string');
  // Lone surrogates cannot survive UTF-8; refuse them rather than store something else than was given.
  if (LONE_SURROGATE.test(value)) throw bad('kv value must be well-formed Unicode');
  if (Buffer.byteLength(value, 'utf8') > MAX_VALUE_BYTES) throw bad(`kv value must be at most ${MAX_VALUE_BYTES} bytes`);
}

export function checkExpiry(expiresAtMs: number | undefined): void {
  if (expiresAtMs !== undefined && (!Number.isSafeInteger(expiresAtMs) || expiresAtMs <= 0)) {
    throw bad('expiresAtMs must be a positive integer (ms since the epoch)');
  }
}

export function checkDuration(what: string, ms: number): void {
  if (!Number.isSafeInteger(ms) || ms <= 0 || ms > MAX_DURATION_MS) {
    throw bad(`${what} must be an integer number of ms in 1..${MAX_DURATION_MS}`);
  }
}

/** An audit device name and position (advanceAuditCursor): a short name, a non-negative safe integer. */
export function checkCursor(device: string, position?: number): void {
  if (typeof device !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(device)) throw bad('audit device name must match ^[A-Za-z0-9._-]{1,64}$');
  if (position !== undefined && (!Number.isSafeInteger(position) || position < 0)) throw bad('audit cursor position must be a non-negative integer');
}

/** appendCheckpointIfNewer's size: a non-negative safe integer. */
export function checkCheckpointSize(size: number): void {
  if (!Number.isSafeInteger(size) || size < 0) throw bad('checkpoint size must be a non-negative integer');
}

/**
 * The tree size a stored checkpoint note declares (its second line, C2SP tlog-checkpoint), or
 * undefined when it has none: the same rule as the Lua in store/redis.ts.
 */
export function storedCheckpointSize(note: string): number | undefined {
  const m = /^[^\n]*\n(\d{1,16})\n/.exec(note);
  if (m === null) return undefined;
  const n = Number(m[1]);
  return Number.isSafeInteger(n) ? n : undefined;
}
