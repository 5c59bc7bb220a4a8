/**
 * The CA lifecycle over the admin API and the CLI: `GET /v1/admin/ca` / `tessera ca status` shows the
 * authorities, `POST /v1/admin/ca/activate` / `tessera ca activate` forces the prepared one active —
 * operator only, audited, 409 ca_state_conflict when there is nothing to activate.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI } from '../helpers/broker-process.js';
import { adminSection, auditEntries, mintAdminCert, workloadSvid, type ClientCert } from '../helpers/admin.js';
import { devMaterial, startBroker, type TestBroker } from '../helpers/broker.js';
import { as, AUDITOR, CA_PRINCIPALS, caCli, OPERATOR, type CliResult } from '../helpers/ca-cli.js';
import { TestClock } from '../helpers/clock.js';
import { cleanRotationTemps, rotatingConfig } from '../helpers/rotation.js';

const work = mkdtempSync(path.join(tmpdir(), 'tessera-ca-admin-'));
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
  cleanRotationTemps();
});

const adminConfig = (): Promise<Record<string, unknown>> => adminSection(CA_PRINCIPALS);
const cli = (b: TestBroker, c: ClientCert, ...args: string[]): Promise<CliResult> => caCli(work, b, c, ...args);

describe('CA status and activate without rotation', () => {
  it('shows the one CA of the config files; activate is 409 ca_state_conflict; only admins read it', async () => {
    if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build`');
    const { material } = await devMaterial();
    const b = await startBroker({ config: await adminConfig() });
    try {
      const op = mintAdminCert(material, OPERATOR);
      const status = await b.call<{ rotation: boolean; sequence: number; authorities: { id: string; state: string; jwtKid: string }[] }>({ method: 'GET', path: '/v1/admin/ca', ...as(op) });
      expect(status.status).toBe(200);
      expect(status.json).toMatchObject({ rotation: false, sequence: 1, authorities: [{ id: b.broker.ca.authorityId, state: 'active', jwtKid: b.broker.jwt.kid }] });
      const activate = await b.call({ path: '/v1/admin/ca/activate', body: { reason: 'test' }, ...as(op) });
      expect([activate.status, activate.json.error]).toEqual([409, 'ca_state_conflict']);
      expect(String(activate.json.message)).toMatch(/rotation is not configured/);
      // A workload SVID is no admin.
      const w = await workloadSvid(b);
      expect((await b.call({ method: 'GET', path: '/v1/admin/ca', ...as(w) })).status).toBe(403);
      const out = await cli(b, op, 'status');
      expect(out.code).toBe(0);
      expect(out.stdout).toContain(`active    ${b.broker.ca.authorityId}`);
      expect(out.stdout).toContain('rotation off');
      const refused = await cli(b, op, 'activate', '--reason', 'try');
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain('409 ca_state_conflict');
    } finally {
      await b.close();
    }
  }, 60_000);
});

describe('CA status and activate with rotation', () => {
  it('an auditor reads but may not activate; the operator activates the prepared authority, audited; status shows the old one and its dependents', async () => {
    const { material } = await devMaterial();
    // The first CA lives 240 s; the broker's clock is 125 s ahead: past 1/2 of its life (prepared at once), 75 s before 5/6.
    const { config } = await rotatingConfig(240, await adminConfig());
    const clock = new TestClock();
    clock.advance(125_000);
    const b = await startBroker({ config, clock });
    try {
      const op = mintAdminCert(material, OPERATOR);
      const auditor = mintAdminCert(material, AUDITOR);
      const first = b.broker.ca.authorityId;
      const deadline = Date.now() + 20_000;
      while (b.broker.rotation?.current().state.sequence !== 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      const status = await b.call<{ rotation: boolean; sequence: number; authorities: { id: string; state: string }[] }>({ method: 'GET', path: '/v1/admin/ca', ...as(auditor) });
      expect(status.status).toBe(200);
      expect(status.json.rotation).toBe(true);
      expect(status.json.sequence).toBe(2);
      expect(status.json.authorities.map((a) => a.state)).toEqual(['active', 'prepared']);
      const next = (status.json.authorities[1] as { id: string }).id;

      const denied = await b.call({ path: '/v1/admin/ca/activate', body: { reason: 'not mine to do' }, ...as(auditor) });
      expect(denied.status).toBe(403);
      expect(b.broker.ca.authorityId).toBe(first);

      const out = await cli(b, op, 'activate', '--reason', 'INC-9 switch now');
      expect(out.code, out.stderr).toBe(0);
      expect(out.stdout).toContain(`active: ${next}`);
      expect(b.broker.ca.authorityId).toBe(next);
      const x509 = await b.call<{ certificates: string[] }>({ path: '/v1/svid/x509', token: await b.token(), body: { keyType: 'ec-p256' } });
      expect(x509.status).toBe(200);

      const json = await cli(b, auditor, 'status', '--json');
      expect(json.code).toBe(0);
      const parsed = JSON.parse(json.stdout) as { authorities: { id: string; state: string; dependentsUntil?: string }[] };
      expect(parsed.authorities.map((a) => [a.id, a.state])).toEqual([[first, 'old'], [next, 'active']]);
      expect(Date.parse(parsed.authorities[0]?.dependentsUntil ?? '')).toBeGreaterThan(clock.now());
      // Nothing left to activate.
      expect((await b.call({ path: '/v1/admin/ca/activate', body: { reason: 'again' }, ...as(op) })).json.error).toBe('ca_state_conflict');

      const entries = (await auditEntries(b)).map((e) => e.entry);
      expect(entries.filter((e) => e.type === 'admin' && e.action === 'ca.activate').map((e) => [e.actor, e.decision])).toEqual([
        [AUDITOR, 'deny'],
        [OPERATOR, 'allow'],
        [OPERATOR, 'deny'],
      ]);
      expect(entries.filter((e) => e.type === 'ca.rotated').map((e) => e.action)).toEqual(['prepare', 'activate']);
    } finally {
      await b.close();
    }
  }, 60_000);
});
