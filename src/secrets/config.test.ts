/** The `secrets:` config section: defaults, default deny, and every bad setting refused by name. */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../config/load.js';
import { configFile, MINIMAL_CONFIG } from '../../test/helpers/config-file.js';


const full = `${MINIMAL_CONFIG}
secrets:
  kekFile: keys/secrets.kek
  oldKekFiles: [keys/old.kek]
  lease: { defaultTtlSeconds: 300, maxTtlSeconds: 3600 }
  sweepIntervalSeconds: 5
  grants:
    - spiffeIds: [spiffe://prod.example/ns/shop/sa/web]
      secrets: [db/reporting-api-key, shop/]
      postgresRoles: [reporting]
    - selector: { namespace: payments }
      secrets: [payments/]
  postgres:
    - name: main
      url: postgres://tessera_admin@db.internal:5432/app
      passwordFile: keys/pg.pass
      roles:
        reporting:
          ttlSeconds: 600
          maxTtlSeconds: 7200
          grants:
            - GRANT CONNECT ON DATABASE app TO {{name}}
            - GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO {{name}};
`;

describe('secrets config', () => {
  it('reads a full section, resolving files against the config file', () => {
    const file = configFile(full);
    const base = path.dirname(file);
    const s = loadConfig({ file, env: {} }).secrets;
    expect(s.kekFile).toBe(path.join(base, 'keys/secrets.kek'));
    expect(s.oldKekFiles).toEqual([path.join(base, 'keys/old.kek')]);
    expect([s.leaseDefaultTtlSeconds, s.leaseMaxTtlSeconds, s.sweepIntervalSeconds]).toEqual([300, 3600, 5]);
    expect(s.grants).toEqual([
      { spiffeIds: ['spiffe://prod.example/ns/shop/sa/web'], secrets: ['db/reporting-api-key', 'shop/'], postgresRoles: ['reporting'] },
      { selector: { namespace: 'payments', serviceAccount: '*' }, secrets: ['payments/'], postgresRoles: [] },
    ]);
    expect(s.postgres[0]).toMatchObject({
      name: 'main',
      passwordFile: path.join(base, 'keys/pg.pass'),
      usernamePrefix: 'tessera_',
      maxConnections: 4,
      roles: { reporting: { ttlSeconds: 600, maxTtlSeconds: 7200 } },
    });
  });

  it('grants nothing by default (no section, no KEK)', () => {
    const s = loadConfig({ file: configFile(MINIMAL_CONFIG), env: {} }).secrets;
    expect(s.grants).toEqual([]);
    expect(s.postgres).toEqual([]);
    expect(s.kekFile).toBeUndefined();
  });

  it('on dev defaults uses the dev KEK and grants only dev/ secrets', () => {
    const s = loadConfig({ env: {}, cwd: '/srv/t' }).secrets;
    expect(s.kekFile).toBe('/srv/t/certs-dev/secrets.kek');
    expect(s.grants).toEqual([{ selector: { namespace: '*', serviceAccount: '*' }, secrets: ['dev/'], postgresRoles: [] }]);
  });

  const sec = (body: string): string => `${MINIMAL_CONFIG}\nsecrets:\n${body}`;
  const engine = (roles: string, extra = ''): string =>
    `  postgres:\n    - name: main\n      url: postgres://a@h:5432/app\n${extra}      roles:\n${roles}`;
  const role = (grant: string): string => `        r:\n          grants: [${JSON.stringify(grant)}]\n`;

  it.each([
    ['grants without a KEK', sec('  grants: [{ selector: { namespace: a }, secrets: [x] }]\n'), /secrets.kekFile: required/],
    ['a grant with both spiffeIds and selector', sec('  kekFile: k\n  grants: [{ spiffeIds: [spiffe://prod.example/a], selector: { namespace: a }, secrets: [x] }]\n'), /exactly one of spiffeIds or selector/],
    ['a grant that grants nothing', sec('  kekFile: k\n  grants: [{ selector: { namespace: a } }]\n'), /grants nothing/],
    ['a SPIFFE ID of another trust domain', sec('  kekFile: k\n  grants: [{ spiffeIds: [spiffe://other.example/a], secrets: [x] }]\n'), /trust domain prod.example/],
    ['a traversal secret name', sec('  kekFile: k\n  grants: [{ selector: { namespace: a }, secrets: [../etc] }]\n'), /grants\[0\].secrets/],
    ['a reserved secret prefix', sec('  kekFile: k\n  grants: [{ selector: { namespace: a }, secrets: [postgres/] }]\n'), /reserved/],
    ['an unknown role in a grant', sec('  grants: [{ selector: { namespace: a }, postgresRoles: [ghost] }]\n'), /no engine defines role "ghost"/],
    ['a bad role name', sec(`${engine('        Bad-Role:\n          grants: ["GRANT x TO {{name}}"]\n')}`), /role name "Bad-Role"/],
    ['a template that does not name the role', sec(engine(role('GRANT SELECT ON t TO PUBLIC'))), /grants\[0\]: the statement must mention/],
    ['two statements in one template', sec(engine(role('GRANT x TO {{name}}; DROP TABLE t'))), /one statement per list item/],
    ['an unknown placeholder', sec(engine(role('GRANT {{role}} TO {{name}}'))), /only placeholder/],
    ['a non-postgres URL', sec('  postgres:\n    - name: main\n      url: mysql://a@h/app\n      roles:\n' + role('GRANT x TO {{name}}')), /url: expected postgres/],
    ['a URL without a database', sec('  postgres:\n    - name: main\n      url: postgres://a@h:5432\n      roles:\n' + role('GRANT x TO {{name}}')), /name the database/],
    ['a bad username prefix', sec(engine(role('GRANT x TO {{name}}'), '      usernamePrefix: "Evil\\""\n')), /usernamePrefix/],
    ['a TTL above its max', sec(engine('        r:\n          ttlSeconds: 900\n          maxTtlSeconds: 60\n          grants: ["GRANT x TO {{name}}"]\n')), /ttlSeconds exceeds/],
    ['an unknown setting', sec('  kekfile: k\n'), /config.secrets.kekfile: unknown setting/],
    [
      'a role defined by two engines',
      sec(`${engine(role('GRANT x TO {{name}}'))}    - name: other\n      url: postgres://a@h:5432/app\n      roles:\n${role('GRANT x TO {{name}}')}`),
      /defined by engines/,
    ],
  ])('refuses %s', (_why, yaml, message) => {
    expect(() => loadConfig({ file: configFile(yaml), env: {} })).toThrow(message);
    expect(() => loadConfig({ file: configFile(yaml), env: {} })).toThrow(ConfigError);
  });

  const mysqlEngine = (roleBody: string): string => sec(`  mysql:\n    - name: maria\n      url: mysql://root@127.0.0.1:3306/\n      roles:\n        r:\n${roleBody}`);

  it('reads a MySQL engine with the default creation statement', () => {
    const s = loadConfig({ file: configFile(mysqlEngine('          grants: ["GRANT SELECT ON app.* TO {{name}}@\'%\'"]\n')), env: {} }).secrets;
    expect(s.mysql[0]).toMatchObject({
      name: 'maria',
      usernamePrefix: 'tsr_',
      roles: { r: { ttlSeconds: 3600, maxTtlSeconds: 86_400, creationStatements: ["CREATE USER {{name}}@'%' IDENTIFIED BY {{password}}"] } },
    });
  });

  it.each([
    ['a second statement in a grant', '          grants: ["GRANT SELECT ON a.* TO {{name}}@\'%\'; DROP DATABASE a"]\n', /mysql\[0\]\.roles\.r\.grants\[0\]: one statement/],
    ['a quoted placeholder', '          creationStatements: ["CREATE USER \'{{name}}\'@\'%\' IDENTIFIED BY {{password}}"]\n          grants: ["GRANT SELECT ON a.* TO {{name}}@\'%\'"]\n', /roles\.r\.creationStatements\[0\]: write \{\{name\}\} bare/],
    ['a comment hiding the rest', '          grants: ["GRANT ALL ON *.* TO {{name}}@\'%\' -- WITH GRANT OPTION"]\n', /roles\.r\.grants\[0\]: no SQL comments/],
    ['a password in a grant', '          grants: ["GRANT USAGE ON *.* TO {{name}}@\'%\' IDENTIFIED BY {{password}}"]\n', /roles\.r\.grants\[0\]: \{\{password\}\} is not allowed/],
    ['creation without a password', '          creationStatements: ["CREATE USER {{name}}@\'%\'"]\n          grants: ["GRANT SELECT ON a.* TO {{name}}@\'%\'"]\n', /roles\.r\.creationStatements: one statement must set the password/],
  ])('refuses a MySQL role with %s, naming the field', (_why, roleBody, message) => {
    expect(() => loadConfig({ file: configFile(mysqlEngine(roleBody)), env: {} })).toThrow(message);
  });

  it.each([
    ['a non-mysql URL', sec('  mysql:\n    - name: m\n      url: postgres://a@h/x\n      roles: { r: { grants: ["GRANT SELECT ON a.* TO {{name}}@\'%\'"] } }\n'), /mysql\[0\]\.url: expected mysql/],
    ['a hostile role name', sec('  mysql:\n    - name: m\n      url: mysql://a@h/\n      roles: { "r\'@\'%": { grants: ["GRANT SELECT ON a.* TO {{name}}@\'%\'"] } }\n'), /mysql\[0\]\.roles: role name/],
    ['a long prefix', sec('  mysql:\n    - name: m\n      url: mysql://a@h/\n      usernamePrefix: toolongprefix\n      roles: { r: { grants: ["GRANT SELECT ON a.* TO {{name}}@\'%\'"] } }\n'), /usernamePrefix/],
    ['an engine name shared with PostgreSQL', sec(`${engine(role('GRANT x TO {{name}}'))}  mysql:\n    - name: main\n      url: mysql://a@h/\n      roles: { q: { grants: ["GRANT SELECT ON a.* TO {{name}}@'%'"] } }\n`), /duplicate engine name "main"/],
    ['an unknown mysqlRoles entry', sec('  grants: [{ selector: { namespace: a }, mysqlRoles: [ghost] }]\n'), /mysqlRoles: no MySQL engine defines role "ghost"/],
  ])('refuses %s', (_why, yaml, message) => {
    expect(() => loadConfig({ file: configFile(yaml), env: {} })).toThrow(message);
  });

  const redisEngine = (roleBody: string): string => sec(`  redis:\n    - name: cache\n      url: redis://127.0.0.1:6379\n      roles:\n        r:\n${roleBody}`);

  it.each([
    ['a rule that grants everything', '          commands: ["+@all"]\n', /redis\[0\]\.roles\.r\.commands\[0\]: \+@all would let/],
    ['a smuggled ACL flag', '          commands: ["+get", "nopass"]\n', /redis\[0\]\.roles\.r\.commands\[1\]: expected/],
    ['a key pattern with a space', '          keys: ["cache:* +@all"]\n          commands: ["+get"]\n', /redis\[0\]\.roles\.r\.keys\[0\]/],
    ['a channel with CRLF', '          channels: ["a\\r\\nFLUSHALL"]\n          commands: ["+get"]\n', /redis\[0\]\.roles\.r\.channels\[0\]/],
    ['no allowed command', '          commands: ["-@all"]\n', /roles\.r\.commands: allows no command/],
  ])('refuses a Redis role with %s, naming the field', (_why, roleBody, message) => {
    expect(() => loadConfig({ file: configFile(redisEngine(roleBody)), env: {} })).toThrow(message);
  });

  it('reads a Redis engine', () => {
    const s = loadConfig({ file: configFile(redisEngine('          keys: ["cache:*"]\n          commands: ["+@read"]\n')), env: {} }).secrets;
    expect(s.redis[0]).toMatchObject({ name: 'cache', usernamePrefix: 'tessera_', roles: { r: { keys: ['cache:*'], channels: [], commands: ['+@read'], maxTtlSeconds: 86_400 } } });
  });

  const rabbitEngine = (roleBody: string): string => sec(`  rabbitmq:\n    - name: mq\n      url: http://guest@127.0.0.1:15672\n      roles:\n        r:\n${roleBody}`);

  it.each([
    ['the administrator tag', '          tags: [administrator]\n          vhosts: { "/": { read: ".*" } }\n', /rabbitmq\[0\]\.roles\.r\.tags: "administrator" is not one of/],
    ['a vhost with a path trick', '          vhosts: { "../users": { read: ".*" } }\n', /rabbitmq\[0\]\.roles\.r\.vhosts\["\.\.\/users"\]: a vhost is/],
    ['a dot-segment vhost', '          vhosts: { "..": { read: ".*" } }\n', /rabbitmq\[0\]\.roles\.r\.vhosts\["\.\."\]: a vhost is/],
    ['an invalid regex', '          vhosts: { "/": { read: "(" } }\n', /roles\.r\.vhosts\["\/"\]\.read: not a valid regular expression/],
  ])('refuses a RabbitMQ role with %s, naming the field', (_why, roleBody, message) => {
    expect(() => loadConfig({ file: configFile(rabbitEngine(roleBody)), env: {} })).toThrow(message);
  });

  it('reads a RabbitMQ engine; permissions default to nothing', () => {
    const s = loadConfig({ file: configFile(rabbitEngine('          vhosts: { "/": { read: "^app\\\\." } }\n')), env: {} }).secrets;
    expect(s.rabbitmq[0]?.roles.r).toMatchObject({ tags: [], vhosts: { '/': { configure: '^$', write: '^$', read: '^app\\.' } } });
  });

  it('never echoes an engine URL (it may hold a password) in errors', () => {
    const yaml = sec('  postgres:\n    - name: main\n      url: "postgres://admin:hunter2@h:5432"\n      roles:\n' + role('GRANT x TO {{name}}'));
    expect(() => loadConfig({ file: configFile(yaml), env: {} })).toThrow(/name the database/);
    try {
      loadConfig({ file: configFile(yaml), env: {} });
    } catch (err) {
      expect((err as Error).message).not.toContain('hunter2');
    }
  });
});
