/** The admin: and breakGlass: config sections (loaded by config/load.ts). */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { ConfigError, loadConfig } from '../config/load.js';
import { generateBreakGlassKey } from './breakglass-jws.js';

const base = {
  trustDomain: 'prod.example',
  tls: { certFile: 'tls.pem', keyFile: 'tls.key' },
  ca: { certFile: 'ca.pem', keyFile: 'ca.key', bundleFile: 'roots.pem', jwtKeyFile: 'jwt.key' },
  audit: { signingKeyFile: 'audit.key' },
  issuers: [{ issuer: 'https://oidc.cluster', jwksUrl: 'https://oidc.cluster/keys', audiences: ['tessera'] }],
};
const alerting = {
  audit: { signingKeyFile: 'audit.key', alerts: { webhookUrl: 'https://hooks.example/x', rules: [{ name: 'bg', kind: 'break-glass' }] } },
};
const admin = { admin: { caBundleFile: 'admin-ca.pem', caCertFile: 'admin-ca.pem', caKeyFile: 'admin-ca.key', principals: [{ id: 'spiffe://prod.example/admin/alice', roles: ['operator'] }] } };
const k1 = generateBreakGlassKey();
const k2 = generateBreakGlassKey();

function load(extra: Record<string, unknown>) {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-admin-config-'));
  const file = path.join(dir, 'tessera.yaml');
  writeFileSync(file, stringify({ ...base, ...extra }));
  return loadConfig({ file, env: {} });
}

describe('admin config', () => {
  it('is off by default outside dev: no admin CA, no principals, no break-glass keys', () => {
    const c = load({});
    expect(c.admin).toEqual({ principals: [] });
    expect(c.breakGlass).toMatchObject({ keys: [], requiredSignatures: 1, maxTtlSeconds: 900, maxFailuresPerMinute: 30 });
    expect(c.breakGlass.allowedGrants).toEqual(['auditor', 'operator', 'secrets-admin']);
  });

  it('dev defaults: the dev admin CA under certs-dev/ and spiffe://<td>/admin/dev with every role', () => {
    const c = loadConfig({ env: {}, cwd: '/srv/t' });
    expect(c.admin).toEqual({
      caBundleFile: '/srv/t/certs-dev/admin-ca.pem',
      caCertFile: '/srv/t/certs-dev/admin-ca.pem',
      caKeyFile: '/srv/t/certs-dev/admin-ca.key',
      principals: [{ id: 'spiffe://example.org/admin/dev', roles: ['auditor', 'operator', 'secrets-admin', 'registrar'] }],
    });
  });

  it('reads principals and resolves files against the config folder', () => {
    const c = load(admin);
    expect(c.admin.principals).toEqual([{ id: 'spiffe://prod.example/admin/alice', roles: ['operator'] }]);
    expect(path.isAbsolute(c.admin.caBundleFile ?? '')).toBe(true);
  });

  it('refuses what would widen trust or be ambiguous', () => {
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ admin: { principals: [{ id: 'spiffe://prod.example/admin/a', roles: ['operator'] }] } }, /caBundleFile: required/],
      [{ admin: { caBundleFile: 'a.pem', principals: [{ id: 'spiffe://prod.example/admin/a', roles: ['root'] }] } }, /not one of/],
      [{ admin: { caBundleFile: 'a.pem', principals: [{ id: 'spiffe://prod.example/admin/a', roles: [] }] } }, /at least one role/],
      [{ admin: { caBundleFile: 'a.pem', principals: [{ id: 'https://alice', roles: ['operator'] }] } }, /principals\[0\]\.id/],
      [{ admin: { caBundleFile: 'a.pem', principals: [{ id: 'spiffe://prod.example', roles: ['operator'] }] } }, /needs a path/],
      [{ admin: { caBundleFile: 'a.pem', principals: [{ id: 'spiffe://prod.example/admin/break-glass/x', roles: ['operator'] }] } }, /reserved/],
      [{ admin: { caBundleFile: 'a.pem', principals: [{ id: 'spiffe://prod.example/admin/a', roles: ['operator'] }, { id: 'spiffe://prod.example/admin/a', roles: ['auditor'] }] } }, /duplicate/],
      [{ admin: { caBundleFile: 'a.pem', caCertFile: 'a.pem' } }, /both caCertFile and caKeyFile/],
      [{ breakGlass: { keys: [{ id: 'bg-1', publicKey: 'bm90IGEga2V5' }] } }, /Ed25519 public key/],
      [{ ...alerting, ...admin, breakGlass: { keys: [{ id: 'bg-1', publicKey: k1.publicKey }, { id: 'bg-2', publicKey: k1.publicKey }] } }, /duplicate/],
      [{ ...alerting, ...admin, breakGlass: { keys: [{ id: 'bg-1', publicKey: k1.publicKey }], requiredSignatures: 2 } }, /only 1 key/],
      [{ ...alerting, ...admin, breakGlass: { keys: [{ id: 'bg-1', publicKey: k1.publicKey }], maxTtlSeconds: 3600 } }, /maxTtlSeconds/],
      [{ ...alerting, ...admin, breakGlass: { keys: [{ id: 'bg-1', publicKey: k1.publicKey }], allowedGrants: ['root'] } }, /allowedGrants/],
      // Break-glass can never be quiet: it needs the alert rule and a webhook.
      [{ ...admin, breakGlass: { keys: [{ id: 'bg-1', publicKey: k1.publicKey }] } }, /webhookUrl and an audit.alerts.rules entry/],
      [{ ...alerting, breakGlass: { keys: [{ id: 'bg-1', publicKey: k1.publicKey }] } }, /admin.caCertFile and admin.caKeyFile/],
    ];
    for (const [extra, msg] of bad) expect(() => load(extra), JSON.stringify(extra)).toThrow(msg);
    expect(() => load({ breakGlass: { nope: 1 } })).toThrow(ConfigError);
  });

  it('accepts a two-person break-glass setup with a lower TTL cap and secret grants', () => {
    const c = load({
      ...alerting,
      ...admin,
      breakGlass: {
        requiredSignatures: 2,
        maxTtlSeconds: 300,
        allowedGrants: ['operator', 'secret:db/'],
        keys: [{ id: 'bg-1', publicKey: k1.publicKey }, { id: 'bg-2', publicKey: `\n${k2.publicKey.slice(0, 20)}\n${k2.publicKey.slice(20)}` }],
      },
    });
    expect(c.breakGlass).toMatchObject({ requiredSignatures: 2, maxTtlSeconds: 300, allowedGrants: ['operator', 'secret:db/'] });
    expect(c.breakGlass.keys[1]?.publicKey).toBe(k2.publicKey);
  });
});
