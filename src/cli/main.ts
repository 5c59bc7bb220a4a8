#!/usr/bin/env node
/** The `tessera` command: the command table of every module, run by cli/command.ts (exit 0 ok, 1 failure, 2 usage). */
import { readFileSync } from 'node:fs';
import { BrokerError } from '../errors.js';
import { processIo, runCli, type Command } from './command.js';

const AGENT_ONLY = new Set(['agent', 'workload-api']);

async function serveCommand(): Promise<Command> {
  const [{ loadConfig, readWorkers }, { command }, { nameConfigFile }, { serve }] = await Promise.all([
    import('../config/load.js'),
    import('./command.js'),
    import('./files.js'),
    import('./serve.js'),
  ]);
  return command({
    name: 'serve',
    usage: '[--config FILE] [--workers N|auto]',
    summary: 'run the broker (no config: dev defaults, https://127.0.0.1:8443);\nN > 1: N replicas share the port (node:cluster); needs store.redis',
    options: { config: { type: 'string' }, workers: { type: 'string' } },
    async run(values) {
      try {
        await serve({
          ...(values.config !== undefined ? { config: values.config } : {}),
          ...(values.workers !== undefined ? { workers: readWorkers(values.workers, '--workers') } : {}),
        });
      } catch (err) {
        // A key or certificate the config names, and that cannot be read: say which field named it.
        throw nameConfigFile(err, () => loadConfig(values.config !== undefined ? { file: values.config } : {}));
      }
    },
  });
}

/**
 * Every command's name starts with its group's word, and each group lives in one module: a command line
 * loads only that module (loading all of them is most of what a short command costs). The listing
 * (`tessera`, `--help`) and an unknown word load the whole table, in this order.
 */
const GROUPS: Readonly<Record<string, () => Promise<readonly Command[]>>> = {
  serve: async () => [await serveCommand()],
  dev: async () => (await import('./dev.js')).DEV_COMMANDS,
  secrets: async () => (await import('./secrets.js')).SECRETS_COMMANDS,
  audit: async () => (await import('./audit.js')).AUDIT_COMMANDS,
  agent: async () => (await import('./agent.js')).AGENT_COMMANDS,
  admin: async () => (await import('./admin.js')).ADMIN_COMMANDS,
  entry: async () => (await import('./entry.js')).ENTRY_COMMANDS,
  federation: async () => (await import('./federation.js')).FEDERATION_COMMANDS,
  ca: async () => (await import('./ca.js')).CA_COMMANDS,
  'break-glass': async () => (await import('./breakglass.js')).BREAK_GLASS_COMMANDS,
  witness: async () => (await import('./witness.js')).WITNESS_COMMANDS,
};

async function fullTable(): Promise<Command[]> {
  return (await Promise.all(Object.values(GROUPS).map((load) => load()))).flat();
}

async function tableFor(first: string | undefined): Promise<readonly Command[]> {
  // The agent is a long-running sidecar in every pod: it loads only its own commands, not the broker's
  // modules (which would double its resident memory).
  if (AGENT_ONLY.has(first ?? '')) return (await import('./agent.js')).AGENT_COMMANDS;
  if (first !== undefined && Object.hasOwn(GROUPS, first)) return (GROUPS[first] as () => Promise<readonly Command[]>)();
  return fullTable();
}

/** What exit 1 prints: the message of an expected failure, the stack of a bug. */
function failure(err: unknown): string {
  if ((err instanceof Error && err.name === 'ConfigError') || err instanceof BrokerError) return err.message;
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'EADDRINUSE' || e.code === 'EACCES' || e.code === 'ENOENT') return e.message;
  return `unexpected error: ${e.stack ?? String(err)}`;
}

const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const table = await tableFor(process.argv[2]);

// runCli turns every error into a message and an exit code; it does not reject.
void runCli({ table, version, failure }, process.argv.slice(2), processIo).then((code) => {
  // A command that keeps running (serve, the agent sidecar) sets up its own exit.
  if (code !== 0) process.exit(code);
});
