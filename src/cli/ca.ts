/**
 * `tessera ca status [--json]`, `tessera ca activate --reason TEXT`, and for an upstream or offline root
 * `tessera ca prepare --csr-out FILE` / `tessera ca import --cert FILE [--chain FILE]`: the CA lifecycle
 * over the admin API (GET /v1/admin/ca, POST /v1/admin/ca/{activate,prepare,import}) with an admin
 * certificate — auditor or operator to read, operator for the rest; all audited by the broker. The
 * defaults are the dev broker's (npm start).
 */
import { writeFileSync } from 'node:fs';
import https from 'node:https';
import { command } from './command.js';
import { readNamedFile } from './files.js';
import { CommandFailed, UsageError } from './usage.js';

const OPTIONS = {
  url: { type: 'string' },
  cacert: { type: 'string' },
  'admin-cert': { type: 'string' },
  'admin-key': { type: 'string' },
} as const;
const USAGE_TLS = '[--url https://127.0.0.1:8443] [--cacert certs-dev/bundle.pem]\n      [--admin-cert certs-dev/admin-dev.pem --admin-key certs-dev/admin-dev.key]';

interface Target {
  readonly url: URL;
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

function target(values: { url?: string | undefined; cacert?: string | undefined; 'admin-cert'?: string | undefined; 'admin-key'?: string | undefined }, path: string): Target {
  let url: URL;
  try {
    url = new URL(path, values.url ?? 'https://127.0.0.1:8443');
  } catch {
    throw new UsageError(`--url "${values.url ?? ''}" is not a URL`);
  }
  if (url.protocol !== 'https:') throw new UsageError('--url must be https://');
  return {
    url,
    ca: readNamedFile(values.cacert ?? 'certs-dev/bundle.pem', '--cacert'),
    cert: readNamedFile(values['admin-cert'] ?? 'certs-dev/admin-dev.pem', '--admin-cert'),
    key: readNamedFile(values['admin-key'] ?? 'certs-dev/admin-dev.key', '--admin-key'),
  };
}

function call(t: Target, method: 'GET' | 'POST', body?: string): Promise<{ status: number; json: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const headers = body !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } : {};
    const req = https.request(t.url, { method, ca: t.ca, cert: t.cert, key: t.key, agent: false, timeout: 30_000, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        let json: Record<string, unknown>;
        try {
          json = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
        } catch {
          json = {};
        }
        resolve({ status: res.statusCode ?? 0, json });
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('the broker did not answer within 30 s')));
    req.on('error', (err) => reject(new CommandFailed(`cannot reach the broker at ${t.url.origin}: ${err.message}`)));
    req.end(body);
  });
}

/** The broker's refusal as a CLI error (exit 1 with its code and message). */
function refused(r: { status: number; json: Record<string, unknown> }): CommandFailed {
  const text = (v: unknown, fallback: string): string => (typeof v === 'string' ? v : fallback);
  return new CommandFailed(`the broker refused (${r.status} ${text(r.json.error, '')}): ${text(r.json.message, 'no message')}`);
}

interface AuthorityOut {
  id: string;
  state: string;
  jwtKid: string;
  notAfter: string;
  activatedAt?: string;
  dependentsUntil?: string;
}

export const CA_COMMANDS = [
  command({
    name: 'ca status',
    usage: `[--json] ${USAGE_TLS}`,
    summary: 'the CA authorities (prepared, active, old), their expiry, and until when SVIDs\ndepend on an old one',
    options: { ...OPTIONS, json: { type: 'boolean' } },
    async run(values, _positionals, io) {
      const r = await call(target(values, '/v1/admin/ca'), 'GET');
      if (r.status !== 200) throw refused(r);
      if (values.json === true) {
        const { rotation, sequence, authorities, pendingSince } = r.json;
        io.stdout(`${JSON.stringify({ rotation, sequence, authorities, ...(pendingSince !== undefined ? { pendingSince } : {}) }, null, 2)}\n`);
        return 0;
      }
      const authorities = r.json.authorities as AuthorityOut[];
      io.stdout(`bundle sequence ${String(r.json.sequence)}; rotation ${r.json.rotation === true ? 'on (ca.rotation)' : 'off'}\n`);
      for (const a of authorities) {
        const extra = a.dependentsUntil !== undefined ? `  SVIDs depend on it until ${a.dependentsUntil}` : a.activatedAt !== undefined ? `  active since ${a.activatedAt}` : '';
        io.stdout(`${a.state.padEnd(9)} ${a.id}  expires ${a.notAfter}  jwt kid ${a.jwtKid}${extra}\n`);
      }
      if (typeof r.json.pendingSince === 'string') io.stdout(`pending   keys from \`ca prepare\` since ${r.json.pendingSince}, waiting for \`ca import\`\n`);
      return 0;
    },
  }),
  command({
    name: 'ca activate',
    usage: `--reason TEXT ${USAGE_TLS}`,
    summary: 'make the prepared CA authority the active one now (operator role)',
    options: { ...OPTIONS, reason: { type: 'string' } },
    async run(values, _positionals, io) {
      if (values.reason === undefined || values.reason.trim() === '') throw new UsageError('ca activate needs --reason "…" (it goes into the audit log)');
      const r = await call(target(values, '/v1/admin/ca/activate'), 'POST', JSON.stringify({ reason: values.reason }));
      if (r.status !== 200) throw refused(r);
      const active = r.json.active as AuthorityOut;
      io.stdout(`active: ${active.id} (expires ${active.notAfter}, jwt kid ${active.jwtKid})\n`);
      return 0;
    },
  }),
  command({
    name: 'ca prepare',
    usage: `--csr-out FILE --reason TEXT ${USAGE_TLS}`,
    summary: 'make the next CA authority\'s keys (kept in the broker) and write a CSR for\nan upstream or offline root to sign (operator role; `-` writes to stdout)',
    options: { ...OPTIONS, 'csr-out': { type: 'string' }, reason: { type: 'string' } },
    async run(values, _positionals, io) {
      const out = values['csr-out'];
      if (out === undefined || out === '') throw new UsageError('ca prepare needs --csr-out FILE (where to write the CSR; - for stdout)');
      if (values.reason === undefined || values.reason.trim() === '') throw new UsageError('ca prepare needs --reason "…" (it goes into the audit log)');
      const r = await call(target(values, '/v1/admin/ca/prepare'), 'POST', JSON.stringify({ reason: values.reason }));
      if (r.status !== 200) throw refused(r);
      const csrPem = String(r.json.csrPem);
      if (out === '-') {
        io.stdout(csrPem);
        return 0;
      }
      try {
        writeFileSync(out, csrPem, { mode: 0o644 });
      } catch (err) {
        throw new CommandFailed(`--csr-out ${out}: cannot write it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
      }
      const again = r.json.created === false ? ' (the one already pending since ' + String(r.json.pendingSince) + ')' : '';
      io.stdout(`wrote the CSR for the next CA authority to ${out}${again}; have the root sign it, then: tessera ca import --cert FILE\n`);
      return 0;
    },
  }),
  command({
    name: 'ca import',
    usage: `--cert FILE [--chain FILE] --reason TEXT ${USAGE_TLS}`,
    summary: 'install the certificate the root signed for `ca prepare`\'s CSR as the prepared\nCA authority; `ca activate` then switches to it (operator role)',
    options: { ...OPTIONS, cert: { type: 'string' }, chain: { type: 'string' }, reason: { type: 'string' } },
    async run(values, _positionals, io) {
      if (values.cert === undefined || values.cert === '') throw new UsageError('ca import needs --cert FILE (the certificate the root signed)');
      if (values.reason === undefined || values.reason.trim() === '') throw new UsageError('ca import needs --reason "…" (it goes into the audit log)');
      const certificatePem = readNamedFile(values.cert, '--cert');
      const chainPem = values.chain !== undefined ? readNamedFile(values.chain, '--chain') : undefined;
      const body = JSON.stringify({ reason: values.reason, certificatePem, ...(chainPem !== undefined ? { chainPem } : {}) });
      const r = await call(target(values, '/v1/admin/ca/import'), 'POST', body);
      if (r.status !== 200) throw refused(r);
      const prepared = r.json.prepared as AuthorityOut;
      io.stdout(`prepared: ${prepared.id} (expires ${prepared.notAfter}, jwt kid ${prepared.jwtKid}); bundle sequence ${String(r.json.sequence)}\n`);
      return 0;
    },
  }),
];
