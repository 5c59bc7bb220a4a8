import fc from 'fast-check';
import mysql from 'mysql2';
import { describe, expect, it } from 'vitest';
import { isPermanentMysqlError, mysqlUsername } from './mysql.js';
import { DEFAULT_MYSQL_CREATION, mysqlDatetime, mysqlTemplateProblem, renderMysqlTemplate } from './mysql-template.js';

describe('mysqlTemplateProblem', () => {
  it('accepts the default creation statement and ordinary grants', () => {
    expect(mysqlTemplateProblem(DEFAULT_MYSQL_CREATION)).toBeUndefined();
    expect(mysqlTemplateProblem("GRANT SELECT ON app.* TO {{name}}@'%';", ['{{name}}', '{{expiration}}'])).toBeUndefined();
    expect(mysqlTemplateProblem("CREATE USER {{name}}@'10.0.%' IDENTIFIED BY {{password}} COMMENT {{expiration}}")).toBeUndefined();
  });

  it.each([
    ['', /empty/],
    ["GRANT SELECT ON app.* TO 'x'@'%'", /must mention the new user/],
    ["GRANT ALL ON *.* TO {{name}}@'%'; DROP DATABASE app", /one statement/],
    ["GRANT ALL ON *.* TO {{name}}@'%' -- ", /no SQL comments/],
    ["GRANT ALL ON *.* TO {{name}}@'%' # x", /no SQL comments/],
    ["GRANT /* x */ SELECT ON a.* TO {{name}}@'%'", /no SQL comments/],
    ["CREATE USER '{{name}}'@'%' IDENTIFIED BY {{password}}", /write \{\{name\}\} bare/],
    ["CREATE USER {{name}}@'%' IDENTIFIED BY '{{password}}'", /write \{\{password\}\} bare/],
    ['CREATE USER `{{name}}`@h IDENTIFIED BY {{password}}', /write \{\{name\}\} bare/],
    ["GRANT {{role}} TO {{name}}@'%'", /only placeholders/],
    ["GRANT SELECT ON a.* TO {{name}}@'%' \u0000", /NUL/],
    ['x'.repeat(5000), /longer than/],
  ])('refuses %j', (t, why) => {
    expect(mysqlTemplateProblem(t)).toMatch(why);
  });

  it('refuses {{password}} where it is not allowed (grants)', () => {
    expect(mysqlTemplateProblem("GRANT SELECT ON a.* TO {{name}}@'%' IDENTIFIED BY {{password}}", ['{{name}}', '{{expiration}}'])).toMatch(
      /\{\{password\}\} is not allowed here/,
    );
  });

  it('never throws, whatever the text (fuzz)', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 300 }), (t) => {
        const p = mysqlTemplateProblem(t);
        expect(p === undefined || typeof p === 'string').toBe(true);
      }),
    );
  });
});

describe('renderMysqlTemplate', () => {
  it('replaces every placeholder by the driver-escaped literal of its value', () => {
    const s = renderMysqlTemplate("CREATE USER {{name}}@'%' IDENTIFIED BY {{password}} COMMENT {{expiration}};", {
      name: 'tsr_r_00',
      password: "p'w\\",
      expiration: Date.UTC(2026, 0, 2, 3, 4, 5),
    });
    expect(s).toBe("CREATE USER 'tsr_r_00'@'%' IDENTIFIED BY 'p\\'w\\\\' COMMENT '2026-01-02 03:04:05'");
  });

  it('a value is one literal, whatever it holds: it is never read again as a placeholder or SQL (property)', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 64 }), fc.string({ maxLength: 64 }), (name, password) => {
        const out = renderMysqlTemplate('A {{name}} B {{password}} C', { name, password, expiration: 0 });
        expect(out).toBe(`A ${mysql.escape(name)} B ${mysql.escape(password)} C`);
      }),
    );
  });

  it('formats expirations as UTC DATETIME literals', () => {
    expect(mysqlDatetime(Date.UTC(2030, 11, 31, 23, 59, 59, 999))).toBe('2030-12-31 23:59:59');
  });
});

describe('mysqlUsername', () => {
  it('is at most 32 characters whatever the role, and keeps 64 random bits', () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[a-z][a-z0-9_]{0,7}$/), fc.stringMatching(/^[a-z][a-z0-9_]{0,30}$/), (prefix, role) => {
        const u = mysqlUsername(prefix, role);
        expect(u.length).toBeLessThanOrEqual(32);
        expect(u).toMatch(/_[0-9a-f]{16}$/);
        expect(u.startsWith(prefix + role.slice(0, 1))).toBe(true);
      }),
    );
    expect(mysqlUsername('tsr_', 'reader', Buffer.alloc(8, 0xab))).toBe('tsr_reader_abababababababab');
  });
});

describe('isPermanentMysqlError', () => {
  it('privilege refusals are permanent; network, login and load failures are not', () => {
    for (const e of [1044, 1142, 1227, 1095]) expect(isPermanentMysqlError(e), String(e)).toBe(true);
    for (const e of [1045, 1040, 2013, 1213, undefined, 'ECONNREFUSED']) expect(isPermanentMysqlError(e), String(e)).toBe(false);
  });
});
