/**
 * `tessera agent`: flags checked up front (a mistake is exit 2 with a message naming the flag), then
 * the agent in init-container mode (--once: exit 0 when the files are written, 1 when the deadline
 * passes) or sidecar mode (runs until SIGTERM/SIGINT, then exits 0).
 */
import { statSync } from 'node:fs';
import { Agent, audienceFileName, type AgentOptions } from '../agent/agent.js';
import { agentLogger } from '../agent/log.js';
import { brokerUrl } from '../sdk/http.js';
import { splitPem } from '../sdk/x509.js';
import { command, parseOptions } from './command.js';
import { readNamedFile } from './files.js';
import { UsageError } from './usage.js';

const AGENT_HELP = `options:
  --broker URL          broker base URL (https://)
  --bundle FILE         trust bundle (PEM) to verify the broker with
  --token-file FILE     projected service-account token (re-read on every use)
  --out DIR             where svid.pem, svid.key (0600), bundle.pem and jwt/<aud>.token are written
  --once                init-container mode: fetch, write, exit 0; exit 1 if the deadline passes
  --jwt-audience AUD    also keep a JWT-SVID for AUD in jwt/<AUD>.token (repeatable)
  --on-rotate CMD       run CMD with /bin/sh after every change of the files
  --health-port N       serve GET /healthz on 127.0.0.1:N (sidecar mode; 0 picks a free port)
  --deadline SECONDS    give up on the first SVID after this long (default 60 with --once, none otherwise)
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
} as const;

type AgentValues = ReturnType<typeof parseOptions<typeof AGENT_OPTIONS>>['values'];

/**
 * Parses `tessera agent` arguments and checks every value that needs no filesystem (deploy manifests
 * are checked with this); throws UsageError with a message naming the flag.
 */
export function parseAgentFlags(argv: readonly string[]): AgentOptions {
  return agentFlags(parseOptions(AGENT_OPTIONS, argv).values);
}

function agentFlags(values: AgentValues): AgentOptions {
  const broker = need(values.broker, '--broker URL');
  try {
    brokerUrl(broker);
  } catch (err) {
    throw new UsageError(`--broker: ${(err as Error).message}`);
  }
  const bundleFile = need(values.bundle, '--bundle FILE');
  const tokenFile = need(values['token-file'], '--token-file FILE');
  const outDir = need(values.out, '--out DIR');
  const once = values.once === true;
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
  const healthPort = intFlag(values['health-port'], '--health-port', 0, 65_535);
  if (once && healthPort !== undefined) throw new UsageError('--health-port is for the sidecar; it has no use with --once');
  const deadlineSeconds = intFlag(values.deadline, '--deadline', 1, 86_400);
  return {
    broker,
    bundleFile,
    tokenFile,
    outDir,
    once,
    jwtAudiences,
    ...(onRotate !== undefined ? { onRotate } : {}),
    ...(healthPort !== undefined ? { healthPort } : {}),
    ...(deadlineSeconds !== undefined ? { deadlineSeconds } : {}),
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
  try {
    if (!statSync(opts.outDir).isDirectory()) throw new UsageError(`--out ${opts.outDir}: exists and is not a directory`);
  } catch (err) {
    if (err instanceof UsageError) throw err; // a missing directory is created on the first write
  }
  return opts;
}

export const AGENT_COMMANDS = [
  command({
    name: 'agent',
    usage: '--broker URL --bundle FILE --token-file FILE --out DIR [--once] [--jwt-audience AUD ...]\n      [--on-rotate CMD] [--health-port N] [--deadline SECONDS]',
    summary: "write and rotate this workload's SVID files (init container or sidecar)",
    details: AGENT_HELP,
    options: AGENT_OPTIONS,
    run: (values) => runAgent(checkAgentFiles(agentFlags(values))),
  }),
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
