/**
 * The audit device interface, and the one place that chooses an implementation for a configured device.
 *
 * A device only writes: the shipper (shipper.ts) decides what to write, when to retry, and how far the
 * stored cursor may move. `write` resolves once the records are handed to the destination as far as
 * the device can tell (a file: written, and fdatasync'd with fsync: batch; a stream socket: flushed to
 * the kernel). A stream socket can still lose what the kernel took if the connection then fails, and a
 * file can lose what an outside copytruncate did not copy: such devices bump `generation` when that
 * may have happened, and the shipper sends again what it wrote within its resend window.
 */
import { hostname } from 'node:os';
import type { AuditDeviceConfig } from '../../config/config.js';
import { FACILITIES, parseDeviceAddress } from './config.js';
import { FileDevice } from './file.js';
import { type ShipRecord, recordJson } from './record.js';
import { formatSyslog, octetCounted, type SyslogHeader } from './rfc5424.js';
import { DatagramTransport, StreamTransport, type Transport } from './transport.js';

export interface AuditDevice {
  readonly name: string;
  readonly type: AuditDeviceConfig['type'];
  /** Writes the records in order (opening or connecting first if needed); rejects on any failure. */
  write(records: readonly ShipRecord[]): Promise<void>;
  /** Bumped whenever records a resolved write handed over may have been lost since. */
  readonly generation: number;
  /** True when a resolved write may still be lost later (see generation): the shipper confirms late. */
  readonly lossyAfterWrite: boolean;
  /** Looks for outside changes (a file rotated or truncated under us) that bump generation. */
  check(): Promise<void>;
  /** Drops the connection or file handle (after a failure or a timeout); the next write opens a new one. */
  reset(): void;
  /** Reopens files (SIGUSR1, after an outside logrotate). */
  reopen(): void;
  close(): Promise<void>;
}

/** Sends byte frames in order over a transport: the socket and syslog devices. */
class FramedDevice implements AuditDevice {
  constructor(
    readonly name: string,
    readonly type: 'syslog' | 'socket',
    private readonly transport: Transport,
    private readonly frame: (r: ShipRecord) => Buffer,
  ) {}

  get generation(): number {
    return this.transport.generation;
  }

  get lossyAfterWrite(): boolean {
    return this.transport.lossyAfterWrite;
  }

  write(records: readonly ShipRecord[]): Promise<void> {
    return this.transport.send(records.map(this.frame));
  }

  async check(): Promise<void> {}

  reset(): void {
    this.transport.reset();
  }

  reopen(): void {}

  close(): Promise<void> {
    return this.transport.close();
  }
}

export interface DeviceOptions {
  /** The syslog HOSTNAME (default: this host's name). */
  readonly hostname?: string;
}

export function createDevice(d: AuditDeviceConfig, opts: DeviceOptions = {}): AuditDevice {
  if (d.type === 'file') {
    if (d.path === undefined) throw new Error(`audit device ${d.name}: no path`);
    return new FileDevice(d.name, { path: d.path, maxBytes: d.maxBytes ?? 0, keep: d.keep ?? 5, fsync: (d.fsync ?? 'batch') === 'batch' });
  }
  if (d.address === undefined) throw new Error(`audit device ${d.name}: no address`);
  if (d.type === 'socket') {
    const transport = new StreamTransport(parseDeviceAddress(d.address, ['tcp', 'unix']));
    return new FramedDevice(d.name, 'socket', transport, (r) => Buffer.from(`${recordJson(r)}\n`, 'utf8'));
  }
  const addr = parseDeviceAddress(d.address, ['tcp', 'tls', 'udp']);
  const header: SyslogHeader = {
    facility: FACILITIES.indexOf((d.facility ?? 'auth') as (typeof FACILITIES)[number]),
    hostname: opts.hostname ?? hostname(),
    appName: d.appName ?? 'tessera',
    procId: String(process.pid),
  };
  if (addr.transport === 'udp') {
    return new FramedDevice(d.name, 'syslog', new DatagramTransport(addr), (r) => Buffer.from(formatSyslog(r, header), 'utf8'));
  }
  const transport = new StreamTransport(addr, addr.transport === 'tls' ? d.tls : undefined);
  return new FramedDevice(d.name, 'syslog', transport, (r) => octetCounted(formatSyslog(r, header)));
}
