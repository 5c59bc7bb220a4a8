/**
 * SPIFFE federation between two real brokers in two trust domains, over real TLS:
 *   example.org (rotating CA) serves its bundle on an https_spiffe endpoint; partner.test federates with it;
 *   partner.test serves its bundle on the broker's https_web route; example.org federates with it (admin API).
 * SDK workloads in each trust domain do mutual TLS with each other; a workload whose entry does not
 * federate refuses the foreign peer; cross-trust-domain forgeries are refused; the last good bundle keeps
 * working while the foreign endpoint is down (age metric, stale alert); the Workload API delivers
 * federated_bundles; the rotation of example.org's CA reaches partner.test through refresh.
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClientIdentity } from '../../src/agent/workload-api/identity.js';
import { startWorkloadApi, type WorkloadApiServer } from '../../src/agent/workload-api/server.js';
import { systemClock } from '../../src/clock.js';
import { ensureDevMaterial } from '../../src/dev/material.js';
import { TesseraClient, type X509Svid } from '../../src/sdk/client.js';
import { auditedEndpointMint, startBundleEndpoint, type BundleEndpointServer } from '../../src/server/bundle-endpoint.js';
import { mintAdminCert } from '../helpers/admin.js';
import { opensslVerify } from '../helpers/openssl.js';
import { materialConfig, startBroker, type TestBroker } from '../helpers/broker.js';
import { cleanRotationTemps, rotatingConfig } from '../helpers/rotation.js';
import { until } from '../helpers/until.js';
import { serverStream, workloadClient } from '../helpers/workload-client.js';

const WEB_A = 'spiffe://example.org/ns/shop/sa/web';
const OTHER_A = 'spiffe://example.org/ns/shop/sa/other';
const API_B = 'spiffe://partner.test/ns/billing/sa/api';

let A: TestBroker;
let B: TestBroker;
let epA: BundleEndpointServer;
let pkiB: string;
/** partner.test's roots (TestBroker.ca is the shared example.org material's). */
let caB: string;
let admin: { cert: string; key: string };
const clients: TesseraClient[] = [];
const servers: https.Server[] = [];
let webA: TesseraClient;
let apiB: TesseraClient;
let webASvid: X509Svid;
/** The JWT key ids of example.org as partner.test first fetched them. */
let initialKids: string[];

const silent = { warn: () => undefined, info: () => undefined, error: () => undefined };

function client(b: TestBroker, namespace: string, serviceAccount: string): TesseraClient {
  const c = new TesseraClient({ broker: b.url, bundle: b === B ? caB : b.ca, token: () => b.token({ namespace, serviceAccount }), requestTimeoutMs: 5000 });
  c.on('error', () => undefined);
  clients.push(c);
  return c;
}

/** A server of `c` that answers with the caller's SPIFFE ID as `c.verifyPeer(allowed)` judged it. */
async function peerServer(c: TesseraClient, allowed: string[]): Promise<number> {
  const check = c.verifyPeer(allowed);
  const server = https.createServer({ ...c.serverOptions(), rejectUnauthorized: false }, (req, res) => {
    res.end(JSON.stringify(check(req)));
  });
  c.attachServer(server);
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

/** GET / with `agent`; resolves with the server's answer and the server's SPIFFE ID as the client saw it. */
function get(port: number, agent: https.Agent): Promise<{ body: { ok: boolean; spiffeId?: string; reason?: string }; serverId: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
      const cert = (res.socket as import('node:tls').TLSSocket).getPeerCertificate();
      const serverId = /URI:(spiffe:\/\/[^,\s]+)/.exec(cert.subjectaltname ?? '')?.[1] ?? '';
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ body: JSON.parse(text) as { ok: boolean }, serverId }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** example.org ← partner.test over https_web (B's CA stands in for WebPKI), through A's admin API. */
function addPartner(): ReturnType<TestBroker['call']> {
  return A.call({
    method: 'POST',
    path: '/v1/admin/federation',
    body: { trustDomain: 'partner.test', bundleEndpointUrl: `${B.url}/v1/bundle`, profile: 'https_web', caPem: caB, minRefreshSeconds: 1, staleAfterSeconds: 1 },
    cert: admin.cert,
    key: admin.key,
  });
}

beforeAll(async () => {
  // partner.test: its own dev PKI (throwaway keys in a temp folder).
  pkiB = mkdtempSync(path.join(tmpdir(), 'tessera-pki-partner-'));
  const matB = await ensureDevMaterial(pkiB, 'partner.test');
  const baseB = materialConfig(pkiB, matB);
  caB = readFileSync(matB.bundleFile, 'utf8');
  const rot = await rotatingConfig(30, {
    registration: [
      { selector: { namespace: 'shop', serviceAccount: 'web' }, jwtAudiences: ['payments'], federatesWith: ['partner.test'] },
      { selector: { namespace: 'shop', serviceAccount: '*' }, jwtAudiences: [] },
    ],
    bundleEndpoint: { refreshHintSeconds: 1 },
  });
  A = await startBroker({ config: rot.config });
  B = await startBroker({
    config: {
      trustDomain: 'partner.test',
      tls: baseB.tls,
      ca: baseB.ca,
      audit: baseB.audit,
      admin: {},
      registration: [{ selector: { namespace: 'billing', serviceAccount: 'api' }, federatesWith: ['example.org'] }],
      bundleEndpoint: { refreshHintSeconds: 1 },
    },
  });
  epA = await startBundleEndpoint({
    host: '127.0.0.1',
    port: 0,
    trustDomain: 'example.org',
    ca: () => A.broker.ca,
    mint: auditedEndpointMint({ audit: A.broker.audit, replicaId: A.broker.config.replicaId }),
    bundle: () => A.broker.bundle,
    clock: systemClock,
  });
  admin = mintAdminCert(A.material, 'spiffe://example.org/admin/dev');

  // example.org ← partner.test, https_web (the broker's own TLS; its CA stands in for WebPKI), through the admin API.
  const added = await addPartner();
  expect(added.status, added.text).toBe(201);
  // partner.test ← example.org, https_spiffe: the endpoint's SVID must chain to example.org's bundle (bootstrap first).
  await B.broker.federation.add(
    B.broker.federation.prepareAdd(
      { trustDomain: 'example.org', bundleEndpointUrl: epA.url, profile: 'https_spiffe', endpointSpiffeId: epA.spiffeId, bootstrapBundle: A.ca, minRefreshSeconds: 1 },
      'test',
    ),
  );
  await until('both bundles fetched', async () => {
    const a = A.broker.federation.status()[0]?.bundle?.fetchedAt ?? 0;
    const b = B.broker.federation.status()[0]?.bundle?.fetchedAt ?? 0;
    return a > 0 && b > 0 ? true : undefined;
  }, 15_000);
  webA = client(A, 'shop', 'web');
  apiB = client(B, 'billing', 'api');
  [webASvid] = await Promise.all([webA.start(), apiB.start()]);
  initialKids = (B.broker.federation.bundlesFor(['example.org'])[0]?.bundle.jwtAuthorities ?? []).map((j) => j.kid).sort();
}, 60_000);

afterAll(async () => {
  for (const c of clients) c.close();
  for (const s of servers) s.closeAllConnections();
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  await epA?.close();
  await A?.close();
  await B?.close().catch(() => undefined);
  if (pkiB !== undefined) rmSync(pkiB, { recursive: true, force: true });
  cleanRotationTemps();
});

describe('federation between example.org and partner.test', () => {
  it('delivers the foreign bundle only to workloads whose entry federates with it', async () => {
    expect(webASvid.federatedBundles.map((b) => b.trustDomain)).toEqual(['partner.test']);
    expect(new X509Certificate(webASvid.federatedBundles[0]?.bundlePem ?? '').subjectAltName).toContain('URI:spiffe://partner.test');
    expect(apiB.federatedBundles().map((b) => b.trustDomain)).toEqual(['example.org']);
    expect(apiB.federatedBundles()[0]?.jwtKeys.length).toBeGreaterThan(0);
    const other = client(A, 'shop', 'other');
    expect((await other.start()).federatedBundles).toEqual([]);
  });

  it('an entry made through the admin API decides who receives the foreign bundle (federatesWith)', async () => {
    const bad = await A.call({
      method: 'POST',
      path: '/v1/admin/entries',
      body: { spiffeId: 'spiffe://example.org/shop/pay', selectors: ['k8s:ns:shop', 'k8s:sa:pay'], federatesWith: ['example.org'] },
      cert: admin.cert,
      key: admin.key,
    });
    expect(bad.status).toBe(400);
    expect(String(bad.json.message)).toMatch(/federatesWith\[0\]: example\.org is this broker's own trust domain/);
    const made = await A.call<{ entry: { federatesWith: string[] } }>({
      method: 'POST',
      path: '/v1/admin/entries',
      body: { spiffeId: 'spiffe://example.org/shop/pay', selectors: ['k8s:ns:shop', 'k8s:sa:pay'], federatesWith: ['partner.test'] },
      cert: admin.cert,
      key: admin.key,
    });
    expect(made.status, made.text).toBe(201);
    expect(made.json.entry.federatesWith).toEqual(['partner.test']);
    const pay = await client(A, 'shop', 'pay').start();
    expect(pay.spiffeId).toBe('spiffe://example.org/shop/pay');
    expect(pay.federatedBundles.map((b) => b.trustDomain)).toEqual(['partner.test']);
  });

  it('mutual TLS both ways, each side reading the peer SPIFFE ID', async () => {
    const portB = await peerServer(apiB, [WEB_A]);
    const fromA = await get(portB, webA.httpsAgent({ allowedServerIds: [API_B] }));
    expect(fromA.body).toMatchObject({ ok: true, spiffeId: WEB_A });
    expect(fromA.serverId).toBe(API_B);
    const portA = await peerServer(webA, [API_B]);
    const fromB = await get(portA, apiB.httpsAgent({ allowedServerIds: [WEB_A] }));
    expect(fromB.body).toMatchObject({ ok: true, spiffeId: API_B });
    expect(fromB.serverId).toBe(WEB_A);
  });

  it('a workload whose entry does not federate refuses the foreign peer', async () => {
    const other = client(A, 'shop', 'other');
    await other.start();
    const portB = await peerServer(apiB, [WEB_A, OTHER_A]);
    await expect(get(portB, other.httpsAgent({ allowedServerIds: [API_B] }))).rejects.toThrow();
  });

  it('refuses cross-signed tricks: an ID of one trust domain signed by the other one’s CA', async () => {
    // partner.test ID signed by example.org's CA, presented as a server to example.org's federated workload.
    const k1 = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const forged = A.broker.ca.issueX509Svid({ spiffeId: API_B, dnsNames: [], publicKey: k1.publicKey, ttlMs: 600_000, now: Date.now() });
    const evil = https.createServer({ cert: forged.chainPem.join(''), key: k1.privateKey.export({ type: 'pkcs8', format: 'pem' }) }, (_q, r) => r.end('{}'));
    servers.push(evil);
    await new Promise<void>((r) => evil.listen(0, '127.0.0.1', r));
    const err = await get((evil.address() as AddressInfo).port, webA.httpsAgent({ allowedServerIds: [API_B] })).catch((e: unknown) => e as Error);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/does not chain|not allowed|certificate/);
    // example.org ID signed by partner.test's CA, presented as a client to partner.test's workload.
    const k2 = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const forged2 = B.broker.ca.issueX509Svid({ spiffeId: WEB_A, dnsNames: [], publicKey: k2.publicKey, ttlMs: 600_000, now: Date.now() });
    const portB = await peerServer(apiB, [WEB_A]);
    const res = await new Promise<{ ok: boolean; reason?: string }>((resolve, reject) => {
      const req = https.request(
        { host: '127.0.0.1', port: portB, path: '/', ca: caB, cert: forged2.chainPem.join(''), key: k2.privateKey.export({ type: 'pkcs8', format: 'pem' }), checkServerIdentity: () => undefined },
        (r) => {
          let t = '';
          r.on('data', (d: Buffer) => (t += d.toString()));
          r.on('end', () => resolve(JSON.parse(t) as { ok: boolean }));
        },
      );
      req.on('error', reject);
      req.end();
    });
    expect(res.ok).toBe(false);
    expect(res.reason).toMatch(/does not chain to the trust bundle/);
  });

  it('a server authorised by host name must chain to the own trust domain: a federated CA cannot vouch for our host names', async () => {
    const serve = async (b: TestBroker): Promise<number> => {
      const k = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const id = b === A ? 'spiffe://example.org/ns/shop/sa/site' : 'spiffe://partner.test/ns/billing/sa/site';
      const cert = b.broker.ca.issueX509Svid({ spiffeId: id, dnsNames: [], ipAddresses: ['127.0.0.1'], publicKey: k.publicKey, ttlMs: 600_000, now: Date.now() });
      const s = https.createServer({ cert: cert.chainPem.join(''), key: k.privateKey.export({ type: 'pkcs8', format: 'pem' }) }, (_q, r) => r.end('{"ok":true}'));
      servers.push(s);
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
      return (s.address() as AddressInfo).port;
    };
    const agent = webA.httpsAgent();
    expect((await get(await serve(A), agent)).body).toEqual({ ok: true });
    await expect(get(await serve(B), agent)).rejects.toThrow(/does not chain to the trust bundle/);
  });

  it('refuses a bundle endpoint that serves another trust domain’s bundle, and a bundle carrying our own keys', async () => {
    const r = await A.call({
      method: 'POST',
      path: '/v1/admin/federation',
      body: { trustDomain: 'evil.test', bundleEndpointUrl: `${B.url}/v1/bundle`, profile: 'https_web', caPem: caB },
      cert: admin.cert,
      key: admin.key,
    });
    expect(r.status).toBe(201);
    const refresh = await A.call({ method: 'POST', path: '/v1/admin/federation/evil.test/refresh', cert: admin.cert, key: admin.key });
    expect(refresh.status).toBe(502);
    expect(refresh.json).toMatchObject({ error: 'federation_fetch_failed' });
    expect(String(refresh.json.message)).toMatch(/names trust domain partner\.test, not evil\.test/);
    const del = await A.call({ method: 'DELETE', path: '/v1/admin/federation/evil.test', cert: admin.cert, key: admin.key });
    expect(del.status).toBe(200);
    // A "partner" bootstrap that is example.org's own bundle.
    const own = await A.call({
      method: 'POST',
      path: '/v1/admin/federation',
      body: { trustDomain: 'partner2.test', bundleEndpointUrl: epA.url, profile: 'https_spiffe', endpointSpiffeId: 'spiffe://partner2.test/x', bootstrapBundle: A.ca },
      cert: admin.cert,
      key: admin.key,
    });
    expect(own.status).toBe(400);
    // Profile rules.
    const noBootstrap = await A.call({
      method: 'POST',
      path: '/v1/admin/federation',
      body: { trustDomain: 'partner3.test', bundleEndpointUrl: 'https://127.0.0.1:1/', profile: 'https_spiffe', endpointSpiffeId: 'spiffe://partner3.test/e' },
      cert: admin.cert,
      key: admin.key,
    });
    expect(noBootstrap.status).toBe(400);
    expect(String(noBootstrap.json.message)).toMatch(/bootstrapBundleFile: required/);
    const plainHttp = await A.call({
      method: 'POST',
      path: '/v1/admin/federation',
      body: { trustDomain: 'partner3.test', bundleEndpointUrl: 'http://127.0.0.1:1/', profile: 'https_web' },
      cert: admin.cert,
      key: admin.key,
    });
    expect(plainHttp.status).toBe(400);
    const dup = await A.call({ method: 'POST', path: '/v1/admin/federation', body: { trustDomain: 'partner.test', bundleEndpointUrl: `${B.url}/v1/bundle`, profile: 'https_web' }, cert: admin.cert, key: admin.key });
    expect(dup.status).toBe(409);
  });

  it('delivers federated_bundles on the Workload API (X509SVIDResponse, FetchX509Bundles, JWT bundles)', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-fed-wl-'));
    // A fresh SVID (example.org's live for 5 s here).
    const web = client(A, 'shop', 'web');
    const fresh = await web.start();
    const identity = new ClientIdentity(web, silent);
    let api: WorkloadApiServer | undefined;
    try {
      identity.installX509(fresh);
      api = await startWorkloadApi(identity, { socketPath: path.join(dir, 'agent.sock') }, silent);
      const wc = workloadClient(api.socketPath);
      const svid = (await serverStream(wc, 'FetchX509SVID').nth(0)).message as { federated_bundles: Record<string, Buffer> };
      expect(Object.keys(svid.federated_bundles)).toEqual(['spiffe://partner.test']);
      expect(new X509Certificate(svid.federated_bundles['spiffe://partner.test'] as Buffer).subjectAltName).toContain('URI:spiffe://partner.test');
      const bundles = (await serverStream(wc, 'FetchX509Bundles').nth(0)).message as { bundles: Record<string, Buffer> };
      expect(Object.keys(bundles.bundles).sort()).toEqual(['spiffe://example.org', 'spiffe://partner.test']);
      const jwt = (await serverStream(wc, 'FetchJWTBundles').nth(0)).message as { bundles: Record<string, Buffer> };
      expect(Object.keys(jwt.bundles).sort()).toEqual(['spiffe://example.org', 'spiffe://partner.test']);
      wc.close();
    } finally {
      identity.close();
      await api?.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the agent (a real `tessera agent --once`) writes federated/<td>.pem and .jwks.json, apart from its own bundle', async () => {
    const CLI = path.resolve('dist/cli/main.js');
    if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
    const work = mkdtempSync(path.join(tmpdir(), 'tessera-fed-agent-'));
    try {
      const bundleFile = path.join(work, 'bundle.pem');
      writeFileSync(bundleFile, A.ca);
      const runAgent = async (serviceAccount: string): Promise<string> => {
        const tokenFile = path.join(work, `${serviceAccount}.token`);
        writeFileSync(tokenFile, await A.token({ namespace: 'shop', serviceAccount }));
        const out = path.join(work, serviceAccount);
        // Asynchronous: the brokers run in this process and must keep answering.
        const run = await new Promise<{ code: number; stderr: string }>((resolve) => {
          execFile(process.execPath, [CLI, 'agent', '--broker', A.url, '--bundle', bundleFile, '--token-file', tokenFile, '--out', out, '--once', '--deadline', '20'], { timeout: 30_000 }, (err, _stdout, stderr) =>
            resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stderr }),
          );
        });
        expect(run.code, run.stderr).toBe(0);
        return out;
      };
      const web = await runAgent('web');
      expect(readdirSync(path.join(web, 'federated')).sort()).toEqual(['partner.test.jwks.json', 'partner.test.pem']);
      const pem = readFileSync(path.join(web, 'federated', 'partner.test.pem'), 'utf8');
      expect(new X509Certificate(pem).subjectAltName).toContain('URI:spiffe://partner.test');
      // A partner.test SVID chains to the federated file, not to the workload's own bundle.
      const partner = await client(B, 'billing', 'api').start();
      expect(opensslVerify(pem, partner.certificates).ok).toBe(true);
      expect(opensslVerify(readFileSync(path.join(web, 'bundle.pem'), 'utf8'), partner.certificates).ok).toBe(false);
      const kids = (JSON.parse(readFileSync(path.join(web, 'federated', 'partner.test.jwks.json'), 'utf8')) as { keys: { kid: string }[] }).keys.map((k) => k.kid);
      // The JWT keys partner.test itself publishes.
      expect(kids.sort()).toEqual(B.broker.bundle.keys.filter((k) => k.use === 'jwt-svid').map((k) => k.kid).sort());
      // A workload whose entry does not federate gets no federated directory at all.
      expect(existsSync(path.join(await runAgent('other'), 'federated'))).toBe(false);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }, 60_000);

  it('keeps the last good bundle while the foreign endpoint is down: age metric, stale alert, mTLS still works', async () => {
    // partner.test's bundle endpoint goes down (the broker's TLS route stands in: point the relationship at a closed port).
    const down = await A.call({ method: 'DELETE', path: '/v1/admin/federation/partner.test', cert: admin.cert, key: admin.key });
    expect(down.status).toBe(200);
    const readd = await addPartner();
    expect(readd.status).toBe(201);
    await until('fetched again', async () => ((A.broker.federation.status().find((s) => s.relationship.trustDomain === 'partner.test')?.bundle?.fetchedAt ?? 0) > 0 ? true : undefined), 10_000);
    await B.app.close(); // the endpoint is down from here on
    await expect(A.broker.federation.refresh('partner.test')).rejects.toMatchObject({ code: 'federation_fetch_failed' });
    const s = A.broker.federation.status().find((x) => x.relationship.trustDomain === 'partner.test');
    expect(s?.bundle?.fetchedAt).toBeGreaterThan(0);
    expect(s?.lastError?.message).toMatch(/cannot fetch|ECONNREFUSED/);
    // A new SVID still carries the last good bundle, and mTLS with partner.test still works.
    const webA2 = client(A, 'shop', 'web');
    expect((await webA2.start()).federatedBundles.map((b) => b.trustDomain)).toEqual(['partner.test']);
    const portB = await peerServer(apiB, [WEB_A]);
    expect((await get(portB, webA2.httpsAgent({ allowedServerIds: [API_B] }))).body).toMatchObject({ ok: true, spiffeId: WEB_A });
    // Past staleAfterSeconds (1 s): the age metric says so and the stale alert is in the audit log.
    await until('stale alert', async () => {
      await A.broker.federation.tick();
      const entries = await A.broker.store.readAuditEntries(0, A.broker.audit.size);
      return entries.some((e) => e.toString().includes('federation-bundle-stale')) ? true : undefined;
    }, 10_000, 200);
    const metrics = await A.broker.metrics.registry.metrics();
    const age = /tessera_federation_bundle_age_seconds\{trust_domain="partner\.test"\} (\d+)/.exec(metrics);
    expect(Number(age?.[1])).toBeGreaterThanOrEqual(1);
    expect(metrics).toMatch(/tessera_federation_fetches_total\{trust_domain="partner\.test",outcome="failed"\} [1-9]/);
    const list = await A.call<{ relationships: { trustDomain: string; stale: boolean; lastError?: unknown }[] }>({ path: '/v1/admin/federation', cert: admin.cert, key: admin.key });
    expect(list.json.relationships.find((r) => r.trustDomain === 'partner.test')).toMatchObject({ stale: true, lastError: expect.anything() as unknown });
  });

  it("example.org's CA rotation reaches partner.test through refresh (the https_spiffe endpoint's SVID rotates with the CA)", async () => {
    const kids = (b: { keys: readonly { use: string; kid?: string }[] }): string[] => b.keys.filter((k) => k.use === 'jwt-svid').map((k) => k.kid ?? '').sort();
    const copy = (): string[] => (B.broker.federation.bundlesFor(['example.org'])[0]?.bundle.jwtAuthorities ?? []).map((j) => j.kid).sort();
    expect(initialKids).toHaveLength(1);
    const firstSerial = await epA.serial();
    const firstCa = A.broker.ca;
    // The first signing CA lives ~31 s: the next authority is prepared (and published) at half of that.
    await until('next authority published', async () => (kids(A.broker.bundle).length > initialKids.length ? true : undefined), 30_000, 100);
    // partner.test follows at the refresh hint (1 s), without being asked.
    await until('partner.test holds the new JWT key', async () => (JSON.stringify(copy()) === JSON.stringify(kids(A.broker.bundle)) ? true : undefined), 10_000, 100);
    expect(copy()).not.toEqual(initialKids);
    // Activate it now: the https_spiffe endpoint's SVID is minted again by the new CA, and still authenticates.
    await A.broker.rotation?.activateNow();
    await until('signing CA switched', async () => (A.broker.ca !== firstCa ? true : undefined), 10_000, 100);
    expect(await epA.serial()).not.toBe(firstSerial);
    const fetched = await B.broker.federation.refresh('example.org');
    expect(fetched.bundle.jwtAuthorities.map((j) => j.kid).sort()).toEqual(kids(A.broker.bundle));
  }, 60_000);
});
