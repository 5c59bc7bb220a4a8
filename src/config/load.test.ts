import { availableParallelism } from 'node:os';
import path from 'node:path';
import { generateCosignerKey } from '../audit/cosignature.js';
import { describe, expect, it } from 'vitest';
import { ConfigError, DEV_TOKEN_ISSUER, MAX_WORKERS, loadConfig, readWorkers } from './load.js';
import { autoCaThreads } from '../ca/minter-pool.js';
import { configFile, MINIMAL_CONFIG } from '../../test/helpers/config-file.js';

const minimal = `${MINIMAL_CONFIG}registration:
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
    expect(c.audit).toMatchObject({
      signingKeyFile: '/srv/tessera/certs-dev/audit-signing.key',
      origin: 'example.org/tessera/audit',
      checkpointIntervalMs: 1000,
      alerts: { muteSeconds: 300, allowInsecureHttp: false, rules: [] },
    });
    expect(c.audit.alerts.webhookUrl).toBeUndefined();
    expect(Object.isFrozen(c) && Object.isFrozen(c.listen) && Object.isFrozen(c.registration)).toBe(true);
  });

  it('reads a file, resolving paths against its folder, with env overrides', () => {
    const file = configFile(minimal);
    const c = loadConfig({ file, env: { TESSERA_PORT: '9443', TESSERA_DATA_DIR: '/var/lib/tessera' } });
    expect(c.dev).toBe(false);
    expect(c.tls.certFile).toBe(path.join(path.dirname(file), 'tls.pem'));
    expect(c.listen.port).toBe(9443);
    expect(c.store.embedded.dir).toBe('/var/lib/tessera');
    expect(c.issuers[0]).toMatchObject({ jwksUrl: 'https://oidc.cluster/keys', maxLifetimeSeconds: 86_400, requirePodBinding: false });
    expect(c.registration[0]?.selector).toEqual({ namespace: 'shop', serviceAccount: 'web' });
  });

  it('reads an issuer found by discovery, with its CA and refresh period', () => {
    const file = configFile(minimal.replace(/jwksUrl: .*/, 'discovery: true\n    caFile: cluster-ca.pem\n    jwksRefreshSeconds: 60'));
    const c = loadConfig({ file, env: {} });
    expect(c.issuers[0]).toMatchObject({ issuer: 'https://oidc.cluster', discovery: true, caFile: path.join(path.dirname(file), 'cluster-ca.pem'), jwksRefreshSeconds: 60 });
    expect(c.issuers[0]?.jwksUrl).toBeUndefined();
  });

  it('names the env variable when an override is bad', () => {
    expect(() => loadConfig({ file: configFile(minimal), env: { TESSERA_PORT: '70000' } })).toThrow(/^TESSERA_PORT: expected an integer in \[0, 65535\]$/);
    expect(() => loadConfig({ env: { TESSERA_LOG_LEVEL: 'loud' } })).toThrow(/^TESSERA_LOG_LEVEL: expected fatal\|error/);
  });

  it.each([
    ['unknown top-level key', `${minimal}\nfrobnicate: 1\n`, /config.frobnicate: unknown setting/],
    ['bad trust domain', minimal.replace('prod.example', 'Prod Example'), /trustDomain/],
    ['missing CA file', minimal.replace('certFile: ca.pem, ', ''), /config.ca.certFile/],
    ['both JWKS sources', minimal.replace('audiences: [tessera]', 'audiences: [tessera]\n    jwksFile: k.json'), /config.issuers\[0\]: set exactly one of jwksFile, jwksUrl or discovery: true/],
    ['JWKS URL and discovery', minimal.replace('audiences: [tessera]', 'audiences: [tessera]\n    discovery: true'), /config.issuers\[0\]: set exactly one of jwksFile, jwksUrl or discovery: true/],
    ['discovery of an http issuer', minimal.replace('audiences: [tessera]', 'audiences: [tessera]\n    discovery: true').replace(/\n *jwksUrl: .*/, '').replace('issuer: https://oidc.cluster', 'issuer: http://oidc.cluster'), /config.issuers\[0\].issuer: discovery needs an https:\/\/ issuer URL/],
    ['discovery over http', minimal.replace('audiences: [tessera]', 'audiences: [tessera]\n    discovery: true\n    allowInsecureHttp: true').replace(/\n *jwksUrl: .*/, ''), /config.issuers\[0\].allowInsecureHttp: discovery is https only/],
    ['discovery not a boolean', minimal.replace('audiences: [tessera]', 'audiences: [tessera]\n    discovery: yes please'), /config.issuers\/0\/discovery|config.issuers\[0\].discovery/],
    ['caFile without discovery', minimal.replace('audiences: [tessera]', 'audiences: [tessera]\n    caFile: ca.pem'), /config.issuers\[0\].caFile: only used with discovery: true/],
    ['refresh below 30 s', minimal.replace('audiences: [tessera]', 'audiences: [tessera]\n    jwksRefreshSeconds: 5'), /jwksRefreshSeconds/],
    ['no audiences', minimal.replace('audiences: [tessera]', 'audiences: []'), /audiences/],
    ['no token issuer', minimal.replace(/issuers:[\s\S]*audiences: \[tessera\]\n/, 'issuers: []\n'), /config.issuers: at least one token issuer is required/],
    ['bad DNS SAN', minimal.replace('web.shop.svc', 'WEB_SHOP'), /dnsNames/],
    ['bad selector', minimal.replace('namespace: shop', 'namespace: "a/b"'), /selector/],
    ['port out of range', `${minimal}\nlisten: { port: 70000 }\n`, /listen.port/],
    ['default above max', `${minimal}\nsvid: { x509DefaultTtlSeconds: 9000, x509MaxTtlSeconds: 3600 }\n`, /exceeds/],
    ['not a mapping', '- a\n- b\n', /mapping/],
    ['no audit signing key', minimal.replace('audit: { signingKeyFile: audit.key }', ''), /config.audit.signingKeyFile/],
    ['audit key as file and in a token', minimal.replace('signingKeyFile: audit.key', 'signingKeyFile: audit.key, signingPkcs11: { module: m.so, tokenLabel: t, pinFile: pin, keyLabel: k }'), /^config\.audit\.signingKeyFile: set exactly one of signingKeyFile and signingPkcs11$/],
    ['pkcs11 key without a label', minimal.replace('signingKeyFile: audit.key', 'signingPkcs11: { module: m.so, tokenLabel: t, pinFile: pin }'), /config.audit.signingPkcs11/],
    ['origin with a space', minimal.replace('signingKeyFile: audit.key', 'signingKeyFile: a.key, origin: "a b"'), /config.audit.origin/],
    ['http webhook', minimal.replace('signingKeyFile: audit.key', 'signingKeyFile: a.key, alerts: { webhookUrl: "http://hooks.example/x" }'), /allowInsecureHttp/],
    ['bad alert kind', minimal.replace('signingKeyFile: audit.key', 'signingKeyFile: a.key, alerts: { rules: [{ name: r, kind: nope }] }'), /rules\[0\].kind/],
    ['denials rule without window', minimal.replace('signingKeyFile: audit.key', 'signingKeyFile: a.key, alerts: { rules: [{ name: r, kind: denials, threshold: 3 }] }'), /threshold and windowSeconds/],
    ['revoke-failed rule with a threshold', minimal.replace('signingKeyFile: audit.key', 'signingKeyFile: a.key, alerts: { rules: [{ name: r, kind: revoke-failed, threshold: 1 }] }'), /threshold: not used by a revoke-failed rule/],
    ['duplicate rule names', minimal.replace('signingKeyFile: audit.key', 'signingKeyFile: a.key, alerts: { rules: [{ name: r, kind: break-glass }, { name: r, kind: break-glass }] }'), /duplicate/],
  ])('refuses %s with a message naming the field', (_name, yaml, message) => {
    expect(() => loadConfig({ file: configFile(yaml), env: {} })).toThrow(message);
    expect(() => loadConfig({ file: configFile(yaml), env: {} })).toThrow(ConfigError);
  });

  it('reads keys in a PKCS#11 token instead of key files (paths resolved, 4 sessions by default), with rotation too', () => {
    const token = (label: string): string => `{ module: /usr/lib/softhsm/libsofthsm2.so, tokenLabel: tessera, pinFile: hsm/pin, keyLabel: ${label} }`;
    const yaml = minimal
      .replace('keyFile: ca.key,', `pkcs11: ${token('ca')},`)
      .replace('jwtKeyFile: jwt.key', `jwtPkcs11: ${token('jwt')}`)
      .replace('signingKeyFile: audit.key', `signingPkcs11: ${token('audit')}`);
    const file = configFile(yaml);
    const c = loadConfig({ file, env: {} });
    const ref = { module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 'tessera', pinFile: path.join(path.dirname(file), 'hsm/pin'), sessions: 4 };
    expect(c.ca.keyFile).toBeUndefined();
    expect(c.ca.pkcs11).toEqual({ ...ref, keyLabel: 'ca' });
    expect(c.ca.jwtPkcs11).toEqual({ ...ref, keyLabel: 'jwt' });
    expect(c.audit.signingPkcs11).toEqual({ ...ref, keyLabel: 'audit' });
    // Rotation makes the next keys in the same token (ca/keys.ts); with both keys there, nothing is sealed, so no KEK is needed.
    const rotating = yaml.replace('jwtPkcs11:', 'rotation: { caTtlSeconds: 604800 }, jwtPkcs11:');
    const rotatingConfig = loadConfig({ file: configFile(rotating), env: {} });
    expect(rotatingConfig.ca.rotation?.caTtlSeconds).toBe(604800);
    expect(rotatingConfig.ca.pkcs11).toMatchObject({ module: ref.module, tokenLabel: 'tessera', keyLabel: 'ca' });
    expect(rotatingConfig.secrets.kekFile).toBeUndefined();
    // One key a file: it is sealed into the store, and the KEK is required.
    const mixed = rotating.replace(`jwtPkcs11: ${token('jwt')}`, 'jwtKeyFile: jwt.key');
    expect(() => loadConfig({ file: configFile(mixed), env: {} })).toThrow(/config\.ca\.rotation: requires secrets\.kekFile/);
    expect(loadConfig({ file: configFile(`${mixed}secrets: { kekFile: kek }\n`), env: {} }).ca.jwtKeyFile).toBeDefined();
  });

  it('reads the audit section: origin, intervals and alert rules', () => {
    const yaml = minimal.replace(
      'audit: { signingKeyFile: audit.key }',
      `audit:
  signingKeyFile: keys/audit.key
  checkpointIntervalMs: 250
  alerts:
    webhookUrl: https://hooks.example/tessera
    muteSeconds: 60
    rules:
      - { name: many-denials, kind: denials, per: namespace, threshold: 5, windowSeconds: 30 }
      - { name: break-glass, kind: break-glass, muteSeconds: 0 }
      - { name: stuck-revoke, kind: revoke-failed }
`,
    );
    const file = configFile(yaml);
    const c = loadConfig({ file, env: {} });
    expect(c.audit.signingKeyFile).toBe(path.join(path.dirname(file), 'keys/audit.key'));
    expect(c.audit.origin).toBe('prod.example/tessera/audit');
    expect(c.audit.checkpointIntervalMs).toBe(250);
    expect(c.audit.alerts.webhookUrl).toBe('https://hooks.example/tessera');
    expect(c.audit.alerts.rules).toEqual([
      { name: 'many-denials', kind: 'denials', per: 'namespace', threshold: 5, windowSeconds: 30 },
      { name: 'break-glass', kind: 'break-glass', muteSeconds: 0 },
      { name: 'stuck-revoke', kind: 'revoke-failed' },
    ]);
  });

  it('reads audit witnesses and refuses bad ones, naming the field', () => {
    const { vkey } = generateCosignerKey('w1.example');
    const withAudit = (a: string): string => configFile(minimal.replace('audit: { signingKeyFile: audit.key }', `audit:\n  signingKeyFile: audit.key\n${a}`));
    const ok = loadConfig({ file: withAudit(`  witnesses: [{ name: w1.example, url: "http://127.0.0.1:9500", key: "${vkey}" }]\n  requireWitnesses: true\n`), env: {} });
    expect(ok.audit.witnesses).toEqual([{ name: 'w1.example', url: 'http://127.0.0.1:9500', key: vkey }]);
    expect(ok.audit).toMatchObject({ witnessQuorum: 1, requireWitnesses: true, maxWitnessLagSeconds: 300, witnessTimeoutMs: 5000 });
    const refuse = (a: string, message: RegExp): void => {
      expect(() => loadConfig({ file: withAudit(a), env: {} })).toThrow(message);
    };
    refuse(`  witnesses: [{ name: w2.example, url: "http://h:1", key: "${vkey}" }]\n`, /witnesses\[0\]\.key: names "w1.example", not the witness name "w2.example"/);
    refuse(`  witnesses: [{ name: w1.example, url: "http://h:1", key: "w1.example+00000000+AAAA" }]\n`, /witnesses\[0\]\.key/);
    refuse(`  witnesses: [{ name: w1.example, url: "ftp://h", key: "${vkey}" }]\n`, /witnesses\[0\]\.url/);
    refuse(`  witnesses: [{ name: w1.example, url: "http://h:1", key: "${vkey}" }]\n  witnessQuorum: 2\n`, /witnessQuorum: 2 is more than the 1/);
    refuse('  requireWitnesses: true\n', /requireWitnesses: needs audit.witnesses/);
  });

  it('reads federation and enforces what each profile needs, naming the field', () => {
    const withFed = (f: string): string => configFile(`${minimal}federation:\n${f}`);
    const ok = loadConfig({
      file: withFed('  - { trustDomain: partner.test, bundleEndpointUrl: "https://partner.test:8444/", profile: https_spiffe, endpointSpiffeId: "spiffe://partner.test/tessera/bundle-endpoint", bootstrapBundleFile: partner.json }\n'),
      env: {},
    });
    expect(ok.federation[0]).toMatchObject({ trustDomain: 'partner.test', profile: 'https_spiffe', minRefreshSeconds: 30, maxRefreshSeconds: 3600, staleAfterSeconds: 3600 });
    expect(path.isAbsolute(ok.federation[0]?.bootstrapBundleFile ?? '')).toBe(true);
    expect(ok.bundleEndpoint).toEqual({ refreshHintSeconds: 300 });
    const refuse = (f: string, message: RegExp): void => {
      expect(() => loadConfig({ file: withFed(f), env: {} })).toThrow(message);
    };
    refuse('  - { trustDomain: partner.test, bundleEndpointUrl: "https://p/", profile: https_spiffe, bootstrapBundleFile: b.json }\n', /federation\[0\]\.endpointSpiffeId: required for profile https_spiffe/);
    refuse('  - { trustDomain: partner.test, bundleEndpointUrl: "https://p/", profile: https_spiffe, endpointSpiffeId: "spiffe://partner.test/e" }\n', /federation\[0\]\.bootstrapBundleFile: required/);
    refuse('  - { trustDomain: partner.test, bundleEndpointUrl: "https://p/", profile: https_spiffe, endpointSpiffeId: "spiffe://evil.test/e", bootstrapBundleFile: b.json }\n', /endpointSpiffeId: must be in trust domain partner\.test/);
    refuse('  - { trustDomain: partner.test, bundleEndpointUrl: "http://p/", profile: https_web }\n', /bundleEndpointUrl: must be https/);
    refuse('  - { trustDomain: prod.example, bundleEndpointUrl: "https://p/", profile: https_web }\n', /own trust domain/);
    refuse('  - { trustDomain: partner.test, bundleEndpointUrl: "https://p/", profile: web }\n', /profile/);
    refuse('  - { trustDomain: p.test, bundleEndpointUrl: "https://p/", profile: https_web }\n  - { trustDomain: p.test, bundleEndpointUrl: "https://q/", profile: https_web }\n', /listed twice/);
  });

  it('refuses a file that does not exist', () => {
    expect(() => loadConfig({ file: '/nonexistent/tessera.yaml', env: {} })).toThrow(ConfigError);
  });
});

describe('loadConfig store.redis', () => {
  const withStore = (store: string): string => configFile(`${minimal}store:\n${store}`);

  it('has no Redis unless configured, and defaults the rest when a url is given', () => {
    expect(loadConfig({ file: configFile(minimal), env: {} }).store.redis).toBeUndefined();
    const c = loadConfig({ file: withStore('  redis: { url: "redis://10.0.0.5:6379/2" }\n'), env: {} });
    expect(c.store.redis).toEqual({
      url: 'redis://10.0.0.5:6379/2',
      prefix: 'tessera',
      allowVolatile: false,
      requireReplicaAck: false,
      commandTimeoutMs: 1500,
      connectTimeoutMs: 1500,
    });
    expect(Object.isFrozen(c.store.redis)).toBe(true);
  });

  it('reads Sentinel and Cluster topologies, TLS and a password file (paths resolved against the file)', () => {
    const file = withStore(
      [
        '  redis:',
        '    sentinels: ["10.0.0.1:26379", { host: s2.internal, port: 26380 }]',
        '    name: tessera-master',
        '    prefix: prod-1',
        '    allowVolatile: true',
        '    requireReplicaAck: true',
        '    commandTimeoutMs: 800',
        '    username: tessera',
        '    passwordFile: redis.pass',
        '    tls: { caFile: redis-ca.pem }',
        '',
      ].join('\n'),
    );
    const dir = path.dirname(file);
    expect(loadConfig({ file, env: {} }).store.redis).toEqual({
      sentinels: [{ host: '10.0.0.1', port: 26379 }, { host: 's2.internal', port: 26380 }],
      name: 'tessera-master',
      prefix: 'prod-1',
      allowVolatile: true,
      requireReplicaAck: true,
      commandTimeoutMs: 800,
      connectTimeoutMs: 1500,
      username: 'tessera',
      passwordFile: path.join(dir, 'redis.pass'),
      tls: { caFile: path.join(dir, 'redis-ca.pem') },
    });
    const cluster = loadConfig({ file: withStore('  redis: { nodes: ["10.0.0.1:7000", "10.0.0.2:7000"], tls: true }\n'), env: {} });
    expect(cluster.store.redis?.nodes).toEqual([{ host: '10.0.0.1', port: 7000 }, { host: '10.0.0.2', port: 7000 }]);
    expect(cluster.store.redis?.tls).toEqual({});
  });

  it('REDIS_URL configures Redis, or replaces the topology from the file but keeps its other settings', () => {
    const fromEnv = loadConfig({ file: configFile(minimal), env: { REDIS_URL: 'rediss://cache:6380' } });
    expect(fromEnv.store.redis?.url).toBe('rediss://cache:6380');
    const file = withStore('  redis: { nodes: ["10.0.0.1:7000"], prefix: blue }\n');
    const over = loadConfig({ file, env: { REDIS_URL: 'redis://127.0.0.1:6379' } });
    expect(over.store.redis).toMatchObject({ url: 'redis://127.0.0.1:6379', prefix: 'blue' });
    expect(over.store.redis?.nodes).toBeUndefined();
    expect(loadConfig({ file: configFile(minimal), env: { REDIS_URL: '' } }).store.redis).toBeUndefined();
  });

  it('refuses ambiguous or malformed Redis settings, naming the field', () => {
    const bad: [string, RegExp][] = [
      ['  redis: {}\n', /store\.redis: set exactly one/],
      ['  redis: { url: "redis://a:1", nodes: ["b:2"] }\n', /exactly one/],
      ['  redis: { url: "http://a:1" }\n', /store\.redis\.url/],
      ['  redis: { sentinels: ["a:26379"] }\n', /store\.redis\.name/],
      ['  redis: { nodes: [] }\n', /empty/],
      ['  redis: { nodes: ["nope"] }\n', /nodes\[0\]/],
      ['  redis: { nodes: ["a:99999"] }\n', /nodes\[0\]/],
      ['  redis: { url: "redis://a:1", prefix: "{x}" }\n', /store\.redis\.prefix/],
      ['  redis: { url: "redis://a:1", commandTimeoutMs: 5 }\n', /commandTimeoutMs/],
      ['  redis: { url: "redis://a:1", tls: { certFile: c.pem } }\n', /store\.redis\.tls/],
      ['  redis: { url: "redis://a:1", pasword: x }\n', /store\.redis\.pasword: unknown setting/],
      ['  redis: "redis://a:1"\n', /store\.redis: expected a mapping/],
    ];
    for (const [yaml, message] of bad) {
      expect(() => loadConfig({ file: withStore(yaml), env: {} }), yaml).toThrow(message);
    }
    expect(() => loadConfig({ file: configFile(minimal), env: { REDIS_URL: 'localhost:6379' } })).toThrow(/^REDIS_URL: expected/);
  });
});

describe('loadConfig workers', () => {
  it('defaults to 1; takes an integer, auto / 0 (one per core), from the file or TESSERA_WORKERS', () => {
    const cores = Math.min(MAX_WORKERS, availableParallelism());
    expect(loadConfig({ file: configFile(minimal), env: {} }).workers).toBe(1);
    expect(loadConfig({ env: {}, cwd: '/srv' }).workers).toBe(1);
    expect(loadConfig({ file: configFile(`${minimal}workers: 3\n`), env: {} }).workers).toBe(3);
    expect(loadConfig({ file: configFile(`${minimal}workers: auto\n`), env: {} }).workers).toBe(cores);
    expect(loadConfig({ file: configFile(`${minimal}workers: 0\n`), env: {} }).workers).toBe(cores);
    expect(loadConfig({ file: configFile(`${minimal}workers: 3\n`), env: { TESSERA_WORKERS: '2' } }).workers).toBe(2);
    expect(readWorkers('4', '--workers')).toBe(4);
  });

  it('refuses anything else, naming where it came from', () => {
    for (const bad of ['-1', '1.5', 'two', '65', '[2]', 'true']) {
      expect(() => loadConfig({ file: configFile(`${minimal}workers: ${bad}\n`), env: {} })).toThrow(/config\.workers: expected an integer in \[1, 64\] or auto/);
    }
    expect(() => loadConfig({ file: configFile(minimal), env: { TESSERA_WORKERS: 'many' } })).toThrow(/^TESSERA_WORKERS: expected/);
    expect(() => readWorkers('1e3', '--workers')).toThrow(ConfigError);
    expect(() => readWorkers('1e3', '--workers')).toThrow(/^--workers: /);
  });
});

describe('loadConfig ca.threads', () => {
  const withThreads = (v: string): string => minimal.replace('jwtKeyFile: jwt.key }', `jwtKeyFile: jwt.key, threads: ${v} }`);

  it('defaults to auto: the cores beyond the event loop, 1..4, shared by the worker processes', () => {
    const cores = availableParallelism();
    const expected = (processes: number): number => Math.max(1, Math.min(4, Math.floor(cores / processes) - 1));
    expect(autoCaThreads(1)).toBe(expected(1));
    expect(autoCaThreads(64)).toBe(1);
    expect(loadConfig({ file: configFile(minimal), env: {} }).ca.threads).toBe(expected(1));
    expect(loadConfig({ file: configFile(withThreads('auto')), env: {} }).ca.threads).toBe(expected(1));
    expect(loadConfig({ file: configFile(`${minimal}workers: 2\n`), env: {} }).ca.threads).toBe(expected(2));
    expect(loadConfig({ env: {}, cwd: '/srv' }).ca.threads).toBe(expected(1));
  });

  it('takes 0 (mint on the event loop) to 16, from the file or TESSERA_CA_THREADS', () => {
    expect(loadConfig({ file: configFile(withThreads('0')), env: {} }).ca.threads).toBe(0);
    expect(loadConfig({ file: configFile(withThreads('16')), env: {} }).ca.threads).toBe(16);
    expect(loadConfig({ file: configFile(withThreads('3')), env: { TESSERA_CA_THREADS: '0' } }).ca.threads).toBe(0);
  });

  it('refuses anything else, naming where it came from', () => {
    for (const bad of ['-1', '1.5', 'two', '17', '[2]', 'true']) {
      expect(() => loadConfig({ file: configFile(withThreads(bad)), env: {} })).toThrow(/config\.ca\.threads: expected an integer in \[0, 16\] or auto/);
    }
    expect(() => loadConfig({ file: configFile(minimal), env: { TESSERA_CA_THREADS: 'lots' } })).toThrow(/^TESSERA_CA_THREADS: expected/);
  });
});
