/**
 * `tessera serve` with OIDC discovery, as a real process: the public listener (oidc.public) comes up with
 * the broker, a jose relying party given only the issuer URL validates a JWT-SVID the process issued, the
 * banner names the issuer; and a bad OIDC setting stops the start with the setting named (exit 1).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createRemoteJWKSet, customFetch, jwtVerify } from 'jose';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { devMaterial, materialConfig } from '../helpers/broker.js';
import { CLI, freePort, spawnBroker, type BrokerProcess } from '../helpers/broker-process.js';
import { httpsCall } from '../helpers/https.js';

/** fetch for jose over node:https, trusting the test PKI's roots. */
const fetchTrusting =
  (ca: string) =>
  (url: string): Promise<Response> =>
    new Promise((resolve, reject) => {
      https
        .get(url, { ca, family: 4, agent: false }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve(new Response(Buffer.concat(chunks), { status: res.statusCode ?? 0, headers: { 'content-type': String(res.headers['content-type']) } })));
          res.on('error', reject);
        })
        .on('error', reject);
    });

describe('tessera serve with oidc.public', () => {
  let bp: BrokerProcess;
  let issuer: string;
  let publicPort: number;
  beforeAll(async () => {
    publicPort = await freePort();
    issuer = `https://localhost:${publicPort}`;
    bp = await spawnBroker({
      registration: [{ selector: { namespace: 'shop', serviceAccount: 'web' }, jwtAudiences: ['payments'] }],
      config: { jwt: { issuer }, oidc: { enabled: true, public: { host: '127.0.0.1', port: publicPort } } },
    });
  }, 30_000);
  afterAll(async () => {
    await bp?.close();
  });

  it('serves discovery on the public listener, and its relying party validates the process\'s JWT-SVIDs', async () => {
    expect(bp.output()).toContain(`oidc issuer  : ${issuer}  (public listener 127.0.0.1:${publicPort})`);
    const r = await httpsCall<{ token: string }>(bp.url, bp.ca, { path: '/v1/svid/jwt', token: await bp.token('shop', 'web'), body: { audience: ['payments'] } });
    expect(r.status, r.text).toBe(200);
    const fetch = fetchTrusting(bp.ca);
    const doc = (await (await fetch(`${issuer}/.well-known/openid-configuration`)).json()) as { issuer: string; jwks_uri: string };
    expect(doc.issuer).toBe(issuer);
    const jwks = createRemoteJWKSet(new URL(doc.jwks_uri), { [customFetch]: fetch });
    const { payload } = await jwtVerify(r.json.token, jwks, { issuer, audience: 'payments', algorithms: ['ES256'] });
    expect(payload.sub).toBe('spiffe://example.org/ns/shop/sa/web');
    // Only discovery there.
    expect((await httpsCall(`https://127.0.0.1:${publicPort}`, bp.ca, { path: '/v1/bundle' })).status).toBe(404);
  });
});

describe.concurrent('tessera serve with a bad OIDC setting', () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  /** Runs `tessera serve` on `extra` (over the dev material) and returns its exit code and output. */
  async function serve(extra: Record<string, unknown>): Promise<{ code: number | null; output: string }> {
    const { dir: pkiDir, material } = await devMaterial();
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-oidc-bad-'));
    dirs.push(dir);
    const file = path.join(dir, 'tessera.yaml');
    writeFileSync(file, stringify({ ...materialConfig(pkiDir, material), listen: { host: '127.0.0.1', port: await freePort() }, store: { embedded: { dir: path.join(dir, 'data') } }, ...extra }));
    return new Promise((resolve) => {
      execFile(process.execPath, [CLI, 'serve', '--config', file], { env: { ...process.env, TESSERA_CONFIG: '' }, timeout: 20_000 }, (err, stdout, stderr) => {
        resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : null, output: `${stdout}${stderr}` });
      });
    });
  }

  // Every config rule has its unit test (src/config/oidc-config.test.ts); here one of them, and the
  // public listener's certificate, which serve reads before it opens anything.
  it.each([
    [{ jwt: { issuer: 'https://oidc.example.org/' } }, 'config.jwt.issuer: no trailing slash'],
    [{ jwt: { issuer: 'https://oidc.example.org' }, oidc: { enabled: true, public: { port: 0, certFile: 'missing.pem', keyFile: 'missing.key' } } }, 'config.oidc.public.certFile: cannot read'],
  ])('%j stops the start: exit 1 naming the setting', async (extra, message) => {
    const { code, output } = await serve(extra);
    expect(code, output).toBe(1);
    expect(output).toContain(message);
    expect(output).not.toMatch(/\n\s+at /); // a message, not a stack
  }, 30_000);
});
