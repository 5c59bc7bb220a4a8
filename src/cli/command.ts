/**
 * The CLI's command table: each command declares its options, usage line and help text in one place
 * (the modules export them); this module parses with node:util parseArgs, answers --help, and turns
 * failures into exit codes: 0 ok, 1 failure, 2 usage.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { CommandFailed, UsageError } from './usage.js';

type Options = NonNullable<ParseArgsConfig['options']>;
type Parsed<O extends Options> = ReturnType<typeof parseArgs<{ options: O; allowPositionals: true; strict: true }>>;

export interface CliIo {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  readonly now: () => number;
}

export const processIo: CliIo = {
  stdout: (t) => void process.stdout.write(t),
  stderr: (t) => void process.stderr.write(t),
  now: () => Date.now(),
};

export interface Command {
  /** The words that select it: "serve", "audit verify". */
  readonly name: string;
  /** The synopsis after `tessera <name>`; continuation lines start with spaces. */
  readonly usage: string;
  /** What it does, for the command list and its --help. */
  readonly summary: string;
  /** More help, printed by its --help only. */
  readonly details?: string;
  /** Runs with the arguments after its name; resolves to the exit code (void: 0). Throws UsageError on misuse. */
  run(argv: readonly string[], io: CliIo): Promise<number | void>;
}

export interface CommandSpec<O extends Options> extends Omit<Command, 'run'> {
  readonly options: O;
  /** Accepts positional arguments (the command checks them); without it they are refused. */
  readonly positionals?: boolean;
  readonly run: (values: Parsed<O>['values'], positionals: string[], io: CliIo) => Promise<number | void> | number | void;
}

export function command<O extends Options>(spec: CommandSpec<O>): Command {
  const { options, positionals, run, ...rest } = spec;
  return {
    ...rest,
    run: async (argv, io) => {
      const parsed = parseOptions(options, argv, positionals === true);
      return run(parsed.values, parsed.positionals, io);
    },
  };
}

/** parseArgs, with its errors as UsageError messages that name the option. */
export function parseOptions<O extends Options>(options: O, argv: readonly string[], allowPositionals = false): Parsed<O> {
  try {
    return parseArgs({ args: joinNegativeValues(options, argv), options, strict: true, allowPositionals: allowPositionals as true });
  } catch (err) {
    if (!(err instanceof TypeError) || !String((err as NodeJS.ErrnoException).code).startsWith('ERR_PARSE_ARGS')) throw err;
    const missing = /^Option '(-[^ ']+)(?: <value>)?' argument (?:missing|is ambiguous)/.exec(err.message);
    throw new UsageError(missing ? `${missing[1]} needs a value` : err.message);
  }
}

/** parseArgs reads the `-5` of `--ttl -5` as an option; a negative number after a string option is its value (checked later). */
function joinNegativeValues(options: Options, argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const next = argv[i + 1];
    if (arg.startsWith('--') && options[arg.slice(2)]?.type === 'string' && next !== undefined && /^-\d/.test(next)) {
      out.push(`${arg}=${next}`);
      i++;
    } else out.push(arg);
  }
  return out;
}

const COLUMN = 35;

/** "  serve [--config FILE]      run the broker": one entry per command, the summary in a column. */
export function listing(commands: readonly Command[]): string {
  const pad = ' '.repeat(COLUMN);
  return commands
    .map((c) => {
      const usage = `  ${c.name}${c.usage === '' ? '' : ` ${c.usage}`}`;
      const summary = c.summary.split('\n').map((l) => pad + l);
      const last = usage.split('\n').at(-1) as string;
      if (!usage.includes('\n') && last.length < COLUMN - 1) return [last.padEnd(COLUMN) + c.summary.split('\n')[0], ...summary.slice(1)].join('\n');
      return [usage, ...summary].join('\n');
    })
    .join('\n');
}

export function helpText(c: Command): string {
  return `usage: tessera ${c.name}${c.usage === '' ? '' : ` ${c.usage}`}\n\n${c.summary}\n${c.details !== undefined ? `\n${c.details}` : ''}`;
}

function groupHelp(group: string, commands: readonly Command[]): string {
  return `usage: tessera ${group} <${commands.map((c) => c.name.slice(group.length + 1)).join('|')}> [options]\n\n${listing(commands)}\n\ntessera ${group} <command> --help for one command\n`;
}

const wantsHelp = (argv: readonly string[]): boolean => argv.includes('--help') || argv.includes('-h');

type Resolved = { kind: 'command'; command: Command; rest: readonly string[] } | { kind: 'help'; text: string };

/** The command that argv names (longest name first), or a help text; throws UsageError naming what is unknown. */
function resolve(table: readonly Command[], argv: readonly string[], topUsage: string): Resolved {
  const [first, second] = argv;
  const exact = table.find((c) => c.name === `${first} ${second}`) ?? table.find((c) => c.name === first);
  if (exact !== undefined) {
    const rest = argv.slice(exact.name.split(' ').length);
    return wantsHelp(rest) ? { kind: 'help', text: helpText(exact) } : { kind: 'command', command: exact, rest };
  }
  const group = table.filter((c) => c.name.startsWith(`${first} `));
  if (group.length === 0) throw new CliUsage(`unknown command ${JSON.stringify(first)}`, topUsage);
  if (wantsHelp(argv.slice(1))) return { kind: 'help', text: groupHelp(first as string, group) };
  const subs = group.map((c) => c.name.slice((first as string).length + 1));
  throw new CliUsage(`unknown ${first} command ${JSON.stringify(second ?? '')} (${subs.join(', ')})`, groupHelp(first as string, group));
}

/** A UsageError that knows which usage text to print after it. */
class CliUsage extends UsageError {
  constructor(
    message: string,
    readonly help: string,
  ) {
    super(message);
  }
}

/** Runs the command argv names and returns what it returns; errors propagate (tests, `auditCommand`). */
export async function dispatch(table: readonly Command[], argv: readonly string[], io: CliIo): Promise<number> {
  const r = resolve(table, argv, '');
  if (r.kind === 'help') {
    io.stdout(r.text);
    return 0;
  }
  return (await r.command.run(r.rest, io)) ?? 0;
}

export interface Cli {
  readonly table: readonly Command[];
  readonly version: string;
  /** Turns an error that is not a usage mistake into the message printed before exit 1. */
  readonly failure: (err: unknown) => string;
}

/** The whole `tessera` command line: resolves to the exit code and never throws. */
export async function runCli(cli: Cli, argv: readonly string[], io: CliIo): Promise<number> {
  const usage = `usage: tessera <command> [options]\n\ncommands:\n${listing(cli.table)}\n\ntessera <command> --help for one command; tessera --version\n`;
  const [first] = argv;
  if (first === '--version' || first === '-V') {
    io.stdout(`${cli.version}\n`);
    return 0;
  }
  if (first === undefined || first === '--help' || first === '-h' || (first === 'help' && argv.length === 1)) {
    io.stdout(usage);
    return 0;
  }
  let help = usage;
  try {
    const r = resolve(cli.table, first === 'help' ? [...argv.slice(1), '--help'] : argv, usage);
    if (r.kind === 'help') {
      io.stdout(r.text);
      return 0;
    }
    help = helpText(r.command);
    return (await r.command.run(r.rest, io)) ?? 0;
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`tessera: ${err.message}\n\n${err instanceof CliUsage ? err.help : help}`);
      return 2;
    }
    io.stderr(`tessera: ${err instanceof CommandFailed ? err.message : cli.failure(err)}\n`);
    return 1;
  }
}
