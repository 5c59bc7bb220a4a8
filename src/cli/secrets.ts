/**
 * `tessera secrets put NAME --from-file F` and `tessera secrets rotate-kek --new-kek-file F`.
 * Until the admin API exists these write through the configured store directly (Redis: live for every
 * replica; embedded store: stop the broker first — it is a single-writer file store). Each write is
 * audited. Values and keys are never printed.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import net from 'node:net';
import { hostname } from 'node:os';
import type { AuditEntry } from '../audit/entry.js';
import { AuditLog } from '../audit/log.js';
import type { Config } from '../config/config.js';
import { ConfigError, loadConfig } from '../config/load.js';
import { ensureDevMaterial } from '../dev/material.js';
import { SecretEngines } from '../secrets/engine.js';
import { EnvelopeError, KeyRing, type Kek, readKekFile, writeNewKekFile } from '../secrets/envelope.js';
import { MAX_SECRET_BYTES, SECRET_SPACE, SecretKv } from '../secrets/kv.js';
import { secretNameProblem } from '../secrets/names.js';
import { EmbeddedStore } from '../store/embedded.js';
import { RedisStore } from '../store/redis.js';
import type { Store } from '../store/store.js';
import { RootPasswords } from '../secrets/root.js';
import { command } from './command.js';
import { adminConnection, adminRequest, CONNECTION_HELP, CONNECTION_OPTIONS, CONNECTION_USAGE, refused } from './connection.js';
import { UsageError } from './usage.js';

export interface SecretsCliOptions {
  readonly config?: string | undefined;
  readonly fromFile?: string | undefined;
  readonly newKekFile?: string | undefined;
  /** Where messages go (tests capture them). */
  readonly out?: (line: string) => void;
}

async function load(configFile: string | undefined): Promise<Config> {
  const config = loadConfig(configFile !== undefined ? { file: configFile } : {});
  if (config.dev) await ensureDevMaterial(config.devDir, config.trustDomain);
  return config;
}

function ring(config: Config): KeyRing {
  if (config.secrets.kekFile === undefined) {
    throw new ConfigError('config.secrets.kekFile: static secrets need a key-encryption key file (see docs/secrets.md)');
  }
  try {
    return KeyRing.fromFiles(config.secrets.kekFile, config.secrets.oldKekFiles);
  } catch (err) {
    if (err instanceof EnvelopeError) throw new ConfigError(`config.secrets: ${err.message}`);
    throw err;
  }
}

/** True if something accepts TCP connections on the broker's listen address (bounded: 500 ms). */
function listening(host: string, port: number): Promise<boolean> {
  if (port === 0) return Promise.resolve(false);
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (v: boolean): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(false), 500);
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

/** Opens the configured store; refuses the embedded one while a broker appears to be running on it. */
async function openStore(config: Config): Promise<Store> {
  if (config.store.redis !== undefined) return RedisStore.connect({ ...config.store.redis });
  if (await listening(config.listen.host, config.listen.port)) {
    throw new ConfigError(
      `a broker is listening on ${config.listen.host}:${config.listen.port}: the embedded store has a single writer, ` +
        'so stop the broker, run this command, then start it again (or use the Redis store)',
    );
  }
  return EmbeddedStore.open(config.store.embedded.dir, { fsync: config.store.embedded.fsync });
}

function cliEntry(fields: Partial<AuditEntry> & Pick<AuditEntry, 'type' | 'reason'>): AuditEntry {
  return {
    ts: Date.now(),
    decision: 'allow',
    actor: null,
    subject: null,
    source: 'cli',
    requestId: randomUUID(),
    replica: `cli@${hostname()}`,
    ...fields,
  };
}

export async function secretsPut(name: string | undefined, opts: SecretsCliOptions): Promise<void> {
  const out = opts.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  if (name === undefined) throw new UsageError('secrets put needs a NAME (e.g. db/reporting-api-key)');
  const problem = secretNameProblem(name);
  if (problem !== undefined) throw new UsageError(`invalid secret name: ${problem}`);
  if (opts.fromFile === undefined) throw new UsageError('secrets put needs --from-file FILE (the value is never taken from the command line)');
  let value: Buffer;
  try {
    if (statSync(opts.fromFile).size > MAX_SECRET_BYTES) throw new ConfigError(`${opts.fromFile}: a secret value is at most ${MAX_SECRET_BYTES} bytes`);
    value = readFileSync(opts.fromFile);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`--from-file: cannot read ${opts.fromFile}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if (value.length === 0) throw new ConfigError(`${opts.fromFile} is empty`);
  const config = await load(opts.config);
  const keys = ring(config);
  const store = await openStore(config);
  try {
    const audit = await AuditLog.open(store);
    const kv = new SecretKv(store, keys);
    const previous = await store.kvGet(SECRET_SPACE, name);
    const { kek } = await kv.put(name, value);
    try {
      await audit.append(cliEntry({ type: 'secret.written', secret: name, reason: `tessera secrets put (encrypted under ${kek})` }));
    } catch (err) {
      // An unaudited write must not stand: put the previous value back.
      if (previous === undefined) await store.kvDelete(SECRET_SPACE, name);
      else await store.kvPut(SECRET_SPACE, name, previous);
      throw err;
    }
    out(`stored secret "${name}" (${value.length} bytes, AES-256-GCM, data key wrapped by ${kek})`);
  } finally {
    value.fill(0);
    await store.close();
  }
}

export async function secretsRotateKek(opts: SecretsCliOptions): Promise<void> {
  const out = opts.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  if (opts.newKekFile === undefined) throw new UsageError('secrets rotate-kek needs --new-kek-file FILE (created if missing)');
  const config = await load(opts.config);
  const current = ring(config);
  let next: Kek;
  try {
    if (existsSync(opts.newKekFile)) {
      next = readKekFile(opts.newKekFile);
    } else {
      next = await writeNewKekFile(opts.newKekFile);
      out(`created a new KEK in ${opts.newKekFile} (mode 0600): ${next.id}`);
    }
  } catch (err) {
    if (err instanceof EnvelopeError) throw new ConfigError(err.message);
    throw err;
  }
  const ringNext = current.withActive(next);
  const store = await openStore(config);
  try {
    const audit = await AuditLog.open(store);
    const kv = new SecretKv(store, ringNext);
    const kvReport = await kv.rewrapAll(ringNext);
    // The engines' rotated admin passwords (secrets rotate-root) are sealed under the same KEK.
    const roots = await new RootPasswords(store, ringNext, 'cli').rewrapAll(ringNext);
    const report = { ...kvReport, failed: [...kvReport.failed, ...roots.failed] };
    if (roots.rewrapped > 0) out(`re-wrapped ${roots.rewrapped} engine admin password(s) under ${next.id}`);
    const left = [...(await kv.kekIds()).entries()].filter(([, id]) => id !== next.id);
    await audit.append(
      cliEntry({
        type: 'kek.rotated',
        reason: `tessera secrets rotate-kek: ${report.rewrapped} re-wrapped, ${report.unchanged} already on ${next.id}, ${report.failed.length} failed`,
        ...(report.failed.length > 0 ? { code: 'secret_integrity_failed' } : {}),
      }),
    );
    out(`re-wrapped ${report.rewrapped} secret(s) under ${next.id} (${report.unchanged} already were); ciphertexts unchanged`);
    for (const f of report.failed) out(`  FAILED ${f.name}: ${f.error}`);
    if (report.failed.length > 0 || left.length > 0) {
      throw new ConfigError(
        `${left.length} secret(s) are not under ${next.id} yet (${left.map(([n]) => n).join(', ')}); fix or re-put them and run rotate-kek again`,
      );
    }
    out('');
    out('Next: set secrets.kekFile to the new file on every replica (keep the old one in secrets.oldKekFiles');
    out('until all replicas run with the new config), then remove the old KEK from the config and destroy it.');
  } finally {
    await store.close();
  }
}

/**
 * `tessera secrets engines`: every configured dynamic-secrets engine, its kind and roles, and whether
 * its admin credentials work right now (the same check /readyz runs). Resolves 1 if any engine fails.
 */
export async function secretsEngines(opts: SecretsCliOptions): Promise<number> {
  const out = opts.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  const config = await load(opts.config);
  const s = config.secrets;
  const roles = new Map<string, string[]>(
    [...s.postgres, ...s.mysql, ...s.redis, ...s.rabbitmq].map((e) => [e.name, Object.keys(e.roles)] as const),
  );
  // Rotated admin passwords (secrets rotate-root) are in the store: read them where the store is shared
  // (Redis). The embedded store has a single writer (the running broker): there /readyz is the check.
  const store = s.kekFile !== undefined && config.store.redis !== undefined ? await RedisStore.connect({ ...config.store.redis }) : undefined;
  const roots = store !== undefined ? new RootPasswords(store, ring(config), 'cli') : undefined;
  // Health only: nothing is issued, so no lease is ever created.
  const engines = SecretEngines.fromConfig(
    s,
    {
      create: () => Promise.reject(new Error('tessera secrets engines issues nothing')),
      discard: () => Promise.resolve(),
    },
    undefined,
    roots !== undefined ? (name) => roots.source(name) : undefined,
  );
  try {
    const health = await engines.health();
    const names = Object.keys(health);
    if (names.length === 0) {
      out('no secrets engines are configured (secrets.postgres, secrets.mysql, secrets.redis, secrets.rabbitmq)');
      return 0;
    }
    let failing = 0;
    for (const name of names.sort()) {
      const h = health[name] as (typeof health)[string];
      if (!h.ok) failing++;
      out(`${name}\t${h.kind}\troles: ${(roles.get(name) ?? []).join(',')}\t${h.ok ? 'ok' : `FAILING: ${h.error}`}`);
    }
    return failing > 0 ? 1 : 0;
  } finally {
    await engines.close();
    await store?.close();
  }
}

const enginesCommand = command({
  name: 'secrets engines',
  usage: '[--config FILE]',
  summary: 'list the dynamic-secrets engines (PostgreSQL, MySQL, Redis, RabbitMQ) and their health',
  options: { config: { type: 'string' } },
  async run(values) {
    return secretsEngines({ config: values.config });
  },
});

const putCommand = command({
  name: 'secrets put',
  usage: 'NAME --from-file FILE [--config FILE]',
  summary: 'store a static secret, encrypted (AES-256-GCM envelope) in the store\n(embedded store: stop the broker first)',
  options: { config: { type: 'string' }, 'from-file': { type: 'string' } },
  positionals: true,
  async run(values, positionals) {
    if (positionals.length > 1) throw new UsageError('secrets put takes one NAME');
    await secretsPut(positionals[0], { config: values.config, fromFile: values['from-file'] });
  },
});

const rotateKekCommand = command({
  name: 'secrets rotate-kek',
  usage: '--new-kek-file FILE [--config FILE]',
  summary: "re-wrap every secret's data key under a new KEK (FILE is created if missing)",
  options: { config: { type: 'string' }, 'new-kek-file': { type: 'string' } },
  async run(values) {
    await secretsRotateKek({ config: values.config, newKekFile: values['new-kek-file'] });
  },
});

const rotateRootCommand = command({
  name: 'secrets rotate-root',
  usage: `ENGINE ${CONNECTION_USAGE}`,
  summary: "give a secrets engine's admin user a new random password, known only to the broker\n(role secrets-admin or operator)",
  details: CONNECTION_HELP,
  options: CONNECTION_OPTIONS,
  positionals: true,
  async run(values, positionals, io) {
    const [engine, extra] = positionals;
    if (engine === undefined || extra !== undefined) throw new UsageError('secrets rotate-root takes one ENGINE (a name from `tessera secrets engines`)');
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(engine)) throw new UsageError(`"${engine}" is not an engine name`);
    const res = await adminRequest(adminConnection(values), 'POST', `/v1/admin/secrets-engines/${encodeURIComponent(engine)}/rotate-root`);
    if (res.status !== 200) throw refused(res);
    io.stdout(`rotated the admin password of ${String(res.json.kind)} engine ${String(res.json.engine)}; the old password no longer works\n`);
    return 0;
  },
});

export const SECRETS_COMMANDS = [putCommand, rotateKekCommand, enginesCommand, rotateRootCommand];
