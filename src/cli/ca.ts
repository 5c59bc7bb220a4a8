/**
 * `tessera ca status [--json]`, `tessera ca activate --reason TEXT`, and for an upstream or offline root
 * `tessera ca prepare --csr-out FILE` / `tessera ca import --cert FILE [--chain FILE]`: the CA lifecycle
 * over the admin API (GET /v1/admin/ca, POST /v1/admin/ca/{activate,prepare,import}) with an admin
 * certificate — auditor or operator to read, operator for the rest; all audited by the broker. The
 * defaults are the dev broker's (npm start).
 */
import { writeFileSync } from 'node:fs';
import { command } from './command.js';
import { adminConnection, adminRequest, refused, type AdminConnection } from './connection.js';
import { readNamedFile } from './files.js';
import { CommandFailed, UsageError } from './usage.js';

const OPTIONS = {
  url: { type: 'string' },
  cacert: { type: 'string' },
  'admin-cert': { type: 'string' },
  'admin-key': { type: 'string' },
} as const;
const USAGE_TLS = '[--url https://127.0.0.1:8443] [--cacert certs-dev/bundle.pem]\n      [--admin-cert certs-dev/admin-dev.pem --admin-key certs-dev/admin-dev.key]';

/** The connection every admin command uses (cli/connection.ts); here the admin certificate is
 * --admin-cert/--admin-key, because `ca import --cert` names the certificate being imported. */
function connection(values: { url?: string | undefined; cacert?: string | undefined; 'admin-cert'?: string | undefined; 'admin-key'?: string | undefined }): AdminConnection {
  return adminConnection({ url: values.url, cacert: values.cacert, cert: values['admin-cert'], key: values['admin-key'] }, process.env, process.cwd(), {
    cert: '--admin-cert',
    key: '--admin-key',
  });
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
      const r = await adminRequest(connection(values), 'GET', '/v1/admin/ca');
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
      const r = await adminRequest(connection(values), 'POST', '/v1/admin/ca/activate', { reason: values.reason });
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
      const r = await adminRequest(connection(values), 'POST', '/v1/admin/ca/prepare', { reason: values.reason });
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
      const r = await adminRequest(connection(values), 'POST', '/v1/admin/ca/import', { reason: values.reason, certificatePem, ...(chainPem !== undefined ? { chainPem } : {}) });
      if (r.status !== 200) throw refused(r);
      const prepared = r.json.prepared as AuthorityOut;
      io.stdout(`prepared: ${prepared.id} (expires ${prepared.notAfter}, jwt kid ${prepared.jwtKid}); bundle sequence ${String(r.json.sequence)}\n`);
      return 0;
    },
  }),
];
