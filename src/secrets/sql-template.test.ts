import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { grantTemplateProblem, renderGrantTemplate } from './sql-template.js';

describe('grant templates', () => {
  it('accepts single statements that name the role', () => {
    for (const t of [
      'GRANT SELECT ON app.orders TO {{name}}',
      'GRANT USAGE ON SCHEMA app TO {{name}};',
      'ALTER ROLE {{name}} SET search_path = app',
      'GRANT app_readers TO {{name}}',
    ]) {
      expect(grantTemplateProblem(t)).toBeUndefined();
    }
  });

  it.each([
    ['empty', '  '],
    ['two statements', 'GRANT SELECT ON a TO {{name}}; DROP TABLE a'],
    ['no role named (would grant to everyone)', 'GRANT SELECT ON a TO PUBLIC'],
    ['unknown placeholder', 'GRANT SELECT ON {{table}} TO {{name}}'],
    ['placeholder with spaces', 'GRANT SELECT ON a TO {{ name }}'],
    ['quoted placeholder', 'GRANT SELECT ON a TO "{{name}}"'],
    ['placeholder in a literal', "COMMENT ON ROLE {{name}} IS '{{name}}'"],
    ['too long', `GRANT SELECT ON ${'a'.repeat(5000)} TO {{name}}`],
  ])('refuses %s', (_why, t) => {
    expect(grantTemplateProblem(t)).toBeDefined();
  });

  it('inserts the role name only as a quoted identifier, even a hostile one', () => {
    const hostile = 'x"; DROP TABLE app.orders; --';
    expect(renderGrantTemplate('GRANT SELECT ON app.orders TO {{name}};', hostile)).toBe(
      'GRANT SELECT ON app.orders TO "x""; DROP TABLE app.orders; --"',
    );
    expect(() => renderGrantTemplate('GRANT x TO {{name}}', 'a\u0000b')).toThrow();
    expect(() => renderGrantTemplate('GRANT x TO {{name}}', '')).toThrow();
  });

  it('property: the rendered identifier is the name, double-quoted with inner quotes doubled', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1, maxLength: 64 }).filter((s) => !s.includes('\u0000')), (name) => {
        const out = renderGrantTemplate('GRANT r TO {{name}}', name);
        const ident = out.slice('GRANT r TO '.length);
        // Undo PostgreSQL's quoting: strip the outer quotes, then "" → ".
        expect(ident.startsWith('"') && ident.endsWith('"')).toBe(true);
        const inner = ident.slice(1, -1);
        expect(inner.replace(/""/g, '')).not.toContain('"');
        expect(inner.replace(/""/g, '"')).toBe(name);
      }),
      { numRuns: 500 },
    );
  });
});
