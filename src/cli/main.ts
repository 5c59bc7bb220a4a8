#!/usr/bin/env node
/** The `tessera` command: the command table of every module, run by cli/command.ts (exit 0 ok, 1 failure, 2 usage). */
import { readFileSync } from 'node:fs';
import { BrokerError } from '../errors.js';
import { processIo, runCli, type Command } from './command.js';

// The agent is a long-running sidecar in every pod: it loads only its own commands, not the broker's
// modules (which would double its resident memory). Everything else loads the whole table.
const AGENT_ONLY = new Set(['agent', 'workload-api']);

async function fullTable(): Promise<Command[]> {
  const [{ loadConfig, readWorkers }, { ADMIN_COMMANDS }, { AGENT_COMMANDS }, { AUDIT_COMMANDS }, { BREAK_GLASS_COMMANDS }, { CA_COMMANDS }, { command }, { DEV_COMMANDS }, { ENTRY_COMMANDS }, { FEDERATION_COMMANDS }, { nameConfigFile }, { SECRETS_COMMANDS }, { serve }, { WITNESS_COMMANDS }] =
    await Promise.all([
      import('../config/load.js'),
      import('./admin.js'),
      import('./agent.js'),
      import('./audit.js'),
      import('./breakglass.js'),
      import('./ca.js'),
      import('./command.js'),
      import('./dev.js'),
      import('./entry.js'),
      import('./federation.js'),
      import('./files.js'),
      import('./secrets.js'),
      import('./serve.js'),
      import('./witness.js'),
    ]);
  const SERVE = command({
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
  return [SERVE, ...DEV_COMMANDS, ...SECRETS_COMMANDS, ...AUDIT_COMMANDS, ...AGENT_COMMANDS, ...ADMIN_COMMANDS, ...ENTRY_COMMANDS, ...FEDERATION_COMMANDS, ...CA_COMMANDS, ...BREAK_GLASS_COMMANDS, ...WITNESS_COMMANDS];
}

/** What exit 1 prints: the message of an expected failure, the stack of a bug. */
function failure(err: unknown): string {
  if ((err instanceof Error && err.name === 'ConfigError') || err instanceof BrokerError) return err.message;
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'EADDRINUSE' || e.code === 'EACCES' || e.code === 'ENOENT') return e.message;
  return `unexpected error: ${e.stack ?? String(err)}`;
}

const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const table = AGENT_ONLY.has(process.argv[2] ?? '') ? (await import('./agent.js')).AGENT_COMMANDS : await fullTable();

// runCli turns every error into a message and an exit code; it does not reject.
void runCli({ table, version, failure }, process.argv.slice(2), processIo).then((code) => {
  // A command that keeps running (serve, the agent sidecar) sets up its own exit.
  if (code !== 0) process.exit(code);
});
