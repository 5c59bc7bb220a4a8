/**
 * `tessera admin cert --id spiffe://<td>/admin/alice --out DIR [--ttl 8h] [--config FILE | --ca-cert F --ca-key F]`:
 * an admin client certificate signed by the admin CA (the one in config admin.caCertFile/caKeyFile,
 * or given explicitly), written as DIR/<name>.pem and DIR/<name>.key (0600). The ID must also be in
 * admin.principals with roles before the broker accepts it. Run it where the admin CA key is kept.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CertificateAuthority } from '../ca/authority.js';
import { loadConfig } from '../config/load.js';
import { parseSpiffeId } from '../spiffe/id.js';
import { command } from './command.js';
import { readNamedFile } from './files.js';
import { UsageError } from './usage.js';

/** "8h", "30m", "7d", "3600" (seconds) → ms; between 5 minutes and 90 days. */
function parseDuration(text: string): number {
  const m = /^(\d{1,7})(s|m|h|d)?$/.exec(text.trim());
  if (!m) throw new UsageError(`--ttl "${text}": expected a duration like 8h, 30m or 7d`);
  const unit = { s: 1, m: 60, h: 3600, d: 86_400 }[(m[2] ?? 's') as 's' | 'm' | 'h' | 'd'];
  const seconds = Number(m[1]) * unit;
  if (seconds < 300 || seconds > 90 * 86_400) throw new UsageError('--ttl must be between 5m and 90d');
  return seconds * 1000;
}

export const ADMIN_COMMANDS = [
  command({
    name: 'admin cert',
    usage: '--id spiffe://TD/admin/NAME --out DIR [--ttl 8h] [--config FILE | --ca-cert F --ca-key F]',
    summary: 'an admin client certificate from the admin CA (the ID needs roles in\nadmin.principals)',
    options: { id: { type: 'string' }, out: { type: 'string' }, ttl: { type: 'string' }, config: { type: 'string' }, 'ca-cert': { type: 'string' }, 'ca-key': { type: 'string' } },
    run(values) {
      if (values.id === undefined || values.out === undefined) throw new UsageError('admin cert needs --id spiffe://<trust-domain>/admin/<name> and --out DIR');
      let id;
      try {
        id = parseSpiffeId(values.id);
      } catch (err) {
        throw new UsageError(`--id: ${(err as Error).message}`);
      }
      if (id.path === '' || id.path.startsWith('/admin/break-glass/')) throw new UsageError('--id needs a path such as /admin/alice (/admin/break-glass/ is reserved)');
      let ca: CertificateAuthority;
      if ((values['ca-cert'] === undefined) !== (values['ca-key'] === undefined)) throw new UsageError('give both --ca-cert and --ca-key, or neither (then the config is used)');
      if (values['ca-cert'] !== undefined && values['ca-key'] !== undefined) {
        // A self-signed root given on the command line is its own trust anchor.
        const certPem = readNamedFile(values['ca-cert'], '--ca-cert');
        ca = CertificateAuthority.fromPem({ certPem, keyPem: readNamedFile(values['ca-key'], '--ca-key'), rootsPem: certPem });
      } else {
        const admin = loadConfig(values.config !== undefined ? { file: values.config } : {}).admin;
        if (admin.caCertFile === undefined || admin.caKeyFile === undefined) throw new UsageError('no admin CA: set admin.caCertFile/caKeyFile in the config, or pass --ca-cert and --ca-key');
        // The signing CA may be an intermediate under the admin roots.
        const certPem = readNamedFile(admin.caCertFile, 'admin.caCertFile');
        const rootsPem = admin.caBundleFile !== undefined ? readNamedFile(admin.caBundleFile, 'admin.caBundleFile') : certPem;
        ca = CertificateAuthority.fromPem({ certPem, keyPem: readNamedFile(admin.caKeyFile, 'admin.caKeyFile'), rootsPem });
      }
      const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const leaf = ca.issueX509Svid({ spiffeId: id.uri, dnsNames: [], publicKey, ttlMs: parseDuration(values.ttl ?? '8h'), now: Date.now() });
      const name = id.path.split('/').filter(Boolean).at(-1) ?? 'admin';
      mkdirSync(values.out, { recursive: true, mode: 0o700 });
      const certFile = path.join(values.out, `${name}.pem`);
      const keyFile = path.join(values.out, `${name}.key`);
      writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
      writeFileSync(certFile, leaf.chainPem.join(''), { mode: 0o644 });
      process.stderr.write(
        `admin certificate for ${id.uri}\n  ${certFile}\n  ${keyFile} (0600)\n  serial ${leaf.serialHex}, expires ${new Date(leaf.notAfter).toISOString()}\n` +
          `It works once ${id.uri} is in admin.principals with roles.\n`,
      );
    },
  }),
];
