#!/usr/bin/env node
/** The `tessera` command: the command table of every module, run by cli/command.ts (exit 0 ok, 1 failure, 2 usage). */
import { readFileSync } from 'node:fs';
import { ConfigError, loadConfig, readWorkers } from '../config/load.js';
import { BrokerError } from '../errors.js';
import { ADMIN_COMMANDS } from './admin.js';
import { AGENT_COMMANDS } from './agent.js';
import { AUDIT_COMMANDS } from './audit.js';
import { BREAK_GLASS_COMMANDS } from './breakglass.js';
import { command, processIo, runCli } from './command.js';
import { DEV_COMMANDS } from './dev.js';
import { nameConfigFile } from './files.js';
import { SECRETS_COMMANDS } from './secrets.js';
import { serve } from './serve.js';
import { WITNESS_COMMANDS } from './witness.js';

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

/** What exit 1 prints: the message of an expected failure, the stack of a bug. */
function failure(err: unknown): string {
  if (err instanceof ConfigError || err instanceof BrokerError) return err.message;
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'EADDRINUSE' || e.code === 'EACCES' || e.code === 'ENOENT') return e.message;
  return `unexpected error: ${e.stack ?? String(err)}`;
}

const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const table = [SERVE, ...DEV_COMMANDS, ...SECRETS_COMMANDS, ...AUDIT_COMMANDS, ...AGENT_COMMANDS, ...ADMIN_COMMANDS, ...BREAK_GLASS_COMMANDS, ...WITNESS_COMMANDS];

// runCli turns every error into a message and an exit code; it does not reject.
void runCli({ table, version, failure }, process.argv.slice(2), processIo).then((code) => {
  // A command that keeps running (serve, the agent sidecar) sets up its own exit.
  if (code !== 0) process.exit(code);
});
