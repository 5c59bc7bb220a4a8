/**
 * `tessera agent` as a real process (node dist/cli/main.js agent …) against a live broker:
 * init-container mode (success, deadline failures, exit codes), sidecar mode (rotation while a reader
 * polls the files, /healthz, --on-rotate, SIGTERM), and flag mistakes.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifySvid } from '../../src/sdk/x509.js';
import { startBroker, type TestBroker } from '../helpers/broker.js';
import { opensslVerify } from '../helpers/openssl.js';

const CLI = path.resolve('dist/cli/main.js');
const TTL = 6;
const WEB = 'spiffe://example.org/ns/shop/sa/web';

let b: TestBroker;
let work: string;
let bundleFile: string;
let tokenFile: string;
const running: ChildProcess[] = [];

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
  b = await startBroker({ config: { svid: { x509DefaultTtlSeconds: TTL, x509MaxTtlSeconds: TTL } } });
  work = mkdtempSync(path.join(tmpdir(), 'tessera-agent-e2e-'));
  bundleFile = path.join(work, 'bundle.pem');
  tokenFile = path.join(work, 'token');
  writeFileSync(bundleFile, b.ca);
  writeFileSync(tokenFile, await b.token({ namespace: 'shop', serviceAccount: 'web' }));
});

afterAll(async () => {
  for (const p of running) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  await b?.close();
});

interface Run {
  proc: ChildProcess;
  stderr: () => string;
  exited: Promise<{ code: number | null; ms: number }>;
  logs: () => Record<string, unknown>[];
}

function agent(args: string[]): Run {
  const started = Date.now();
  const proc = spawn(process.execPath, [CLI, 'agent', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.push(proc);
  let err = '';
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  proc.stdout?.resume();
  const exited = new Promise<{ code: number | null; ms: number }>((resolve) => proc.on('exit', (code) => resolve({ code, ms: Date.now() - started })));
  const logs = (): Record<string, unknown>[] =>
    err
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { proc, stderr: () => err, exited, logs };
}

const base = (out: string, broker = b.url): string[] => ['--broker', broker, '--bundle', bundleFile, '--token-file', tokenFile, '--out', out];
const outDir = (): string => path.join(mkdtempSync(path.join(work, 'out-')), 'svid');

async function waitFor<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function healthz(port: number): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/healthz' }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(body) as Record<string, unknown> }));
      })
      .on('error', reject);
  });
}

async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

describe('--once (init container)', () => {
  it('writes the SVID, key (0600), bundle and JWT-SVIDs, runs --on-rotate, and exits 0', async () => {
    const out = outDir();
    const marker = path.join(work, 'once-hook');
    const run = agent([...base(out), '--once', '--jwt-audience', 'payments', '--on-rotate', `echo "$TESSERA_SPIFFE_ID" > '${marker}'`]);
    const { code } = await run.exited;
    expect(code, run.stderr()).toBe(0);

    const chain = readFileSync(path.join(out, 'svid.pem'), 'utf8');
    const key = readFileSync(path.join(out, 'svid.key'), 'utf8');
    const certs = chain.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/g) ?? [];
    expect(certs.length).toBeGreaterThanOrEqual(2);
    expect(opensslVerify(readFileSync(path.join(out, 'bundle.pem'), 'utf8'), certs).ok).toBe(true);
    const leaf = new X509Certificate(certs[0] as string);
    expect(leaf.subjectAltName).toContain(`URI:${WEB}`);
    expect(leaf.checkPrivateKey(createPrivateKey(key))).toBe(true);
    expect(readFileSync(path.join(out, 'bundle.pem'), 'utf8')).toBe(new X509Certificate(b.ca).toString());
    expect(statSync(path.join(out, 'svid.key')).mode & 0o777).toBe(0o600);
    expect(statSync(path.join(out, 'jwt', 'payments.token')).mode & 0o777).toBe(0o600);
    expect(statSync(path.join(out, 'svid.pem')).mode & 0o777).toBe(0o644);

    const bundle = await b.call<{ keys: { use: string }[] }>({ path: '/v1/bundle' });
    const keys = bundle.json.keys.filter((k) => k.use === 'jwt-svid').map((k) => ({ ...k, use: 'sig' }));
    const { payload } = await jwtVerify(
      readFileSync(path.join(out, 'jwt', 'payments.token'), 'utf8'),
      createLocalJWKSet({ keys }),
      { algorithms: ['ES256'], audience: 'payments' },
    );
    expect(payload.sub).toBe(WEB);
    expect(readFileSync(marker, 'utf8').trim()).toBe(WEB);
    // Logs are JSON lines and carry neither the key nor the tokens.
    expect(run.logs().some((l) => l.msg === 'files written')).toBe(true);
    expect(run.stderr()).not.toContain('PRIVATE KEY');
    expect(run.stderr()).not.toContain(readFileSync(tokenFile, 'utf8'));
    expect(run.stderr()).not.toContain(readFileSync(path.join(out, 'jwt', 'payments.token'), 'utf8'));
  });

  it('retries an unreachable broker with backoff until the deadline, then exits 1 with a clear message', async () => {
    const out = outDir();
    const run = agent([...base(out, `https://127.0.0.1:${await closedPort()}`), '--once', '--deadline', '2']);
    const { code, ms } = await run.exited;
    expect(code).toBe(1);
    expect(ms).toBeGreaterThanOrEqual(2_000);
    expect(ms).toBeLessThan(8_000);
    expect(run.stderr()).toMatch(/tessera agent: no SVID from https:\/\/127\.0\.0\.1:\d+ within 2 s; last error: .*ECONNREFUSED/);
    const retries = run.logs().filter((l) => l.msg === 'could not obtain credentials yet; will retry');
    expect(retries.length).toBeGreaterThanOrEqual(2);
    expect(existsSync(out)).toBe(false);
  });

  it('exits 1 by the deadline when the broker refuses, naming the refusal', async () => {
    const out = outDir();
    const stranger = path.join(work, 'stranger-token');
    writeFileSync(stranger, await b.token({ namespace: 'nobody', serviceAccount: 'nothing' }));
    const run = agent(['--broker', b.url, '--bundle', bundleFile, '--token-file', stranger, '--out', out, '--once', '--deadline', '1']);
    const { code } = await run.exited;
    expect(code).toBe(1);
    expect(run.stderr()).toMatch(/within 1 s; last error: .*no registration entry grants credentials to spiffe:\/\/example\.org\/ns\/nobody\/sa\/nothing/);
  });

  it('exits 2 with a message for flag mistakes, and prints its usage on --help', () => {
    const r = spawnSync(process.execPath, [CLI, 'agent', '--broker', 'http://x', '--bundle', bundleFile, '--token-file', tokenFile, '--out', work], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--broker: broker URL must use https:\/\//);
    const missing = spawnSync(process.execPath, [CLI, 'agent', '--once'], { encoding: 'utf8' });
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/agent needs --broker URL/);
    const help = spawnSync(process.execPath, [CLI, 'agent', '--help'], { encoding: 'utf8' });
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/--on-rotate CMD/);
  });
});

describe('sidecar', () => {
  it('rotates the files while a reader polls them: never torn, pair always matching, key 0600; /healthz; SIGTERM exits 0', async () => {
    const out = outDir();
    const hookLog = path.join(work, 'sidecar-hook.log');
    const run = agent([...base(out), '--health-port', '0', '--on-rotate', `echo "$TESSERA_SVID_SERIAL" >> '${hookLog}'`]);
    const port = await waitFor('the health endpoint', () => {
      const m = /"url":"http:\/\/127\.0\.0\.1:(\d+)\/healthz"/.exec(run.stderr());
      return m ? Number(m[1]) : undefined;
    });
    await waitFor('the first files', () => (existsSync(path.join(out, 'svid.key')) ? true : undefined));

    const roots = [new X509Certificate(b.ca)];
    const serials = new Set<string>();
    const problems: string[] = [];
    let reads = 0;
    let checkedPairs = 0;
    // Poll until three rotations have been seen (about 3 × TTL/2), bounded in time.
    // At least 500 reads across the rotations (a loop condition, not a rate: a loaded machine takes longer).
    const until = Date.now() + 45_000;
    while (!(serials.size >= 4 && reads > 500) && Date.now() < until) {
      const before = readlinkSync(path.join(out, '..data'));
      const chain = readFileSync(path.join(out, 'svid.pem'), 'utf8');
      const key = readFileSync(path.join(out, 'svid.key'), 'utf8');
      const bundle = readFileSync(path.join(out, 'bundle.pem'), 'utf8');
      const mode = statSync(path.join(out, 'svid.key')).mode & 0o777;
      const after = readlinkSync(path.join(out, '..data'));
      reads += 1;
      try {
        // Every read parses completely: a torn file would not.
        const certs = (chain.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/g) ?? []).map((c) => new X509Certificate(c));
        if (certs.length < 2 || certs.map((c) => c.toString()).join('') !== chain) throw new Error('svid.pem is not a complete chain');
        const privateKey = createPrivateKey(key);
        new X509Certificate(bundle);
        if (mode !== 0o600) throw new Error(`svid.key mode ${mode.toString(8)}`);
        const [leaf, ...intermediates] = certs as [X509Certificate, ...X509Certificate[]];
        verifySvid({ leaf, intermediates, roots });
        // Files read between two looks at the same ..data generation belong together.
        if (before === after) {
          checkedPairs += 1;
          if (!leaf.checkPrivateKey(privateKey)) throw new Error(`key does not match certificate in ${after}`);
        }
        serials.add(leaf.serialNumber);
      } catch (err) {
        problems.push((err as Error).message);
      }
      if (reads % 50 === 0) {
        const h = await healthz(port);
        expect(h.status).toBe(200);
        expect(h.body).toMatchObject({ status: 'ok', spiffeId: WEB });
        expect(h.body.secondsToExpiry as number).toBeGreaterThanOrEqual(0);
        expect(h.body.secondsToExpiry as number).toBeLessThanOrEqual(TTL);
      }
      await new Promise((r) => setImmediate(r));
    }
    expect(problems).toEqual([]);
    expect(reads).toBeGreaterThan(500);
    expect(checkedPairs).toBeGreaterThan(reads * 0.9);
    expect(serials.size).toBeGreaterThanOrEqual(4);

    run.proc.kill('SIGTERM');
    const { code } = await run.exited;
    expect(code).toBe(0);

    const obtained = run.logs().filter((l) => l.msg === 'X.509-SVID obtained');
    expect(obtained[0]?.via).toBe('token');
    expect(obtained.slice(1).every((l) => l.via === 'mtls')).toBe(true);
    expect(run.logs()).toContainEqual(expect.objectContaining({ msg: 'stopping', signal: 'SIGTERM' }));
    // --on-rotate ran once per published SVID, in order.
    const written = run.logs().filter((l) => l.msg === 'files written').map((l) => l.serial);
    expect(readFileSync(hookLog, 'utf8').trim().split('\n')).toEqual(written);
    // Only the current and previous generations are kept; the files stay for the workload.
    expect(readdirSync(out).filter((n) => /^\.\.\d/.test(n)).length).toBe(2);
    expect(existsSync(path.join(out, 'svid.pem'))).toBe(true);
  }, 60_000);

  it('reports "starting" (503) while the broker is unreachable, keeps retrying, and stops on SIGTERM', async () => {
    const out = outDir();
    const run = agent([...base(out, `https://127.0.0.1:${await closedPort()}`), '--health-port', '0']);
    const port = await waitFor('the health endpoint', () => {
      const m = /"url":"http:\/\/127\.0\.0\.1:(\d+)\/healthz"/.exec(run.stderr());
      return m ? Number(m[1]) : undefined;
    });
    const h = await waitFor('a recorded failure', async () => {
      const r = await healthz(port);
      return r.body.lastError !== undefined ? r : undefined;
    });
    expect(h.status).toBe(503);
    expect(h.body).toMatchObject({ status: 'starting', lastError: { code: 'unavailable' } });
    run.proc.kill('SIGTERM');
    expect((await run.exited).code).toBe(0);
    expect(existsSync(out)).toBe(false);
  });
});
