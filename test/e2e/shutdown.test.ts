/**
 * Graceful shutdown of a real `tessera serve` process: requests in flight when SIGTERM arrives still
 * complete with 200, new connections are refused, the process signs a final audit checkpoint and exits
 * 0, and after a restart every credential it handed out is in the audit log. The metrics listener of
 * the same process is scraped on the way.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintDevToken } from '../../src/dev/token-issuer.js';
import { EmbeddedStore } from '../../src/store/embedded.js';
import { devMaterial, materialConfig } from '../helpers/broker.js';
import { httpsCall } from '../helpers/https.js';

const CLI = path.resolve('dist/cli/main.js');
let dir: string;
let configFile: string;
let dataDir: string;
let ca: string;
let token: string;

interface Running {
  readonly proc: ChildProcess;
  readonly url: string;
  readonly port: number;
  readonly metricsUrl: string;
  readonly output: () => string;
  readonly exited: Promise<number | null>;
}

async function start(): Promise<Running> {
  const proc = spawn(process.execPath, [CLI, 'serve', '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TESSERA_CONFIG: '' } });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const { url, metricsUrl } = await new Promise<{ url: string; metricsUrl: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`broker did not start: ${out}`)), 30_000);
    const check = (): void => {
      const m = /listening on (https:\/\/[\d.]+:\d+)/.exec(out);
      const mm = /metrics\s+: (http:\/\/[\d.]+:\d+\/metrics)/.exec(out);
      if (m && mm) {
        clearTimeout(timer);
        resolve({ url: m[1] as string, metricsUrl: mm[1] as string });
      }
    };
    proc.stdout?.on('data', check);
    void exited.then((code) => reject(new Error(`broker exited ${code}: ${out}`)));
  });
  return { proc, url, port: Number(new URL(url).port), metricsUrl, output: () => out, exited };
}

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
  const { dir: pki, material } = await devMaterial();
  dir = mkdtempSync(path.join(tmpdir(), 'tessera-shutdown-'));
  dataDir = path.join(dir, 'data');
  configFile = path.join(dir, 'tessera.yaml');
  writeFileSync(
    configFile,
    stringify({
      ...materialConfig(pki, material),
      replicaId: 'shutdown-test',
      listen: { host: '127.0.0.1', port: 0 },
      logLevel: 'info',
      audit: { signingKeyFile: material.auditKeyFile, checkpointIntervalMs: 3_600_000 },
      registration: [{ selector: { namespace: 'shop', serviceAccount: 'web' }, jwtAudiences: ['payments'] }],
      store: { embedded: { dir: dataDir } },
      metrics: { enabled: true, host: '127.0.0.1', port: 0 },
    }),
  );
  ca = readFileSync(material.bundleFile, 'utf8');
  token = await mintDevToken({ keyFile: material.issuerKeyFile, namespace: 'shop', serviceAccount: 'web' });
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** An HTTPS request whose body is held back: headers and half the body now, the rest on `finish()`. */
function halfSent(port: number, body: string, bearer = token): Promise<{ finish: () => void; response: Promise<{ status: number; body: string }> }> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ port, host: '127.0.0.1', ca, servername: 'localhost' });
    let buf = Buffer.alloc(0);
    let answered = false;
    const response = new Promise<{ status: number; body: string }>((done, fail) => {
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        const sep = buf.indexOf('\r\n\r\n');
        const len = /content-length: (\d+)/i.exec(buf.toString('latin1'));
        if (!answered && sep !== -1 && len && buf.length - sep - 4 >= Number(len[1])) {
          answered = true;
          // The client keeps its (keep-alive) connection open: closing it is the server's job.
          done({ status: Number(buf.subarray(9, 12).toString()), body: buf.subarray(sep + 4).toString('utf8') });
        }
      });
      s.on('close', () => fail(new Error(`connection closed before a full response: ${JSON.stringify(buf.toString('utf8'))}`)));
    });
    response.catch(() => undefined);
    s.on('error', reject);
    s.on('secureConnect', () => {
      const half = Math.floor(body.length / 2);
      s.write(
        `POST /v1/svid/x509 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${bearer}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body.slice(0, half)}`,
      );
      resolve({ finish: () => s.write(body.slice(half)), response });
    });
  });
}

function scrape(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve(text));
    }).on('error', reject);
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('tessera serve on SIGTERM', () => {
  const serials: string[] = [];

  it('finishes the requests in flight, refuses new connections, signs a final checkpoint and exits 0', async () => {
    const broker = await start();
    const warm = await httpsCall<{ serial: string }>(broker.url, ca, { path: '/v1/svid/x509', token, body: { keyType: 'ec-p256' } });
    expect(warm.status).toBe(200);
    serials.push(warm.json.serial);
    expect(await scrape(broker.metricsUrl)).toMatch(/^tessera_issuance_requests_total\{type="x509-svid",decision="allow"\} 1$/m);

    const inFlight = await Promise.all(Array.from({ length: 6 }, () => halfSent(broker.port, JSON.stringify({ keyType: 'ec-p256' }))));
    // A refusal in flight too: its denial entry needs no receipt, so only the shutdown checkpoint covers it.
    const denied = await halfSent(broker.port, JSON.stringify({ keyType: 'ec-p256' }), 'not.a.token');
    // Let the broker parse the headers (the requests are now in flight), then ask it to stop.
    await sleep(300);
    broker.proc.kill('SIGTERM');
    await sleep(500);
    // New connections are refused while the old ones finish.
    const refused = await new Promise<string>((resolve) => {
      const s = net.connect({ port: broker.port, host: '127.0.0.1' });
      s.on('connect', () => {
        s.destroy();
        resolve('connected');
      });
      s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
    });
    expect(refused).toBe('ECONNREFUSED');
    for (const r of inFlight) r.finish();
    const responses = await Promise.all(inFlight.map((r) => r.response));
    denied.finish();
    expect((await denied.response).status).toBe(401);
    for (const res of responses) {
      expect(res.status, res.body).toBe(200);
      serials.push((JSON.parse(res.body) as { serial: string }).serial);
    }
    // The drained connections are closed by the server (not left in keep-alive), so it exits promptly.
    const drainedAt = Date.now();
    expect(await broker.exited).toBe(0);
    expect(Date.now() - drainedAt).toBeLessThan(5_000);
    expect(broker.output()).toMatch(/shut down cleanly/);

    // The final checkpoint covers every entry, including the ones written during the drain.
    const store = await EmbeddedStore.open(dataDir);
    try {
      const size = await store.auditSize();
      expect(size).toBe(8);
      const checkpoints = await store.listCheckpoints();
      const last = checkpoints[checkpoints.length - 1] ?? '';
      expect(Number(last.split('\n')[1])).toBe(size);
    } finally {
      await store.close();
    }
  }, 60_000);

  it('after a restart, every credential handed out is in the audit log', async () => {
    const broker = await start();
    try {
      // Entries are not public: the workload reads its own (every one of these was issued to it).
      const res = await httpsCall<{ entries: unknown[] }>(broker.url, ca, { path: '/v1/audit/entries?start=0&end=7', token });
      expect(res.status, res.text).toBe(200);
      expect(serials).toHaveLength(7);
      for (const serial of serials) expect(res.text).toContain(serial);
    } finally {
      broker.proc.kill('SIGTERM');
      expect(await broker.exited).toBe(0);
    }
  }, 60_000);
});
