/**
 * Names a caller can put in a URL: static secret names and PostgreSQL role names. Both are checked
 * against allow-list patterns before they reach the store or SQL, so path traversal ("..", "/x",
 * "%2e%2e") and quoting tricks are refused as 400s, never interpreted.
 */
import { badRequest } from '../errors.js';

export const SECRET_NAME_MAX_CHARS = 256;
/** Lowercase path segments separated by "/": each starts with a letter or digit. */
const SECRET_NAME = /^[a-z0-9][a-z0-9._-]*(\/[a-z0-9][a-z0-9._-]*)*$/;
/** First segment kept for dynamic engines ("postgres/<role>" names them in audit entries). */
const RESERVED_FIRST_SEGMENTS: ReadonlySet<string> = new Set(['postgres', 'mysql', 'redis', 'rabbitmq']);

/** Why `name` is not a valid secret name, or undefined if it is. */
export function secretNameProblem(name: string): string | undefined {
  if (typeof name !== 'string' || name.length === 0) return 'a secret name is required';
  if (name.length > SECRET_NAME_MAX_CHARS) return `a secret name is at most ${SECRET_NAME_MAX_CHARS} characters`;
  if (!SECRET_NAME.test(name)) {
    return 'a secret name is lowercase segments of a-z 0-9 . _ - separated by "/", each starting with a letter or digit';
  }
  if (name.includes('..')) return 'a secret name may not contain ".."';
  if (RESERVED_FIRST_SEGMENTS.has(name.split('/')[0] as string)) return `"${name.split('/')[0] as string}/…" is reserved for dynamic credentials`;
  return undefined;
}

/** Returns `name` if valid; otherwise a 400 that does not echo the (possibly hostile) input. */
export function validateSecretName(name: string): string {
  const problem = secretNameProblem(name);
  if (problem !== undefined) throw badRequest(`invalid secret name: ${problem}`);
  return name;
}

/** A grant pattern is an exact secret name, or a prefix ending in "/" that covers every name below it. */
export function secretGrantProblem(pattern: string): string | undefined {
  return pattern.endsWith('/') ? secretNameProblem(pattern.slice(0, -1)) : secretNameProblem(pattern);
}

export function grantCovers(pattern: string, name: string): boolean {
  return pattern.endsWith('/') ? name.startsWith(pattern) : name === pattern;
}

/** Role names (config keys and URL segments): short lowercase identifiers that need no quoting anywhere. */
const ROLE_NAME = /^[a-z][a-z0-9_]{0,30}$/;

export function isRoleName(role: string): boolean {
  return typeof role === 'string' && ROLE_NAME.test(role);
}

export function validateRoleName(role: string): string {
  if (!isRoleName(role)) throw badRequest('invalid role name: expected ^[a-z][a-z0-9_]{0,30}$');
  return role;
}
