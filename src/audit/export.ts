/**
 * The audit export format (version 1): a directory that `tessera audit verify` checks offline.
 *
 *   manifest.json     {"format":"tessera-audit-export","version":1,"origin":…,"treeSize":N,
 *                      "rootHash":<base64>,"entries":"entries.jsonl","checkpoints":"checkpoints.txt",
 *                      "checkpointCount":M,"verifierKey":…,"exportedAt":<ISO-8601>}
 *   entries.jsonl     line i (0-based) = the exact canonical JSON bytes of log entry i, then "\n".
 *                     Leaf hash i = SHA-256(0x00 ‖ line i without its "\n").
 *   checkpoints.txt   every stored signed checkpoint note in the order it was stored, each one
 *                     followed by one empty line.
 *
 * Nothing in the export is trusted by the verifier except through the audit public key: the manifest
 * is a table of contents (its counts are cross-checked), the checkpoints carry their own signatures,
 * and the entries are only as good as the signed roots they hash to.
 *
 * Checkpoints are read before the entries, so every exported checkpoint is within the exported
 * entries even while the log keeps growing.
 */
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, open, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BrokerError } from '../errors.js';
import { MerkleTree, leafHash } from './merkle.js';
import { parseCheckpoint, parseNote } from './note.js';
import type { LogSource } from './source.js';

export const EXPORT_FORMAT = 'tessera-audit-export';
export const EXPORT_VERSION = 1;
export const ENTRIES_FILE = 'entries.jsonl';
export const CHECKPOINTS_FILE = 'checkpoints.txt';
export const MANIFEST_FILE = 'manifest.json';

export interface ExportManifest {
  readonly format: typeof EXPORT_FORMAT;
  readonly version: typeof EXPORT_VERSION;
  /** Origin line of the checkpoints (absent when the log has none). */
  readonly origin?: string;
  readonly treeSize: number;
  /** Base64 RFC 6962 root over all exported entries. */
  readonly rootHash: string;
  readonly entries: typeof ENTRIES_FILE;
  readonly checkpoints: typeof CHECKPOINTS_FILE;
  readonly checkpointCount: number;
  /** The verifier key the exporter was given, for information only: verify with a key you trust. */
  readonly verifierKey?: string;
  readonly exportedAt: string;
}

export class ExportError extends BrokerError {
  constructor(message: string) {
    super('bad_request', message);
    this.name = 'ExportError';
  }
}

const NEWLINE = 0x0a;

/** Writes `source` to `outDir` (created if missing; refused if it already holds an export). */
export async function exportLog(
  source: LogSource,
  outDir: string,
  opts: { verifierKey?: string; now?: () => number } = {},
): Promise<ExportManifest> {
  await mkdir(outDir, { recursive: true, mode: 0o700 });
  if (existsSync(path.join(outDir, MANIFEST_FILE))) throw new ExportError(`${outDir} already holds an export; choose an empty directory`);
  const checkpoints = await source.checkpoints();
  const size = await source.size();
  let origin: string | undefined;
  for (const note of checkpoints) {
    const cp = parseCheckpoint(parseNote(note).text);
    if (cp.size > size) throw new ExportError(`a stored checkpoint has size ${cp.size} but the log has ${size} entries`);
    origin ??= cp.origin;
  }
  const tree = new MerkleTree({ capacity: size });
  const entriesPath = path.join(outDir, ENTRIES_FILE);
  const out = await open(`${entriesPath}.partial`, 'w', 0o600);
  try {
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async (): Promise<void> => {
      if (pending.length === 0) return;
      await out.write(Buffer.concat(pending, pendingBytes));
      pending = [];
      pendingBytes = 0;
    };
    let index = 0;
    for await (const entry of source.entries(0, size)) {
      // Canonical JSON never holds a raw newline; an entry that does cannot be one of ours.
      if (entry.includes(NEWLINE)) throw new ExportError(`entry ${index} contains a raw newline: it is not a canonical entry`);
      tree.append(leafHash(entry));
      pending.push(entry, Buffer.from('\n'));
      pendingBytes += entry.length + 1;
      if (pendingBytes > 1 << 20) await flush();
      index++;
    }
    await flush();
    if (index !== size) throw new ExportError(`the log returned ${index} entries, expected ${size}`);
    await out.sync();
  } finally {
    await out.close();
  }
  await rename(`${entriesPath}.partial`, entriesPath);
  await writeFile(path.join(outDir, CHECKPOINTS_FILE), checkpoints.map((n) => `${n}\n`).join(''), { mode: 0o600 });
  const manifest: ExportManifest = {
    format: EXPORT_FORMAT,
    version: EXPORT_VERSION,
    ...(origin !== undefined ? { origin } : {}),
    treeSize: size,
    rootHash: tree.root().toString('base64'),
    entries: ENTRIES_FILE,
    checkpoints: CHECKPOINTS_FILE,
    checkpointCount: checkpoints.length,
    ...(opts.verifierKey !== undefined ? { verifierKey: opts.verifierKey.trim() } : {}),
    exportedAt: new Date((opts.now ?? Date.now)()).toISOString(),
  };
  // The manifest goes last: a directory without one is an unfinished export.
  await writeFile(path.join(outDir, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600 });
  return manifest;
}

/** Splits checkpoints.txt back into notes: body lines, one empty line, "— " signature lines, one empty line. */
export function parseCheckpointsFile(text: string): string[] {
  const lines = text.split('\n');
  if (lines.pop() !== '') {
    if (text.length > 0) throw new ExportError(`${CHECKPOINTS_FILE}: must end with a newline`);
  }
  const notes: string[] = [];
  let i = 0;
  const at = (): string | undefined => lines[i];
  while (i < lines.length) {
    const startLine = i + 1;
    const body: string[] = [];
    while (i < lines.length && at() !== '') body.push(lines[i++] as string);
    if (body.length === 0 || at() !== '') throw new ExportError(`${CHECKPOINTS_FILE}: line ${startLine}: expected checkpoint text then an empty line`);
    i++;
    const sigs: string[] = [];
    while (i < lines.length && (at() as string).startsWith('\u2014 ')) sigs.push(lines[i++] as string);
    if (sigs.length === 0) throw new ExportError(`${CHECKPOINTS_FILE}: line ${i + 1}: expected signature lines ("— name signature")`);
    if (i < lines.length) {
      if (at() !== '') throw new ExportError(`${CHECKPOINTS_FILE}: line ${i + 1}: expected an empty line after the signatures`);
      i++;
    }
    notes.push(`${body.join('\n')}\n\n${sigs.join('\n')}\n`);
  }
  return notes;
}

/** Reads an export directory as a LogSource (entries are streamed, never all in memory). */
export async function openExport(dir: string): Promise<LogSource & { readonly manifest: ExportManifest }> {
  let manifest: ExportManifest;
  try {
    manifest = JSON.parse(await readFile(path.join(dir, MANIFEST_FILE), 'utf8')) as ExportManifest;
  } catch (err) {
    throw new ExportError(`${dir}: cannot read ${MANIFEST_FILE} (${(err as Error).message}); is this an audit export?`);
  }
  if (manifest === null || typeof manifest !== 'object' || manifest.format !== EXPORT_FORMAT) {
    throw new ExportError(`${dir}/${MANIFEST_FILE}: not a ${EXPORT_FORMAT} manifest`);
  }
  if (manifest.version !== EXPORT_VERSION) throw new ExportError(`${dir}: export format version ${String(manifest.version)} is not supported (expected ${String(EXPORT_VERSION)})`);
  if (!Number.isSafeInteger(manifest.treeSize) || manifest.treeSize < 0) throw new ExportError(`${dir}/${MANIFEST_FILE}: bad treeSize`);
  const entriesPath = path.join(dir, ENTRIES_FILE);
  const checkpointsPath = path.join(dir, CHECKPOINTS_FILE);
  return {
    manifest,
    expectedSize: manifest.treeSize,
    checkpoints: async () => parseCheckpointsFile(await readFile(checkpointsPath, 'utf8')),
    size: async () => manifest.treeSize,
    entries: (start = 0, end = Number.POSITIVE_INFINITY) => readLines(entriesPath, start, end),
    close: async () => {},
  };
}

/** Streams the raw bytes of lines [start, end) of a "\n"-terminated file. */
async function* readLines(file: string, start: number, end: number): AsyncGenerator<Buffer> {
  let carry: Buffer | null = null;
  let index = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
    let buf: Buffer = carry !== null ? Buffer.concat([carry, chunk]) : chunk;
    let from = 0;
    for (let nl = buf.indexOf(NEWLINE, from); nl !== -1; nl = buf.indexOf(NEWLINE, from)) {
      if (index >= end) return;
      if (index >= start) yield Buffer.from(buf.subarray(from, nl));
      index++;
      from = nl + 1;
    }
    buf = buf.subarray(from);
    carry = buf.length > 0 ? Buffer.from(buf) : null;
  }
  if (carry !== null && index >= start && index < end) throw new ExportError(`${path.basename(file)}: the last line has no final newline (truncated file?)`);
}
