#!/usr/bin/env node
/** The `tessera` command: a thin dispatcher over the modules; every failure is a message and a non-zero exit. */
import { parseArgs } from 'node:util';
import { ConfigError, readWorkers } from '../config/load.js';
import { BrokerError } from '../errors.js';
import { auditCommand } from './audit.js';
import { adminCommand } from './admin.js';
import { breakGlassCommand } from './breakglass.js';
import { devCerts, devToken } from './dev.js';
import { agent } from './agent.js';
import { secretsPut, secretsRotateKek } from './secrets.js';
import { serve } from './serve.js';
import { CommandFailed, USAGE, UsageError } from './usage.js';

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  const parse = (options: Record<string, { type: 'string' | 'boolean' }>) =>
    parseArgs({ args: rest, options, strict: true, allowPositionals: true });
  switch (command) {
    case 'agent':
      await agent(rest);
      return;
    case 'break-glass':
      await breakGlassCommand(rest);
      return;
    case 'admin':
      adminCommand(rest);
      return;
    case 'serve': {
      const { values } = parse({ config: { type: 'string' }, workers: { type: 'string' } });
      await serve({
        ...(typeof values.config === 'string' ? { config: values.config } : {}),
        ...(typeof values.workers === 'string' ? { workers: readWorkers(values.workers, '--workers') } : {}),
      });
      return;
    }
    case 'dev': {
      const { values, positionals } = parse({
        namespace: { type: 'string' },
        'service-account': { type: 'string' },
        pod: { type: 'string' },
        audience: { type: 'string' },
        ttl: { type: 'string' },
      });
      const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
      if (positionals[0] === 'token') {
        await devToken({
          namespace: str(values.namespace),
          serviceAccount: str(values['service-account']),
          pod: str(values.pod),
          audience: str(values.audience),
          ttl: str(values.ttl),
        });
        return;
      }
      if (positionals[0] === 'certs') {
        await devCerts();
        return;
      }
      throw new UsageError(`unknown dev command ${JSON.stringify(positionals[0] ?? '')}`);
    }
    case 'audit': {
      // Exit code 1 when a log does not verify (the report is already printed).
      process.exitCode = await auditCommand(rest);
      return;
    }
    case 'secrets': {
      const { values, positionals } = parse({
        config: { type: 'string' },
        'from-file': { type: 'string' },
        'new-kek-file': { type: 'string' },
      });
      const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
      const opts = {
        ...(str(values.config) !== undefined ? { config: str(values.config) } : {}),
        ...(str(values['from-file']) !== undefined ? { fromFile: str(values['from-file']) } : {}),
        ...(str(values['new-kek-file']) !== undefined ? { newKekFile: str(values['new-kek-file']) } : {}),
      };
      if (positionals[0] === 'put') {
        if (positionals.length > 2) throw new UsageError('secrets put takes one NAME');
        await secretsPut(positionals[1], opts);
        return;
      }
      if (positionals[0] === 'rotate-kek') {
        await secretsRotateKek(opts);
        return;
      }
      throw new UsageError(`unknown secrets command ${JSON.stringify(positionals[0] ?? '')}`);
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return;
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof UsageError || (err instanceof TypeError && 'code' in err && String(err.code).startsWith('ERR_PARSE_ARGS'))) {
    process.stderr.write(`tessera: ${(err as Error).message}\n\n${USAGE}`);
    process.exit(2);
  }
  if (err instanceof ConfigError || err instanceof BrokerError || err instanceof CommandFailed) {
    process.stderr.write(`tessera: ${err.message}\n`);
    process.exit(1);
  }
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'EADDRINUSE' || e.code === 'EACCES' || e.code === 'ENOENT') {
    process.stderr.write(`tessera: ${e.message}\n`);
    process.exit(1);
  }
  process.stderr.write(`tessera: unexpected error: ${e.stack ?? String(err)}\n`);
  process.exit(1);
});
