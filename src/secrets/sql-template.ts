/**
 * Grant templates for dynamic PostgreSQL roles. A template is ONE SQL statement written by the
 * operator; the only thing Tessera ever puts into it is the new role's name, and only as a quoted
 * identifier (pg's escapeIdentifier: wrapped in double quotes, inner quotes doubled). Nothing a caller
 * sends reaches the SQL text. Templates are checked once, at config load.
 */
import pg from 'pg';

export const NAME_PLACEHOLDER = '{{name}}';
export const MAX_TEMPLATE_CHARS = 4096;

/** Why a template is unusable, or undefined if it is fine. */
export function grantTemplateProblem(template: string): string | undefined {
  if (typeof template !== 'string' || template.trim() === '') return 'empty statement';
  if (template.length > MAX_TEMPLATE_CHARS) return `longer than ${MAX_TEMPLATE_CHARS} characters`;
  const body = template.trim().replace(/;$/, '');
  if (body.includes(';')) return 'one statement per list item (no ";" inside)';
  if (!body.includes(NAME_PLACEHOLDER)) {
    // A statement that does not name the new role would change the database for everyone (e.g. "TO PUBLIC").
    return `the statement must mention the new role as ${NAME_PLACEHOLDER}`;
  }
  const rest = body.split(NAME_PLACEHOLDER).join('');
  if (rest.includes('{{') || rest.includes('}}')) return `the only placeholder is ${NAME_PLACEHOLDER}`;
  if (/["'$]\{\{name\}\}|\{\{name\}\}["'$]/.test(body)) {
    return `write ${NAME_PLACEHOLDER} bare: it is replaced by an already-quoted identifier`;
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000]/.test(body)) return 'NUL character';
  return undefined;
}

/** The statement with every {{name}} replaced by the quoted identifier of `roleName`. */
export function renderGrantTemplate(template: string, roleName: string): string {
  if (roleName.length === 0 || roleName.includes('\u0000')) throw new TypeError('role name cannot be quoted');
  return template.trim().replace(/;$/, '').split(NAME_PLACEHOLDER).join(pg.escapeIdentifier(roleName));
}
