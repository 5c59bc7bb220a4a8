/**
 * How admin CLI commands that talk to a running broker find it: --url, --cacert, --cert, --key, else
 * TESSERA_URL, TESSERA_CACERT, TESSERA_ADMIN_CERT, TESSERA_ADMIN_KEY, else — in a dev checkout (a
 * certs-dev/ folder here, as `npm start` makes it) — https://127.0.0.1:8443, certs-dev/bundle.pem and
 * the dev admin certificate certs-dev/admin-dev.pem/.key. One place, so every such command agrees.
 */
import { existsSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { readNamedFile } from './files.js';
import { CommandFailed, UsageError } from './usage.js';

export const CONNECTION_OPTIONS = {
  url: { type: 'string' },
  cacert: { type: 'string' },
  cert: { type: 'string' },
  key: { type: 'string' },
} as const;

export const CONNECTION_USAGE = '[--url URL] [--cacert PEM] [--cert PEM --key KEY]';

export const CONNECTION_HELP = `Connection: --url (TESSERA_URL), --cacert (TESSERA_CACERT), --cert/--key (TESSERA_ADMIN_CERT,
TESSERA_ADMIN_KEY: an admin certificate with the role the call needs). In a dev checkout they default to
https://127.0.0.1:8443, certs-dev/bundle.pem and certs-dev/admin-dev.pem/.key (npm start).
`;

export const DEV_URL = 'https://127.0.0.1:8443';

/** Where a command reaches the broker: its URL and the roots to trust, and a client certificate if it has one. */
export interface BrokerConnection {
  readonly url: URL;
  readonly ca: string;
  readonly cert?: string;
  readonly key?: string;
}

/** An admin command's connection: always with the admin certificate. */
export interface AdminConnection extends BrokerConnection {
  readonly cert: string;
  readonly key: string;
}

type Values = { readonly url?: string | undefined; readonly cacert?: string | undefined; readonly cert?: string | undefined; readonly key?: string | undefined };

/** Resolves the connection: flag, then environment, then the dev checkout's files; names what is missing. */
export function adminConnection(
  values: Values,
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
  /** How a command spells a flag, where it differs (`ca import` takes --cert for the certificate it installs). */
  flagNames: Partial<Record<keyof Values, string>> = {},
): AdminConnection {
  const flagOf = (flag: keyof Values): string => flagNames[flag] ?? `--${flag}`;
  const nonEmpty = (v: string | undefined): string | undefined => (v === undefined || v === '' ? undefined : v);
  const dev = (name: string): string | undefined => {
    const file = path.join(cwd, 'certs-dev', name);
    return existsSync(file) ? file : undefined;
  };
  const pick = (flag: keyof Values, envName: string, devFile: string): { file: string; from: string } => {
    const fromFlag = nonEmpty(values[flag]);
    if (fromFlag !== undefined) return { file: fromFlag, from: flagOf(flag) };
    const fromEnv = nonEmpty(env[envName]);
    if (fromEnv !== undefined) return { file: fromEnv, from: envName };
    const fromDev = dev(devFile);
    if (fromDev !== undefined) return { file: fromDev, from: `${flagOf(flag)} (default certs-dev/${devFile})` };
    throw new UsageError(`give ${flagOf(flag)} (or ${envName}); there is no certs-dev/${devFile} here to default to`);
  };
  const rawUrl = nonEmpty(values.url) ?? nonEmpty(env.TESSERA_URL) ?? DEV_URL;
  let url: URL;
  try {
    url = new URL(rawUrl);
  } catch {
    throw new UsageError(`--url ${JSON.stringify(rawUrl)}: not a URL (expected https://host:port)`);
  }
  if (url.protocol !== 'https:') throw new UsageError(`--url ${rawUrl}: the broker is reached over https:// only`);
  const read = ({ file, from }: { file: string; from: string }): string => readNamedFile(file, from);
  return {
    url,
    ca: read(pick('cacert', 'TESSERA_CACERT', 'bundle.pem')),
    cert: read(pick('cert', 'TESSERA_ADMIN_CERT', 'admin-dev.pem')),
    key: read(pick('key', 'TESSERA_ADMIN_KEY', 'admin-dev.key')),
  };
}

export interface AdminResponse {
  readonly status: number;
  readonly json: Record<string, unknown>;
}

const MAX_RESPONSE_BYTES = 16 * 1024 * 1024;

/** One admin API call over mutual TLS (over TLS alone for break-glass, which has no certificate yet); a connection failure is a CommandFailed naming the URL. */
export function adminRequest(conn: BrokerConnection, method: string, pathAndQuery: string, body?: unknown): Promise<AdminResponse> {
  const target = new URL(pathAndQuery, conn.url);
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = https.request(
      target,
      {
        method,
        ca: conn.ca,
        ...(conn.cert !== undefined ? { cert: conn.cert } : {}),
        ...(conn.key !== undefined ? { key: conn.key } : {}),
        agent: false,
        timeout: 30_000,
        headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_RESPONSE_BYTES) req.destroy(new Error('the answer is too large'));
          else chunks.push(c);
        });
        res.on('end', () => {
          let json: Record<string, unknown>;
          try {
            const parsed: unknown = JSON.parse(Buffer.concat(chunks).toString('utf8'));
            json = typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : {};
          } catch {
            json = {};
          }
          resolve({ status: res.statusCode ?? 0, json });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('the broker did not answer within 30 s')));
    req.on('error', (err) => reject(new CommandFailed(`${conn.url.origin}: ${err.message}`)));
    req.end(payload);
  });
}

/** The broker's refusal as the CLI prints it: "409 ambiguous_registration: …". */
export function refused(res: AdminResponse): CommandFailed {
  const code = typeof res.json.error === 'string' ? res.json.error : 'error';
  const message = typeof res.json.message === 'string' ? res.json.message : '(no message)';
  return new CommandFailed(`${res.status} ${code}: ${message}`);
}
