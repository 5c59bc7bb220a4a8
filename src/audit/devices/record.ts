/**
 * What an audit device ships for one log entry, and its JSON-line form (file and socket devices, and
 * the MSG part of a syslog message).
 *
 * A record is the entry exactly as the log holds it (its canonical bytes, embedded verbatim as the
 * `entry` value) plus where it sits in the log: `index`, `leafHash` (base64 SHA-256(0x00 ‖ entry
 * bytes)), the `replicaId` of the broker that shipped it, and — once one is signed — the `checkpoint`
 * covering it. Re-encoding `entry` with canonicalJson gives back the very bytes that were hashed, so a
 * record taken from a SIEM can be checked against the log (GET /v1/audit/proof/inclusion). The log
 * never holds secrets, so neither does a record.
 */
import { type AuditEntry, canonicalJson, parseAuditEntry } from '../entry.js';

export interface ShipRecord {
  readonly index: number;
  /** The canonical entry bytes, as stored. */
  readonly bytes: Buffer;
  /**
   * The parsed entry (syslog structured data reads fields from it). Absent when the stored bytes are
   * not a canonical entry (a damaged store): the record then carries them as `entryBase64`, so a
   * device never writes bytes that could break its framing, and the damage is visible downstream.
   */
  readonly entry?: AuditEntry;
  /** base64 */
  readonly leafHash: string;
  readonly replicaId: string;
  /** The newest signed checkpoint this replica knows, if it covers the entry (size > index). */
  readonly checkpoint?: { readonly treeSize: number; readonly rootHash: string; readonly note: string };
}

/** The record as one line of JSON (no newline). Keys in a fixed order; `entry` is the stored bytes verbatim. */
export function recordJson(r: ShipRecord): string {
  const cp = r.checkpoint !== undefined ? `,"checkpoint":${JSON.stringify({ treeSize: r.checkpoint.treeSize, rootHash: r.checkpoint.rootHash, note: r.checkpoint.note })}` : '';
  const entry = r.entry !== undefined ? `"entry":${r.bytes.toString('utf8')}` : `"entryBase64":"${r.bytes.toString('base64')}"`;
  return `{"index":${r.index},"leafHash":${JSON.stringify(r.leafHash)},"replicaId":${JSON.stringify(r.replicaId)}${cp},${entry}}`;
}

/** The entry if `bytes` are a well-formed entry in canonical form (what the log writes), else undefined. */
export function canonicalEntry(bytes: Buffer): AuditEntry | undefined {
  try {
    const parsed: unknown = JSON.parse(bytes.toString('utf8'));
    if (!canonicalJson(parsed).equals(bytes)) return undefined;
    return parseAuditEntry(bytes);
  } catch {
    return undefined;
  }
}
