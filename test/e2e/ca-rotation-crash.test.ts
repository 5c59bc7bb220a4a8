/**
 * SIGKILL during a CA rotation: a real broker process (short-lived first CA, ca.rotation on) is killed
 * right after each step — prepared, activated, old one dropped — and started again on the same data.
 * Every restart comes back into the same step (or the next one), issues X.509- and JWT-SVIDs at once,
 * and publishes a bundle that holds the key of the authority it signs with. Twice: with the keys in
 * files (sealed in the store as they rotate), and with them in a SoftHSM2 token (each next pair
 * generated there, opened again by its label after the restart).
 */
import { X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, spawnBroker, type BrokerProcess } from '../helpers/broker-process.js';
import { httpsCall } from '../helpers/https.js';
import { cleanRotationTemps, rotatingConfig } from '../helpers/rotation.js';
import { createToken, removeTokens, softhsmMissing, softhsmRequiredUnderCi, type TestToken } from '../helpers/softhsm.js';

const S = 1000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
let broker: BrokerProcess;
let firstCa: X509Certificate;
let token: TestToken | undefined;
softhsmRequiredUnderCi();

async function startRotating(withToken: boolean): Promise<void> {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does it for you)');
  // The broker process inherits SOFTHSM2_CONF, which createToken sets.
  token = withToken ? createToken('crash') : undefined;
  const made = await rotatingConfig(24, {}, 1, token);
  firstCa = made.firstCa;
  const { registration, svid, ca, secrets } = made.config;
  broker = await spawnBroker({ registration: registration as unknown[], svid: svid as Record<string, number>, config: { ca, secrets } });
}

afterAll(async () => {
  await broker?.close();
  token?.remove();
  removeTokens();
  cleanRotationTemps();
});

interface Observed {
  sequence: number;
  kids: string[];
  jwtKid: string;
  /** The signing CA of a fresh X.509-SVID. */
  issuer: X509Certificate;
}

/** What the broker publishes and signs with right now; every call must succeed. */
async function observe(): Promise<Observed> {
  const call = <T>(c: Parameters<typeof httpsCall>[2]) => httpsCall<T>(broker.url, broker.ca, c);
  const bundle = await call<{ spiffe_sequence: number; keys: { use: string; kid?: string }[] }>({ method: 'GET', path: '/v1/bundle' });
  expect(bundle.status).toBe(200);
  const x509 = await call<{ certificates: string[] }>({ path: '/v1/svid/x509', token: await broker.token('shop', 'web'), body: { keyType: 'ec-p256' } });
  expect(x509.status, JSON.stringify(x509.json)).toBe(200);
  const jwt = await call<{ token: string }>({ path: '/v1/svid/jwt', token: await broker.token('shop', 'web'), body: { audience: ['payments'] } });
  expect(jwt.status, JSON.stringify(jwt.json)).toBe(200);
  const issuer = new X509Certificate(x509.json.certificates[1] as string);
  // The leaf chains through that CA to the root the workloads trust.
  expect(new X509Certificate(x509.json.certificates[0] as string).verify(issuer.publicKey)).toBe(true);
  expect(issuer.verify(new X509Certificate(broker.ca).publicKey)).toBe(true);
  const kids = bundle.json.keys.filter((k) => k.use === 'jwt-svid').map((k) => k.kid ?? '');
  const jwtKid = (JSON.parse(Buffer.from(jwt.json.token.split('.')[0] ?? '', 'base64url').toString()) as { kid: string }).kid;
  // Never a bundle without the key the broker signs with.
  expect(kids).toContain(jwtKid);
  return { sequence: bundle.json.spiffe_sequence, kids, jwtKid, issuer };
}

async function until(what: string, cond: (o: Observed) => boolean, timeoutMs: number): Promise<Observed> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const o = await observe();
    if (cond(o)) return o;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last seen sequence ${o.sequence}`);
    await sleep(200);
  }
}

async function crashAndRestart(): Promise<Observed> {
  await broker.kill();
  await broker.start();
  return observe();
}

describe.each([
  ['keys in files', false],
  ['keys in a SoftHSM2 token', true],
])('SIGKILL at each step of a CA rotation, %s', (_what, withToken) => {
  it.skipIf(withToken && softhsmMissing() !== undefined)('restarts into the same or the next step, issuing at once, its bundle always holding its active authority', async () => {
    await broker?.close();
    await startRotating(withToken);
    const start = await observe();
    expect(start.sequence).toBe(1);
    expect(start.issuer.raw.equals(firstCa.raw)).toBe(true);

    // Prepared: published (sequence 2, two JWT keys), the first CA still signs.
    await until('the next authority to be prepared', (o) => o.sequence === 2, 40 * S);
    let after = await crashAndRestart();
    expect(after.sequence).toBeGreaterThanOrEqual(2);
    expect(after.kids).toHaveLength(2);

    // Activated: the next CA signs; the old key stays published.
    const active = await until('the next authority to sign', (o) => !o.issuer.raw.equals(firstCa.raw), 40 * S);
    expect(active.sequence).toBe(2);
    after = await crashAndRestart();
    expect(after.issuer.raw.equals(active.issuer.raw)).toBe(true);
    expect(after.jwtKid).toBe(active.jwtKid);
    expect(after.kids).toHaveLength(2);

    // Dropped: the old key leaves the bundle (sequence 3); the active one stays.
    const dropped = await until('the old authority to be dropped', (o) => o.sequence === 3, 60 * S);
    expect(dropped.kids).toEqual([active.jwtKid]);
    after = await crashAndRestart();
    expect(after.sequence).toBe(3);
    expect(after.kids).toEqual([active.jwtKid]);
    expect(after.issuer.raw.equals(active.issuer.raw)).toBe(true);
  }, 180_000);
});
