/**
 * `tessera entry create | list | show | update | delete`: registration entries over the admin API
 * (POST/GET/PATCH/DELETE /v1/admin/entries, role registrar or operator), in the manner of SPIRE's
 * `spire-server entry`. Connection options: cli/connection.ts. Exit 0 ok, 1 refused or failed, 2 usage.
 */
import type { EntryView } from '../policy/entry.js';
import { type CliIo, command } from './command.js';
import { type AdminConnection, adminConnection, adminRequest, CONNECTION_HELP, CONNECTION_OPTIONS, CONNECTION_USAGE, refused } from './connection.js';
import { UsageError } from './usage.js';

const ENTRY_FIELDS = {
  'spiffe-id': { type: 'string' },
  selector: { type: 'string', multiple: true },
  dns: { type: 'string', multiple: true },
  'x509-ttl': { type: 'string' },
  'jwt-ttl': { type: 'string' },
  'jwt-audience': { type: 'string', multiple: true },
  'allow-broad': { type: 'boolean' },
  'federates-with': { type: 'string', multiple: true },
} as const;

const FIELDS_USAGE = '--spiffe-id ID --selector T:K:V [--selector …] [--dns NAME …]\n      [--x509-ttl 1h] [--jwt-ttl 5m] [--jwt-audience AUD …] [--allow-broad]\n      [--federates-with TRUST_DOMAIN …]';

const SELECTOR_HELP = `Selectors (all must hold): k8s:ns:NS, k8s:sa:SA, k8s:pod-name:NAME, k8s:pod-uid:UID,
k8s:pod-label:KEY:VALUE, k8s:pod-annotation:KEY:VALUE, k8s:node-name:NODE, k8s:container-image:IMAGE.
An entry without k8s:ns (or k8s:pod-uid) could match every namespace: it needs --allow-broad.
`;

/** "1h", "30m", "45s", "2d" or plain seconds → seconds. */
export function parseTtl(text: string, flag: string): number {
  const m = /^(\d{1,7})(s|m|h|d)?$/.exec(text.trim());
  if (!m) throw new UsageError(`${flag} "${text}": expected a duration like 1h, 30m or 3600`);
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86_400 }[(m[2] ?? 's') as 's' | 'm' | 'h' | 'd'];
}

type FieldValues = {
  'spiffe-id'?: string | undefined;
  selector?: string[] | undefined;
  dns?: string[] | undefined;
  'x509-ttl'?: string | undefined;
  'jwt-ttl'?: string | undefined;
  'jwt-audience'?: string[] | undefined;
  'allow-broad'?: boolean | undefined;
  'federates-with'?: string[] | undefined;
};

/** The request body the flags describe (only the flags given). */
function body(v: FieldValues): Record<string, unknown> {
  return {
    ...(v['spiffe-id'] !== undefined ? { spiffeId: v['spiffe-id'] } : {}),
    ...(v.selector !== undefined ? { selectors: v.selector } : {}),
    ...(v.dns !== undefined ? { dnsNames: v.dns } : {}),
    ...(v['jwt-audience'] !== undefined ? { jwtAudiences: v['jwt-audience'] } : {}),
    ...(v['x509-ttl'] !== undefined ? { x509TtlSeconds: parseTtl(v['x509-ttl'], '--x509-ttl') } : {}),
    ...(v['jwt-ttl'] !== undefined ? { jwtTtlSeconds: parseTtl(v['jwt-ttl'], '--jwt-ttl') } : {}),
    ...(v['allow-broad'] === true ? { allowBroad: true } : {}),
    ...(v['federates-with'] !== undefined ? { federatesWith: v['federates-with'] } : {}),
  };
}

/** One entry as `spire-server entry show` prints one: a label column, one line per value. */
export function formatEntry(e: EntryView): string {
  const line = (label: string, value: string | number): string => `${label.padEnd(16)}: ${value}\n`;
  return (
    line('Entry ID', e.id) +
    line('SPIFFE ID', e.spiffeId) +
    line('Source', e.source) +
    e.selectors.map((s) => line('Selector', s)).join('') +
    (e.selectors.length === 0 ? line('Selector', '(none: every workload)') : '') +
    e.dnsNames.map((d) => line('DNS name', d)).join('') +
    line('X509-SVID TTL', e.x509TtlSeconds ?? 'default') +
    line('JWT-SVID TTL', e.jwtTtlSeconds ?? 'default') +
    e.jwtAudiences.map((a) => line('JWT audience', a)).join('') +
    (e.allowBroad ? line('Broad', 'yes (matches in every namespace)') : '') +
    e.federatesWith.map((td) => line('FederatesWith', td)).join('') +
    line('Revision', e.revision) +
    (e.updatedBy !== undefined ? line('Updated', `${e.updatedAt ?? ''} by ${e.updatedBy}`) : '')
  );
}

const ID_PATTERN = /^[A-Za-z0-9-]{1,64}$/;

function entryId(positionals: readonly string[], verb: string): string {
  const [id, extra] = positionals;
  if (id === undefined || extra !== undefined) throw new UsageError(`entry ${verb} needs one entry ID (see tessera entry list)`);
  if (!ID_PATTERN.test(id)) throw new UsageError(`"${id}" is not an entry ID`);
  return id;
}

async function call(conn: AdminConnection, method: string, path: string, payload?: unknown): Promise<Record<string, unknown>> {
  const res = await adminRequest(conn, method, path, payload);
  if (res.status < 200 || res.status > 299) throw refused(res);
  return res.json;
}

function printEntry(io: CliIo, json: boolean, res: Record<string, unknown>, verb?: string): void {
  if (json) {
    io.stdout(`${JSON.stringify(res, null, 2)}\n`);
    return;
  }
  const entry = res.entry as EntryView;
  io.stdout(formatEntry(entry));
  if (verb !== undefined) {
    const audit = res.audit as { index?: number } | undefined;
    io.stderr(`${verb} entry ${entry.id} (audit log index ${audit?.index ?? '?'}); in force on every replica within a second\n`);
  }
}

const JSON_OPTION = { json: { type: 'boolean' } } as const;

export const ENTRY_COMMANDS = [
  command({
    name: 'entry create',
    usage: `${FIELDS_USAGE}\n      [--json] ${CONNECTION_USAGE}`,
    summary: 'register a workload: selectors → SPIFFE ID (admin API, role registrar)',
    details: SELECTOR_HELP + CONNECTION_HELP,
    options: { ...ENTRY_FIELDS, ...JSON_OPTION, ...CONNECTION_OPTIONS },
    async run(values, _positionals, io) {
      if (values['spiffe-id'] === undefined || values.selector === undefined) throw new UsageError('entry create needs --spiffe-id and at least one --selector');
      const payload = body(values);
      const res = await call(adminConnection(values), 'POST', '/v1/admin/entries', payload);
      printEntry(io, values.json === true, res, 'created');
    },
  }),
  command({
    name: 'entry list',
    usage: `[--spiffe-id ID] [--selector T:K:V …] [--json] ${CONNECTION_USAGE}`,
    summary: 'registration entries (config seed and API), optionally filtered',
    details: CONNECTION_HELP,
    options: { 'spiffe-id': { type: 'string' }, selector: { type: 'string', multiple: true }, ...JSON_OPTION, ...CONNECTION_OPTIONS },
    async run(values, _positionals, io) {
      const q = new URLSearchParams();
      if (values['spiffe-id'] !== undefined) q.set('spiffeId', values['spiffe-id']);
      for (const s of values.selector ?? []) q.append('selector', s);
      const res = await call(adminConnection(values), 'GET', `/v1/admin/entries${q.size > 0 ? `?${q.toString()}` : ''}`);
      if (values.json === true) {
        io.stdout(`${JSON.stringify(res.entries, null, 2)}\n`);
        return;
      }
      const entries = res.entries as EntryView[];
      io.stdout(`Found ${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}\n`);
      for (const e of entries) io.stdout(`\n${formatEntry(e)}`);
    },
  }),
  command({
    name: 'entry show',
    usage: `ID [--json] ${CONNECTION_USAGE}`,
    summary: 'one registration entry',
    details: CONNECTION_HELP,
    positionals: true,
    options: { ...JSON_OPTION, ...CONNECTION_OPTIONS },
    async run(values, positionals, io) {
      const id = entryId(positionals, 'show');
      printEntry(io, values.json === true, await call(adminConnection(values), 'GET', `/v1/admin/entries/${id}`));
    },
  }),
  command({
    name: 'entry update',
    usage: `ID [--spiffe-id ID] [--selector T:K:V …] [--dns NAME …] [--x509-ttl 1h]\n      [--jwt-ttl 5m] [--jwt-audience AUD …] [--allow-broad] [--federates-with TD …] [--json] ${CONNECTION_USAGE}`,
    summary: 'change a registration entry (each flag given replaces that field)',
    details: SELECTOR_HELP + CONNECTION_HELP,
    positionals: true,
    options: { ...ENTRY_FIELDS, ...JSON_OPTION, ...CONNECTION_OPTIONS },
    async run(values, positionals, io) {
      const id = entryId(positionals, 'update');
      const payload = body(values);
      if (Object.keys(payload).length === 0) throw new UsageError('entry update: give at least one field to change (--selector, --spiffe-id, --dns, …)');
      printEntry(io, values.json === true, await call(adminConnection(values), 'PATCH', `/v1/admin/entries/${id}`, payload), 'updated');
    },
  }),
  command({
    name: 'entry delete',
    usage: `ID ${CONNECTION_USAGE}`,
    summary: 'delete a registration entry (no new credentials from it on any replica)',
    details: CONNECTION_HELP,
    positionals: true,
    options: { ...CONNECTION_OPTIONS },
    async run(values, positionals, io) {
      const id = entryId(positionals, 'delete');
      const res = await call(adminConnection(values), 'DELETE', `/v1/admin/entries/${id}`);
      const audit = res.audit as { index?: number } | undefined;
      io.stderr(`deleted entry ${id} (audit log index ${audit?.index ?? '?'})\n`);
    },
  }),
];
