/**
 * Envoy SDS v3 and broker outages on the agent's socket: a real broker process (killed and restarted
 * on the same port), a real agent process, grpc-js clients speaking proto/envoy/… and
 * proto/spiffe/workload/workload.proto. SVIDs live 20 s, so rotations happen during the test.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { codec, SECRET_TYPE, SECRET_TYPE_URL, type Message } from '../../src/agent/workload-api/protos.js';
import { killAgents, logged, spawnAgent, type AgentRun } from '../helpers/agent-process.js';
import { spawnBroker, type BrokerProcess } from '../helpers/broker-process.js';
import { bidiStream, sdsClient, serverStream, splitDer, unary, workloadClient, type Client } from '../helpers/workload-client.js';

const TTL = 20;
const WEB = 'spiffe://example.org/ns/shop/sa/web';
const TD = 'spiffe://example.org';

let broker: BrokerProcess;
let work: string;
let socket: string;
let run: AgentRun;
const clients: Client[] = [];

beforeAll(async () => {
  broker = await spawnBroker({
    registration: [{ selector: { namespace: 'shop', serviceAccount: 'web' }, jwtAudiences: ['payments'] }],
    svid: { x509DefaultTtlSeconds: TTL, x509MaxTtlSeconds: TTL },
  });
  work = mkdtempSync(path.join(tmpdir(), 'tessera-wlapi-sds-'));
  writeFileSync(path.join(work, 'bundle.pem'), broker.ca);
  writeFileSync(path.join(work, 'token'), await broker.token('shop', 'web'));
  socket = path.join(work, 'agent.sock');
  run = spawnAgent(['--broker', broker.url, '--bundle', path.join(work, 'bundle.pem'), '--token-file', path.join(work, 'token'), '--workload-api', `unix://${socket}`]);
  await logged(run, 'X.509-SVID obtained');
}, 60_000);

afterAll(async () => {
  for (const c of clients) c.close();
  killAgents();
  await broker?.close();
  if (work !== undefined) rmSync(work, { recursive: true, force: true });
});

interface Secrets {
  version: string;
  nonce: string;
  names: string[];
  tls?: { chain: X509Certificate[]; keyMatches: boolean };
  roots: Record<string, string>;
}

function secretsOf(res: Message): Secrets {
  expect(res.type_url).toBe(SECRET_TYPE_URL);
  const out: Secrets = { version: res.version_info as string, nonce: res.nonce as string, names: [], roots: {} };
  for (const any of res.resources as Message[]) {
    expect(any.type_url).toBe(SECRET_TYPE_URL);
    const secret = codec(SECRET_TYPE).decode(any.value as Buffer);
    const name = secret.name as string;
    out.names.push(name);
    if (secret.type === 'tls_certificate') {
      const tls = secret.tls_certificate as Record<string, Message>;
      const chainPem = (tls.certificate_chain?.inline_bytes as Buffer).toString();
      const chain = (chainPem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((p) => new X509Certificate(p));
      const key = createPrivateKey((tls.private_key?.inline_bytes as Buffer).toString());
      out.tls = { chain, keyMatches: chain[0]?.checkPrivateKey(key) === true };
    } else {
      expect(secret.type).toBe('validation_context');
      out.roots[name] = ((secret.validation_context as Record<string, Message>).trusted_ca?.inline_bytes as Buffer).toString();
    }
  }
  return out;
}

const sds = (): Client => {
  const c = sdsClient(socket);
  clients.push(c);
  return c;
};

describe('SDS', () => {
  it('FetchSecrets: default (chain + key), ROOTCA and spiffe://<td> (roots)', async () => {
    const res = secretsOf(await unary(sds(), 'FetchSecrets', { type_url: SECRET_TYPE_URL, resource_names: ['default', 'ROOTCA', TD, 'unknown'] }));
    expect(res.names).toEqual(['default', 'ROOTCA', TD]);
    expect(res.tls?.keyMatches).toBe(true);
    expect(res.tls?.chain[0]?.subjectAltName).toContain(`URI:${WEB}`);
    expect(res.tls?.chain[0]?.serialNumber.toLowerCase()).toBe(res.version);
    const ca = new X509Certificate(broker.ca).fingerprint256;
    expect(new X509Certificate(res.roots.ROOTCA as string).fingerprint256).toBe(ca);
    expect(new X509Certificate(res.roots[TD] as string).fingerprint256).toBe(ca);
    // No names: everything.
    expect(secretsOf(await unary(sds(), 'FetchSecrets', {})).names).toEqual(['default', 'ROOTCA', TD]);
    const wrongType = await unary(sds(), 'FetchSecrets', { type_url: 'type.googleapis.com/envoy.config.cluster.v3.Cluster' }).catch((e: { code: number }) => e);
    expect((wrongType as { code: number }).code).toBe(status.INVALID_ARGUMENT);
  });

  it('StreamSecrets: current secrets at once, an ACK gets no reply, stale nonces are ignored, rotations are pushed, a NACKed version is not resent', async () => {
    const s = bidiStream(sds(), 'StreamSecrets');
    s.call.write({ type_url: SECRET_TYPE_URL, resource_names: ['default', 'ROOTCA'], node: { id: 'envoy-test', cluster: 'shop' } });
    const r0 = secretsOf((await s.nth(0)).message);
    expect(r0.names).toEqual(['default', 'ROOTCA']);
    expect(r0.tls?.keyMatches).toBe(true);
    // ACK, then a request answering a nonce that is not the latest (stale: ignored, names unchanged).
    s.call.write({ type_url: SECRET_TYPE_URL, resource_names: ['default', 'ROOTCA'], version_info: r0.version, response_nonce: r0.nonce });
    s.call.write({ type_url: SECRET_TYPE_URL, resource_names: [TD], version_info: r0.version, response_nonce: 'not-a-nonce-we-sent' });
    // The next message is the rotation, not an answer to either request.
    const m1 = await s.nth(1, 30_000);
    const r1 = secretsOf(m1.message);
    expect(r1.version).not.toBe(r0.version);
    expect(r1.names).toEqual(['default', 'ROOTCA']);
    expect(r1.tls?.keyMatches).toBe(true);
    const obtained = run.logs().find((l) => l.msg === 'X.509-SVID obtained' && l.serial === r1.version);
    expect(obtained).toBeDefined();
    expect(m1.at - (obtained!.time as number)).toBeLessThan(1_000);
    // NACK r1: logged; r1 is not sent again; the next rotation is.
    s.call.write({ type_url: SECRET_TYPE_URL, resource_names: ['default', 'ROOTCA'], version_info: r0.version, response_nonce: r1.nonce, error_detail: { code: 3, message: 'test: rejected' } });
    const r2 = secretsOf((await s.nth(2, 30_000)).message);
    expect(r2.version).not.toBe(r1.version);
    expect(run.logs().some((l) => l.msg === 'SDS client rejected (NACK) the secrets; waiting for the next rotation' && l.version === r1.version)).toBe(true);
    // A new subscription (in an ACK) is answered at once with the new set, same version.
    s.call.write({ type_url: SECRET_TYPE_URL, resource_names: [TD], version_info: r2.version, response_nonce: r2.nonce });
    const r3 = secretsOf((await s.nth(3, 5_000)).message);
    expect(r3.names).toEqual([TD]);
    expect(r3.version).toBe(r2.version);
    s.call.end();
    s.cancel();
  }, 60_000);

  it('StreamSecrets refuses another resource type with InvalidArgument', async () => {
    const s = bidiStream(sds(), 'StreamSecrets');
    s.call.write({ type_url: 'type.googleapis.com/envoy.config.listener.v3.Listener' });
    expect((await s.failure()).code).toBe(status.INVALID_ARGUMENT);
  });
});

describe('broker outage on an open stream', () => {
  const serialOf = (m: Message): string => splitDer(((m.svids as Message[])[0] as Message).x509_svid as Buffer)[0]!.serialNumber;
  /** The first X.509-SVID message a new stream gets, retrying while the agent has none (within 30 s). */
  const servedSvid = async (c: Client): Promise<Message> => {
    const until = Date.now() + 30_000;
    for (;;) {
      const again = serverStream(c, 'FetchX509SVID');
      try {
        return (await again.nth(0, 3_000)).message;
      } catch (err) {
        if (Date.now() > until) throw err;
        await new Promise((r) => setTimeout(r, 500));
      } finally {
        again.cancel();
      }
    }
  };

  it('keeps the stream open with the current SVID while the broker is down, and delivers the renewal when it is back', async () => {
    const c = workloadClient(socket);
    clients.push(c);
    // Start from an agent that holds an SVID (on a loaded machine a renewal may just have been late).
    await servedSvid(c);
    const s = serverStream(c, 'FetchX509SVID');
    await s.nth(0);
    // Right after a rotation, so the SVID outlives the outage (a broker restart takes a few seconds).
    const fresh = await s.nth(1, 40_000);
    await broker.kill();
    const downAt = Date.now();
    // Down past the renewal point (half the lifetime, ±10 %), so the renewal fails and is retried.
    await new Promise((r) => setTimeout(r, Math.max(0, fresh.at + TTL * 550 + 500 - Date.now())));
    expect(s.error).toBeUndefined();
    expect(s.messages).toHaveLength(2);
    await broker.start();
    const upAt = Date.now();
    const after = await s.nth(2, 30_000);
    expect(serialOf(after.message)).not.toBe(serialOf(fresh.message));
    expect(after.at).toBeGreaterThan(upAt);
    expect(s.error).toBeUndefined();
    expect(run.logs().some((l) => l.msg === 'renewal failed; will retry' && (l.time as number) >= downAt)).toBe(true);
    s.cancel();
  }, 90_000);

  it('ends open streams with PermissionDenied when the SVID expires unrenewed; after recovery a new stream is served', async () => {
    const c = workloadClient(socket);
    clients.push(c);
    await servedSvid(c);
    const s = serverStream(c, 'FetchX509SVID');
    await s.nth(0);
    await broker.kill();
    const e = await s.failure(TTL * 1000 + 10_000);
    expect(e.code).toBe(status.PERMISSION_DENIED);
    expect((await serverStream(c, 'FetchX509SVID').failure()).code).toBe(status.PERMISSION_DENIED);
    await broker.start();
    const got = await servedSvid(c);
    expect(((got.svids as Message[])[0] as Message).spiffe_id).toBe(WEB);
  }, 90_000);
});
