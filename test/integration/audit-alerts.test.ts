/**
 * Alert rules on a real broker with a real local webhook receiver: denials over the threshold fire
 * one alert (retried after the receiver answers 500), repeats are muted, a break-glass use always
 * alerts, each firing is itself in the audit log, and a hanging webhook never slows issuance.
 */
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Alert } from '../../src/audit/alerts.js';
import { EmbeddedStore } from '../../src/store/embedded.js';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';
import { TestClock } from '../helpers/clock.js';

const received: Alert[] = [];
/** Status codes to answer, in order; 200 once exhausted; 0 = never answer. */
let answers: number[] = [500];
let hook: http.Server;
let b: TestBroker;
let token: string;
/** The mute window (a store lock) runs on this clock: tests step past it instead of sleeping. */
const clock = new TestClock();

beforeAll(async () => {
  hook = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push(JSON.parse(Buffer.concat(chunks).toString()) as Alert);
      const status = answers.shift() ?? 200;
      if (status !== 0) res.writeHead(status, { 'content-type': 'text/plain' }).end('ok');
    });
  });
  await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));
  const port = (hook.address() as { port: number }).port;
  const { material } = await devMaterial();
  b = await startBroker({
    clock,
    store: (dir) => EmbeddedStore.open(dir, { clock }),
    config: {
      audit: {
        signingKeyFile: material.auditKeyFile,
        alerts: {
          webhookUrl: `http://127.0.0.1:${port}/tessera-alerts`,
          allowInsecureHttp: true,
          muteSeconds: 1,
          retryInitialMs: 50,
          timeoutMs: 1000,
          rules: [
            { name: 'denied-identity', kind: 'denials', per: 'spiffeId', threshold: 2, windowSeconds: 60 },
            { name: 'break-glass', kind: 'break-glass', muteSeconds: 0 },
          ],
        },
      },
    },
  });
  token = await b.token();
});
afterAll(async () => {
  hook?.closeAllConnections();
  await b?.close();
  await new Promise((r) => hook?.close(r));
});

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 10));
  }
}
const deny = () => b.call({ path: '/v1/svid/jwt', token, body: { audience: ['bank'] } });

describe('audit alerts', () => {
  it('fires once past the threshold, is retried after a 500, and is recorded in the log', async () => {
    for (let i = 0; i < 2; i++) expect((await deny()).status).toBe(403);
    await b.broker.alerts.idle();
    expect(received).toHaveLength(0);
    expect((await deny()).status).toBe(403);
    await until(() => b.broker.alerts.stats.delivered === 1);
    // Two POSTs of the same alert: the 500, then the retry that succeeded.
    expect(received).toHaveLength(2);
    expect(received[0]?.id).toBe(received[1]?.id);
    const alert = received[1] as Alert;
    expect(alert).toMatchObject({
      rule: 'denied-identity',
      kind: 'denials',
      key: { spiffeId: 'spiffe://example.org/ns/shop/sa/web' },
      count: 3,
      threshold: 2,
      trigger: { type: 'denial', code: 'forbidden', actor: 'spiffe://example.org/ns/shop/sa/web' },
    });
    // Entries are not public: web reads the alert entry because it is its subject.
    const page = await b.call<{ entries: string[] }>({ path: `/v1/audit/entries?start=${alert.auditIndex as number}&end=${(alert.auditIndex as number) + 1}`, token });
    expect(JSON.parse(page.json.entries[0] as string)).toMatchObject({ type: 'alert', requestId: alert.id, subject: 'spiffe://example.org/ns/shop/sa/web' });
  });

  it('mutes repeats for the mute window, then fires again', async () => {
    for (let i = 0; i < 5; i++) expect((await deny()).status).toBe(403);
    await b.broker.alerts.idle();
    expect(received).toHaveLength(2);
    expect(b.broker.alerts.stats.muted).toBeGreaterThanOrEqual(5);
    clock.advance(1100);
    expect((await deny()).status).toBe(403);
    await until(() => b.broker.alerts.stats.delivered === 2);
    expect(received).toHaveLength(3);
    expect(received[2]?.rule).toBe('denied-identity');
  });

  it('alerts on every break-glass use', async () => {
    for (let i = 0; i < 2; i++) {
      await b.broker.audit.append({
        ts: Date.now(),
        type: 'break-glass',
        decision: 'allow',
        actor: 'spiffe://example.org/break-glass/operator',
        subject: null,
        source: 'break-glass',
        reason: 'test',
        requestId: `bg-${i}`,
        replica: 'test-replica',
      });
    }
    await until(() => received.filter((a) => a.kind === 'break-glass').length === 2);
    expect(received.filter((a) => a.kind === 'break-glass').map((a) => a.trigger.requestId)).toEqual(['bg-0', 'bg-1']);
  });

  it('never slows issuance while the webhook hangs', async () => {
    answers = [0, 0, 0];
    clock.advance(1100); // past the mute window
    expect((await deny()).status).toBe(403); // fires; the POST hangs
    await until(() => received.length === 6);
    const t0 = performance.now();
    for (let i = 0; i < 5; i++) expect((await b.call({ path: '/v1/svid/jwt', token, body: { audience: ['payments'] } })).status).toBe(200);
    expect((performance.now() - t0) / 5).toBeLessThan(200);
  });
});
