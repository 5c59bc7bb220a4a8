/**
 * The SDK against a live broker over real TLS: SVIDs with locally made keys, JWT-SVIDs, rotation in
 * place under continuous mutual-TLS traffic (new and keep-alive connections, with and without SNI),
 * authorisation by SPIFFE ID both ways, mTLS renewal with token fallback, outages, close().
 */
import { spawn } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TesseraClient, TesseraError, type RotatedEvent } from '../../src/sdk/index.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { opensslVerify } from '../helpers/openssl.js';

const TTL = 6;
const WEB = 'spiffe://example.org/ns/shop/sa/web';
const API = 'spiffe://example.org/ns/payments/sa/api';
const OTHER = 'spiffe://example.org/ns/shop/sa/other';
const shortTtl = { svid: { x509DefaultTtlSeconds: TTL, x509MaxTtlSeconds: TTL } };

let b: TestBroker;
const clients: TesseraClient[] = [];
const servers: https.Server[] = [];

beforeAll(async () => {
  b = await startBroker({ config: shortTtl });
});

afterAll(async () => {
  for (const c of clients) c.close();
  for (const s of servers) s.close();
  await b?.close();
});

async function client(serviceAccount: string, namespace = 'shop', broker: TestBroker = b): Promise<TesseraClient> {
  const token = await broker.token({ namespace, serviceAccount });
  const c = new TesseraClient({ broker: broker.url, bundle: broker.ca, token, backoff: { minMs: 100, maxMs: 1_000 } });
  clients.push(c);
  return c;
}

async function auditEntries(broker: TestBroker = b): Promise<Record<string, unknown>[]> {
  const raw = await broker.broker.audit.entries(0, broker.broker.audit.size);
  return raw.map((e) => JSON.parse(e.toString('utf8')) as Record<string, unknown>);
}

async function listen(server: https.Server): Promise<number> {
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

interface Reply {
  status: number;
  body: string;
  serverSerial: string;
}

function get(opts: https.RequestOptions): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = https.request({ path: '/', timeout: 5_000, ...opts }, (res) => {
      let body = '';
      const serverSerial = (res.socket as TLSSocket).getPeerX509Certificate()?.serialNumber.toLowerCase() ?? '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, serverSerial }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

/** An HTTPS server on the client's SVID that answers with the caller's verified SPIFFE ID and serial. */
async function workloadServer(c: TesseraClient, allowed: string[]): Promise<{ port: number; connections: () => number }> {
  const check = c.verifyPeer(allowed);
  let connections = 0;
  const server = https.createServer(c.serverOptions(), (req, res) => {
    const peer = check(req);
    res.statusCode = peer.ok ? 200 : 403;
    res.end(JSON.stringify(peer));
  });
  server.on('secureConnection', () => (connections += 1));
  c.attachServer(server);
  return { port: await listen(server), connections: () => connections };
}

describe('X.509 and JWT-SVIDs', () => {
  it('obtains an X.509-SVID for a key made in the workload, verifiable with openssl', async () => {
    const c = await client('web');
    const svid = await c.start();
    expect(svid.spiffeId).toBe(WEB);
    expect(svid.certificates.length).toBeGreaterThanOrEqual(2);
    expect(opensslVerify(c.bundle(), [...svid.certificates], 'sslclient').ok).toBe(true);
    expect(new X509Certificate(svid.certificates[0] as string).checkPrivateKey(createPrivateKey(svid.privateKeyPem))).toBe(true);
    expect(svid.expiresAt.getTime() - Date.now()).toBeLessThanOrEqual(TTL * 1000);
    expect(c.bundle()).toBe(new X509Certificate(b.ca).toString());
    // The key never leaves the workload (the broker saw a CSR), and never lands in logs or JSON.
    const entry = (await auditEntries()).find((e) => e.serial === svid.serial);
    expect(entry).toMatchObject({ type: 'x509-svid.issued', subject: WEB, source: 'k8s-sa-token' });
    expect(entry?.reason).toBeUndefined();
    expect(JSON.stringify(svid)).not.toContain('PRIVATE KEY');
    expect(Object.keys(svid)).not.toContain('privateKeyPem');
    expect(await c.x509Svid()).toBe(svid);
    const status = c.status();
    expect(status).toMatchObject({ spiffeId: WEB, serial: svid.serial, consecutiveFailures: 0 });
    expect(status.secondsToExpiry).toBeLessThanOrEqual(TTL);
  });

  it('obtains JWT-SVIDs that verify against the bundle, caches them, and reports refusals', async () => {
    const c = await client('web');
    await c.start();
    const jwt = await c.jwtSvid('payments');
    const bundle = await b.call<{ keys: { use: string }[] }>({ path: '/v1/bundle' });
    const keys = bundle.json.keys.filter((k) => k.use === 'jwt-svid').map((k) => ({ ...k, use: 'sig' }));
    const { payload } = await jwtVerify(jwt.token, createLocalJWKSet({ keys }), {
      algorithms: ['ES256'],
      audience: 'payments',
    });
    expect(payload.sub).toBe(WEB);
    expect(jwt.expiresAt.getTime()).toBe((payload.exp as number) * 1000);
    expect(JSON.stringify(jwt)).not.toContain(jwt.token);

    // Cached while fresh; concurrent first requests share one issuance.
    expect(await c.jwtSvid(['payments'])).toBe(jwt);
    const other = await client('other');
    await other.start();
    const before = b.broker.audit.size;
    const [x, y] = await Promise.all([other.jwtSvid('inventory'), other.jwtSvid(['inventory', 'inventory'])]);
    expect(x).toBe(y);
    expect(b.broker.audit.size - before).toBe(1);

    const refused = await c.jwtSvid('inventory').catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(TesseraError);
    expect(refused).toMatchObject({ code: 'forbidden', status: 403 });
    await expect(c.jwtSvid([])).rejects.toThrow(TypeError);
  });

  it("is importable as 'tessera/sdk' with its types, and start() alone keeps a script alive until it resolves", async () => {
    const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { exports: Record<string, { types: string; default: string }> };
    expect(pkg.exports['./sdk']).toEqual({ types: './dist/sdk/index.d.ts', default: './dist/sdk/index.js' });
    expect(existsSync(pkg.exports['./sdk']?.types as string), 'run npm run build').toBe(true);
    const script = [
      "import { TesseraClient } from 'tessera/sdk';",
      'const c = new TesseraClient({ broker: process.env.BROKER, bundle: process.env.BUNDLE, token: process.env.TOKEN });',
      'const svid = await c.start();',
      'console.log(svid.spiffeId);',
      'c.close();',
    ].join('\n');
    // Asynchronous spawn: the broker runs in this process and must keep serving.
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, BROKER: b.url, BUNDLE: b.ca, TOKEN: await b.token() },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    clearTimeout(timer);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(stdout.trim()).toBe(WEB);
  });

  it('refuses bad options and use before start', async () => {
    const token = await b.token();
    expect(() => new TesseraClient({ broker: 'http://127.0.0.1:1', bundle: b.ca, token })).toThrow(/https/);
    expect(() => new TesseraClient({ broker: b.url, token })).toThrow(/bundle/);
    expect(() => new TesseraClient({ broker: b.url, bundle: b.ca, bundleFile: '/x', token })).toThrow(/exactly one/);
    expect(() => new TesseraClient({ broker: b.url, bundle: b.ca })).toThrow(/token/);
    expect(() => new TesseraClient({ broker: b.url, bundle: 'not pem', token })).toThrow(/no PEM certificate/);
    const c = new TesseraClient({ broker: b.url, bundle: b.ca, token });
    expect(() => c.tlsContext()).toThrow(/start/);
    expect(() => c.serverOptions()).toThrow(expect.objectContaining({ code: 'not_ready' }));
    c.close();
    await expect(c.start()).rejects.toMatchObject({ code: 'closed' });
  });
});

describe('secrets', () => {
  it('reads a granted secret under a lease (over mTLS once it has an SVID), refuses others', async () => {
    const broker = await startBroker({
      config: shortTtl,
      secrets: { lease: { defaultTtlSeconds: 600, maxTtlSeconds: 1800 }, grants: [{ spiffeIds: [WEB], secrets: ['db/reporting-api-key', 'shared/'] }] },
    });
    try {
      await broker.broker.secrets.kv.put('db/reporting-api-key', Buffer.from('s3cr3t-value'));
      await broker.broker.secrets.kv.put('shared/binary', Buffer.from([0xff, 0x00, 0xfe]));
      await broker.broker.secrets.kv.put('payments/stripe', Buffer.from('not for web'));
      const c = await client('web', 'shop', broker);
      // Before start(): the token authenticates.
      const first = await c.secret('db/reporting-api-key');
      expect(first.value.toString('utf8')).toBe('s3cr3t-value');
      expect(first.leaseId).toMatch(/^[0-9a-f]{32}$/);
      expect(first.expiresAt.getTime() - Date.now()).toBeGreaterThan(590_000);
      expect(first.maxExpiresAt.getTime()).toBeGreaterThan(first.expiresAt.getTime());
      expect(JSON.stringify(first)).not.toContain('s3cr3t');
      // After start(): the SVID over mTLS; each read is its own lease.
      await c.start();
      const second = await c.secret('db/reporting-api-key');
      expect(second.leaseId).not.toBe(first.leaseId);
      const binary = await c.secret('shared/binary');
      expect([...binary.value]).toEqual([0xff, 0x00, 0xfe]);
      const issued = (await auditEntries(broker)).filter((e) => e.type === 'secret.issued');
      expect(issued.map((e) => e.source)).toEqual(['k8s-sa-token', 'mtls', 'mtls']);
      expect(JSON.stringify(await auditEntries(broker))).not.toContain('s3cr3t');

      await expect(c.secret('payments/stripe')).rejects.toMatchObject({ code: 'forbidden', status: 403 });
      await expect(c.secret('../etc/passwd')).rejects.toThrow(TypeError);
      await expect(c.secret('postgres/reporting')).rejects.toThrow(/reserved/);
    } finally {
      await broker.close();
    }
  });
});

describe('rotation in place under mutual-TLS traffic', () => {
  it('keeps two workloads talking through several rotations with zero failed requests', async () => {
    const server = await client('web');
    const caller = await client('api', 'payments');
    const rotations: Record<string, RotatedEvent[]> = { server: [], caller: [] };
    server.on('rotated', (e) => rotations.server?.push(e));
    caller.on('rotated', (e) => rotations.caller?.push(e));
    await Promise.all([server.start(), caller.start()]);
    const srv = await workloadServer(server, [API]);
    // Two agents: one by IP (no SNI: the server's default context must rotate), one by name (SNI).
    const byIp = caller.httpsAgent({ allowedServerIds: [WEB] });
    const byName = caller.httpsAgent({ allowedServerIds: [WEB] });
    const seen = { callerSerials: new Set<string>(), ipServerSerials: new Set<string>(), nameServerSerials: new Set<string>() };
    let ok = 0;
    const failures: string[] = [];
    // Traffic until each side has rotated three times and every path has seen it (about 3 × TTL/2), bounded.
    const x509Count = (side: string): number => (rotations[side] ?? []).filter((e) => e.kind === 'x509').length;
    const done = (): boolean =>
      x509Count('server') >= 4 && x509Count('caller') >= 4 &&
      seen.callerSerials.size >= 3 && seen.ipServerSerials.size >= 3 && seen.nameServerSerials.size >= 3;
    // Enough requests that keep-alive reuse is measurable; a loop condition, not a rate, so a loaded
    // machine takes longer instead of failing.
    const until = Date.now() + 60_000;
    while (!(done() && ok > 200) && Date.now() < until) {
      for (const [agent, host, serials] of [
        [byIp, '127.0.0.1', seen.ipServerSerials],
        [byName, 'localhost', seen.nameServerSerials],
      ] as const) {
        try {
          const r = await get({ host, port: srv.port, agent });
          if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${r.body}`);
          const peer = JSON.parse(r.body) as { spiffeId: string; serial: string };
          expect(peer.spiffeId).toBe(API);
          seen.callerSerials.add(peer.serial);
          serials.add(r.serverSerial);
          ok += 1;
        } catch (err) {
          failures.push((err as Error).message);
        }
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(failures).toEqual([]);
    expect(ok).toBeGreaterThan(200);
    for (const side of ['server', 'caller'] as const) {
      const x509 = (rotations[side] ?? []).filter((e) => e.kind === 'x509');
      expect(x509.length, side).toBeGreaterThanOrEqual(4);
      expect(x509[0]?.via).toBe('token');
      expect(x509.slice(1).every((e) => e.via === 'mtls'), side).toBe(true);
    }
    // The rotated certificates were really used, on both sides and on both paths.
    expect(seen.callerSerials.size).toBeGreaterThanOrEqual(3);
    expect(seen.ipServerSerials.size).toBeGreaterThanOrEqual(3);
    expect(seen.nameServerSerials.size).toBeGreaterThanOrEqual(3);
    // Keep-alive connections were reused between rotations, not re-made per request.
    expect(srv.connections()).toBeLessThan(ok / 10);
    const renewals = (await auditEntries()).filter((e) => e.type === 'x509-svid.issued' && e.subject === API);
    expect(renewals.filter((e) => e.source === 'mtls').length).toBeGreaterThanOrEqual(3);
  }, 75_000);

  it('authorises callers by SPIFFE ID: others get 403, no certificate no handshake', async () => {
    const server = await client('web');
    const intruder = await client('other');
    await Promise.all([server.start(), intruder.start()]);
    const srv = await workloadServer(server, [API]);
    const r = await get({ host: '127.0.0.1', port: srv.port, agent: intruder.httpsAgent({ allowedServerIds: [WEB] }) });
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body)).toEqual({ ok: false, reason: `SPIFFE ID ${OTHER} is not allowed` });
    await expect(get({ host: '127.0.0.1', port: srv.port, ca: b.ca, agent: false, checkServerIdentity: () => undefined })).rejects.toThrow();
  });

  it('a caller refuses a server whose SPIFFE ID is not the expected one', async () => {
    const server = await client('other');
    const caller = await client('api', 'payments');
    await Promise.all([server.start(), caller.start()]);
    const srv = await workloadServer(server, [API]);
    await expect(get({ host: '127.0.0.1', port: srv.port, agent: caller.httpsAgent({ allowedServerIds: [WEB] }) })).rejects.toThrow(
      `SPIFFE ID ${OTHER} is not allowed`,
    );
    const r = await get({ host: '127.0.0.1', port: srv.port, agent: caller.httpsAgent({ allowedServerIds: [WEB, OTHER] }) });
    expect(r.status).toBe(200);
  });
});

describe('renewal paths and failures', () => {
  it('falls back to the token when mTLS renewal is refused (policy changed the SPIFFE ID)', async () => {
    const first = await startBroker({ config: shortTtl });
    const port = Number(new URL(first.url).port);
    const c = await client('web', 'shop', first);
    const events: RotatedEvent[] = [];
    c.on('rotated', (e) => events.push(e));
    const errors: TesseraError[] = [];
    c.on('error', (e) => errors.push(e));
    await c.start();
    await first.close();
    // Same port, same CA; the new policy gives shop/web another SPIFFE ID, so the old SVID no
    // longer matches any entry and its mTLS renewal is refused.
    const second = await startBroker({
      port,
      config: { ...shortTtl, registration: [{ selector: { namespace: 'shop', serviceAccount: 'web' }, spiffePath: '/v2/{namespace}/{serviceAccount}' }] },
    });
    try {
      const rotated = await new Promise<RotatedEvent>((resolve) => c.on('rotated', resolve));
      expect(rotated).toMatchObject({ kind: 'x509', via: 'token' });
      expect(rotated.svid.spiffeId).toBe('spiffe://example.org/v2/shop/web');
      const entries = await auditEntries(second);
      expect(entries).toContainEqual(expect.objectContaining({ type: 'denial', code: 'forbidden', source: 'mtls', actor: WEB }));
      expect(entries).toContainEqual(
        expect.objectContaining({ type: 'x509-svid.issued', source: 'k8s-sa-token', subject: 'spiffe://example.org/v2/shop/web' }),
      );
      expect(events[0]?.via).toBe('token');
    } finally {
      c.close();
      await second.close();
    }
  }, 30_000);

  it('reports outages through error events and status(), and close() stops every timer', async () => {
    const broker = await startBroker({ config: shortTtl });
    const c = await client('web', 'shop', broker);
    const errors: TesseraError[] = [];
    c.on('error', (e) => errors.push(e));
    await c.start();
    await broker.close();
    const err = await new Promise<TesseraError>((resolve) => c.once('error', resolve));
    expect(err.code).toBe('unavailable');
    expect(err.message).toMatch(/ECONNREFUSED/);
    expect(err.message).toMatch(/after mTLS renewal failed/);
    const status = c.status();
    expect(status.consecutiveFailures).toBeGreaterThanOrEqual(1);
    expect(status.lastError?.code).toBe('unavailable');
    c.close();
    const count = errors.length;
    await new Promise((r) => setTimeout(r, 1_500));
    expect(errors.length).toBe(count);
    await expect(c.x509Svid()).rejects.toMatchObject({ code: 'closed' });
  }, 20_000);
});
