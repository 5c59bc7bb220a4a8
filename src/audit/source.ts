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
    super('bad_request', 400, message);
    this.name = 'RemoteLogError';
  }
}

/** Pages per request the broker serves at most (GET /v1/audit/entries, /v1/audit/checkpoints). */
const PAGE = 1000;
const REQUEST_TIMEOUT_MS = 30_000;
const MAX_RESPONSE_BYTES = 64 << 20;

function getJson<T>(url: URL, ca: string | undefined): Promise<T> {
  if (url.protocol !== 'https:') return Promise.reject(new RemoteLogError(`${url.origin}: only https:// logs are supported`));
  return new Promise<T>((resolve, reject) => {
    const req = https.get(url, { ...(ca !== undefined ? { ca } : {}), agent: false, timeout: REQUEST_TIMEOUT_MS, headers: { accept: 'application/json' } }, (res) => {
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
        try {
          resolve(JSON.parse(text) as T);
        } catch {
          reject(new RemoteLogError(`GET ${url.pathname}: the answer is not JSON`));
        }
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
  entries: string[];
}

/** A running broker's public audit API (`baseUrl` like https://broker:8443), TLS verified against `ca`. */
export function remoteSource(baseUrl: string, ca?: string): LogSource {
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
        const page = await getJson<{ end: number; total: number; checkpoints: string[] }>(at('/v1/audit/checkpoints', { start }), ca);
        if (!Array.isArray(page.checkpoints) || page.end !== start + page.checkpoints.length) throw new RemoteLogError('malformed checkpoints page');
        out.push(...page.checkpoints);
        if (page.end >= page.total || page.checkpoints.length === 0) return out;
        start = page.end;
      }
    },
    size: async () => (await getJson<EntriesPage>(at('/v1/audit/entries', { start: 0, end: 0 }), ca)).treeSize,
    entries: async function* (start: number, end: number) {
      for (let i = start; i < end; i += PAGE) {
        const to = Math.min(end, i + PAGE);
        const page = await getJson<EntriesPage>(at('/v1/audit/entries', { start: i, end: to }), ca);
        if (!Array.isArray(page.entries) || page.entries.length !== to - i) throw new RemoteLogError(`malformed entries page [${i}, ${to})`);
        for (const e of page.entries) yield Buffer.from(e, 'utf8');
      }
    },
    close: async () => {},
  };
}
