import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { AlertsConfig } from '../config/config.js';
import { EmbeddedStore } from '../store/embedded.js';
import { type Alert, AlertEngine } from './alerts.js';
import { type AuditEntry, parseAuditEntry } from './entry.js';
import { AuditLog } from './log.js';

interface Receiver {
  readonly url: string;
  readonly received: { alert: Alert; headers: http.IncomingHttpHeaders }[];
  /** Status codes to answer, in order; 200 once exhausted. 0 = never answer. */
  answers: number[];
  close(): Promise<void>;
}

async function receiver(answers: number[] = []): Promise<Receiver> {
  const received: Receiver['received'] = [];
  const state = { answers };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({ alert: JSON.parse(Buffer.concat(chunks).toString()) as Alert, headers: req.headers });
      const status = state.answers.shift() ?? 200;
      if (status === 0) return; // hang
      res.writeHead(status).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}/hook`,
    received,
    get answers() {
      return state.answers;
    },
    set answers(a) {
      state.answers = a;
    },
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(config: Partial<AlertsConfig>) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tessera-alerts-'));
  const store = await EmbeddedStore.open(dir, { fsync: false });
  const audit = await AuditLog.open(store);
  const errors: string[] = [];
  const engine = new AlertEngine({
    store,
    append: (e) => audit.append(e),
    config: {
      allowInsecureHttp: true,
      muteSeconds: 300,
      timeoutMs: 1000,
      maxAttempts: 4,
      retryInitialMs: 20,
      queueLimit: 100,
      rules: [],
      ...config,
    },
    origin: 'example.org/tessera/audit',
    replicaId: 'r1',
    onError: (err, what) => errors.push(`${what}: ${(err as Error).message}`),
  });
  audit.onAppend((e, r) => engine.observe(e, r));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  cleanups.push(() => store.close());
  cleanups.push(() => engine.close());
  return { store, audit, engine, errors };
}

const denial = (actor: string | null, namespace = 'shop'): AuditEntry => ({
  ts: Date.now(),
  type: 'denial',
  decision: 'deny',
  actor,
  subject: null,
  namespace,
  code: 'forbidden',
  reason: 'x509-svid.issued: no registration entry',
  requestId: `req-${Math.random()}`,
  replica: 'r1',
});

const web = 'spiffe://example.org/ns/shop/sa/web';
const api = 'spiffe://example.org/ns/shop/sa/api';

describe('AlertEngine', () => {
  it('historyLost: POSTs an audit-history-lost alert without a rule and appends nothing to the log', async () => {
    const hook = await receiver();
    cleanups.push(() => hook.close());
    const { audit, engine, store } = await setup({ webhookUrl: hook.url });
    for (let i = 0; i < 3; i++) await audit.append(denial(web));
    engine.historyLost('audit history lost: the store holds 0 audit entries, fewer than the 3 this replica knows', 3);
    await engine.idle();
    expect(hook.received).toHaveLength(1);
    expect(hook.received[0]?.alert).toMatchObject({
      type: 'tessera.alert',
      rule: 'audit-history-lost',
      kind: 'audit-history-lost',
      origin: 'example.org/tessera/audit',
      replica: 'r1',
      summary: expect.stringMatching(/audit history lost/),
      trigger: { index: 3, type: 'audit-history-lost', code: 'audit_history_lost' },
    });
    expect(await store.auditSize()).toBe(3);
    expect(engine.stats.fired).toBe(1);
  });

  it('deviceLagging: a device-lag rule records and POSTs the lag, muted per device', async () => {
    const hook = await receiver();
    cleanups.push(() => hook.close());
    const { audit, engine } = await setup({ webhookUrl: hook.url, rules: [{ name: 'siem-behind', kind: 'device-lag' }] });
    const lag = { name: 'siem', required: true, position: 3, lagEntries: 1200, lagSeconds: 75 };
    engine.deviceLagging(lag, { maxLagEntries: 1000, maxLagSeconds: 60 });
    engine.deviceLagging(lag, { maxLagEntries: 1000, maxLagSeconds: 60 }); // muted: same device
    engine.deviceLagging({ ...lag, name: 'local', required: false }, { maxLagEntries: 1000, maxLagSeconds: 60 });
    await new Promise((r) => setTimeout(r, 100));
    await engine.idle();
    expect(hook.received.map((r) => r.alert.key)).toEqual(expect.arrayContaining([{ device: 'siem' }, { device: 'local' }]));
    expect(hook.received).toHaveLength(2);
    const siem = hook.received.find((r) => r.alert.key.device === 'siem')?.alert;
    expect(siem).toMatchObject({ rule: 'siem-behind', kind: 'device-lag', trigger: { index: 3, code: 'audit_device_lagging' } });
    expect(siem?.summary).toMatch(/1200 entries \/ 75 s behind .*required: issuance is refused/);
    const entries = (await audit.entries(0, audit.size)).map((b) => parseAuditEntry(b));
    expect(entries.filter((e) => e.type === 'alert')).toHaveLength(2);
    expect(entries.find((e) => e.decision === 'deny')?.reason).toMatch(/^rule siem-behind: audit device siem is 1200 entries/);
    expect(engine.stats.muted).toBe(1);
  });

  it('fires once a SPIFFE ID has more than N denials in the window, records it, and POSTs it', async () => {
    const hook = await receiver();
    cleanups.push(() => hook.close());
    const { audit, engine, store } = await setup({
      webhookUrl: hook.url,
      rules: [{ name: 'denials-per-id', kind: 'denials', per: 'spiffeId', threshold: 3, windowSeconds: 60 }],
    });
    for (let i = 0; i < 3; i++) await audit.append(denial(web));
    await audit.append(denial(api));
    await engine.idle();
    expect(hook.received).toHaveLength(0);
    const trigger = await audit.append(denial(web));
    await engine.idle();
    expect(hook.received).toHaveLength(1);
    const { alert, headers } = hook.received[0]!;
    expect(headers['content-type']).toBe('application/json');
    expect(headers['x-tessera-alert-id']).toBe(alert.id);
    expect(alert).toMatchObject({
      type: 'tessera.alert',
      rule: 'denials-per-id',
      kind: 'denials',
      key: { spiffeId: web },
      count: 4,
      threshold: 3,
      windowSeconds: 60,
      origin: 'example.org/tessera/audit',
      trigger: { index: trigger.index, type: 'denial', actor: web, code: 'forbidden' },
    });
    // The firing is itself in the audit log, and the webhook body points at it.
    expect(alert.auditIndex).toBe(trigger.index + 1);
    const [logged] = await store.readAuditEntries(alert.auditIndex as number, (alert.auditIndex as number) + 1);
    expect(parseAuditEntry(logged!)).toMatchObject({ type: 'alert', subject: web, requestId: alert.id, code: 'alert' });
    expect(parseAuditEntry(logged!).reason).toMatch(/rule denials-per-id: 4 denials for SPIFFE ID/);
  });

  it('mutes repeated firings of a rule for one key, not for another key, and fires again after the mute', async () => {
    const hook = await receiver();
    cleanups.push(() => hook.close());
    const { audit, engine } = await setup({
      webhookUrl: hook.url,
      muteSeconds: 1,
      rules: [{ name: 'per-ns', kind: 'denials', per: 'namespace', threshold: 1, windowSeconds: 60 }],
    });
    for (let i = 0; i < 8; i++) await audit.append(denial(web, 'shop'));
    await engine.idle();
    expect(hook.received.map((r) => r.alert.key)).toEqual([{ namespace: 'shop' }]);
    expect(engine.stats.muted).toBe(6);
    for (let i = 0; i < 2; i++) await audit.append(denial(api, 'billing'));
    await engine.idle();
    expect(hook.received.map((r) => r.alert.key)).toEqual([{ namespace: 'shop' }, { namespace: 'billing' }]);
    await new Promise((r) => setTimeout(r, 1100));
    await audit.append(denial(web, 'shop'));
    await engine.idle();
    expect(hook.received).toHaveLength(3);
    expect(hook.received[2]?.alert.key).toEqual({ namespace: 'shop' });
  });

  it('break-glass: junk attempts share one mute; an attempt naming a verified deployment key is never muted', async () => {
    const hook = await receiver();
    cleanups.push(() => hook.close());
    const { audit, engine } = await setup({ webhookUrl: hook.url, muteSeconds: 300, rules: [{ name: 'bg', kind: 'break-glass' }] });
    const attempt = (keyIds?: string[]): AuditEntry => ({
      ts: Date.now(),
      type: 'break-glass',
      decision: 'deny',
      actor: null,
      subject: null,
      source: 'break-glass',
      code: 'break_glass_denied',
      ...(keyIds !== undefined ? { keyIds } : {}),
      reason: 'BREAK-GLASS REFUSED',
      requestId: `req-${Math.random()}`,
      replica: 'r1',
    });
    for (let i = 0; i < 3; i++) await audit.append(attempt());
    await audit.append(attempt(['bg-1']));
    await audit.append(attempt(['bg-1']));
    await engine.idle();
    expect(engine.stats.muted).toBe(2);
    expect(hook.received.map((r) => r.alert.summary)).toEqual([
      'break-glass use by -',
      'break-glass attempt refused (break_glass_denied) carrying valid signature(s) of deployment key(s) bg-1',
      'break-glass attempt refused (break_glass_denied) carrying valid signature(s) of deployment key(s) bg-1',
    ]);
  });

  it('revoke-failed: fires on a permanent lease revoke failure only, muted per lease', async () => {
    const hook = await receiver();
    cleanups.push(() => hook.close());
    const { audit, engine } = await setup({ webhookUrl: hook.url, rules: [{ name: 'stuck', kind: 'revoke-failed' }] });
    const failure = (leaseId: string, code: string): AuditEntry => ({
      ts: Date.now(),
      type: 'lease.revoke-failed',
      decision: 'allow',
      actor: null,
      subject: web,
      leaseId,
      secret: 'postgres/ro',
      code,
      reason: 'expired: attempt 1 failed',
      requestId: `req-${Math.random()}`,
      replica: 'r1',
    });
    const a = 'a'.repeat(32);
    const b = 'b'.repeat(32);
    await audit.append(failure(a, 'engine_unavailable')); // transient: retried, no page
    await audit.append(failure(a, 'revoke_failed'));
    await audit.append(failure(a, 'revoke_failed')); // the hourly retry of the same lease: muted
    await audit.append(failure(b, 'revoke_failed'));
    await audit.append(denial(web)); // other kinds of entry are not this rule's business
    await engine.idle();
    expect(hook.received.map((r) => r.alert.key)).toEqual([{ leaseId: a }, { leaseId: b }]);
    expect(hook.received[0]?.alert).toMatchObject({ rule: 'stuck', kind: 'revoke-failed', trigger: { type: 'lease.revoke-failed', code: 'revoke_failed', subject: web } });
    expect(hook.received[0]?.alert.summary).toContain(`lease ${a}`);
    expect(engine.stats).toMatchObject({ fired: 2, muted: 1 });
  });

  it('retries with backoff after the receiver answers 500, delivering the same alert', async () => {
    const hook = await receiver([500, 503]);
    cleanups.push(() => hook.close());
    const { audit, engine } = await setup({ webhookUrl: hook.url, rules: [{ name: 'bg', kind: 'break-glass', muteSeconds: 0 }] });
    const t0 = Date.now();
    await audit.append({ ...denial(web), type: 'break-glass', decision: 'allow', source: 'break-glass' });
    await engine.idle();
    expect(hook.received).toHaveLength(3);
    expect(new Set(hook.received.map((r) => r.alert.id)).size).toBe(1);
    expect(engine.stats).toMatchObject({ fired: 1, delivered: 1, retries: 2, failed: 0 });
    // Backoff 20 ms then 40 ms (half of each randomised): at least 30 ms in all.
    expect(Date.now() - t0).toBeGreaterThanOrEqual(30);
  });

  it('gives up on a permanent 4xx without retrying, and after maxAttempts on 5xx', async () => {
    const hook = await receiver([400, 500, 500, 500, 500]);
    cleanups.push(() => hook.close());
    const { audit, engine, errors } = await setup({ webhookUrl: hook.url, maxAttempts: 4, rules: [{ name: 'bg', kind: 'break-glass', muteSeconds: 0 }] });
    await audit.append({ ...denial(web), type: 'break-glass', decision: 'allow' });
    await engine.idle();
    expect(hook.received).toHaveLength(1);
    await audit.append({ ...denial(api), type: 'break-glass', decision: 'allow' });
    await engine.idle();
    expect(hook.received).toHaveLength(5);
    expect(engine.stats).toMatchObject({ fired: 2, delivered: 0, failed: 2 });
    expect(errors.some((e) => /not delivered after 4 attempt/.test(e))).toBe(true);
  });

  it('never blocks the appender, even when the webhook hangs', async () => {
    const hook = await receiver([0, 0, 0, 0]);
    cleanups.push(() => hook.close());
    const { audit, engine } = await setup({ webhookUrl: hook.url, timeoutMs: 5000, rules: [{ name: 'bg', kind: 'break-glass', muteSeconds: 0 }] });
    const t0 = performance.now();
    for (let i = 0; i < 20; i++) await audit.append({ ...denial(web), type: 'break-glass', decision: 'allow' });
    expect(performance.now() - t0).toBeLessThan(1000);
    const closing = performance.now();
    await engine.close();
    // close() waits a bounded time, then drops what is still pending.
    expect(performance.now() - closing).toBeLessThan(4500);
    expect(engine.stats.dropped + engine.stats.failed).toBeGreaterThan(0);
  });

  it('ignores denials without an identity for per-SPIFFE-ID rules, and records alerts without a webhook', async () => {
    const { audit, engine, store } = await setup({ rules: [{ name: 'ids', kind: 'denials', per: 'spiffeId', threshold: 0, windowSeconds: 10 }] });
    await audit.append(denial(null));
    await engine.idle();
    expect(engine.stats.fired).toBe(0);
    await audit.append(denial(web));
    await engine.idle();
    expect(engine.stats.fired).toBe(1);
    const all = await store.readAuditEntries(0, await store.auditSize());
    expect(all.map((b) => parseAuditEntry(b).type)).toEqual(['denial', 'denial', 'alert']);
  });
});
