import { describe, expect, it } from 'vitest';
import { BrokerError } from '../errors.js';
import { grantCovers, isRoleName, secretGrantProblem, secretNameProblem, validateSecretName } from './names.js';

describe('secret names', () => {
  it.each(['db/reporting-api-key', 'a', '0', 'team.a/svc_b/key-1', 'x/y/z'])('accepts %s', (name) => {
    expect(secretNameProblem(name)).toBeUndefined();
  });

  it.each([
    ['empty', ''],
    ['traversal', '../etc/passwd'],
    ['traversal inside', 'db/../x'],
    ['double dot in a segment', 'db/a..b'],
    ['dot segment', 'db/./x'],
    ['leading slash', '/db/x'],
    ['trailing slash', 'db/x/'],
    ['empty segment', 'db//x'],
    ['uppercase', 'DB/x'],
    ['backslash', 'db\\x'],
    ['percent-encoding', 'db%2f..%2fx'],
    ['NUL', 'db/x\u0000'],
    ['newline', 'db/x\n'],
    ['space', 'db/ x'],
    ['quote', "db/x'--"],
    ['semicolon', 'db/x;drop'],
    ['unicode look-alike', 'db/ｘ'],
    ['segment starting with a dot', 'db/.hidden'],
    ['segment starting with a dash', 'db/-x'],
    ['reserved engine prefix', 'postgres/reporting'],
    ['reserved engine name alone', 'postgres'],
    ['too long', `a/${'b'.repeat(300)}`],
  ])('refuses %s', (_why, name) => {
    expect(secretNameProblem(name)).toBeDefined();
    expect(() => validateSecretName(name)).toThrow(BrokerError);
    try {
      validateSecretName(name);
    } catch (err) {
      expect((err as BrokerError).status).toBe(400);
      // The message never echoes the hostile input.
      if (name.length > 3 && name !== 'postgres') expect((err as BrokerError).message).not.toContain(name);
    }
  });

  it('grants cover exact names, or everything below a prefix ending in "/"', () => {
    expect(grantCovers('db/key', 'db/key')).toBe(true);
    expect(grantCovers('db/key', 'db/key2')).toBe(false);
    expect(grantCovers('db/', 'db/key')).toBe(true);
    expect(grantCovers('db/', 'db/a/b')).toBe(true);
    expect(grantCovers('db/', 'dbx/key')).toBe(false);
    expect(grantCovers('db/', 'db')).toBe(false);
    expect(secretGrantProblem('db/')).toBeUndefined();
    expect(secretGrantProblem('/')).toBeDefined();
    expect(secretGrantProblem('db//')).toBeDefined();
  });

  it('role names are short lowercase identifiers', () => {
    expect(isRoleName('reporting_ro')).toBe(true);
    for (const bad of ['', 'R', '1abc', 'a-b', 'a"b', 'x; DROP ROLE postgres', 'a'.repeat(32), 'ä']) expect(isRoleName(bad)).toBe(false);
  });
});
