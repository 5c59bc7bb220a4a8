/**
 * Statement templates for dynamic MariaDB / MySQL users. A template is ONE SQL statement written by the
 * operator; the only things Tessera ever puts into it are the new user's name, its password and its
 * expiry, each as a string literal escaped by the driver (mysql2's escape: quoted, quotes and
 * backslashes escaped). Templates write placeholders bare — `CREATE USER {{name}}@'%' IDENTIFIED BY
 * {{password}}` — and are checked once, at config load: a template that could smuggle a second
 * statement, an unknown placeholder or a placeholder inside quotes is refused with the field named.
 * The pool never enables multipleStatements, so the server refuses a second statement anyway.
 */
import mysql from 'mysql2';

export const MYSQL_PLACEHOLDERS = ['{{name}}', '{{password}}', '{{expiration}}'] as const;
export type MysqlPlaceholder = (typeof MYSQL_PLACEHOLDERS)[number];
export const MAX_MYSQL_TEMPLATE_CHARS = 4096;

/** The statement that creates the user when a role sets no creationStatements. */
export const DEFAULT_MYSQL_CREATION = "CREATE USER {{name}}@'%' IDENTIFIED BY {{password}}";

/**
 * Why a template is unusable, or undefined if it is fine. `allowed` are the placeholders this list
 * may use (grants may not use {{password}}: it has no business in a GRANT).
 */
export function mysqlTemplateProblem(template: string, allowed: readonly MysqlPlaceholder[] = MYSQL_PLACEHOLDERS): string | undefined {
  if (typeof template !== 'string' || template.trim() === '') return 'empty statement';
  if (template.length > MAX_MYSQL_TEMPLATE_CHARS) return `longer than ${MAX_MYSQL_TEMPLATE_CHARS} characters`;
  const body = template.trim().replace(/;$/, '');
  if (body.includes(';')) return 'one statement per list item (no ";" inside)';
  // eslint-disable-next-line no-control-regex
  if (/[\u0000]/.test(body)) return 'NUL character';
  // Comments could hide the rest of a statement from a reader (and "#"/"-- " end it early for the server).
  if (/--|#|\/\*|\*\//.test(body)) return 'no SQL comments (-- # /* */)';
  if (!body.includes('{{name}}')) return 'the statement must mention the new user as {{name}}';
  let rest = body;
  for (const p of MYSQL_PLACEHOLDERS) {
    if (!body.includes(p)) continue;
    if (!allowed.includes(p)) return `${p} is not allowed here (allowed: ${allowed.join(', ')})`;
    const esc = p.replace(/[{}]/g, '\\$&');
    if (new RegExp(`[\`'"\\\\]${esc}|${esc}[\`'"]`).test(body)) return `write ${p} bare: it is replaced by an already-quoted string literal`;
    rest = rest.split(p).join('');
  }
  if (rest.includes('{{') || rest.includes('}}')) return `the only placeholders are ${allowed.join(', ')}`;
  return undefined;
}

export interface MysqlTemplateValues {
  readonly name: string;
  readonly password: string;
  /** Lease expiry, epoch ms; rendered 'YYYY-MM-DD HH:MM:SS' (UTC). */
  readonly expiration: number;
}

/** 'YYYY-MM-DD HH:MM:SS' in UTC, what DATETIME literals take. */
export function mysqlDatetime(ms: number): string {
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d{3}Z$/, '');
}

/** The statement with every placeholder replaced by the driver-escaped string literal of its value. */
export function renderMysqlTemplate(template: string, v: MysqlTemplateValues): string {
  const values: Record<MysqlPlaceholder, string> = {
    '{{name}}': mysql.escape(v.name),
    '{{password}}': mysql.escape(v.password),
    '{{expiration}}': mysql.escape(mysqlDatetime(v.expiration)),
  };
  // One pass over the text: a value can never be read again as a placeholder.
  return template.trim().replace(/;$/, '').replace(/\{\{(name|password|expiration)\}\}/g, (m) => values[m as MysqlPlaceholder]);
}
