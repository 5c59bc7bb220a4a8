/**
 * Audit devices against real destinations: a private rsyslogd (plain TCP and TLS with gtls, started
 * here with its own config on a loopback port), files rotated by an "outside logrotate" (this test),
 * and a Unix socket reader that stalls. What must hold everywhere: every entry arrives, in order, with
 * its index (duplicates after a failure are allowed and carry the same index); a record verifies
 * against the log's leaf hash.
 */
import { promises as fsp, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { canonicalJson } from '../../src/audit/entry.js';
import { leafHash } from '../../src/audit/merkle.js';
import { devMaterial, materialConfig, startBroker, type TestBroker } from '../helpers/broker.js';
import { freePort } from '../helpers/redis.js';
import { gtlsAvailable, type Rsyslog, rsyslogBinary, rsyslogRequiredUnderCi, startRsyslog } from '../helpers/rsyslog.js';
import { until } from '../helpers/until.js';

interface ShippedRecord {
  index: number;
  leafHash: string;
  replicaId: string;
  checkpoint?: { treeSize: number; rootHash: string; note: string };
  entry: Record<string, unknown>;
}

const scratch: string[] = [];
const brokers: TestBroker[] = [];
const syslogs: Rsyslog[] = [];
afterEach(async () => {
  await Promise.all(brokers.splice(0).map((b) => b.close().catch(() => {})));
  await Promise.all(syslogs.splice(0).map((s) => s.stop().catch(() => {})));
});
afterAll(() => {
  for (const d of scratch) rmSync(d, { recursive: true, force: true });
});

function tempDir(label: string): string {
  const d = mkdtempSync(path.join(tmpdir(), `tessera-${label}-`));
  scratch.push(d);
  return d;
}

/** A test broker with these audit devices (and, for restarts, a data directory that outlives it). */
async function brokerWith(devices: Record<string, unknown>[], dataDir?: string): Promise<TestBroker> {
  const { dir, material } = await devMaterial();
  const base = materialConfig(dir, material);
  const b = await startBroker({ config: { audit: { ...base.audit, devices } }, ...(dataDir !== undefined ? { dataDir } : {}) });
  brokers.push(b);
  return b;
}

/** `n` real JWT-SVID issuances (each one audit entry), `parallel` at a time. */
async function issue(b: TestBroker, n: number, parallel = 8): Promise<number[]> {
  const token = await b.token();
  const statuses: number[] = [];
  for (let i = 0; i < n; i += parallel) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(parallel, n - i) }, () => b.call({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } })),
    );
    statuses.push(...batch.map((r) => r.status));
  }
  return statuses;
}

/** The first arrival of each index, in arrival order, must be 0..n-1. */
function expectAllInOrder(indexes: readonly number[], n: number): void {
  const firsts: number[] = [];
  const seen = new Set<number>();
  for (const i of indexes) {
    if (!seen.has(i)) firsts.push(i);
    seen.add(i);
  }
  expect(firsts.slice(0, n)).toEqual(Array.from({ length: n }, (_, i) => i));
}

/** rsyslog out.log lines are "MSGID [SD] {record}". */
function syslogRecords(lines: readonly string[]): { msgId: string; sd: string; record: ShippedRecord }[] {
  return lines.map((line) => {
    const sp = line.indexOf(' ');
    const end = line.indexOf('] {');
    return { msgId: line.slice(0, sp), sd: line.slice(sp + 1, end + 1), record: JSON.parse(line.slice(end + 2)) as ShippedRecord };
  });
}

async function storedCount(b: TestBroker): Promise<number> {
  return b.broker.store.auditSize();
}

function verifyRecord(r: ShippedRecord, stored: Buffer): void {
  expect(canonicalJson(r.entry)).toEqual(stored);
  expect(leafHash(stored).toString('base64')).toBe(r.leafHash);
}

const haveRsyslog = rsyslogBinary() !== undefined;
describe('rsyslog availability', () => rsyslogRequiredUnderCi());

describe.skipIf(!haveRsyslog)('syslog device → a real rsyslogd (imtcp)', () => {
  it('delivers every entry in order with its index; SD and MSG agree; the record verifies against the log', async () => {
    const port = await freePort();
    const rs = await startRsyslog(port);
    syslogs.push(rs);
    const b = await brokerWith([{ name: 'siem', type: 'syslog', address: `tcp://127.0.0.1:${port}`, facility: 'local4', resendWindowMs: 300 }]);
    expect(await issue(b, 40)).toEqual(Array(40).fill(200));
    const n = await storedCount(b);
    await until('rsyslog has every entry', async () => (new Set(syslogRecords(rs.lines()).map((r) => r.record.index)).size >= n ? true : undefined), 20_000);
    const recs = syslogRecords(rs.lines());
    expect(recs.map((r) => r.record.index)).toEqual(Array.from({ length: n }, (_, i) => i)); // once each, in order
    const stored = await b.broker.store.readAuditEntries(0, n);
    for (const { msgId, sd, record } of recs) {
      verifyRecord(record, stored[record.index] as Buffer);
      expect(msgId).toBe(record.entry.type);
      expect(sd).toContain(`[tessera@32473 index="${record.index}" leafHash="${record.leafHash}" replicaId="test-replica"`);
      expect(record.replicaId).toBe('test-replica');
    }
    // A record carries the newest checkpoint when it covers the record; whether one was signed before the
    // record was shipped is a race (shipper.test.ts pins the rule), so only the rule is checked here.
    for (const { record } of recs) if (record.checkpoint !== undefined) expect(record.checkpoint.treeSize).toBeGreaterThan(record.index);
    // Inclusion proof for a shipped record, straight from the broker.
    const last = recs[recs.length - 1]?.record as ShippedRecord;
    if (last.checkpoint !== undefined) {
      const proof = await b.call<{ leafHash?: string; inclusionProof?: string[] }>({ path: `/v1/audit/proof/inclusion?index=${last.index}&treeSize=${last.checkpoint.treeSize}` });
      expect(proof.status).toBe(200);
    }
    const ready = await b.call<{ devices: { name: string; lagEntries: number; shipping: boolean }[] }>({ path: '/readyz' });
    expect(ready.status).toBe(200);
    await until('lag 0', async () => ((await b.call<{ devices: { lagEntries: number }[] }>({ path: '/readyz' })).json.devices[0]?.lagEntries === 0 ? true : undefined), 10_000);
    expect(ready.json.devices[0]).toMatchObject({ name: 'siem', shipping: true });
    const metrics = await b.broker.metrics.text();
    expect(metrics).toMatch(/tessera_audit_device_lag_entries\{device="siem"\} \d+/);
    expect(metrics).toMatch(new RegExp(`tessera_audit_device_delivered_total\\{device="siem"\\} ${n}`));
  }, 60_000);

  it('rsyslog SIGKILLed during a burst and restarted: every entry of the burst arrives, no gap', async () => {
    const port = await freePort();
    const rs = await startRsyslog(port);
    syslogs.push(rs);
    const b = await brokerWith([{ name: 'siem', type: 'syslog', address: `tcp://127.0.0.1:${port}`, resendWindowMs: 1500, retryInitialMs: 50, retryMaxMs: 300 }]);
    const burst = issue(b, 150, 6);
    await until('some arrived', async () => (rs.lines().length >= 20 ? true : undefined), 20_000);
    await rs.kill('SIGKILL');
    const during = rs.lines().length;
    await new Promise((r) => setTimeout(r, 700));
    await rs.restart();
    expect((await burst).every((s) => s === 200)).toBe(true); // required: false: issuance never waited
    const n = await storedCount(b);
    await until('every entry after the restart', async () => (new Set(syslogRecords(rs.lines()).map((r) => r.record.index)).size >= n ? true : undefined), 30_000);
    const idx = syslogRecords(rs.lines()).map((r) => r.record.index);
    expectAllInOrder(idx, n);
    expect(during).toBeLessThan(n); // the kill really landed mid-burst
    const stored = await b.broker.store.readAuditEntries(0, n);
    for (const { record } of syslogRecords(rs.lines())) verifyRecord(record, stored[record.index] as Buffer);
    expect(b.broker.devices.status()[0]?.failed).toBeGreaterThan(0);
  }, 90_000);

  it('broker restarted in the middle: the device resumes from its stored position', async () => {
    const port = await freePort();
    const rs = await startRsyslog(port);
    syslogs.push(rs);
    const dataDir = path.join(tempDir('restart'), 'data');
    const dev = { name: 'siem', type: 'syslog', address: `tcp://127.0.0.1:${port}`, resendWindowMs: 200, retryInitialMs: 50, retryMaxMs: 300 };
    const a = await brokerWith([dev], dataDir);
    await issue(a, 30);
    const first = await storedCount(a);
    await until('cursor stored', async () => ((await a.broker.store.auditCursor('siem')) === first ? true : undefined), 20_000);
    await rs.kill('SIGKILL'); // the destination goes down; the broker keeps issuing
    await issue(a, 20);
    const stopped = await storedCount(a);
    expect(await a.broker.store.auditCursor('siem')).toBe(first);
    await a.close();
    brokers.splice(brokers.indexOf(a), 1);
    await rs.restart();
    const b = await brokerWith([dev], dataDir);
    expect(b.broker.devices.status()[0]?.position).toBeGreaterThanOrEqual(first);
    await issue(b, 10);
    const n = await storedCount(b);
    expect(n).toBeGreaterThan(stopped);
    await until('everything', async () => (new Set(syslogRecords(rs.lines()).map((r) => r.record.index)).size >= n ? true : undefined), 30_000);
    const idx = syslogRecords(rs.lines()).map((r) => r.record.index);
    expectAllInOrder(idx, n);
    // Nothing below the stored position was sent twice.
    for (let i = 0; i < first; i++) expect(idx.filter((x) => x === i)).toHaveLength(1);
  }, 120_000);
});

describe.skipIf(!haveRsyslog || !gtlsAvailable())('syslog device → rsyslogd over TLS (gtls, RFC 5425)', () => {
  it('delivers over TLS with a client certificate; a wrong CA delivers nothing and says why', async () => {
    const { material } = await devMaterial();
    const pki = material.dir;
    const port = await freePort();
    // rsyslog serves the dev broker certificate and verifies clients against the dev admin CA.
    const rs = await startRsyslog(port, { caFile: material.adminCaCertFile, certFile: path.join(pki, 'server.pem'), keyFile: path.join(pki, 'server.key') });
    syslogs.push(rs);
    const b = await brokerWith([
      {
        name: 'siem',
        type: 'syslog',
        address: `tls://127.0.0.1:${port}`,
        tls: { caFile: material.bundleFile, certFile: material.adminCertFile, keyFile: material.adminKeyFile },
        resendWindowMs: 200,
      },
      // Trusts the wrong CA (the admin CA did not sign the server): must never deliver.
      { name: 'wrongca', type: 'syslog', address: `tls://127.0.0.1:${port}`, tls: { caFile: material.adminCaCertFile }, retryInitialMs: 50, retryMaxMs: 200 },
    ]);
    await issue(b, 20);
    const n = await storedCount(b);
    await until('all over TLS', async () => (new Set(syslogRecords(rs.lines()).map((r) => r.record.index)).size >= n ? true : undefined), 20_000);
    const recs = syslogRecords(rs.lines());
    expect(recs.map((r) => r.record.index)).toEqual(Array.from({ length: n }, (_, i) => i));
    const wrong = b.broker.devices.status()[1];
    expect(wrong?.position).toBe(0);
    expect(wrong?.delivered).toBe(0);
    expect(wrong?.lastError).toMatch(/certificate/i);
  }, 60_000);
});

describe('file device under outside rotation', () => {
  it('logrotate copytruncate and create, during issuance: the rotated files and the live one hold every entry', async () => {
    const logDir = tempDir('filedev');
    const file = path.join(logDir, 'audit.jsonl');
    const b = await brokerWith([{ name: 'local', type: 'file', path: file, resendWindowMs: 1000 }]);
    const indexesIn = async (f: string): Promise<number[]> =>
      (await fsp.readFile(f, 'utf8').catch(() => '')).split('\n').filter((l) => l !== '').map((l) => (JSON.parse(l) as ShippedRecord).index);
    const load = issue(b, 120, 4);
    await until('some lines', async () => ((await indexesIn(file)).length >= 15 ? true : undefined), 20_000);
    // copytruncate: copy, then truncate in place (what is written in between is in neither file).
    await fsp.copyFile(file, `${file}.1`);
    await new Promise((r) => setTimeout(r, 30));
    await fsp.truncate(file, 0);
    await until('more lines', async () => ((await indexesIn(file)).length >= 15 ? true : undefined), 20_000);
    // create: rename away, new empty file, then SIGUSR1 (postrotate) — plus the device notices by itself.
    await fsp.rename(file, `${file}.2`);
    await fsp.writeFile(file, '', { mode: 0o600 });
    process.kill(process.pid, 'SIGUSR1');
    expect((await load).every((s) => s === 200)).toBe(true);
    const n = await storedCount(b);
    const all = async (): Promise<number[]> => [...(await indexesIn(`${file}.1`)), ...(await indexesIn(`${file}.2`)), ...(await indexesIn(file))];
    await until('every entry in some file', async () => (new Set(await all()).size >= n ? true : undefined), 20_000);
    // copytruncate loses what was written between the copy and the truncation; the device notices the
    // truncation after a few more writes and sends the lost range again, so arrival order has one
    // re-sent range out of order (duplicates carry the same index) — but nothing may be missing.
    expect([...new Set(await all())].sort((x, y) => x - y)).toEqual(Array.from({ length: n }, (_, i) => i));
    const live = await indexesIn(file);
    expect(live.length).toBeGreaterThan(0); // the live file was reopened after `create`
    expect(live).toEqual([...live].sort((x, y) => x - y)); // and written in order since
    const stored = await b.broker.store.readAuditEntries(0, n);
    const first = JSON.parse(readFileSync(`${file}.1`, 'utf8').split('\n')[0] as string) as ShippedRecord;
    verifyRecord(first, stored[first.index] as Buffer);
  }, 90_000);
});

/** A Unix-socket NDJSON reader that can stall (stop reading, keep connections open) and resume. */
async function ndjsonReader(socketPath: string): Promise<{ indexes: number[]; stall(): void; resume(): void; close(): Promise<void> }> {
  const indexes: number[] = [];
  const sockets = new Set<net.Socket>();
  let stalled = false;
  const server = net.createServer((s) => {
    sockets.add(s);
    if (stalled) s.pause();
    let buf = '';
    s.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        indexes.push((JSON.parse(buf.slice(0, nl)) as ShippedRecord).index);
        buf = buf.slice(nl + 1);
      }
    });
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(socketPath, r));
  return {
    indexes,
    stall: () => {
      stalled = true;
      for (const s of sockets) s.pause();
    },
    resume: () => {
      stalled = false;
      for (const s of sockets) s.resume();
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Big entries fill the socket buffers quickly (the reason field is metadata, never a secret). */
async function appendMany(b: TestBroker, n: number): Promise<void> {
  const chunk = 200;
  for (let i = 0; i < n; i += chunk) {
    await Promise.all(
      Array.from({ length: Math.min(chunk, n - i) }, (_, k) =>
        b.broker.audit.append({ ts: Date.now(), type: 'admin', decision: 'allow', actor: 'spiffe://example.org/admin/dev', subject: null, action: 'test', reason: `filler ${i + k} ${'x'.repeat(4000)}`, requestId: `fill-${i + k}`, replica: 'test-replica' }),
      ),
    );
  }
}

describe('socket device → a reader that stalls', () => {
  let sockDir: string;
  beforeAll(() => {
    sockDir = tempDir('sock');
  });

  for (const required of [false, true]) {
    it(`required: ${required} — ${required ? 'issuance fails closed (503) beyond the lag bound, and recovers' : 'issuance goes on'}; when the reader resumes every entry arrives`, async () => {
      const sock = path.join(sockDir, `r-${required}.sock`);
      const reader = await ndjsonReader(sock);
      try {
        const b = await brokerWith([
          { name: 'vector', type: 'socket', address: `unix://${sock}`, required, maxLagEntries: 50, maxLagSeconds: 3600, writeTimeoutMs: 500, resendWindowMs: 200, retryInitialMs: 50, retryMaxMs: 200 },
        ]);
        expect(await issue(b, 5)).toEqual(Array(5).fill(200));
        await until('reader got them', async () => (new Set(reader.indexes).size >= 5 ? true : undefined), 10_000);
        reader.stall();
        await appendMany(b, 1500);
        await until('device behind', async () => ((b.broker.devices.status()[0]?.lagEntries ?? 0) > 50 ? true : undefined), 20_000);
        // Stays behind: the stalled reader takes nothing more once its buffers are full.
        await new Promise((r) => setTimeout(r, 1500));
        expect(b.broker.devices.status()[0]?.lagEntries).toBeGreaterThan(50);
        const token = await b.token();
        const during = await b.call<{ error?: string; message?: string }>({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } });
        const ready = await b.call<{ error?: string; message?: string }>({ path: '/readyz' });
        if (required) {
          expect(during.status).toBe(503);
          expect(during.json.error).toBe('audit_device_lagging');
          expect(during.json.message).toMatch(/required audit device "vector" is \d+ entries/);
          expect(ready.status).toBe(503);
          expect(ready.json.message).toMatch(/device:vector: \d+ entries/);
        } else {
          expect(during.status).toBe(200);
          expect(ready.status).toBe(200);
        }
        expect(b.broker.devices.status()[0]?.lastError).toMatch(/within 500 ms|closed|EPIPE|reset/i);
        reader.resume();
        const n = await storedCount(b);
        await until('caught up', async () => (new Set(reader.indexes).size >= n && b.broker.devices.status()[0]?.lagEntries === 0 ? true : undefined), 60_000);
        expectAllInOrder(reader.indexes, n);
        expect((await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } })).status).toBe(200);
      } finally {
        await reader.close();
      }
    }, 120_000);
  }
});
