/**
 * `tessera break-glass …`: make this deployment's break-glass keys, sign and co-sign an emergency
 * request (offline, where the keys are kept), and redeem it against a broker. See docs/admin-breakglass.md.
 * The commands and their options are in BREAK_GLASS_COMMANDS at the end.
 */
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  MAX_REQUEST_VALIDITY_SECONDS,
  type BreakGlassClaims,
  cosignBreakGlassRequest,
  generateBreakGlassKey,
  keyIdOf,
  newJti,
  parseGeneralJws,
  signBreakGlassRequest,
  unverifiedClaims,
} from '../admin/breakglass-jws.js';
import { breakGlassGrantProblem, loadConfig } from '../config/load.js';
import { validateTrustDomain } from '../spiffe/id.js';
import { command } from './command.js';
import { adminRequest, refused } from './connection.js';
import { readNamedFile } from './files.js';
import { UsageError } from './usage.js';

const out = (s: string): boolean => process.stdout.write(s);
const err = (s: string): boolean => process.stderr.write(s);

/** "15m", "900s", "900", "1h" → seconds. */
export function parseTtl(text: string): number {
  const m = /^(\d{1,6})(s|m|h)?$/.exec(text.trim());
  if (!m) throw new UsageError(`--ttl "${text}": expected a duration like 15m, 900s or 1h`);
  const n = Number(m[1]) * (m[2] === 'h' ? 3600 : m[2] === 'm' ? 60 : 1);
  if (n < 60 || n > 86_400) throw new UsageError('--ttl must be between 1m and 24h (the broker caps it at its maximum, 15m by default)');
  return n;
}

function readKey(file: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UsageError(`--key ${file}: cannot read a private key (${(e as Error).message})`);
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new UsageError(`--key ${file}: not an Ed25519 break-glass key`);
  return key;
}

/** 0600, and never over an existing file unless `overwrite` (then the mode is forced back to 0600). */
function writeSecretFile(file: string, data: string | Buffer, overwrite = false): void {
  if (!overwrite && existsSync(file)) throw new UsageError(`${file} already exists; choose another path (nothing was overwritten)`);
  writeFileSync(file, data, { mode: 0o600, flag: overwrite ? 'w' : 'wx' });
  if (overwrite) chmodSync(file, 0o600);
}

type Values<K extends string> = { [k in K]?: string | undefined };

function init(values: Values<'out' | 'count' | 'prefix'>): void {
  if (values.out === undefined) throw new UsageError('break-glass init needs --out DIR (where the private keys are written, to be moved offline)');
  const count = Number(values.count ?? '1');
  if (!Number.isInteger(count) || count < 1 || count > 16) throw new UsageError('--count must be between 1 and 16');
  const prefix = values.prefix ?? 'bg';
  if (!/^[A-Za-z0-9._-]{1,32}$/.test(prefix)) throw new UsageError('--prefix: 1-32 of A-Z a-z 0-9 . _ -');
  mkdirSync(values.out, { recursive: true, mode: 0o700 });
  const keys: { id: string; publicKey: string; kid: string; file: string }[] = [];
  for (let i = 1; i <= count; i++) {
    const id = `${prefix}-${i}`;
    const file = path.join(values.out, `${id}.key`);
    if (existsSync(file)) throw new UsageError(`${file} already exists; break-glass keys are never overwritten`);
  }
  for (let i = 1; i <= count; i++) {
    const id = `${prefix}-${i}`;
    const file = path.join(values.out, `${id}.key`);
    const k = generateBreakGlassKey();
    // 'wx': written exactly once, never over an existing key.
    writeFileSync(file, k.privateKeyPem, { mode: 0o600, flag: 'wx' });
    keys.push({ id, publicKey: k.publicKey, kid: k.kid, file });
  }
  out(
    [
      '# Add to the broker config (tessera.yaml). Public keys only: the broker never holds a private key.',
      'breakGlass:',
      `  requiredSignatures: ${count >= 2 ? 2 : 1}   # M of N distinct keys per request (2 = two-person rule)`,
      '  maxTtlSeconds: 900      # credentials live at most this long (≤ 900)',
      '  allowedGrants: [auditor, operator, secrets-admin]',
      '  keys:',
      ...keys.flatMap((k) => [`    - id: ${k.id}    # kid ${k.kid}`, `      publicKey: ${k.publicKey}`]),
      '',
    ].join('\n'),
  );
  err(
    [
      '',
      `Wrote ${keys.length} private key(s) (0600):`,
      ...keys.map((k) => `  ${k.file}`),
      '',
      'NOW: copy each private key to offline storage (e.g. an encrypted USB stick in a safe, one per',
      'key holder), verify the copy, then delete it from this machine (shred -u FILE). The broker only',
      'needs the public keys above. Break-glass also needs audit.alerts.webhookUrl and a break-glass alert rule.',
      '',
    ].join('\n'),
  );
}

function trustDomainFrom(values: { 'trust-domain'?: string | undefined; config?: string | undefined }): string {
  if (values['trust-domain'] !== undefined) {
    try {
      return validateTrustDomain(values['trust-domain']);
    } catch (e) {
      throw new UsageError(`--trust-domain: ${(e as Error).message}`);
    }
  }
  return loadConfig(values.config !== undefined ? { file: values.config } : {}).trustDomain;
}

function describe(c: BreakGlassClaims, signatures: number): string {
  return [
    `  deployment : ${c.aud}`,
    `  grant      : ${c.grant}`,
    `  ticket     : ${c.ticket}`,
    `  reason     : ${c.reason}`,
    `  ttl        : ${c.ttlSeconds}s (the broker caps it)`,
    `  signed at  : ${new Date(c.iat * 1000).toISOString()}  — redeem before ${new Date(c.exp * 1000).toISOString()}`,
    `  signatures : ${signatures}`,
    `  jti        : ${c.jti}`,
  ].join('\n');
}

async function request(values: Values<'reason' | 'ticket' | 'grant' | 'ttl' | 'trust-domain' | 'config' | 'out'> & { key?: string[] | undefined }): Promise<void> {
  const keyFiles = values.key ?? [];
  if (keyFiles.length === 0) throw new UsageError('break-glass request needs --key FILE (repeat --key for M-of-N)');
  if (values.reason === undefined || values.ticket === undefined || values.grant === undefined) {
    throw new UsageError('break-glass request needs --reason "…", --ticket INC-123 and --grant <auditor|operator|secrets-admin|secret:NAME>');
  }
  const problem = values.grant.endsWith('/') ? 'name one secret, not a prefix' : breakGlassGrantProblem(values.grant);
  if (problem !== undefined) throw new UsageError(`--grant ${values.grant}: ${problem}`);
  const keys = keyFiles.map(readKey);
  const kids = new Set(keys.map((k) => keyIdOf(k)));
  if (kids.size !== keys.length) throw new UsageError('the same key was given twice');
  const iat = Math.floor(Date.now() / 1000);
  const claims: BreakGlassClaims = {
    v: 1,
    aud: trustDomainFrom(values),
    jti: newJti(),
    iat,
    exp: iat + MAX_REQUEST_VALIDITY_SECONDS,
    reason: values.reason,
    ticket: values.ticket,
    grant: values.grant,
    ttlSeconds: parseTtl(values.ttl ?? '15m'),
  };
  let jws;
  try {
    jws = await signBreakGlassRequest(claims, keys);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const body = `${JSON.stringify({ request: jws }, null, 2)}\n`;
  if (values.out !== undefined) writeSecretFile(values.out, body);
  else out(body);
  err(`Signed break-glass request${values.out !== undefined ? ` → ${values.out}` : ''}:\n${describe(claims, keys.length)}\n`);
}

function readBody(file: string, flag: string): { request: ReturnType<typeof parseGeneralJws>; csr?: string } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UsageError(`${flag} ${file}: not a break-glass request file (${(e as Error).message})`);
  }
  if (typeof parsed !== 'object' || parsed === null || !('request' in parsed)) throw new UsageError(`${file}: expected {"request": …}`);
  try {
    return { request: parseGeneralJws((parsed).request) };
  } catch (e) {
    throw new UsageError(`${file}: ${(e as Error).message}`);
  }
}

async function cosign(values: Values<'in' | 'key' | 'out'>): Promise<void> {
  if (values.in === undefined || values.key === undefined) throw new UsageError('break-glass cosign needs --in FILE and --key FILE');
  const { request: jws } = readBody(values.in, '--in');
  let claims: BreakGlassClaims;
  let signed;
  try {
    claims = unverifiedClaims(jws);
    signed = await cosignBreakGlassRequest(jws, readKey(values.key));
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError((e as Error).message);
  }
  const left = claims.exp - Math.floor(Date.now() / 1000);
  if (left <= 0) throw new UsageError('this request has already expired; ask for a new one');
  const body = `${JSON.stringify({ request: signed }, null, 2)}\n`;
  const target = values.out ?? values.in;
  writeSecretFile(target, body, target === values.in);
  err(`Co-signed (${left}s left to redeem) → ${target}:\n${describe(claims, signed.signatures.length)}\n`);
}

async function use(values: Values<'request' | 'url' | 'cacert' | 'out'>): Promise<void> {
  if (values.request === undefined || values.url === undefined || values.cacert === undefined || values.out === undefined) {
    throw new UsageError('break-glass use needs --request FILE --url https://broker:8443 --cacert bundle.pem --out DIR');
  }
  const body = readBody(values.request, '--request');
  // Checked before the request is spent: the credential must have somewhere fresh to go.
  for (const name of ['admin.pem', 'admin.key', 'admin-ca.pem', 'secret']) {
    if (existsSync(path.join(values.out, name))) throw new UsageError(`${path.join(values.out, name)} already exists; use an empty --out directory`);
  }
  let url: URL;
  try {
    url = new URL(values.url);
  } catch {
    throw new UsageError(`--url ${values.url}: not a URL`);
  }
  if (url.protocol !== 'https:') throw new UsageError('--url must be https://');
  // No client certificate: the signed request is the authority (the broker hands out the admin certificate).
  const res = await adminRequest({ url, ca: readNamedFile(values.cacert, '--cacert') }, 'POST', '/v1/admin/break-glass', body);
  if (res.status !== 200) throw refused(res);
  const j = res.json as {
    grant: string; spiffeId: string; expiresAt: string; svid?: string; privateKey?: string; adminBundle?: string; serial?: string;
    secret?: { name: string; value: string; encoding: string; leaseId: string }; audit: { index: number };
  };
  // Everything goes to files that did not exist before (0600): a stale key is never silently replaced.
  mkdirSync(values.out, { recursive: true, mode: 0o700 });
  const written: string[] = [];
  const write = (name: string, data: string | Buffer): void => {
    writeSecretFile(path.join(values.out as string, name), data);
    written.push(name);
  };
  if (j.svid !== undefined) {
    write('admin.pem', j.svid);
    if (j.privateKey !== undefined) write('admin.key', j.privateKey);
    if (j.adminBundle !== undefined) write('admin-ca.pem', j.adminBundle);
  }
  if (j.secret !== undefined) {
    const value = j.secret.encoding === 'base64' ? Buffer.from(j.secret.value, 'base64') : Buffer.from(j.secret.value, 'utf8');
    try {
      write('secret', value);
    } finally {
      value.fill(0);
    }
  }
  err(
    [
      `Break-glass granted: ${j.grant} as ${j.spiffeId}`,
      `  expires    : ${j.expiresAt}`,
      ...(j.serial !== undefined ? [`  serial     : ${j.serial}`] : []),
      ...(j.secret !== undefined ? [`  lease      : ${j.secret.leaseId}`] : []),
      `  audit entry: #${j.audit.index} (critical; the break-glass alert has fired)`,
      `  files      : ${written.map((f) => path.join(values.out ?? '', f)).join(', ')}`,
      '',
    ].join('\n'),
  );
}

export const BREAK_GLASS_COMMANDS = [
  command({
    name: 'break-glass init',
    usage: '--out DIR [--count N] [--prefix bg]',
    summary: 'make break-glass Ed25519 key pairs: private keys to DIR (0600, move\nthem offline), the public keys as a config snippet on stdout',
    options: { out: { type: 'string' }, count: { type: 'string' }, prefix: { type: 'string' } },
    run: init,
  }),
  command({
    name: 'break-glass request',
    usage: '--key FILE [--key FILE ...] --reason TEXT --ticket ID\n      --grant auditor|operator|secrets-admin|secret:NAME [--ttl 15m]\n      [--trust-domain TD | --config FILE] [--out FILE]',
    summary: 'sign an emergency request (valid 5 minutes, single use)',
    options: {
      key: { type: 'string', multiple: true },
      reason: { type: 'string' },
      ticket: { type: 'string' },
      grant: { type: 'string' },
      ttl: { type: 'string' },
      'trust-domain': { type: 'string' },
      config: { type: 'string' },
      out: { type: 'string' },
    },
    run: request,
  }),
  command({
    name: 'break-glass cosign',
    usage: '--in FILE --key FILE [--out FILE]',
    summary: 'add a second signature (two-person rule)',
    options: { in: { type: 'string' }, key: { type: 'string' }, out: { type: 'string' } },
    run: cosign,
  }),
  command({
    name: 'break-glass use',
    usage: '--request FILE --url URL --cacert FILE --out DIR',
    summary: 'redeem a request: writes admin.pem/admin.key (or secret) to DIR\n(docs/admin-breakglass.md has the runbook)',
    options: { request: { type: 'string' }, url: { type: 'string' }, cacert: { type: 'string' }, out: { type: 'string' } },
    run: use,
  }),
];
