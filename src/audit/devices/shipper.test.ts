import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { until } from '../../../test/helpers/until.js';
import type { AuditDeviceConfig } from '../../config/config.js';
import { BrokerError } from '../../errors.js';
import { EmbeddedStore } from '../../store/embedded.js';
import { type AuditEntry, canonicalJson } from '../entry.js';
import { AuditLog } from '../log.js';
import { leafHash } from '../merkle.js';
import type { AuditDevice } from './device.js';
import { AuditDevices } from './devices.js';
import { FileDevice } from './file.js';
import type { ShipRecord } from './record.js';
import type { SignedCheckpoint } from '../note.js';

/** A device that records what it was given and fails, hangs or "loses" on command. */
class FakeDevice implements AuditDevice {
  readonly type = 'socket' as const;
  readonly got: ShipRecord[] = [];
  readonly batchSizes: number[] = [];
  generation = 0;
  fail = false;
  hang = false;
  writes = 0;
  resets = 0;
  constructor(
    readonly name: string,
    readonly lossyAfterWrite: boolean,
  ) {}
  async write(records: readonly ShipRecord[]): Promise<void> {
    this.writes++;
    if (this.hang) return new Promise(() => {});
    if (this.fail) throw new Error('connection refused');
    this.batchSizes.push(records.length);
    this.got.push(...records);
  }
  async check(): Promise<void> {}
  reset(): void {
    this.resets++;
  }
  reopen(): void {}
  async close(): Promise<void> {}
  indexes(): number[] {
    return this.got.map((r) => r.index);
  }
}

const device = (over: Partial<AuditDeviceConfig> = {}): AuditDeviceConfig => ({
  name: 'dev',
  type: 'socket',
  address: 'tcp://127.0.0.1:1',
  required: false,
  maxLagEntries: 10_000,
  maxLagSeconds: 60,
  batchSize: 7,
  writeTimeoutMs: 300,
  retryInitialMs: 10,
  retryMaxMs: 50,
  resendWindowMs: 0,
  ...over,
});

const entry = (i: number): AuditEntry => ({ ts: 1_700_000_000_000 + i, type: 'denial', decision: 'deny', actor: `spiffe://example.org/ns/a/sa/w${i}`, subject: null, code: 'forbidden', requestId: `req-${i}`, replica: 'r1' });

let dir: string;
let store: EmbeddedStore;
let log: AuditLog;
const open: AuditDevices[] = [];

async function start(cfg: AuditDeviceConfig, dev: AuditDevice, checkpoint: () => SignedCheckpoint | undefined = () => undefined): Promise<AuditDevices> {
  const d = new AuditDevices({ devices: [cfg], store, audit: log, checkpoint, replicaId: 'r1', createDevice: () => dev });
  d.start();
  open.push(d);
  return d;
}

async function append(from: number, to: number): Promise<void> {
  for (let i = from; i < to; i++) await log.append(entry(i));
}

/** Every index 0..n-1 is present, in order of first arrival. */
function expectNoGap(indexes: number[], n: number): void {
  const firsts: number[] = [];
  const seen = new Set<number>();
  for (const i of indexes) {
    if (!seen.has(i)) firsts.push(i);
    seen.add(i);
  }
  expect(firsts).toEqual(Array.from({ length: n }, (_, i) => i));
}

beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'tessera-ship-'));
  store = await EmbeddedStore.open(path.join(dir, 'data'), { fsync: false });
  log = await AuditLog.open(store);
});
afterEach(async () => {
  await Promise.all(open.splice(0).map((d) => d.close()));
  await store.close();
  await fsp.rm(dir, { recursive: true, force: true });
});

describe('audit device shipper', () => {
  it('a record carries the newest checkpoint only when that checkpoint covers it (size > index)', async () => {
    await append(0, 5);
    const cp = { size: 3, rootHash: Buffer.alloc(32, 7), note: 'example.org/tessera/audit\n3\n…\n' } as unknown as SignedCheckpoint;
    const dev = new FakeDevice('dev', false);
    await start(device(), dev, () => cp);
    await until('all shipped', async () => (dev.got.length >= 5 ? true : undefined), 10_000);
    const carried = dev.got.map((r) => r.checkpoint?.treeSize);
    expect(carried).toEqual([3, 3, 3, undefined, undefined]);
    expect(dev.got[0]?.checkpoint).toEqual({ treeSize: 3, rootHash: Buffer.alloc(32, 7).toString('base64'), note: cp.note });
  });

  it('ships every entry once, in order, in batches of at most batchSize, with the record fields; the cursor is stored', async () => {
    await append(0, 30);
    const dev = new FakeDevice('dev', false);
    const devices = await start(device(), dev);
    await append(30, 50);
    await until('all shipped', async () => (dev.got.length >= 50 ? true : undefined), 10_000);
    expect(dev.indexes()).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(Math.max(...dev.batchSizes)).toBeLessThanOrEqual(7);
    const stored = await store.readAuditEntries(0, 50);
    dev.got.forEach((r, i) => {
      expect(r.bytes).toEqual(stored[i]);
      expect(r.leafHash).toBe(leafHash(canonicalJson(entry(i))).toString('base64'));
      expect(r.replicaId).toBe('r1');
      expect(r.entry?.requestId).toBe(`req-${i}`);
    });
    await until('cursor stored', async () => ((await store.auditCursor('dev')) === 50 ? true : undefined), 5000);
    expect(devices.status()[0]).toMatchObject({ name: 'dev', shipping: true, position: 50, lagEntries: 0 });
  });

  it('resumes from the stored position after a restart (nothing before it is sent again)', async () => {
    await append(0, 20);
    const first = new FakeDevice('dev', false);
    const d1 = await start(device(), first);
    await until('first 20', async () => ((await store.auditCursor('dev')) === 20 ? true : undefined), 5000);
    await d1.close();
    await append(20, 35);
    const second = new FakeDevice('dev', false);
    await start(device(), second);
    await until('rest', async () => (second.got.length >= 15 ? true : undefined), 5000);
    expect(second.indexes()).toEqual(Array.from({ length: 15 }, (_, i) => 20 + i));
  });

  it('a failing destination is retried with backoff; when it returns, the backlog arrives in order with no gap', async () => {
    const dev = new FakeDevice('dev', false);
    dev.fail = true;
    const devices = await start(device(), dev);
    await append(0, 40);
    await until('several retries', async () => (dev.writes >= 4 ? true : undefined), 5000);
    expect(devices.status()[0]).toMatchObject({ lagEntries: 40, position: 0 });
    expect(devices.status()[0]?.failed).toBeGreaterThanOrEqual(4);
    expect(dev.resets).toBeGreaterThanOrEqual(4);
    dev.fail = false;
    await until('backlog', async () => (dev.got.length >= 40 ? true : undefined), 5000);
    expect(dev.indexes()).toEqual(Array.from({ length: 40 }, (_, i) => i));
  });

  it('a write that hangs times out, the device is reset, and the batch is written again', async () => {
    const dev = new FakeDevice('dev', false);
    dev.hang = true;
    const devices = await start(device({ writeTimeoutMs: 200 }), dev);
    await append(0, 5);
    await until('timeouts', async () => (dev.resets >= 2 ? true : undefined), 5000);
    expect(devices.status()[0]?.lastError).toMatch(/did not complete within 200 ms/);
    dev.hang = false;
    await until('delivered', async () => (dev.got.length >= 5 ? true : undefined), 5000);
    expect(dev.indexes()).toEqual([0, 1, 2, 3, 4]);
  });

  it('on a device whose writes can still be lost, a sign of loss resends everything not yet confirmed (same indexes), with no gap', async () => {
    const dev = new FakeDevice('dev', true);
    await start(device({ resendWindowMs: 60_000 }), dev);
    await append(0, 12);
    await until('first pass', async () => (dev.got.length >= 12 ? true : undefined), 5000);
    expect(await store.auditCursor('dev')).toBe(0); // nothing settled yet: the window is a minute
    dev.generation++; // the connection dropped
    await append(12, 15);
    await until('resent', async () => (dev.got.length >= 27 ? true : undefined), 5000);
    const idx = dev.indexes();
    expectNoGap(idx, 15);
    expect(idx.slice(12, 27)).toEqual(Array.from({ length: 15 }, (_, i) => i)); // everything again, from 0, in order
  });

  it('required: issuance is refused (503 audit_device_lagging) beyond maxLagEntries, and allowed again once it catches up', async () => {
    const dev = new FakeDevice('dev', false);
    dev.fail = true;
    const devices = await start(device({ required: true, maxLagEntries: 5 }), dev);
    await append(0, 5);
    expect(() => devices.assertCaughtUp()).not.toThrow();
    await append(5, 6);
    let err: unknown;
    try {
      devices.assertCaughtUp();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BrokerError);
    expect((err as BrokerError).code).toBe('audit_device_lagging');
    expect((err as BrokerError).status).toBe(503);
    expect((err as BrokerError).message).toMatch(/"dev" is 6 entries/);
    dev.fail = false;
    await until('caught up', async () => (devices.status()[0]?.lagEntries === 0 ? true : undefined), 5000);
    expect(() => devices.assertCaughtUp()).not.toThrow();
  });

  it('a device crossing its lag bound is reported once per crossing (the device-lag alert), again after it recovered', async () => {
    const dev = new FakeDevice('dev', false);
    dev.fail = true;
    const lagging: number[] = [];
    const d = new AuditDevices({
      devices: [device({ maxLagEntries: 3 })],
      store,
      audit: log,
      checkpoint: () => undefined,
      replicaId: 'r1',
      createDevice: () => dev,
      events: { lagging: (s) => lagging.push(s.lagEntries) },
    });
    d.start();
    open.push(d);
    await append(0, 6);
    await until('reported', async () => (lagging.length === 1 ? true : undefined), 5000);
    await new Promise((r) => setTimeout(r, 1500));
    expect(lagging).toHaveLength(1); // not again while it stays behind
    dev.fail = false;
    await until('caught up', async () => (d.status()[0]?.lagEntries === 0 ? true : undefined), 5000);
    await new Promise((r) => setTimeout(r, 1200));
    dev.fail = true;
    await append(6, 12);
    await until('reported again', async () => (lagging.length === 2 ? true : undefined), 5000);
  });

  it('required: false never refuses, however far behind', async () => {
    const dev = new FakeDevice('dev', false);
    dev.fail = true;
    const devices = await start(device({ required: false, maxLagEntries: 1 }), dev);
    await append(0, 10);
    expect(devices.status()[0]?.lagEntries).toBe(10);
    expect(() => devices.assertCaughtUp()).not.toThrow();
  });
});

describe('file device', () => {
  const rec = (i: number): ShipRecord => {
    const bytes = canonicalJson(entry(i));
    return { index: i, bytes, entry: entry(i), leafHash: leafHash(bytes).toString('base64'), replicaId: 'r1' };
  };
  const lines = async (file: string): Promise<number[]> => {
    const text = await fsp.readFile(file, 'utf8').catch(() => '');
    return text.split('\n').filter((l) => l !== '').map((l) => (JSON.parse(l) as { index: number }).index);
  };

  it('writes JSON lines (mode 0600) and rotates by size, keeping `keep` files', async () => {
    const file = path.join(dir, 'logs', 'audit.jsonl');
    const d = new FileDevice('f', { path: file, maxBytes: 2000, keep: 2, fsync: true });
    for (let i = 0; i < 40; i++) await d.write([rec(i)]);
    await d.close();
    expect((await fsp.stat(file)).mode & 0o777).toBe(0o600);
    for (const f of [file, `${file}.1`, `${file}.2`]) expect((await fsp.stat(f)).size).toBeLessThanOrEqual(2000);
    await expect(fsp.stat(`${file}.3`)).rejects.toThrow(/ENOENT/);
    const all = [...(await lines(`${file}.2`)), ...(await lines(`${file}.1`)), ...(await lines(file))];
    expect(all).toEqual(Array.from({ length: all.length }, (_, i) => 40 - all.length + i)); // the newest, in order
    const one = JSON.parse((await fsp.readFile(file, 'utf8')).split('\n')[0] as string) as { entry: unknown; leafHash: string };
    expect(leafHash(canonicalJson(one.entry)).toString('base64')).toBe(one.leafHash);
  });

  it('create-style outside rotation: the handle follows the renamed file, then path is reopened; nothing lost', async () => {
    const file = path.join(dir, 'audit.jsonl');
    const d = new FileDevice('f', { path: file, maxBytes: 0, keep: 0, fsync: false });
    await d.write([rec(0), rec(1)]);
    await fsp.rename(file, `${file}.1`);
    await d.write([rec(2)]); // found before writing: reopened at path
    await fsp.rename(file, `${file}.2`);
    await fsp.writeFile(file, '', { mode: 0o600 }); // logrotate `create`
    await d.write([rec(3)]);
    await d.close();
    expect([...(await lines(`${file}.1`)), ...(await lines(`${file}.2`)), ...(await lines(file))]).toEqual([0, 1, 2, 3]);
    expect(d.generation).toBe(0);
  });

  it('copytruncate: a truncation under the handle is noticed (generation bumps), later lines start at the new end', async () => {
    const file = path.join(dir, 'audit.jsonl');
    const d = new FileDevice('f', { path: file, maxBytes: 0, keep: 0, fsync: false });
    await d.write([rec(0), rec(1)]);
    await fsp.copyFile(file, `${file}.1`);
    await fsp.truncate(file, 0);
    await d.check();
    expect(d.generation).toBe(1);
    await d.write([rec(2)]);
    await d.close();
    const text = await fsp.readFile(file, 'utf8');
    expect(text.startsWith('{')).toBe(true); // no hole of NULs
    expect(await lines(file)).toEqual([2]);
  });

  it('reopen() (SIGUSR1) closes and reopens path at the next write', async () => {
    const file = path.join(dir, 'audit.jsonl');
    const d = new FileDevice('f', { path: file, maxBytes: 0, keep: 0, fsync: false });
    await d.write([rec(0)]);
    await fsp.rename(file, `${file}.old`);
    await fsp.writeFile(file, '');
    d.reopen();
    await d.write([rec(1)]);
    await d.close();
    expect(await lines(`${file}.old`)).toEqual([0]);
    expect(await lines(file)).toEqual([1]);
  });
});

describe('syslog over UDP (RFC 5426)', () => {
  it('sends one RFC 5424 message per datagram, unframed, and never resends', async () => {
    const dgram = await import('node:dgram');
    const { createDevice } = await import('./device.js');
    const server = dgram.createSocket('udp4');
    const got: string[] = [];
    server.on('message', (m) => got.push(m.toString('utf8')));
    await new Promise<void>((r) => server.bind(0, '127.0.0.1', r));
    try {
      const cfg = device({ type: 'syslog', address: `udp://127.0.0.1:${server.address().port}`, facility: 'local0', appName: 'tessera-test' });
      const dev = createDevice(cfg, { hostname: 'broker-0' });
      expect(dev.lossyAfterWrite).toBe(false);
      const devices = new AuditDevices({ devices: [cfg], store, audit: log, checkpoint: () => undefined, replicaId: 'r1', createDevice: () => dev });
      devices.start();
      open.push(devices);
      await append(0, 5);
      await until('datagrams', async () => (got.length >= 5 ? true : undefined), 5000);
      expect(got.map((m) => /index="(\d+)"/.exec(m)?.[1])).toEqual(['0', '1', '2', '3', '4']);
      for (const m of got) expect(m).toMatch(/^<132>1 \S+ broker-0 tessera-test \d+ denial \[tessera@32473 index="\d+" /); // local0 × 8 + warning
      await until('cursor', async () => ((await store.auditCursor('dev')) === 5 ? true : undefined), 5000);
    } finally {
      server.close();
    }
  });
});
