/**
 * `<dir>/audit.snapshot`: what an embedded store may skip on its next open (docs/audit.md "On-disk
 * format"). 88 bytes, big-endian, replaced atomically (atomic-file.ts) only after everything it names is
 * fdatasync'd:
 *
 *   offset 0   4 bytes  magic "TsSn"
 *   offset 4   4 bytes  format version (1)
 *   offset 8   8 bytes  entries N: audit.log records, audit.tree leaves and audit.idx offsets it covers
 *   offset 16  8 bytes  byte length of audit.log after those N records
 *   offset 24 32 bytes  Merkle root of the first N entries
 *   offset 56 32 bytes  SHA-256 of bytes 0..56 (a damaged or half-written file is never taken)
 */
import { createHash } from 'node:crypto';
import { HASH_SIZE } from '../audit/merkle.js';

export interface AuditSnapshot {
  readonly entries: number;
  readonly logBytes: number;
  readonly rootHash: Buffer;
}

const MAGIC = Buffer.from('TsSn', 'latin1');
const VERSION = 1;
export const SNAPSHOT_BYTES = 88;
const BODY = 56;

function u64(buf: Buffer, at: number): number | undefined {
  const v = buf.readBigUInt64BE(at);
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined;
}

export function encodeSnapshot(s: AuditSnapshot): Buffer {
  if (!Number.isSafeInteger(s.entries) || s.entries < 0 || !Number.isSafeInteger(s.logBytes) || s.logBytes < 0 || s.rootHash.length !== HASH_SIZE) {
    throw new Error('invalid audit snapshot');
  }
  const out = Buffer.alloc(SNAPSHOT_BYTES);
  MAGIC.copy(out, 0);
  out.writeUInt32BE(VERSION, 4);
  out.writeBigUInt64BE(BigInt(s.entries), 8);
  out.writeBigUInt64BE(BigInt(s.logBytes), 16);
  s.rootHash.copy(out, 24);
  createHash('sha256').update(out.subarray(0, BODY)).digest().copy(out, BODY);
  return out;
}

/** The snapshot, or why these bytes are not one (never throws: the file is outside input). */
export function decodeSnapshot(buf: Uint8Array): AuditSnapshot | { readonly invalid: string } {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length !== SNAPSHOT_BYTES) return { invalid: `${b.length} bytes, not ${SNAPSHOT_BYTES}` };
  if (!b.subarray(0, 4).equals(MAGIC)) return { invalid: 'bad magic' };
  if (b.readUInt32BE(4) !== VERSION) return { invalid: `format ${b.readUInt32BE(4)}, not ${VERSION}` };
  if (!createHash('sha256').update(b.subarray(0, BODY)).digest().equals(b.subarray(BODY))) return { invalid: 'checksum mismatch (torn or changed)' };
  const entries = u64(b, 8);
  const logBytes = u64(b, 16);
  if (entries === undefined || logBytes === undefined) return { invalid: 'sizes out of range' };
  return { entries, logBytes, rootHash: Buffer.from(b.subarray(24, 24 + HASH_SIZE)) };
}
