/**
 * The SPIFFE Workload API served by a real `tessera agent` process on a real Unix socket, called by a
 * grpc-js client speaking proto/spiffe/workload/workload.proto (go-spiffe cannot run here: no Go
 * toolchain; this client sends the same bytes on the wire). A real broker issues the SVIDs with a
 * 6 s TTL, so rotations happen on open streams during the test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { SignJWT, createLocalJWKSet, importPKCS8, jwtVerify, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fromStruct, type Message } from '../../src/agent/workload-api/protos.js';
import { startBroker, devMaterial, type TestBroker } from '../helpers/broker.js';
import { killAgents, logged, spawnAgent, waitFor, type AgentRun as BaseRun } from '../helpers/agent-process.js';
import { header, refusal, serverStream, splitDer, unary, workloadClient, type Client } from '../helpers/workload-client.js';

import { CLI } from '../helpers/agent-process.js';
const TTL = 6;
const WEB = 'spiffe://example.org/ns/shop/sa/web';
const TD = 'spiffe://example.org';

let b: TestBroker;
let work: string;
let bundleFile: string;
let tokenFile: string;
const running: ChildProcess[] = [];
const clients: Client[] = [];

interface AgentRun extends BaseRun {
  readonly socket: string;
}

const agent = (args: string[], socket: string): AgentRun => Object.assign(spawnAgent(args), { socket });

const newSocket = (): string => path.join(mkdtempSync(path.join(work, 's-')), 'agent.sock');

async function sidecar(extra: string[] = [], broker = b.url, socket = newSocket()): Promise<AgentRun> {
  const run = agent(['--broker', broker, '--bundle', bundleFile, '--token-file', tokenFile, '--workload-api', `unix://${socket}`, ...extra], socket);
  await logged(run, 'Workload API and SDS listening');
  return run;
}

const ready = (run: AgentRun): Promise<true> => logged(run, 'X.509-SVID obtained');

function newClient(socket: string): Client {
  const c = workloadClient(socket);
  clients.push(c);
  return c;
}

const stop = (run: AgentRun): Promise<void> => run.stop();

let main: AgentRun;
let c: Client;

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
  b = await startBroker({ config: { svid: { x509DefaultTtlSeconds: TTL, x509MaxTtlSeconds: TTL } } });
  work = mkdtempSync(path.join(tmpdir(), 'tessera-wlapi-'));
  bundleFile = path.join(work, 'bundle.pem');
  tokenFile = path.join(work, 'token');
  writeFileSync(bundleFile, b.ca);
  writeFileSync(tokenFile, await b.token({ namespace: 'shop', serviceAccount: 'web' }));
  main = await sidecar();
  await ready(main);
  c = newClient(main.socket);
}, 60_000);

afterAll(async () => {
  for (const cl of clients) cl.close();
  killAgents();
  for (const p of running) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  await b?.close();
  if (work !== undefined) rmSync(work, { recursive: true, force: true });
});

function x509Of(m: Message): { spiffeId: string; chain: X509Certificate[]; key: ReturnType<typeof createPrivateKey>; bundle: X509Certificate[]; hint: unknown } {
  const svids = m.svids as Message[];
  expect(svids).toHaveLength(1);
  const s = svids[0] as Message;
  return {
    spiffeId: s.spiffe_id as string,
    chain: splitDer(s.x509_svid as Buffer),
    key: createPrivateKey({ key: s.x509_svid_key as Buffer, format: 'der', type: 'pkcs8' }),
    bundle: splitDer(s.bundle as Buffer),
    hint: s.hint,
  };
}

async function brokerJwks(): Promise<JWK[]> {
  const bundle = await b.call<{ keys: (JWK & { use: string })[] }>({ path: '/v1/bundle' });
  return bundle.json.keys.filter((k) => k.use === 'jwt-svid').map(({ use: _use, ...k }) => k);
}

describe('socket', () => {
  it('is a socket of mode 0770 or tighter', () => {
    const st = statSync(main.socket);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o007).toBe(0);
  });
});

describe('FetchX509SVID', () => {
  it('streams the SVID (PKCS#8 DER key, DER chain, DER bundle) and delivers each rotation on the open stream within 1 s', async () => {
    const s = serverStream(c, 'FetchX509SVID');
    const first = x509Of((await s.nth(0)).message);
    expect(first.spiffeId).toBe(WEB);
    expect(first.chain.length).toBeGreaterThanOrEqual(2);
    expect(first.chain[0]?.subjectAltName).toContain(`URI:${WEB}`);
    expect(first.chain[0]?.checkPrivateKey(first.key)).toBe(true);
    expect(first.bundle.map((x) => x.fingerprint256)).toEqual([new X509Certificate(b.ca).fingerprint256]);
    expect(first.chain[1]?.verify(first.bundle[0]!.publicKey)).toBe(true);
    expect(first.hint).toBe('');
    // Two rotations on the same stream, each a new certificate with its own key.
    const second = await s.nth(1, 20_000);
    const third = await s.nth(2, 20_000);
    const serials = [first, x509Of(second.message), x509Of(third.message)].map((x) => x.chain[0]!.serialNumber);
    expect(new Set(serials).size).toBe(3);
    for (const m of [second, third]) {
      const x = x509Of(m.message);
      expect(x.chain[0]!.checkPrivateKey(x.key)).toBe(true);
      // Delivery measured against the agent's own log line for that SVID (same machine clock).
      const serial = x.chain[0]!.serialNumber.toLowerCase();
      const obtained = main.logs().find((l) => l.msg === 'X.509-SVID obtained' && l.serial === serial);
      expect(obtained, `no log line for ${serial}`).toBeDefined();
      expect(m.at - (obtained!.time as number)).toBeLessThan(1_000);
    }
    expect(s.error).toBeUndefined();
    s.cancel();
  }, 60_000);
});

describe('the security header', () => {
  it.each([
    ['missing', null],
    ['"false"', 'false'],
    ['"True" (case sensitive)', 'True'],
  ])('%s: every RPC is refused with InvalidArgument', async (_name, value) => {
    for (const m of ['FetchX509SVID', 'FetchX509Bundles', 'FetchJWTBundles']) {
      const e = await serverStream(c, m, header(value)).failure();
      expect(e.code, m).toBe(status.INVALID_ARGUMENT);
      expect(e.details).toMatch(/workload\.spiffe\.io/);
    }
    expect((await refusal(unary(c, 'FetchJWTSVID', { audience: ['payments'] }, header(value)))).code).toBe(status.INVALID_ARGUMENT);
    expect((await refusal(unary(c, 'ValidateJWTSVID', { audience: 'payments', svid: 'a.b.c' }, header(value)))).code).toBe(status.INVALID_ARGUMENT);
  });
});

describe('FetchX509Bundles and FetchJWTBundles', () => {
  it('stream the X.509 roots and the JWT keys, keyed by the trust domain ID', async () => {
    const xs = serverStream(c, 'FetchX509Bundles');
    const xb = (await xs.nth(0)).message.bundles as Record<string, Buffer>;
    expect(Object.keys(xb)).toEqual([TD]);
    expect(splitDer(xb[TD] as Buffer).map((x) => x.fingerprint256)).toEqual([new X509Certificate(b.ca).fingerprint256]);
    xs.cancel();

    const js = serverStream(c, 'FetchJWTBundles');
    const jb = (await js.nth(0)).message.bundles as Record<string, Buffer>;
    expect(Object.keys(jb)).toEqual([TD]);
    const jwks = JSON.parse((jb[TD] as Buffer).toString('utf8')) as { keys: JWK[] };
    expect(jwks.keys.map((k) => k.kid).sort()).toEqual((await brokerJwks()).map((k) => k.kid).sort());
    expect(jwks.keys.every((k) => k.d === undefined)).toBe(true);
    js.cancel();
  });
});

describe('FetchJWTSVID', () => {
  it('fetches a JWT-SVID for a granted audience through the broker', async () => {
    const res = await unary(c, 'FetchJWTSVID', { audience: ['payments'] });
    const svids = res.svids as Message[];
    expect(svids).toHaveLength(1);
    expect(svids[0]?.spiffe_id).toBe(WEB);
    const { payload } = await jwtVerify(svids[0]?.svid as string, createLocalJWKSet({ keys: await brokerJwks() }), { audience: 'payments' });
    expect(payload.sub).toBe(WEB);
    // The same SPIFFE ID asked for explicitly is fine.
    expect(((await unary(c, 'FetchJWTSVID', { audience: ['payments'], spiffe_id: WEB })).svids as Message[])[0]?.spiffe_id).toBe(WEB);
  });

  it('refuses an audience the policy does not grant (PermissionDenied), an empty audience (InvalidArgument), another SPIFFE ID (PermissionDenied)', async () => {
    const refused = await refusal(unary(c, 'FetchJWTSVID', { audience: ['not-granted'] }));
    expect(refused.code).toBe(status.PERMISSION_DENIED);
    expect((await refusal(unary(c, 'FetchJWTSVID', { audience: [] }))).code).toBe(status.INVALID_ARGUMENT);
    expect((await refusal(unary(c, 'FetchJWTSVID', { audience: [''] }))).code).toBe(status.INVALID_ARGUMENT);
    const other = await refusal(unary(c, 'FetchJWTSVID', { audience: ['payments'], spiffe_id: 'spiffe://example.org/ns/shop/sa/other' }));
    expect(other.code).toBe(status.PERMISSION_DENIED);
  });
});

describe('ValidateJWTSVID', () => {
  async function signed(claims: Record<string, unknown>, kid?: string): Promise<string> {
    const { dir } = await devMaterial();
    const key = await importPKCS8(readFileSync(path.join(dir, 'jwt-signing.key'), 'utf8'), 'ES256');
    const realKid = (await brokerJwks())[0]?.kid as string;
    return new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: kid ?? realKid, typ: 'JWT' }).sign(key);
  }

  it('validates a good token: SPIFFE ID and claims', async () => {
    const token = ((await unary(c, 'FetchJWTSVID', { audience: ['payments'] })).svids as Message[])[0]?.svid as string;
    const res = await unary(c, 'ValidateJWTSVID', { audience: 'payments', svid: token });
    expect(res.spiffe_id).toBe(WEB);
    const claims = fromStruct(res.claims as Message);
    expect(claims.sub).toBe(WEB);
    expect(claims.aud === 'payments' || (Array.isArray(claims.aud) && claims.aud.includes('payments'))).toBe(true);
    expect(typeof claims.exp).toBe('number');
  });

  it('refuses a tampered token, the wrong audience, an expired token, an unknown kid and a missing field (InvalidArgument)', async () => {
    const token = ((await unary(c, 'FetchJWTSVID', { audience: ['payments'] })).svids as Message[])[0]?.svid as string;
    const [h, p, sig] = token.split('.') as [string, string, string];
    const payload = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...payload, sub: 'spiffe://example.org/ns/shop/sa/admin' })).toString('base64url')}.${sig}`;
    const cases: [string, Message, RegExp][] = [
      ['tampered payload', { audience: 'payments', svid: forged }, /signature/],
      ['wrong audience', { audience: 'inventory', svid: token }, /aud/],
      ['expired', { audience: 'payments', svid: await signed({ sub: WEB, aud: ['payments'], exp: Math.floor(Date.now() / 1000) - 5, iat: Math.floor(Date.now() / 1000) - 65 }) }, /expired/],
      ['unknown kid', { audience: 'payments', svid: await signed({ sub: WEB, aud: ['payments'], exp: Math.floor(Date.now() / 1000) + 60 }, 'nope') }, /not in the bundle/],
      ['no exp', { audience: 'payments', svid: await signed({ sub: WEB, aud: ['payments'] }) }, /exp/],
      ['missing audience', { audience: '', svid: token }, /audience is required/],
      ['missing svid', { audience: 'payments', svid: '' }, /svid is required/],
      ['not a JWS', { audience: 'payments', svid: 'garbage' }, /compact/],
    ];
    for (const [name, req, why] of cases) {
      const e = await refusal(unary(c, 'ValidateJWTSVID', req));
      expect(e.code, name).toBe(status.INVALID_ARGUMENT);
      expect(e.details, name).toMatch(why);
    }
    // The same signing key and claims, unexpired: valid (so the refusals above are about the claims).
    const fresh = await signed({ sub: WEB, aud: ['payments'], exp: Math.floor(Date.now() / 1000) + 60 });
    expect((await unary(c, 'ValidateJWTSVID', { audience: 'payments', svid: fresh })).spiffe_id).toBe(WEB);
  });
});

describe('no identity yet', () => {
  it('answers PermissionDenied while the broker is unreachable, then serves once it is back', async () => {
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as net.AddressInfo).port;
    await new Promise<void>((r) => srv.close(() => r()));
    // A broker on that port starts later: the same material, a fresh process-local broker.
    const run = await sidecar([], `https://127.0.0.1:${port}`);
    const cl = newClient(run.socket);
    const e = await serverStream(cl, 'FetchX509SVID').failure();
    expect(e.code).toBe(status.PERMISSION_DENIED);
    expect((await refusal(unary(cl, 'FetchJWTSVID', { audience: ['payments'] }))).code).toBe(status.PERMISSION_DENIED);
    expect((await serverStream(cl, 'FetchX509Bundles').failure()).code).toBe(status.PERMISSION_DENIED);
    const late = await startBroker({ port, config: { svid: { x509DefaultTtlSeconds: TTL, x509MaxTtlSeconds: TTL } } });
    try {
      // A client retrying with backoff, as the spec asks, gets the SVID once the agent has it.
      const got = await waitFor('an SVID after the broker came up', async () => {
        const s = serverStream(cl, 'FetchX509SVID');
        try {
          return x509Of((await s.nth(0, 3_000)).message);
        } catch {
          return undefined;
        } finally {
          s.cancel();
        }
      }, 30_000);
      expect(got.spiffeId).toBe(WEB);
    } finally {
      await stop(run);
      await late.close();
    }
  }, 60_000);
});

describe('agent start-up checks on the socket path', () => {
  const base = (socket: string): string[] => ['--broker', b.url, '--bundle', bundleFile, '--token-file', tokenFile, '--workload-api', `unix://${socket}`];

  it('replaces a stale socket left by a crashed agent', async () => {
    const socket = newSocket();
    // What a SIGKILLed agent leaves behind: a socket file nobody listens on.
    const stale = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socket)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'ignore'] });
    running.push(stale);
    await new Promise<void>((r) => stale.stdout?.once('data', () => r()));
    stale.kill('SIGKILL');
    await new Promise((r) => stale.once('exit', r));
    expect(statSync(socket).isSocket()).toBe(true);
    const run = await sidecar([], b.url, socket);
    await ready(run);
    const x = x509Of((await serverStream(newClient(socket), 'FetchX509SVID').nth(0)).message);
    expect(x.spiffeId).toBe(WEB);
    await stop(run);
    expect(existsSync(socket)).toBe(false); // removed on a clean stop
  }, 30_000);

  it('refuses a symlink, a world-writable directory, a socket in use and a bad URI', async () => {
    const dir = mkdtempSync(path.join(work, 'bad-'));
    const link = path.join(dir, 'link.sock');
    symlinkSync(path.join(dir, 'elsewhere.sock'), link);
    const open = path.join(mkdtempSync(path.join(work, 'open-')), 'agent.sock');
    chmodSync(path.dirname(open), 0o777);
    const cases: [string[], RegExp, number][] = [
      [base(link), /is a symlink/, 1],
      [base(open), /world-writable/, 1],
      [base(main.socket), /in use by another process/, 1],
      [[...base('x').slice(0, -1), 'unix://host/x.sock'], /--workload-api: a unix: URI has no authority/, 2],
      [[...base('x').slice(0, -1), 'tcp://127.0.0.1:1'], /--workload-api: must be a unix:/, 2],
      [[...base('x').slice(0, -1), 'unix:///tmp/../x.sock'], /normalised/, 2],
    ];
    for (const [args, why, code] of cases) {
      const run = agent(args, "");
      expect(await run.exited, run.stderr()).toBe(code);
      expect(run.stderr()).toMatch(why);
    }
    // The live agent's socket was not touched.
    expect((await unary(c, 'FetchJWTSVID', { audience: ['payments'] })).svids).toHaveLength(1);
  }, 90_000);

  it('takes workloadApi.socket and maxStreams from --config', async () => {
    const socket = newSocket();
    const cfg = path.join(work, 'agent.yaml');
    writeFileSync(cfg, `broker: ${b.url}\nbundle: ${bundleFile}\ntokenFile: ${tokenFile}\nworkloadApi:\n  socket: unix://${socket}\n  maxStreams: 3\n`);
    const run = agent(['--config', cfg], socket);
    await waitFor('the socket', () => (run.logs().some((l) => l.msg === 'Workload API and SDS listening') ? true : undefined));
    expect(run.logs().find((l) => l.msg === 'Workload API and SDS listening')?.maxStreams).toBe(3);
    await ready(run);
    const cl = newClient(socket);
    const streams = [0, 1, 2, 3].map(() => serverStream(cl, 'FetchX509SVID'));
    await Promise.all(streams.slice(0, 3).map((s) => s.nth(0)));
    expect((await streams[3]!.failure()).code).toBe(status.RESOURCE_EXHAUSTED);
    for (const s of streams) s.cancel();
    await stop(run);
    const bad = path.join(work, 'bad.yaml');
    writeFileSync(bad, `workloadApi:\n  socket: unix://${socket}\n  maxStream: 3\n`);
    const r = agent(['--config', bad], '');
    expect(await r.exited).toBe(2);
    expect(r.stderr()).toMatch(/workloadApi\.maxStream: unknown setting/);
  }, 30_000);
});

describe('file layouts', () => {
  const once = (out: string, extra: string[]): AgentRun => agent(['--broker', b.url, '--bundle', bundleFile, '--token-file', tokenFile, '--out', out, '--once', '--jwt-audience', 'payments', ...extra], '');

  it('--file-names spiffe-helper writes svid.pem, svid_key.pem (0600), svid_bundle.pem and jwt_bundle.json', async () => {
    const out = path.join(mkdtempSync(path.join(work, 'helper-')), 'certs');
    const run = once(out, ['--file-names', 'spiffe-helper']);
    expect(await run.exited, run.stderr()).toBe(0);
    const chain = readFileSync(path.join(out, 'svid.pem'), 'utf8');
    const leaf = new X509Certificate(chain.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/)![0]);
    expect(leaf.checkPrivateKey(createPrivateKey(readFileSync(path.join(out, 'svid_key.pem'), 'utf8')))).toBe(true);
    expect(statSync(path.join(out, 'svid_key.pem')).mode & 0o777).toBe(0o600);
    expect(new X509Certificate(readFileSync(path.join(out, 'svid_bundle.pem'))).fingerprint256).toBe(new X509Certificate(b.ca).fingerprint256);
    expect(existsSync(path.join(out, 'svid.key'))).toBe(false);
    expect(existsSync(path.join(out, 'bundle.pem'))).toBe(false);
    // The JWT bundle verifies the JWT-SVID offline.
    const jwks = JSON.parse(readFileSync(path.join(out, 'jwt_bundle.json'), 'utf8')) as { keys: JWK[] };
    const { payload } = await jwtVerify(readFileSync(path.join(out, 'jwt', 'payments.token'), 'utf8'), createLocalJWKSet(jwks), { audience: 'payments' });
    expect(payload.sub).toBe(WEB);
  }, 30_000);

  it('the default layout is unchanged and gains jwt_bundle.json; a wrong layout name is a usage error', async () => {
    const out = path.join(mkdtempSync(path.join(work, 'default-')), 'certs');
    const run = once(out, []);
    expect(await run.exited, run.stderr()).toBe(0);
    for (const f of ['svid.pem', 'svid.key', 'bundle.pem', 'jwt_bundle.json', 'jwt/payments.token']) expect(existsSync(path.join(out, f)), f).toBe(true);
    const jwks = JSON.parse(readFileSync(path.join(out, 'jwt_bundle.json'), 'utf8')) as { keys: JWK[] };
    expect(jwks.keys.map((k) => k.kid).sort()).toEqual((await brokerJwks()).map((k) => k.kid).sort());
    const bad = once(out, ['--file-names', 'spire']);
    expect(await bad.exited).toBe(2);
    expect(bad.stderr()).toMatch(/--file-names must be one of tessera, spiffe-helper/);
  }, 30_000);
});
