import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, DEV_TOKEN_ISSUER, loadConfig } from './load.js';

function withFile(yaml: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-config-'));
  const file = path.join(dir, 'tessera.yaml');
  writeFileSync(file, yaml);
  return file;
}

const minimal = `
trustDomain: prod.example
tls: { certFile: tls.pem, keyFile: tls.key }
ca: { certFile: ca.pem, keyFile: ca.key, bundleFile: roots.pem, jwtKeyFile: jwt.key }
issuers:
  - issuer: https://oidc.cluster
    jwksUrl: https://oidc.cluster/keys
    audiences: [tessera]
registration:
  - selector: { namespace: shop, serviceAccount: web }
    dnsNames: [web.shop.svc]
    jwtAudiences: [payments]
`;

describe('loadConfig', () => {
  it('gives dev defaults without a file', () => {
    const c = loadConfig({ env: {}, cwd: '/srv/tessera' });
    expect(c.dev).toBe(true);
    expect(c.trustDomain).toBe('example.org');
    expect(c.listen).toEqual({ host: '127.0.0.1', port: 8443 });
    expect(c.ca.bundleFile).toBe('/srv/tessera/certs-dev/bundle.pem');
    expect(c.store.embedded).toEqual({ dir: '/srv/tessera/data', fsync: true });
    expect(c.issuers[0]?.issuer).toBe(DEV_TOKEN_ISSUER);
    expect(c.bodyLimitBytes).toBe(65_536);
    expect(Object.isFrozen(c) && Object.isFrozen(c.listen) && Object.isFrozen(c.registration)).toBe(true);
  });

  it('reads a file, resolving paths against its folder, with env overrides', () => {
    const file = withFile(minimal);
    const c = loadConfig({ file, env: { TESSERA_PORT: '9443', TESSERA_DATA_DIR: '/var/lib/tessera' } });
    expect(c.dev).toBe(false);
    expect(c.tls.certFile).toBe(path.join(path.dirname(file), 'tls.pem'));
    expect(c.listen.port).toBe(9443);
    expect(c.store.embedded.dir).toBe('/var/lib/tessera');
    expect(c.issuers[0]).toMatchObject({ jwksUrl: 'https://oidc.cluster/keys', maxLifetimeSeconds: 86_400, requirePodBinding: false });
    expect(c.registration[0]?.selector).toEqual({ namespace: 'shop', serviceAccount: 'web' });
  });

  it.each([
    ['unknown top-level key', `${minimal}\nfrobnicate: 1\n`, /config.frobnicate: unknown setting/],
    ['bad trust domain', minimal.replace('prod.example', 'Prod Example'), /trustDomain/],
    ['missing CA file', minimal.replace('certFile: ca.pem, ', ''), /config.ca.certFile/],
    ['both JWKS sources', minimal.replace('audiences: [tessera]', 'audiences: [tessera]\n    jwksFile: k.json'), /exactly one of jwksFile or jwksUrl/],
    ['no audiences', minimal.replace('audiences: [tessera]', 'audiences: []'), /audiences/],
    ['bad DNS SAN', minimal.replace('web.shop.svc', 'WEB_SHOP'), /dnsNames/],
    ['bad selector', minimal.replace('namespace: shop', 'namespace: "a/b"'), /selector/],
    ['port out of range', `${minimal}\nlisten: { port: 70000 }\n`, /listen.port/],
    ['default above max', `${minimal}\nsvid: { x509DefaultTtlSeconds: 9000, x509MaxTtlSeconds: 3600 }\n`, /exceeds/],
    ['not a mapping', '- a\n- b\n', /mapping/],
  ])('refuses %s with a message naming the field', (_name, yaml, message) => {
    expect(() => loadConfig({ file: withFile(yaml), env: {} })).toThrow(message);
    expect(() => loadConfig({ file: withFile(yaml), env: {} })).toThrow(ConfigError);
  });

  it('refuses a file that does not exist', () => {
    expect(() => loadConfig({ file: '/nonexistent/tessera.yaml', env: {} })).toThrow(ConfigError);
  });
});
