/**
 * `tessera audit verify | export | search | recover`: thin wrappers over audit/verify.ts, audit/export.ts,
 * audit/search.ts and audit/recover.ts. A log is read from an export directory, from a running broker (https:// URL), or
 * (export, search) straight from the configured store.
 *
 * Reading a running broker: checkpoints and leaf hashes are public, entries are not. With
 * --admin-cert/--admin-key (an admin certificate with the auditor role) every entry is read; without,
 * `verify` checks the log's leaf hashes against every signed checkpoint and says it read no entries.
 *
 * Exit codes: 0 success, 1 the log does not verify or the command failed, 2 bad usage.
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { canonicalEntry } from '../audit/devices/record.js';
import { openExport, exportLog } from '../audit/export.js';
import { leafHash } from '../audit/merkle.js';
import { type NoteVerifier, parseVerifierKeyFile } from '../audit/note.js';
import { openAuditSigner } from '../ca/keys.js';
import { recoverLog } from '../audit/recover.js';
import { parseSearchFilter, searchLog } from '../audit/search.js';
import { type LogSource, type RemoteTls, remoteSource, storeSource } from '../audit/source.js';
import { type VerifyOptions, verifyLog, type VerifyResult } from '../audit/verify.js';
import type { Config } from '../config/config.js';
import { loadConfig } from '../config/load.js';
import { parseCosignerKey } from '../audit/cosignature.js';
import { BrokerError } from '../errors.js';
import { EmbeddedStore } from '../store/embedded.js';
import { RedisStore } from '../store/redis.js';
import type { Store } from '../store/store.js';
import { type CliIo, command, dispatch, processIo } from './command.js';
import { readNamedFile } from './files.js';
import { UsageError } from './usage.js';

type Out = (text: string) => void;

const isUrl = (s: string): boolean => /^[a-z]+:\/\//i.test(s);

/** --cacert, --admin-cert, --admin-key: TLS material for an https:// log. */
interface TlsFlags {
  readonly cacert?: string | undefined;
  readonly adminCert?: string | undefined;
  readonly adminKey?: string | undefined;
}

const TLS_OPTIONS = { cacert: { type: 'string' }, 'admin-cert': { type: 'string' }, 'admin-key': { type: 'string' } } as const;

function tlsFlags(values: Record<string, unknown>): TlsFlags {
  const s = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
  return { cacert: s(values.cacert), adminCert: s(values['admin-cert']), adminKey: s(values['admin-key']) };
}

function remoteTls(flags: TlsFlags): RemoteTls {
  if ((flags.adminCert === undefined) !== (flags.adminKey === undefined)) throw new UsageError('give both --admin-cert and --admin-key (an admin certificate with the auditor role), or neither');
  return {
    ...(flags.cacert !== undefined ? { ca: readNamedFile(flags.cacert, '--cacert') } : {}),
    ...(flags.adminCert !== undefined && flags.adminKey !== undefined
      ? { cert: readNamedFile(flags.adminCert, '--admin-cert'), key: readNamedFile(flags.adminKey, '--admin-key') }
      : {}),
  };
}

function httpsUrl(url: string, flag: string): string {
  if (!url.startsWith('https://')) throw new UsageError(`${flag} URL must be https://`);
  return url;
}

/** --log: an export directory or an https:// broker URL. */
function logSource(log: string, flags: TlsFlags): LogSource | Promise<LogSource> {
  if (isUrl(log)) return remoteSource(httpsUrl(log, '--log'), remoteTls(flags));
  if (flags.cacert !== undefined || flags.adminCert !== undefined || flags.adminKey !== undefined) {
    throw new UsageError('--cacert, --admin-cert and --admin-key are only for an https:// --log (or --reference)');
  }
  if (!existsSync(log) || !statSync(log).isDirectory()) throw new UsageError(`--log ${log}: no such export directory`);
  return openExport(log);
}

/** --key: the audit verifier key (audit.pub, GET /v1/audit/key) or a PEM public key. */
function verifierKey(keyFile: string): NoteVerifier {
  try {
    return parseVerifierKeyFile(readNamedFile(keyFile, '--key'));
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`--key ${keyFile}: ${(err as Error).message} (expected the verifier key from audit.pub or GET /v1/audit/key, or a PEM public key)`);
  }
}

/** The store the config points at. Read it while the broker is stopped (embedded) or any time (Redis). */
async function configuredStore(config: Config): Promise<Store> {
  if (config.store.redis !== undefined) return RedisStore.connect({ ...config.store.redis });
  const dir = config.store.embedded.dir;
  if (!existsSync(path.join(dir, 'audit.log'))) throw new UsageError(`no audit log in ${dir} (set store.embedded.dir, or run from the broker's folder)`);
  return EmbeddedStore.open(dir, { fsync: config.store.embedded.fsync });
}

async function configuredSource(configFile: string | undefined): Promise<{ source: LogSource; config: Config }> {
  const config = loadConfig(configFile !== undefined ? { file: configFile } : {});
  return { source: storeSource(await configuredStore(config)), config };
}

function report(r: VerifyResult, keyText: string, checked: string, out: Out): void {
  const lines: string[] = [];
  if (r.ok) {
    lines.push(`OK: the audit log${r.origin !== undefined ? ` ${r.origin}` : ''} verifies with ${keyText}`);
  } else {
    const where = [
      r.firstBadRange !== undefined
        ? `first bad entry somewhere in [${r.firstBadRange[0]}, ${r.firstBadRange[1]})`
        : r.firstBadIndex !== undefined
          ? `first bad entry index ${r.firstBadIndex}`
          : undefined,
      r.firstBadCheckpoint !== undefined ? `first bad checkpoint #${r.firstBadCheckpoint}` : undefined,
    ].filter((x) => x !== undefined);
    lines.push(`FAILED: the audit log does not verify${where.length > 0 ? `: ${where.join(', ')}` : ''}`);
    for (const p of r.problems) lines.push(`  - ${p.message}`);
  }
  lines.push(`  entries     : ${r.entries} (root ${r.rootHash})`);
  lines.push(`  checkpoints : ${r.checkpoints}`);
  lines.push(`  checked     : ${checked}`);
  lines.push(`  proven      : ${r.verifiedSize === 0 ? 'no entries' : `entries 0..${r.verifiedSize - 1}`} by a signed checkpoint`);
  if (r.witnessed !== undefined) {
    const w = r.witnessed;
    lines.push(`  witnessed   : ${w.witnessedSize === 0 ? 'no entries' : `entries 0..${w.witnessedSize - 1}`} by a checkpoint cosigned by at least ${w.quorum} witness(es)`);
    for (const c of w.checkpoints) {
      const who = c.cosigners.length === 0 ? 'no known witness' : c.cosigners.map((x) => `${x.name} (${new Date(x.timestamp * 1000).toISOString()})`).join(', ');
      lines.push(`  cosigned    : size ${c.size} by ${who}${c.consistent ? '' : ' — DOES NOT MATCH THE LOG'}`);
    }
  }
  if (r.uncovered > 0 && r.ok) {
    lines.push(`  note        : ${r.uncovered} newer entr${r.uncovered === 1 ? 'y is' : 'ies are'} not covered by a signed checkpoint yet (not verified)`);
  }
  out(`${lines.join('\n')}\n`);
}

/** Told when stdout is closed by its reader (`… | head -1`): tail stops quietly instead of dying on EPIPE. */
let stdoutClosed: (() => void) | undefined;
let stdoutWatched = false;
function quietOnClosedStdout(onClosed: () => void): void {
  stdoutClosed = onClosed;
  if (stdoutWatched) return;
  stdoutWatched = true;
  // Stays for the life of the process: the EPIPE can be emitted after the command returned.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    stdoutClosed?.();
  });
}

export const AUDIT_COMMANDS = [
  command({
    name: 'audit verify',
    usage:
      '--log DIR|URL --key FILE [--cacert PEM] [--admin-cert PEM --admin-key KEY]\n      [--reference URL] [--witness-key FILE … [--quorum K] [--cosigned FILE …]] [--json]',
    summary: 'check an audit log offline: every entry, root, checkpoint signature\nand consistency (exit 1 naming the first bad index). A URL without\nan auditor\'s --admin-cert is checked by its public leaf hashes only;\n--reference URL names the exact bad entry of an export DIR;\n--witness-key (repeatable): a checkpoint cosigned by K of them (default\nall) must match the log (from the broker URL, or --cosigned FILE)',
    options: {
      log: { type: 'string' },
      key: { type: 'string' },
      reference: { type: 'string' },
      json: { type: 'boolean' },
      'witness-key': { type: 'string', multiple: true },
      quorum: { type: 'string' },
      cosigned: { type: 'string', multiple: true },
      ...TLS_OPTIONS,
    },
    async run(values, _positionals, io) {
      const log = values.log;
      const keyFile = values.key;
      if (log === undefined || keyFile === undefined) throw new UsageError('audit verify needs --log <export-dir|https-url> and --key <audit public key file>');
      const key = verifierKey(keyFile);
      const witnessKeys = (values['witness-key'] ?? []).map((f) => {
        try {
          return parseCosignerKey(readNamedFile(f, '--witness-key'));
        } catch (err) {
          if (err instanceof UsageError) throw err;
          throw new UsageError(`--witness-key ${f}: ${(err as Error).message} (expected the verifier key \`tessera witness keygen\` printed)`);
        }
      });
      if (witnessKeys.length === 0 && (values.quorum !== undefined || values.cosigned !== undefined)) throw new UsageError('--quorum and --cosigned need --witness-key');
      const quorum = values.quorum === undefined ? witnessKeys.length : Number(values.quorum);
      if (witnessKeys.length > 0 && (!Number.isSafeInteger(quorum) || quorum < 1 || quorum > witnessKeys.length)) {
        throw new UsageError(`--quorum must be a whole number from 1 to ${witnessKeys.length} (the witness keys given)`);
      }
      const cosignedNotes = (values.cosigned ?? []).map((f) => readNamedFile(f, '--cosigned'));
      const flags = tlsFlags(values);
      const ref = values.reference;
      let source: LogSource;
      let opts: VerifyOptions;
      let checked: string;
      if (isUrl(log)) {
        if (ref !== undefined) throw new UsageError('--reference is for an export directory; a broker URL is its own reference');
        const remote = remoteSource(httpsUrl(log, '--log'), remoteTls(flags));
        source = remote;
        if (flags.adminCert !== undefined) {
          // The broker's own public leaf hashes name the exact entry if its stored entries were changed.
          opts = { reference: { name: log, leafHashes: remote.leafHashes } };
          checked = 'every entry, read as an auditor (--admin-cert) and re-hashed';
        } else {
          opts = { hashesOnly: true };
          checked = 'leaf hashes only: without auditor credentials no entry was read, so entry contents are unchecked (pass --admin-cert and --admin-key to read them)';
        }
      } else {
        source = await logSource(log, ref === undefined ? flags : {});
        if (ref !== undefined) {
          if (flags.adminCert !== undefined || flags.adminKey !== undefined) throw new UsageError('--reference reads public leaf hashes: it needs no --admin-cert');
          const remote = remoteSource(httpsUrl(ref, '--reference'), remoteTls(flags));
          opts = { reference: { name: ref, leafHashes: remote.leafHashes } };
          checked = `every entry in the export, re-hashed, and compared with the leaf hashes of ${ref} where checkpoints alone cannot name the entry`;
        } else {
          opts = {};
          checked = 'every entry in the export, re-hashed';
        }
      }
      if (witnessKeys.length > 0) {
        const fromBroker = isUrl(log) ? await remoteSource(httpsUrl(log, '--log'), remoteTls(flags)).cosigned(witnessKeys.length) : [];
        opts = { ...opts, witnesses: { keys: witnessKeys, quorum, notes: [...cosignedNotes, ...fromBroker] } };
      }
      let result: VerifyResult;
      try {
        result = await verifyLog(source, key, opts);
      } finally {
        await source.close();
      }
      if (values.json === true) io.stdout(`${JSON.stringify(result, null, 2)}\n`);
      else report(result, key.name !== undefined ? `key ${key.name}` : `the key in ${keyFile}`, checked, io.stdout);
      if (!result.ok) {
        const first =
          result.firstBadRange !== undefined
            ? `first bad entry somewhere in [${result.firstBadRange[0]}, ${result.firstBadRange[1]})`
            : result.firstBadIndex !== undefined
              ? `first bad entry index ${result.firstBadIndex}`
              : result.firstBadCheckpoint !== undefined
                ? `first bad checkpoint #${result.firstBadCheckpoint}`
                : (result.problems[0]?.message ?? 'see above');
        io.stderr(`tessera: audit verify failed: ${first}\n`);
        return 1;
      }
      return 0;
    },
  }),
  command({
    name: 'audit export',
    usage: '--out DIR [--config FILE | --log URL [--cacert PEM] --admin-cert PEM --admin-key KEY]',
    summary: 'write the log as entries.jsonl + checkpoints.txt + manifest.json\n(stop the broker first when reading an embedded store)',
    options: { out: { type: 'string' }, config: { type: 'string' }, log: { type: 'string' }, ...TLS_OPTIONS },
    async run(values, _positionals, io) {
      const outDir = values.out;
      if (outDir === undefined) throw new UsageError('audit export needs --out DIR');
      const log = values.log;
      if (log !== undefined && values.config !== undefined) throw new UsageError('use either --config (read the store) or --log https://… (read a running broker)');
      let source: LogSource;
      let verifierKey: string | undefined;
      if (log !== undefined) {
        if (!isUrl(log)) throw new UsageError('audit export --log takes a broker https:// URL');
        source = await logSource(log, tlsFlags(values));
      } else {
        const c = await configuredSource(values.config);
        source = c.source;
        try {
          const opened = await openAuditSigner(c.config.audit);
          verifierKey = opened.signer.verifierKey;
          opened.close();
        } catch {
          verifierKey = undefined; // informational only
        }
      }
      try {
        const manifest = await exportLog(source, outDir, { ...(verifierKey !== undefined ? { verifierKey } : {}), now: io.now });
        io.stdout(`exported ${manifest.treeSize} entries and ${manifest.checkpointCount} checkpoints to ${outDir} (root ${manifest.rootHash})\n`);
      } finally {
        await source.close();
      }
      return 0;
    },
  }),
  command({
    name: 'audit search',
    usage: '[--config FILE | --log DIR|URL [--cacert PEM --admin-cert PEM --admin-key KEY]]\n      [--spiffe-id ID] [--serial S] [--since T] [--until T] [--type TYPE]\n      [--decision allow|deny] [--namespace NS] [--limit N] [--start INDEX]',
    summary: 'print matching entries as JSON lines (T: ISO-8601, ms, or 15m/2h/7d ago)',
    options: {
        config: { type: 'string' },
        log: { type: 'string' },
        ...TLS_OPTIONS,
        'spiffe-id': { type: 'string' },
        serial: { type: 'string' },
        since: { type: 'string' },
        until: { type: 'string' },
        type: { type: 'string' },
        decision: { type: 'string' },
        namespace: { type: 'string' },
        limit: { type: 'string' },
        start: { type: 'string' },
      },
    async run(values, _positionals, io) {
      let filter;
      try {
        filter = parseSearchFilter(
          {
            ...(values['spiffe-id'] !== undefined ? { spiffeId: values['spiffe-id'] } : {}),
            ...(values.serial !== undefined ? { serial: values.serial } : {}),
            ...(values.since !== undefined ? { since: values.since } : {}),
            ...(values.until !== undefined ? { until: values.until } : {}),
            ...(values.type !== undefined ? { type: values.type } : {}),
            ...(values.decision !== undefined ? { decision: values.decision } : {}),
            ...(values.namespace !== undefined ? { namespace: values.namespace } : {}),
          },
          io.now(),
        );
      } catch (err) {
        if (err instanceof BrokerError) throw new UsageError(`--${err.message.replace(/^spiffeId/, 'spiffe-id')}`);
        throw err;
      }
      const count = (v: unknown, name: string, fallback: number, min: number): number => {
        if (v === undefined) return fallback;
        const n = Number(v);
        if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`--${name} must be an integer ≥ ${min}`);
        return n;
      };
      const limit = count(values.limit, 'limit', 1000, 1);
      const start = count(values.start, 'start', 0, 0);
      const log = values.log;
      if (log !== undefined && values.config !== undefined) throw new UsageError('use either --config or --log');
      const source = log !== undefined ? await logSource(log, tlsFlags(values)) : (await configuredSource(values.config)).source;
      try {
        const r = await searchLog(source, filter, { limit, start });
        for (const h of r.hits) io.stdout(`${JSON.stringify({ index: h.index, ...h.entry })}\n`);
        io.stderr(`${r.hits.length} match(es) in ${r.scanned} entries${r.malformed > 0 ? `, ${r.malformed} malformed entries skipped (run audit verify)` : ''}\n`);
        if (r.truncated) io.stderr(`more matches may follow: re-run with --start ${r.next ?? 0}\n`);
      } finally {
        await source.close();
      }
      return 0;
    },
  }),
  command({
    name: 'audit tail',
    usage: '--log URL [--cacert PEM] --admin-cert PEM --admin-key KEY\n      [--from INDEX] [--follow] [--spiffe-id ID]… [--interval-ms MS]',
    summary: 'print audit entries of a running broker as JSON lines {index, leafHash,\nentry}, from INDEX (default: the last 10), in order; --follow keeps\npolling for new ones (Ctrl-C stops). Resume with --from <last index + 1>.\nEach read is itself an audit entry (admin, audit.entries)',
    options: {
      log: { type: 'string' },
      ...TLS_OPTIONS,
      from: { type: 'string' },
      follow: { type: 'boolean' },
      'spiffe-id': { type: 'string', multiple: true },
      'interval-ms': { type: 'string' },
    },
    async run(values, _positionals, io) {
      const log = values.log;
      if (log === undefined || !isUrl(log)) throw new UsageError('audit tail needs --log https://broker:port (a running broker) and an auditor --admin-cert/--admin-key');
      const flags = tlsFlags(values);
      if (flags.adminCert === undefined) throw new UsageError('audit tail reads entries: it needs --admin-cert and --admin-key (an admin certificate with the auditor role)');
      const int = (v: string | undefined, name: string, min: number, max: number): number | undefined => {
        if (v === undefined) return undefined;
        const n = Number(v);
        if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer in [${min}, ${max}]`);
        return n;
      };
      const from = int(values.from, 'from', 0, Number.MAX_SAFE_INTEGER);
      const intervalMs = int(values['interval-ms'], 'interval-ms', 50, 3_600_000) ?? 1000;
      const ids = new Set(values['spiffe-id'] ?? []);
      for (const id of ids) if (!id.startsWith('spiffe://')) throw new UsageError(`--spiffe-id ${id}: expected spiffe://…`);
      const source = remoteSource(httpsUrl(log, '--log'), remoteTls(flags));
      let stop = false;
      const onSignal = (): void => {
        stop = true;
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      quietOnClosedStdout(() => {
        stop = true;
      });
      try {
        let size = await source.size();
        let next = from ?? Math.max(0, size - 10);
        if (next > size) io.stderr(`the log has ${size} entries; ${values.follow === true ? 'waiting for' : 'no'} entry ${next}\n`);
        // Reading entries is itself recorded (one admin entry per read): while following, wait for
        // more than that one entry, or tailing would feed on its own reads forever.
        let ownRead = 0;
        for (;;) {
          const reading = size - next > ownRead;
          if (reading) for await (const bytes of source.entries(next, size)) {
            const entry = canonicalEntry(bytes);
            const show = ids.size === 0 || (entry !== undefined && ((entry.actor !== null && ids.has(entry.actor)) || (entry.subject !== null && ids.has(entry.subject))));
            if (show) {
              const line = entry !== undefined ? `{"index":${next},"leafHash":"${leafHash(bytes).toString('base64')}","entry":${bytes.toString('utf8')}}` : JSON.stringify({ index: next, leafHash: leafHash(bytes).toString('base64'), entryBase64: bytes.toString('base64') });
              io.stdout(`${line}\n`);
            }
            next++;
            if (stop) break;
          }
          if (reading) ownRead = 1;
          if (values.follow !== true || stop) break;
          await new Promise((r) => setTimeout(r, intervalMs));
          if (stop) break;
          size = await source.size();
        }
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
        stdoutClosed = undefined;
        await source.close();
      }
      return 0;
    },
  }),
  command({
    name: 'audit recover',
    usage: '--from DIR --key FILE [--config FILE]',
    summary: 're-seed an EMPTY store (Redis that lost its data) from a verified export;\nstop every replica first, restart them after (docs/redis.md)',
    options: { from: { type: 'string' }, key: { type: 'string' }, config: { type: 'string' } },
    async run(values, _positionals, io) {
      // Re-seed an emptied store from an export (audit/recover.ts); every replica must be stopped.
            const from = values.from;
      const keyFile = values.key;
      if (from === undefined || keyFile === undefined) throw new UsageError('audit recover needs --from <export-dir> and --key <audit public key file> (and --config FILE for the store)');
      const key = verifierKey(keyFile);
      if (!existsSync(from) || !statSync(from).isDirectory()) throw new UsageError(`--from ${from}: no such export directory`);
      const source = await openExport(from);
      const config = loadConfig(values.config !== undefined ? { file: values.config } : {});
      const store = config.store.redis !== undefined ? await RedisStore.connect({ ...config.store.redis }) : await EmbeddedStore.open(config.store.embedded.dir, { fsync: config.store.embedded.fsync });
      try {
        const r = await recoverLog(source, key, store, { from, now: io.now });
        io.stdout(
          `recovered ${r.restored} entries and ${r.checkpoints} checkpoints (root ${r.rootHash}); the recovery is audit entry ${r.recordIndex}` +
            `${r.skipped > 0 ? `; ${r.skipped} newer entries without a signed checkpoint were not restored` : ''}\n` +
            'restart every replica now: each one checks the recovered log against its newest checkpoint on start\n',
        );
      } catch (err) {
        io.stderr(`tessera: audit recover failed: ${(err as Error).message}\n`);
        return 1;
      } finally {
        await source.close();
        await store.close();
      }
      return 0;
    },
  }),
];

/** `tessera audit …` with its arguments; throws on misuse (tests call it with their own io). */
export function auditCommand(args: readonly string[], io: CliIo = processIo): Promise<number> {
  return dispatch(AUDIT_COMMANDS, ['audit', ...args], io);
}
