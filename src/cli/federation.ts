/**
 * `tessera federation add | list | show | delete | refresh`: federated trust domains over the admin API
 * (/v1/admin/federation, role operator; list and show also auditor), in the manner of SPIRE's
 * `spire-server federation`. Connection options: cli/connection.ts. Exit 0 ok, 1 refused or failed, 2 usage.
 */
import { readFileSync } from 'node:fs';
import { validateTrustDomain } from '../spiffe/id.js';
import { type CliIo, command } from './command.js';
import { type AdminConnection, adminConnection, adminRequest, CONNECTION_HELP, CONNECTION_OPTIONS, CONNECTION_USAGE, refused } from './connection.js';
import { parseTtl } from './entry.js';
import { UsageError } from './usage.js';

interface RelationshipView {
  trustDomain: string;
  bundleEndpointUrl: string;
  profile: string;
  endpointSpiffeId?: string;
  source: string;
  staleAfterSeconds: number;
  bundle: { sequence?: number; refreshHintSeconds?: number; x509Authorities: number; jwtKeyIds: string[]; fetchedAt: string | null; nextRefreshAt: string | null } | null;
  ageSeconds: number;
  stale: boolean;
  lastError?: { message: string; at: string };
}

export function formatRelationship(r: RelationshipView): string {
  const line = (label: string, value: string | number): string => `${label.padEnd(20)}: ${value}\n`;
  const b = r.bundle;
  return (
    line('Trust domain', r.trustDomain) +
    line('Bundle endpoint', r.bundleEndpointUrl) +
    line('Profile', r.profile) +
    (r.endpointSpiffeId !== undefined ? line('Endpoint SPIFFE ID', r.endpointSpiffeId) : '') +
    line('Source', r.source) +
    (b === null
      ? line('Bundle', 'none yet')
      : line('Bundle', `${b.x509Authorities} X.509 authorit${b.x509Authorities === 1 ? 'y' : 'ies'}, JWT keys [${b.jwtKeyIds.join(', ')}]${b.sequence !== undefined ? `, sequence ${b.sequence}` : ''}`) +
        line('Fetched', b.fetchedAt ?? 'never (bootstrap bundle)') +
        (b.nextRefreshAt !== null ? line('Next refresh', b.nextRefreshAt) : '')) +
    line('Age', `${r.ageSeconds} s${r.stale ? ` (STALE: past ${r.staleAfterSeconds} s)` : ''}`) +
    (r.lastError !== undefined ? line('Last error', `${r.lastError.at} ${r.lastError.message}`) : '')
  );
}

function trustDomainArg(positionals: readonly string[], verb: string): string {
  const [td, extra] = positionals;
  if (td === undefined || extra !== undefined) throw new UsageError(`federation ${verb} needs one trust domain (see tessera federation list)`);
  try {
    return validateTrustDomain(td);
  } catch {
    throw new UsageError(`"${td}" is not a trust domain name`);
  }
}

async function call(conn: AdminConnection, method: string, path: string, payload?: unknown): Promise<Record<string, unknown>> {
  const res = await adminRequest(conn, method, path, payload);
  if (res.status < 200 || res.status > 299) throw refused(res);
  return res.json;
}

function readText(file: string, flag: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`${flag} ${file}: ${(err as Error).message}`);
  }
}

function print(io: CliIo, json: boolean, res: Record<string, unknown>): void {
  if (json) io.stdout(`${JSON.stringify(res, null, 2)}\n`);
  else io.stdout(formatRelationship(res.relationship as RelationshipView));
}

const JSON_OPTION = { json: { type: 'boolean' } } as const;
const PROFILE_HELP = `Profiles (SPIFFE Federation): https_web — the endpoint has a WebPKI certificate (system CAs, or --ca-file);
https_spiffe — the endpoint presents an SVID (--endpoint-spiffe-id) of the foreign trust domain, checked
against its current bundle, starting from --bootstrap-bundle (SPIFFE bundle JSON or PEM; required).
Workloads receive the foreign bundle when their entry lists it: tessera entry update ID --federates-with TD.
`;

export const FEDERATION_COMMANDS = [
  command({
    name: 'federation add',
    usage: `TRUST_DOMAIN --bundle-endpoint-url URL --profile https_web|https_spiffe\n      [--endpoint-spiffe-id ID] [--bootstrap-bundle FILE] [--ca-file FILE]\n      [--min-refresh 30s] [--max-refresh 1h] [--stale-after 1h] [--json] ${CONNECTION_USAGE}`,
    summary: 'federate with a foreign trust domain through its bundle endpoint (admin API, role operator)',
    details: PROFILE_HELP + CONNECTION_HELP,
    positionals: true,
    options: {
      'bundle-endpoint-url': { type: 'string' },
      profile: { type: 'string' },
      'endpoint-spiffe-id': { type: 'string' },
      'bootstrap-bundle': { type: 'string' },
      'ca-file': { type: 'string' },
      'min-refresh': { type: 'string' },
      'max-refresh': { type: 'string' },
      'stale-after': { type: 'string' },
      ...JSON_OPTION,
      ...CONNECTION_OPTIONS,
    },
    async run(values, positionals, io) {
      const trustDomain = trustDomainArg(positionals, 'add');
      const url = values['bundle-endpoint-url'];
      const profile = values.profile;
      if (url === undefined || profile === undefined) throw new UsageError('federation add needs --bundle-endpoint-url and --profile');
      if (profile !== 'https_web' && profile !== 'https_spiffe') throw new UsageError('--profile: expected https_web or https_spiffe');
      const payload = {
        trustDomain,
        bundleEndpointUrl: url,
        profile,
        ...(values['endpoint-spiffe-id'] !== undefined ? { endpointSpiffeId: values['endpoint-spiffe-id'] } : {}),
        ...(values['bootstrap-bundle'] !== undefined ? { bootstrapBundle: readText(values['bootstrap-bundle'], '--bootstrap-bundle') } : {}),
        ...(values['ca-file'] !== undefined ? { caPem: readText(values['ca-file'], '--ca-file') } : {}),
        ...(values['min-refresh'] !== undefined ? { minRefreshSeconds: parseTtl(values['min-refresh'], '--min-refresh') } : {}),
        ...(values['max-refresh'] !== undefined ? { maxRefreshSeconds: parseTtl(values['max-refresh'], '--max-refresh') } : {}),
        ...(values['stale-after'] !== undefined ? { staleAfterSeconds: parseTtl(values['stale-after'], '--stale-after') } : {}),
      };
      const res = await call(adminConnection(values), 'POST', '/v1/admin/federation', payload);
      print(io, values.json === true, res);
      const audit = res.audit as { index?: number } | undefined;
      if (values.json !== true) io.stderr(`federating with ${trustDomain} (audit log index ${audit?.index ?? '?'}); the first fetch runs in the background\n`);
    },
  }),
  command({
    name: 'federation list',
    usage: `[--json] ${CONNECTION_USAGE}`,
    summary: 'federated trust domains and the age of each last good bundle',
    details: CONNECTION_HELP,
    options: { ...JSON_OPTION, ...CONNECTION_OPTIONS },
    async run(values, _positionals, io) {
      const res = await call(adminConnection(values), 'GET', '/v1/admin/federation');
      if (values.json === true) {
        io.stdout(`${JSON.stringify(res.relationships, null, 2)}\n`);
        return;
      }
      const list = res.relationships as RelationshipView[];
      io.stdout(`Found ${list.length} federated trust domain${list.length === 1 ? '' : 's'}\n`);
      for (const r of list) io.stdout(`\n${formatRelationship(r)}`);
    },
  }),
  command({
    name: 'federation show',
    usage: `TRUST_DOMAIN [--json] ${CONNECTION_USAGE}`,
    summary: 'one federated trust domain',
    details: CONNECTION_HELP,
    positionals: true,
    options: { ...JSON_OPTION, ...CONNECTION_OPTIONS },
    async run(values, positionals, io) {
      const td = trustDomainArg(positionals, 'show');
      print(io, values.json === true, await call(adminConnection(values), 'GET', `/v1/admin/federation/${td}`));
    },
  }),
  command({
    name: 'federation refresh',
    usage: `TRUST_DOMAIN [--json] ${CONNECTION_USAGE}`,
    summary: "fetch a federated trust domain's bundle now (fails if it does not authenticate; the last good one stays)",
    details: CONNECTION_HELP,
    positionals: true,
    options: { ...JSON_OPTION, ...CONNECTION_OPTIONS },
    async run(values, positionals, io) {
      const td = trustDomainArg(positionals, 'refresh');
      print(io, values.json === true, await call(adminConnection(values), 'POST', `/v1/admin/federation/${td}/refresh`));
    },
  }),
  command({
    name: 'federation delete',
    usage: `TRUST_DOMAIN ${CONNECTION_USAGE}`,
    summary: 'stop federating with a trust domain (workloads no longer receive its bundle)',
    details: CONNECTION_HELP,
    positionals: true,
    options: { ...CONNECTION_OPTIONS },
    async run(values, positionals, io) {
      const td = trustDomainArg(positionals, 'delete');
      const res = await call(adminConnection(values), 'DELETE', `/v1/admin/federation/${td}`);
      const audit = res.audit as { index?: number } | undefined;
      io.stderr(`stopped federating with ${td} (audit log index ${audit?.index ?? '?'})\n`);
    },
  }),
];
