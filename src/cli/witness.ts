/**
 * `tessera witness`: a C2SP tlog-witness for one or more audit logs (witness/), and `tessera witness
 * keygen` to make its key. The witness runs until SIGTERM/SIGINT, then exits 0.
 */
import { constants, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { type Cosigner, generateCosignerKey, parseCosignerSecretKey } from '../audit/cosignature.js';
import { type NoteVerifier, parseVerifierKeyFile } from '../audit/note.js';
import { startWitnessServer } from '../witness/server.js';
import { WitnessState } from '../witness/state.js';
import { Witness } from '../witness/witness.js';
import { command } from './command.js';
import { readNamedFile } from './files.js';
import { CommandFailed, UsageError } from './usage.js';

/** host:port, [v6]:port or a bare port (then 127.0.0.1). */
export function parseListen(value: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(value) ?? /^()()(\d{1,5})$/.exec(value);
  const port = Number(m?.[3]);
  if (m === null || port > 65_535) throw new UsageError(`--listen ${value}: expected host:port (e.g. 127.0.0.1:9500)`);
  return { host: m[1] || m[2] || '127.0.0.1', port };
}

function loadCosigner(file: string): Cosigner {
  let mode: number;
  try {
    mode = statSync(file).mode;
  } catch (err) {
    throw new UsageError(`--key ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  if ((mode & 0o077) !== 0) throw new CommandFailed(`--key ${file} is readable by group or others; chmod 600 it`);
  try {
    return parseCosignerSecretKey(readNamedFile(file, '--key'));
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`--key ${file}: ${(err as Error).message} (expected the key \`tessera witness keygen\` wrote)`);
  }
}

function loadLogKey(file: string): NoteVerifier {
  let key: NoteVerifier;
  try {
    key = parseVerifierKeyFile(readNamedFile(file, '--log-key'));
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`--log-key ${file}: ${(err as Error).message} (expected the log's verifier key, e.g. audit.pub or GET /v1/audit/key)`);
  }
  if (key.name === undefined) throw new UsageError(`--log-key ${file}: a PEM key names no log; give the verifier key <origin>+<id>+<key> (GET /v1/audit/key)`);
  return key;
}

const line = (event: Record<string, unknown>): string => `${JSON.stringify({ time: new Date().toISOString(), ...event })}\n`;

export const WITNESS_COMMANDS = [
  command({
    name: 'witness keygen',
    usage: '--name NAME --out FILE',
    summary: 'make a witness key: writes the secret key to FILE (0600, never\noverwritten) and prints its verifier key for the log operators',
    details: 'NAME identifies the witness, e.g. witness.example.com/w1. Use one key per witness name.\n',
    options: { name: { type: 'string' }, out: { type: 'string' } },
    async run(values, _positionals, io) {
      const name = values.name;
      const out = values.out;
      if (name === undefined || out === undefined) throw new UsageError('witness keygen needs --name NAME and --out FILE');
      let key;
      try {
        key = generateCosignerKey(name);
      } catch (err) {
        throw new UsageError(`--name ${JSON.stringify(name)}: ${(err as Error).message}`);
      }
      let fh;
      try {
        fh = await open(out, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        throw new CommandFailed(`--out ${out}: ${code === 'EEXIST' ? 'already exists (a witness key is never overwritten)' : `cannot create it (${code ?? (err as Error).message})`}`);
      }
      try {
        await fh.writeFile(`${key.skey}\n`);
        await fh.sync();
      } finally {
        await fh.close();
      }
      io.stdout(`${key.vkey}\n`);
      return 0;
    },
  }),
  command({
    name: 'witness',
    usage: '--key FILE --log-key FILE [--log-key FILE …] --listen HOST:PORT --state DIR',
    summary: 'run a C2SP tlog-witness: cosign each followed log\'s checkpoints that\nextend the last one it cosigned (POST /add-checkpoint)',
    details:
      'options:\n' +
      '  --key FILE        the witness key (tessera witness keygen; 0600)\n' +
      '  --log-key FILE    verifier key of a log to follow (audit.pub, GET /v1/audit/key); repeatable\n' +
      '  --listen H:P      address to serve on (plain HTTP; port 0 picks a free one)\n' +
      '  --state DIR       where the last cosigned checkpoint of each log is kept (fsynced)\n',
    options: { key: { type: 'string' }, 'log-key': { type: 'string', multiple: true }, listen: { type: 'string' }, state: { type: 'string' } },
    async run(values, _positionals, io) {
      const keyFile = values.key;
      const logKeyFiles = values['log-key'] ?? [];
      const listen = values.listen;
      const stateDir = values.state;
      if (keyFile === undefined || logKeyFiles.length === 0 || listen === undefined || stateDir === undefined) {
        throw new UsageError('witness needs --key FILE, at least one --log-key FILE, --listen HOST:PORT and --state DIR');
      }
      const addr = parseListen(listen);
      const cosigner = loadCosigner(keyFile);
      const logs = logKeyFiles.map(loadLogKey);
      const state = await WitnessState.open(stateDir);
      const witness = new Witness({
        cosigner,
        logs,
        state,
        onRefusal: (e) =>
          io.stderr(line({ level: 'warn', msg: 'checkpoint refused', origin: e.origin, status: e.status, reason: e.message, request: e.request.toString('utf8') })),
      });
      let srv;
      try {
        srv = await startWitnessServer(witness, { ...addr, onError: (err) => io.stderr(line({ level: 'error', msg: 'add-checkpoint failed', err: String(err) })) });
      } catch (err) {
        await state.close();
        throw err;
      }
      io.stdout(line({ level: 'info', msg: 'witness listening', url: srv.url, name: cosigner.name, vkey: cosigner.verifierKey, logs: witness.origins }));
      const shutdown = (): void => {
        void srv
          .close()
          .then(() => state.close())
          .finally(() => process.exit(0));
      };
      process.once('SIGTERM', shutdown);
      process.once('SIGINT', shutdown);
      return 0;
    },
  }),
];
