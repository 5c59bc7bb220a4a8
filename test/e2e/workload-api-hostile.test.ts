/**
 * Hostile clients on the agent's Workload API socket (real agent process, real socket): garbage
 * bytes, an HTTP/1 request, a huge message, unknown methods and a client opening 1,000 streams. Each
 * gets an error or a closed connection; the agent keeps running and keeps answering everyone else.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Message } from '../../src/agent/workload-api/protos.js';
import { MAX_STREAMS_PER_CONNECTION } from '../../src/agent/workload-api/server.js';
import { killAgents, logged, spawnAgent, type AgentRun } from '../helpers/agent-process.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { header, refusal, serverStream, splitDer, unary, workloadClient, type Client, type Stream } from '../helpers/workload-client.js';

const WEB = 'spiffe://example.org/ns/shop/sa/web';
const MAX_STREAMS = 300;


let b: TestBroker;
let work: string;
let socket: string;
let run: AgentRun;
const clients: Client[] = [];

function client(): Client {
  const c = workloadClient(socket);
  clients.push(c);
  return c;
}

/** The agent still answers a fresh client with this workload's own SVID. */
async function stillServes(): Promise<void> {
  expect(run.proc.exitCode).toBeNull();
  const c = client();
  const s = serverStream(c, 'FetchX509SVID');
  const m = (await s.nth(0, 15_000)).message;
  const svid = (m.svids as Message[])[0] as Message;
  expect(svid.spiffe_id).toBe(WEB);
  expect(splitDer(svid.x509_svid as Buffer)[0]?.subjectAltName).toContain(`URI:${WEB}`);
  s.cancel();
}

/** Writes raw bytes on a new connection; resolves with what came back once the agent closes it. */
function raw(bytes: Buffer | string, timeoutMs = 10_000): Promise<{ closed: boolean; reply: Buffer }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = net.connect(socket);
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ closed: false, reply: Buffer.concat(chunks) });
    }, timeoutMs);
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ closed: true, reply: Buffer.concat(chunks) });
    });
    s.write(bytes);
  });
}

beforeAll(async () => {
  b = await startBroker();
  work = mkdtempSync(path.join(tmpdir(), 'tessera-wlapi-hostile-'));
  writeFileSync(path.join(work, 'bundle.pem'), b.ca);
  writeFileSync(path.join(work, 'token'), await b.token({ namespace: 'shop', serviceAccount: 'web' }));
  socket = path.join(work, 'run', 'agent.sock');
  writeFileSync(path.join(work, 'agent.yaml'), `workloadApi:\n  socket: unix://${socket}\n  maxStreams: ${MAX_STREAMS}\n`);
  run = spawnAgent(['--broker', b.url, '--bundle', path.join(work, 'bundle.pem'), '--token-file', path.join(work, 'token'), '--config', path.join(work, 'agent.yaml')]);
  await logged(run, 'X.509-SVID obtained');
}, 60_000);

afterAll(async () => {
  for (const c of clients) c.close();
  killAgents();
  await b?.close();
  if (work !== undefined) rmSync(work, { recursive: true, force: true });
});

describe('hostile bytes', () => {
  it('garbage bytes: the connection is closed, the agent serves on', async () => {
    for (let i = 0; i < 5; i++) {
      const { closed, reply } = await raw(randomBytes(4096));
      expect(closed).toBe(true);
      expect(reply.toString('latin1')).not.toContain('PRIVATE');
    }
    await stillServes();
  });

  it('an HTTP/1 request: refused or closed, no credential in the reply', async () => {
    const { closed, reply } = await raw('GET /SpiffeWorkloadAPI/FetchX509SVID HTTP/1.1\r\nHost: localhost\r\nworkload.spiffe.io: true\r\n\r\n');
    expect(closed).toBe(true);
    expect(reply.toString('latin1')).not.toMatch(/spiffe:\/\/|PRIVATE|BEGIN/);
    await stillServes();
  });

  it('an HTTP/2 preface followed by junk frames: closed', async () => {
    const { closed } = await raw(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), randomBytes(2048)]));
    expect(closed).toBe(true);
    await stillServes();
  });
});

describe('hostile gRPC', () => {
  it('a huge message is refused with ResourceExhausted', async () => {
    const c = client();
    const e = await refusal(unary(c, 'ValidateJWTSVID', { audience: 'payments', svid: 'a'.repeat(2 * 1024 * 1024) }));
    expect(e.code).toBe(status.RESOURCE_EXHAUSTED);
    const many = await refusal(unary(c, 'FetchJWTSVID', { audience: Array.from({ length: 17 }, (_, i) => `aud-${i}`) }));
    expect(many.code).toBe(status.INVALID_ARGUMENT);
    await stillServes();
  });

  it('unknown methods and services answer Unimplemented', async () => {
    const c = client();
    for (const method of ['/SpiffeWorkloadAPI/FetchWITSVID', '/SpiffeWorkloadAPI/Nope', '/spire.api.agent.debug.v1.Debug/GetInfo', '/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets']) {
      const e = await new Promise<ServiceError>((resolve) => {
        c.makeUnaryRequest(method, (x: Buffer) => x, (x: Buffer) => x, Buffer.alloc(0), header(), { deadline: Date.now() + 10_000 }, (err) => resolve(err as ServiceError));
      });
      expect(e.code, method).toBe(status.UNIMPLEMENTED);
    }
    // A request body that is not the declared message: refused, not a crash.
    const bad = await new Promise<ServiceError>((resolve) => {
      c.makeUnaryRequest('/SpiffeWorkloadAPI/ValidateJWTSVID', (x: Buffer) => x, (x: Buffer) => x, Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), header(), (err) => resolve(err as ServiceError));
    });
    expect(bad.code).not.toBe(status.OK);
    await stillServes();
  });

  it('1,000 streams on one connection: the connection limit (256) is served, the rest wait in the client; everyone else is still served', async () => {
    const c = client();
    const streams: Stream[] = Array.from({ length: 1000 }, () => serverStream(c, 'FetchX509SVID'));
    const served = (): number => streams.filter((s) => s.messages.length > 0).length;
    const until = Date.now() + 60_000;
    while (served() < MAX_STREAMS_PER_CONNECTION && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 1_000));
    // HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: the client holds the others back itself.
    expect(served()).toBe(MAX_STREAMS_PER_CONNECTION);
    expect((await unary(client(), 'FetchJWTSVID', { audience: ['payments'] })).svids).toHaveLength(1);
    await stillServes();
    for (const s of streams) s.cancel();
  }, 120_000);

  it('1,000 streams over four connections: the agent-wide limit is served, the rest refused with ResourceExhausted', async () => {
    await new Promise((r) => setTimeout(r, 500)); // the previous test's cancellations reach the agent
    const conns = [client(), client(), client(), client()];
    const streams: Stream[] = conns.flatMap((c) => Array.from({ length: 250 }, () => serverStream(c, 'FetchX509SVID')));
    const until = Date.now() + 60_000;
    const settled = (): number => streams.filter((s) => s.messages.length > 0 || s.error !== undefined).length;
    while (settled() < streams.length && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    const served = streams.filter((s) => s.messages.length > 0).length;
    const refused = streams.filter((s) => s.error?.code === status.RESOURCE_EXHAUSTED).length;
    expect(served).toBe(MAX_STREAMS);
    expect(refused).toBe(streams.length - MAX_STREAMS);
    for (const s of streams) s.cancel();
    // Cancelled streams give their slots back.
    await new Promise((r) => setTimeout(r, 1_000));
    await stillServes();
  }, 120_000);

  it('a client with no header and a stream it never reads does not hold up others', async () => {
    const c = client();
    const noHeader = new Metadata();
    expect((await serverStream(c, 'FetchX509SVID', noHeader).failure()).code).toBe(status.INVALID_ARGUMENT);
    await stillServes();
  });
});
