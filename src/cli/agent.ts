/**
 * `tessera agent`: flags checked up front (a mistake is exit 2 with a message naming the flag), then
 * the agent in init-container mode (--once: exit 0 when the files are written, 1 when the deadline
 * passes) or sidecar mode (runs until SIGTERM/SIGINT, then exits 0).
 */
import { readFileSync, statSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Agent, audienceFileName, type AgentOptions } from '../agent/agent.js';
import { jsonLogger } from '../agent/log.js';
import { brokerUrl } from '../sdk/http.js';
import { splitPem } from '../sdk/x509.js';
import { UsageError } from './usage.js';

export const AGENT_USAGE = `usage: tessera agent --broker URL --bundle FILE --token-file FILE --out DIR [options]

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

/**
 * Parses `tessera agent` arguments and checks every value that needs no filesystem (deploy manifests
 * are checked with this); throws UsageError with a message naming the flag.
 */
export function parseAgentFlags(argv: readonly string[]): AgentOptions {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        broker: { type: 'string' },
        bundle: { type: 'string' },
        'token-file': { type: 'string' },
        out: { type: 'string' },
        once: { type: 'boolean' },
        'jwt-audience': { type: 'string', multiple: true },
        'on-rotate': { type: 'string' },
        'health-port': { type: 'string' },
        deadline: { type: 'string' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new UsageError(`agent: ${(err as Error).message}`);
  }
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
  const opts = parseAgentFlags(argv);
  let bundle: string;
  try {
    bundle = readFileSync(opts.bundleFile, 'utf8');
  } catch (err) {
    throw new UsageError(`--bundle ${opts.bundleFile}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
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

/** Runs `tessera agent`; exits the process itself (0 done or stopped, 1 failed). */
export async function agent(argv: readonly string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(AGENT_USAGE);
    return;
  }
  let opts: AgentOptions;
  try {
    opts = parseAgentArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`tessera: ${err.message}\n\n${AGENT_USAGE}`);
    process.exit(2);
  }
  const log = jsonLogger();
  const a = new Agent(opts, log);
  const fail = (err: unknown): never => {
    const message = err instanceof Error ? err.message : String(err);
    log.log('error', 'giving up', { error: message });
    process.stderr.write(`tessera agent: ${message}\n`);
    process.exit(1);
  };

  let stopping = false;
  const shutdown = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log.log('info', 'stopping', { signal });
    // Interrupting --once before the files exist is a failure; stopping a sidecar is not.
    a.stop().then(
      () => process.exit(opts.once ? 1 : 0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', shutdown);
  process.once('SIGINT', shutdown);

  if (opts.once) {
    try {
      await a.runOnce();
    } catch (err) {
      if (stopping) return;
      fail(err);
    }
    if (stopping) return;
    log.log('info', 'done', { out: opts.outDir });
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
