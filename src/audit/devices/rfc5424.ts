/**
 * RFC 5424 syslog messages for audit records, and RFC 6587 octet-counting framing.
 *
 *   <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [tessera@32473 index="…" …] {record JSON}
 *
 * PRI = facility × 8 + severity (§6.2.1): break-glass and other `severity: critical` entries are crit
 * (2), denials warning (4), everything else info (6). TIMESTAMP is the entry's time (UTC, ms). MSGID is
 * the entry type. The structured data element repeats the fields a SIEM indexes on (index, leaf hash,
 * type, decision, actor, subject, namespace, service account, request and replica ids); MSG is the full
 * record as JSON (record.ts), the part to verify against the log. 32473 is the example enterprise
 * number of RFC 5612: the SD-ID is not registered, which RFC 5424 allows for "name@number" IDs.
 *
 * Header fields are PRINTUSASCII with fixed maximum lengths (§6): anything else is replaced or cut so
 * that no input can produce a message a receiver would split or reject. PARAM-VALUEs are UTF-8 with
 * `"`, `\` and `]` escaped by a backslash (§6.3.3).
 */
import { type ShipRecord, recordJson } from './record.js';

export const SD_ID = 'tessera@32473';
const NILVALUE = '-';

export type Severity = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7;

export interface SyslogHeader {
  /** 0..23 */
  readonly facility: number;
  readonly hostname: string;
  readonly appName: string;
  readonly procId: string;
}

/** PRINTUSASCII (%d33-126) only, at most `max` characters; empty becomes the NILVALUE "-". */
export function headerField(value: string, max: number): string {
  const clean = value.replace(/[^\x21-\x7e]/g, '_').slice(0, max);
  return clean === '' ? NILVALUE : clean;
}

/** §6.3.3: inside a PARAM-VALUE, '"', '\' and ']' MUST be escaped. */
export function escapeParamValue(value: string): string {
  return value.replace(/["\\\]]/g, (c) => `\\${c}`);
}

export function prival(facility: number, severity: Severity): number {
  if (!Number.isInteger(facility) || facility < 0 || facility > 23) throw new RangeError(`facility ${facility} is not in 0..23`);
  return facility * 8 + severity;
}

export function severityOf(r: ShipRecord): Severity {
  const e = r.entry;
  if (e === undefined) return 3; // a damaged entry: err
  if (e.severity === 'critical' || e.type === 'break-glass' || e.type === 'alert') return 2;
  if (e.decision === 'deny') return 4;
  return 6;
}

/** §6.2.3: full-date "T" full-time with fractional seconds and Z. */
function timestamp(ms: number): string {
  if (!Number.isFinite(ms)) return NILVALUE;
  try {
    return new Date(ms).toISOString();
  } catch {
    return NILVALUE;
  }
}

const SD_FIELDS = ['type', 'decision', 'actor', 'subject', 'namespace', 'serviceAccount', 'serial', 'jti', 'leaseId', 'code', 'requestId', 'replica', 'severity'] as const;

/** The SD-ELEMENT: index and leaf hash, then the entry's identifying fields that are present. */
export function structuredData(r: ShipRecord): string {
  const params: string[] = [`index="${r.index}"`, `leafHash="${escapeParamValue(r.leafHash)}"`, `replicaId="${escapeParamValue(r.replicaId)}"`];
  const e = r.entry as Record<string, unknown> | undefined;
  if (e !== undefined) {
    for (const k of SD_FIELDS) {
      const v = e[k];
      if (typeof v === 'string') params.push(`${k}="${escapeParamValue(v)}"`);
    }
  }
  return `[${SD_ID} ${params.join(' ')}]`;
}

/** One RFC 5424 message (no framing, no trailing newline). */
export function formatSyslog(r: ShipRecord, h: SyslogHeader): string {
  const ts = typeof r.entry?.ts === 'number' ? timestamp(r.entry.ts) : NILVALUE;
  const msgId = headerField(r.entry?.type ?? 'damaged-entry', 32);
  return `<${prival(h.facility, severityOf(r))}>1 ${ts} ${headerField(h.hostname, 255)} ${headerField(h.appName, 48)} ${headerField(h.procId, 128)} ${msgId} ${structuredData(r)} ${recordJson(r)}`;
}

/** RFC 6587 §3.4.1 octet counting: "MSG-LEN SP SYSLOG-MSG", MSG-LEN in bytes. */
export function octetCounted(message: string): Buffer {
  const body = Buffer.from(message, 'utf8');
  return Buffer.concat([Buffer.from(`${body.length} `, 'ascii'), body]);
}
