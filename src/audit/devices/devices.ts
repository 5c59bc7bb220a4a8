/**
 * The broker's audit devices (config audit.devices): one Shipper each, the fail-closed policy for
 * required devices, lag figures for /readyz and metrics, and the device-lag alert.
 *
 * Policy: a device with `required: true` that is further behind than `maxLagEntries` entries or
 * `maxLagSeconds` seconds makes every issuance fail with 503 `audit_device_lagging` (assertCaughtUp,
 * called by the access guard before anything is issued) until it catches up. `required: false` never
 * blocks anything. Crossing a bound (either kind of device) fires the `device-lag` alert rules once per
 * crossing.
 */
import { BrokerError } from '../../errors.js';
import type { AuditDeviceConfig } from '../../config/config.js';
import type { Store } from '../../store/store.js';
import type { AuditLog } from '../log.js';
import type { SignedCheckpoint } from '../note.js';
import { type AuditDevice, createDevice } from './device.js';
import { type DeviceStatus, Shipper } from './shipper.js';

export type { DeviceStatus };

export interface DeviceEvents {
  delivered(device: string, count: number): void;
  failed(device: string): void;
  /** A device went past one of its lag bounds (edge-triggered). */
  lagging(status: DeviceStatus, config: AuditDeviceConfig): void;
  error(err: unknown, what: string): void;
}

export interface AuditDevicesOptions {
  readonly devices: readonly AuditDeviceConfig[];
  readonly store: Store;
  readonly audit: AuditLog;
  readonly checkpoint: () => SignedCheckpoint | undefined;
  readonly replicaId: string;
  readonly events?: Partial<DeviceEvents>;
  /** Tests: build devices another way. */
  readonly createDevice?: (config: AuditDeviceConfig) => AuditDevice;
}

const CHECK_EVERY_MS = 1_000;

const beyond = (s: DeviceStatus, c: AuditDeviceConfig): boolean => s.lagEntries > c.maxLagEntries || s.lagSeconds > c.maxLagSeconds;

export class AuditDevices {
  readonly #shippers: { shipper: Shipper; config: AuditDeviceConfig }[];
  readonly #events: Partial<DeviceEvents>;
  readonly #lagging = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #started = false;
  readonly #onSignal: () => void;
  #closed = false;

  constructor(opts: AuditDevicesOptions) {
    this.#events = opts.events ?? {};
    const make = opts.createDevice ?? ((c: AuditDeviceConfig) => createDevice(c));
    this.#shippers = opts.devices.map((config) => ({
      config,
      shipper: new Shipper({
        device: make(config),
        config,
        store: opts.store,
        audit: opts.audit,
        checkpoint: opts.checkpoint,
        replicaId: opts.replicaId,
        onDelivered: (n) => this.#events.delivered?.(config.name, n),
        onFailed: () => this.#events.failed?.(config.name),
        onError: (err) => this.#events.error?.(err, `audit device ${config.name}`),
      }),
    }));
    opts.audit.onAppend((_entry, receipt) => {
      for (const { shipper } of this.#shippers) shipper.notify(receipt.index + 1);
    });
    this.#onSignal = () => this.reopen();
  }

  /** Starts shipping (once the rest of the broker is up: nothing runs if building it failed). */
  start(): void {
    if (this.#started || this.#closed || this.#shippers.length === 0) return;
    this.#started = true;
    for (const { shipper } of this.#shippers) shipper.start();
    this.#timer = setInterval(() => this.#watch(), CHECK_EVERY_MS);
    this.#timer.unref();
    // logrotate's postrotate: `kill -USR1 <pid>` reopens the files.
    if (this.#shippers.some((s) => s.config.type === 'file')) process.on('SIGUSR1', this.#onSignal);
  }

  get size(): number {
    return this.#shippers.length;
  }

  status(): DeviceStatus[] {
    return this.#shippers.map(({ shipper }) => shipper.status());
  }

  /** Throws 503 audit_device_lagging if a required device is further behind than its bounds. */
  assertCaughtUp(): void {
    for (const { shipper, config } of this.#shippers) {
      if (!config.required) continue;
      const s = shipper.status();
      if (beyond(s, config)) {
        throw new BrokerError(
          'audit_device_lagging',
          `required audit device "${config.name}" is ${s.lagEntries} entries / ${s.lagSeconds} s behind (bounds: ${config.maxLagEntries} entries, ${config.maxLagSeconds} s); nothing is issued until it catches up`,
        );
      }
    }
  }

  /** Reopens file devices (SIGUSR1). */
  reopen(): void {
    for (const { shipper } of this.#shippers) shipper.reopen();
  }

  #watch(): void {
    for (const { shipper, config } of this.#shippers) {
      const s = shipper.status();
      if (beyond(s, config)) {
        if (!this.#lagging.has(config.name)) {
          this.#lagging.add(config.name);
          this.#events.lagging?.(s, config);
        }
      } else this.#lagging.delete(config.name);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    process.off('SIGUSR1', this.#onSignal);
    await Promise.all(this.#shippers.map(({ shipper }) => shipper.close()));
  }
}
