/**
 * `tessera agent`: flags checked up front (a mistake is exit 2 with a message naming the flag), then
 * the agent in init-container mode (--once: exit 0 when the files are written, 1 when the deadline
 * passes) or sidecar mode (runs until SIGTERM/SIGINT, then exits 0).
 */
import { statSync } from 'node:fs';
import { Agent, audienceFileName, FILE_NAMES, type AgentOptions } from '../agent/agent.js';
import type { AgentConfigFile, FileNameLayout } from '../agent/config.js';
import { agentLogger } from '../agent/log.js';
import { socketPathOf } from '../agent/workload-api/socket.js';
import { brokerUrl } from '../sdk/http.js';
import { splitPem } from '../sdk/x509.js';
import { command, parseOptions } from './command.js';
import { readNamedFile } from './files.js';
import { UsageError } from './usage.js';
import { WORKLOAD_API_COMMANDS } from './workload-api.js';

const AGENT_HELP = `options:
  --broker URL          broker base URL (https://)
  --bundle FILE         trust bundle (PEM) to verify the broker with
  --token-file FILE     projected service-account token (re-read on every use)
  --out DIR             where svid.pem, svid.key (0600), bundle.pem, jwt_bundle.json and
                        jwt/<aud>.token are written (optional for a sidecar with --workload-api)
  --file-names LAYOUT   tessera (default) or spiffe-helper: svid.pem, svid_key.pem, svid_bundle.pem
  --once                init-container mode: fetch, write, exit 0; exit 1 if the deadline passes
  --jwt-audience AUD    also keep a JWT-SVID for AUD in jwt/<AUD>.token (repeatable)
  --on-rotate CMD       run CMD with /bin/sh after every change of the files
  --health-port N       serve GET /healthz on 127.0.0.1:N (sidecar mode; 0 picks a free port)
  --deadline SECONDS    give up on the first SVID after this long (default 60 with --once, none otherwise)
  --workload-api URI    serve the SPIFFE Workload API and Envoy SDS on unix:///path (sidecar mode;
                        socket mode 0770; point clients at it with SPIFFE_ENDPOINT_SOCKET=URI)
  --config FILE         YAML with the same settings (broker, bundle, tokenFile, out, jwtAudiences,
                        fileNames, onRotate, healthPort, deadline, workloadApi: {socket, maxStreams});
                        flags win
`;

function need(value: string | undefined, flag: string): string {
  if (value === undefined || value === '') throw new UsageError(`agent needs ${flag}`);
  return value;
}

function intFlag(value: string | undefined, flag: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new UsageError(`${flag} must be a whole number from ${min} to ${max}`);
  }
  return Number(value);
}

const AGENT_OPTIONS = {
  broker: { type: 'string' },
  bundle: { type: 'string' },
  'token-file': { type: 'string' },
  out: { type: 'string' },
  once: { type: 'boolean' },
  'jwt-audience': { type: 'string', multiple: true },
  'on-rotate': { type: 'string' },
  'health-port': { type: 'string' },
  deadline: { type: 'string' },
  'workload-api': { type: 'string' },
  'file-names': { type: 'string' },
  config: { type: 'string' },
} as const;

type AgentValues = ReturnType<typeof parseOptions<typeof AGENT_OPTIONS>>['values'];

/**
 * Parses `tessera agent` arguments and checks every value that needs no filesystem (deploy manifests
 * are checked with this); throws UsageError with a message naming the flag.
 */
export function parseAgentFlags(argv: readonly string[]): AgentOptions {
  const { values } = parseOptions(AGENT_OPTIONS, argv);
  if (values.config !== undefined) throw new UsageError('--config is read when the agent runs; check the flags without it');
  return agentFlags({ values, file: {} });
}

/**
 * Settings from --config FILE fill in flags that were not given. The schema module is loaded only
 * then: TypeBox would add a quarter to the resident memory of every sidecar that has no config file.
 */
async function withConfigFile(values: AgentValues): Promise<{ values: AgentValues; file: AgentConfigFile }> {
  if (values.config === undefined) return { values, file: {} };
  let file: AgentConfigFile;
  try {
    const { parseAgentConfig } = await import('../agent/config.js');
    file = parseAgentConfig(readNamedFile(values.config, '--config'));
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`--config ${values.config}: ${(err as Error).message}`);
  }
  const str = (n: number | undefined): string | undefined => (n === undefined ? undefined : String(n));
  const fill = { ...values } as Record<string, unknown>;
  const fromFile: Record<string, unknown> = {
    broker: file.broker,
    bundle: file.bundle,
    'token-file': file.tokenFile,
    out: file.out,
    'jwt-audience': file.jwtAudiences,
    'on-rotate': file.onRotate,
    'health-port': str(file.healthPort),
    deadline: str(file.deadline),
    'workload-api': file.workloadApi?.socket,
    'file-names': file.fileNames,
  };
  for (const [k, v] of Object.entries(fromFile)) if (fill[k] === undefined && v !== undefined) fill[k] = v;
  const merged = fill as AgentValues;
  return { values: merged, file };
}

function agentFlags({ values, file }: { values: AgentValues; file: AgentConfigFile }): AgentOptions {
  const broker = need(values.broker, '--broker URL');
  try {
    brokerUrl(broker);
  } catch (err) {
    throw new UsageError(`--broker: ${(err as Error).message}`);
  }
  const bundleFile = need(values.bundle, '--bundle FILE');
  const tokenFile = need(values['token-file'], '--token-file FILE');
  const once = values.once === true;
  let workloadApiSocket: string | undefined;
  if (values['workload-api'] !== undefined) {
    if (once) throw new UsageError('--workload-api is served by the sidecar; it has no use with --once');
    try {
      workloadApiSocket = socketPathOf(values['workload-api']);
    } catch (err) {
      throw new UsageError(`--workload-api: ${(err as Error).message}`);
    }
  }
  const outDir = workloadApiSocket !== undefined && values.out === undefined ? undefined : need(values.out, '--out DIR');
  const jwtAudiences = [...new Set(values['jwt-audience'] ?? [])];
  for (const aud of jwtAudiences) {
    // eslint-disable-next-line no-control-regex -- control characters are exactly what is refused
    if (aud.length === 0 || aud.length > 256 || /[\u0000-\u001f\u007f]/.test(aud)) {
      throw new UsageError('--jwt-audience must be 1 to 256 printable characters');
    }
    if (Buffer.byteLength(audienceFileName(aud)) > 200) throw new UsageError(`--jwt-audience ${JSON.stringify(aud)} is too long for a file name`);
  }
  const onRotate = values['on-rotate'];
  if (onRotate !== undefined && onRotate.trim() === '') throw new UsageError('--on-rotate needs a command');
  if (onRotate !== undefined && outDir === undefined) throw new UsageError('--on-rotate runs after the files change: it needs --out DIR');
  const fileNames = values['file-names'];
  if (fileNames !== undefined && !Object.keys(FILE_NAMES).includes(fileNames)) {
    throw new UsageError(`--file-names must be one of ${Object.keys(FILE_NAMES).join(', ')}`);
  }
  if (fileNames !== undefined && outDir === undefined) throw new UsageError('--file-names names the files in --out DIR: it needs --out');
  const healthPort = intFlag(values['health-port'], '--health-port', 0, 65_535);
  if (once && healthPort !== undefined) throw new UsageError('--health-port is for the sidecar; it has no use with --once');
  const deadlineSeconds = intFlag(values.deadline, '--deadline', 1, 86_400);
  return {
    broker,
    bundleFile,
    tokenFile,
    ...(outDir !== undefined ? { outDir } : {}),
    once,
    jwtAudiences,
    ...(onRotate !== undefined ? { onRotate } : {}),
    ...(healthPort !== undefined ? { healthPort } : {}),
    ...(deadlineSeconds !== undefined ? { deadlineSeconds } : {}),
    ...(workloadApiSocket !== undefined ? { workloadApiSocket } : {}),
    ...(fileNames !== undefined ? { fileNames: fileNames as FileNameLayout } : {}),
    ...(file.workloadApi?.maxStreams !== undefined ? { workloadApiMaxStreams: file.workloadApi.maxStreams } : {}),
  };
}

/** parseAgentFlags, then the files: a readable bundle with certificates, a token file, an output directory. */
export function parseAgentArgs(argv: readonly string[]): AgentOptions {
  return checkAgentFiles(parseAgentFlags(argv));
}

function checkAgentFiles(opts: AgentOptions): AgentOptions {
  const bundle = readNamedFile(opts.bundleFile, '--bundle');
  if (splitPem(bundle).length === 0) throw new UsageError(`--bundle ${opts.bundleFile}: holds no PEM certificate`);
  try {
    if (!statSync(opts.tokenFile).isFile()) throw new UsageError(`--token-file ${opts.tokenFile}: not a file`);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`--token-file ${opts.tokenFile}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const outDir = opts.outDir;
  try {
    if (outDir !== undefined && !statSync(outDir).isDirectory()) throw new UsageError(`--out ${outDir}: exists and is not a directory`);
  } catch (err) {
    if (err instanceof UsageError) throw err; // a missing directory is created on the first write
  }
  return opts;
}

export const AGENT_COMMANDS = [
  command({
    name: 'agent',
    usage: '--broker URL --bundle FILE --token-file FILE --out DIR [--once] [--jwt-audience AUD ...]\n      [--on-rotate CMD] [--health-port N] [--deadline SECONDS] [--workload-api unix:///PATH]\n      [--file-names tessera|spiffe-helper] [--config FILE]',
    summary: "write and rotate this workload's SVID files (init container or sidecar)",
    details: AGENT_HELP,
    options: AGENT_OPTIONS,
    run: async (values) => runAgent(checkAgentFiles(agentFlags(await withConfigFile(values)))),
  }),
  ...WORKLOAD_API_COMMANDS,
];

/** Runs the agent; exits the process itself (0 done or stopped, 1 failed). */
async function runAgent(opts: AgentOptions): Promise<void> {
  const log = agentLogger();
  const a = new Agent(opts, log);
  const fail = (err: unknown): never => {
    const message = err instanceof Error ? err.message : String(err);
    log.error({ error: message }, 'giving up');
    process.stderr.write(`tessera agent: ${message}\n`);
    process.exit(1);
  };

  let stopping = false;
  const shutdown = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    // Interrupting --once before the files exist is a failure; stopping a sidecar is not.
    a.stop().then(
      () => process.exit(opts.once ? 1 : 0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', shutdown);
  process.once('SIGINT', shutdown);
  // SIGHUP: try again now, reading the token file afresh (it used to end the agent).
  process.on('SIGHUP', () => a.refreshNow());

  if (opts.once) {
    try {
      await a.runOnce();
    } catch (err) {
      if (stopping) return;
      fail(err);
    }
    if (stopping) return;
    log.info({ out: opts.outDir }, 'done');
    process.exit(0);
  }
  try {
    await a.start();
  } catch (err) {
    if (stopping) return;
    await a.stop().catch(() => undefined);
    fail(err);
  }
}
