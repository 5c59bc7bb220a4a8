/**
 * Where a reader of the audit log (export, verify, search) gets entries and checkpoints from: the
 * store itself, an export directory (export.ts), or a running broker over HTTPS.
 */
import https from 'node:https';
import { BrokerError } from '../errors.js';
import type { Store } from '../store/store.js';

/** Leaf hashes (SHA-256(0x00 ‖ entry)) of entries [start, end), in order: what GET /v1/audit/leaves serves. */
export interface LeafHashSource {
  leafHashes(start: number, end: number): AsyncIterable<Buffer>;
}

export interface LogSource {
  /** Every stored checkpoint note, in stored order. Call before size() on a live log. */
  checkpoints(): Promise<string[]>;
  /** Number of entries the source says it has (for an export: what its manifest claims). */
  size(): Promise<number>;
  /** Raw canonical entry bytes [start, end), in order; an export stops early if it has fewer. */
  entries(start: number, end: number): AsyncIterable<Buffer>;
  /** For exports: the size the manifest claims, so a reader can tell a truncated file. */
  readonly expectedSize?: number;
  /** The log's own leaf hashes (a running broker's public ones), when the source has them. */
  readonly leafHashes?: LeafHashSource['leafHashes'];
  close(): Promise<void>;
}

/** Entries per store read. */
const STORE_BATCH = 4096;

export function storeSource(store: Store): LogSource {
  return {
    checkpoints: () => store.listCheckpoints(),
    size: () => store.auditSize(),
    entries: async function* (start: number, end: number) {
      for (let i = start; i < end; i += STORE_BATCH) {
        yield* await store.readAuditEntries(i, Math.min(end, i + STORE_BATCH));
      }
    },
    close: () => store.close(),
  };
}

export class RemoteLogError extends BrokerError {
  constructor(message: string) {
    super('bad_request', message);
    this.name = 'RemoteLogError';
  }
}

/** TLS material for a running broker: the CA to verify it, and an admin client certificate (role auditor) to read entries. */
export interface RemoteTls {
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
}

/** Pages per request the broker serves at most (GET /v1/audit/entries, /leaves, /checkpoints). */
const PAGE = 1000;
const REQUEST_TIMEOUT_MS = 30_000;
const MAX_RESPONSE_BYTES = 64 << 20;

async function getJson<T>(url: URL, tls: RemoteTls): Promise<T> {
  const text = await getText(url, tls, 'application/json');
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new RemoteLogError(`GET ${url.pathname}: the answer is not JSON`);
  }
}

function getText(url: URL, tls: RemoteTls, accept: string): Promise<string> {
  if (url.protocol !== 'https:') return Promise.reject(new RemoteLogError(`${url.origin}: only https:// logs are supported`));
  return new Promise<string>((resolve, reject) => {
    const auth = tls.cert !== undefined && tls.key !== undefined ? { cert: tls.cert, key: tls.key } : {};
    const req = https.get(url, { ...(tls.ca !== undefined ? { ca: tls.ca } : {}), ...auth, agent: false, timeout: REQUEST_TIMEOUT_MS, headers: { accept } }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_RESPONSE_BYTES) req.destroy(new RemoteLogError(`${url.pathname}: response too large`));
        else chunks.push(c);
      });
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode !== 200) {
          reject(new RemoteLogError(`GET ${url.pathname}${url.search}: HTTP ${res.statusCode ?? 0} ${text.slice(0, 300)}`));
          return;
        }
        resolve(text);
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new RemoteLogError(`GET ${url.pathname}: no answer within ${REQUEST_TIMEOUT_MS / 1000} s`)));
    req.on('error', (err) => reject(err instanceof RemoteLogError ? err : new RemoteLogError(`GET ${url.href}: ${err.message}`)));
  });
}

interface EntriesPage {
  start: number;
  end: number;
  treeSize: number;
  scope?: string;
  entries: (string | null)[];
}

interface LeavesPage {
  start: number;
  end: number;
  treeSize: number;
  leafHashes: string[];
}

const BASE64_HASH = /^[A-Za-z0-9+/]{43}=$/;

/**
 * A running broker's audit API (`baseUrl` like https://broker:8443), TLS verified against `tls.ca`.
 * Checkpoints, size and leaf hashes are public; entries need `tls.cert`/`tls.key`, an admin
 * certificate with the auditor role (a workload would get only its own, which is no log to verify).
 */
export function remoteSource(
  baseUrl: string,
  tls: RemoteTls = {},
): LogSource & { readonly leafHashes: LeafHashSource['leafHashes']; cosigned(maxK: number): Promise<string[]> } {
  const base = new URL(baseUrl);
  const at = (p: string, q: Record<string, number>): URL => {
    const u = new URL(p, base);
    for (const [k, v] of Object.entries(q)) u.searchParams.set(k, String(v));
    return u;
  };
  return {
    checkpoints: async () => {
      const out: string[] = [];
      for (let start = 0; ; ) {
        const page = await getJson<{ end: number; total: number; checkpoints: string[] }>(at('/v1/audit/checkpoints', { start }), tls);
        if (!Array.isArray(page.checkpoints) || page.end !== start + page.checkpoints.length) throw new RemoteLogError('malformed checkpoints page');
        out.push(...page.checkpoints);
        if (page.end >= page.total || page.checkpoints.length === 0) return out;
        start = page.end;
      }
    },
    size: async () => (await getJson<LeavesPage>(at('/v1/audit/leaves', { start: 0, end: 0 }), tls)).treeSize,
    entries: async function* (start: number, end: number) {
      for (let i = start; i < end; i += PAGE) {
        const to = Math.min(end, i + PAGE);
        let page: EntriesPage;
        try {
          page = await getJson<EntriesPage>(at('/v1/audit/entries', { start: i, end: to }), tls);
        } catch (err) {
          if (err instanceof RemoteLogError && /HTTP 40[13]/.test(err.message)) {
            throw new RemoteLogError(`${err.message} — reading entries needs an admin certificate with the auditor role (--admin-cert, --admin-key)`);
          }
          throw err;
        }
        if (page.scope !== 'all') throw new RemoteLogError(`GET /v1/audit/entries: the broker served scope "${String(page.scope)}", not every entry: present an admin certificate with the auditor role`);
        if (!Array.isArray(page.entries) || page.entries.length !== to - i) throw new RemoteLogError(`malformed entries page [${i}, ${to})`);
        for (const e of page.entries) {
          if (typeof e !== 'string') throw new RemoteLogError(`malformed entries page [${i}, ${to}): an entry was withheld`);
          yield Buffer.from(e, 'utf8');
        }
      }
    },
    leafHashes: async function* (start: number, end: number) {
      for (let i = start; i < end; i += PAGE) {
        const to = Math.min(end, i + PAGE);
        const page = await getJson<LeavesPage>(at('/v1/audit/leaves', { start: i, end: to }), tls);
        if (!Array.isArray(page.leafHashes) || page.leafHashes.length !== to - i) throw new RemoteLogError(`malformed leaf hashes page [${i}, ${to})`);
        for (const h of page.leafHashes) {
          if (typeof h !== 'string' || !BASE64_HASH.test(h)) throw new RemoteLogError(`malformed leaf hash in page [${i}, ${to})`);
          yield Buffer.from(h, 'base64');
        }
      }
    },
    /** The newest checkpoint cosigned by at least k witnesses, for k = 1..maxK (distinct notes; none yet is no error). */
    cosigned: async (maxK: number) => {
      const notes = new Set<string>();
      for (let k = 1; k <= maxK; k++) {
        try {
          notes.add(await getText(at('/v1/audit/checkpoint', { cosigned: k }), tls, 'text/plain'));
        } catch (err) {
          if (err instanceof RemoteLogError && /HTTP (503|400)/.test(err.message)) break;
          throw err;
        }
      }
      return [...notes];
    },
    close: async () => {},
  };
}
