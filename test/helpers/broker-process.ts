/**
 * The broker as a real process (`node dist/cli/main.js serve --config …`) on a fixed loopback port,
 * so a test can kill it (SIGKILL) and start it again on the same material, data directory and URL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { mintDevToken } from '../../src/dev/token-issuer.js';
import { devMaterial, materialConfig } from './broker.js';

export const CLI = path.resolve('dist/cli/main.js');

export interface BrokerProcess {
  readonly url: string;
  readonly ca: string;
  readonly dir: string;
  /** Output of the current process so far. */
  output(): string;
  token(namespace: string, serviceAccount: string): Promise<string>;
  /** Starts the process (again) and waits until it listens. */
  start(): Promise<void>;
  /** SIGKILL, no goodbye: the outage a crash or node loss causes. */
  kill(): Promise<void>;
  /** SIGTERM and clean-up of the temp directory. */
  close(): Promise<void>;
}

/** A loopback port that was free a moment ago. */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/** `config`: further top-level config sections, over the defaults (e.g. a whole `ca` section). */
export async function spawnBroker(opts: {
  registration: unknown[];
  svid?: Record<string, number>;
  /** Merged over the audit section (the dev signing key stays). */
  audit?: Record<string, unknown>;
  config?: Record<string, unknown>;
}): Promise<BrokerProcess> {
  const { dir: pkiDir, material } = await devMaterial();
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-broker-proc-'));
  const port = await freePort();
  const configFile = path.join(dir, 'tessera.yaml');
  const base = materialConfig(pkiDir, material);
  writeFileSync(
    configFile,
    stringify({
      ...base,
      ...(opts.audit !== undefined ? { audit: { ...base.audit, ...opts.audit } } : {}),
      replicaId: 'e2e-process',
      listen: { host: '127.0.0.1', port },
      logLevel: 'warn',
      registration: opts.registration,
      ...(opts.svid !== undefined ? { svid: opts.svid } : {}),
      store: { embedded: { dir: path.join(dir, 'data') } },
      ...opts.config,
    }),
  );
  let proc: ChildProcess | undefined;
  let out = '';
  const exited = (p: ChildProcess): Promise<void> =>
    p.exitCode !== null || p.signalCode !== null ? Promise.resolve() : new Promise((r) => p.once('exit', () => r()));
  const bp: BrokerProcess = {
    url: `https://127.0.0.1:${port}`,
    ca: readFileSync(material.bundleFile, 'utf8'),
    dir,
    output: () => out,
    token: (namespace, serviceAccount) => mintDevToken({ keyFile: material.issuerKeyFile, namespace, serviceAccount, ttlSeconds: 3600 }),
    start: async () => {
      out = '';
      const p = spawn(process.execPath, [CLI, 'serve', '--config', configFile], {
        env: { ...process.env, TESSERA_CONFIG: '' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      proc = p;
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`broker did not start: ${out}`)), 20_000);
        p.stdout?.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes(`listening on https://127.0.0.1:${port}`)) {
            clearTimeout(timer);
            resolve();
          }
        });
        p.stderr?.on('data', (d: Buffer) => (out += d.toString()));
        p.once('exit', (code) => {
          clearTimeout(timer);
          reject(new Error(`broker exited with ${code}: ${out}`));
        });
      });
    },
    kill: async () => {
      if (proc === undefined) return;
      const p = proc;
      p.kill('SIGKILL');
      await exited(p);
    },
    close: async () => {
      if (proc !== undefined && proc.exitCode === null && proc.signalCode === null) {
        const p = proc;
        p.kill('SIGTERM');
        await exited(p);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await bp.start();
  return bp;
}
