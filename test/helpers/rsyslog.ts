/**
 * A private rsyslogd (Debian's rsyslog; TLS needs rsyslog-gnutls) for audit device tests: its own
 * config in a temp folder, imtcp on a loopback port (plain, or TLS with the gtls driver), every message
 * written to out.log as "MSGID STRUCTURED-DATA MSG". Never the system's rsyslog.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect, it } from 'vitest';
import { inCi } from './redis.js';

const CANDIDATES = ['/usr/sbin/rsyslogd', '/sbin/rsyslogd', 'rsyslogd'];

export function rsyslogBinary(): string | undefined {
  return CANDIDATES.find((b) => spawnSync(b, ['-v'], { encoding: 'utf8' }).status === 0);
}

/** rsyslog's gtls network stream driver (package rsyslog-gnutls). */
export function gtlsAvailable(): boolean {
  return ['/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so', '/usr/lib/aarch64-linux-gnu/rsyslog/lmnsd_gtls.so', '/usr/lib/rsyslog/lmnsd_gtls.so'].some((f) => existsSync(f));
}

/** A test that passes when rsyslogd (and gtls) are installed, and fails under CI=true when not. */
export function rsyslogRequiredUnderCi(): void {
  const bin = rsyslogBinary();
  const gtls = gtlsAvailable();
  it(`rsyslogd${gtls ? '' : ' with gtls'} is installed${inCi ? ' (required: CI=true)' : ' (or these suites are skipped)'}`, () => {
    if (inCi) {
      expect(bin, 'CI=true but rsyslogd is not installed (apt-get install rsyslog)').toBeDefined();
      expect(gtls, 'CI=true but rsyslog-gnutls is not installed').toBe(true);
    } else if (bin === undefined || !gtls) console.warn(`[rsyslog] skipped: ${bin === undefined ? 'rsyslogd not installed' : 'rsyslog-gnutls not installed'}`);
  });
}

export interface RsyslogTls {
  readonly caFile: string;
  readonly certFile: string;
  readonly keyFile: string;
}

export interface Rsyslog {
  readonly port: number;
  readonly dir: string;
  readonly outFile: string;
  /** Lines of out.log so far. */
  lines(): string[];
  /** Kills it (default SIGKILL) and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port and output file. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve();
      });
      s.on('error', () => {
        s.destroy();
        if (Date.now() > deadline) reject(new Error(`rsyslogd did not listen on ${port} within ${timeoutMs} ms`));
        else setTimeout(attempt, 50);
      });
    };
    attempt();
  });
}

export async function startRsyslog(port: number, tls?: RsyslogTls): Promise<Rsyslog> {
  const bin = rsyslogBinary();
  if (bin === undefined) throw new Error('rsyslogd is not installed');
  const dir = mkdtempSync(path.join(tmpdir(), 'tessera-rsyslog-'));
  const outFile = path.join(dir, 'out.log');
  const conf = path.join(dir, 'rsyslog.conf');
  const q = (s: string): string => JSON.stringify(s);
  writeFileSync(
    conf,
    [
      `global(workDirectory=${q(dir)} maxMessageSize="256k"${tls ? ` DefaultNetstreamDriverCAFile=${q(tls.caFile)} DefaultNetstreamDriverCertFile=${q(tls.certFile)} DefaultNetstreamDriverKeyFile=${q(tls.keyFile)}` : ''})`,
      tls ? 'module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid")' : 'module(load="imtcp")',
      `input(type="imtcp" port="${port}" address="127.0.0.1")`,
      'template(name="tessera" type="string" string="%msgid% %structured-data% %msg%\\n")',
      `action(type="omfile" file=${q(outFile)} template="tessera" flushOnTXEnd="on")`,
      '',
    ].join('\n'),
  );
  let child: ChildProcess | null = null;
  let stderr = '';
  const launch = async (): Promise<void> => {
    const c = spawn(bin, ['-n', '-f', conf, '-i', path.join(dir, 'rsyslogd.pid')], { stdio: ['ignore', 'ignore', 'pipe'] });
    c.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    child = c;
    try {
      await waitForPort(port, 15_000);
    } catch (err) {
      c.kill('SIGKILL');
      throw new Error(`${(err as Error).message}: ${stderr}`, { cause: err });
    }
  };
  const kill = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    const c = child;
    child = null;
    if (c === null || c.exitCode !== null || c.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      c.once('exit', () => resolve());
      c.kill(signal);
    });
  };
  await launch();
  return {
    port,
    dir,
    outFile,
    lines: () => (existsSync(outFile) ? readFileSync(outFile, 'utf8').split('\n').filter((l) => l !== '') : []),
    kill,
    restart: launch,
    stop: async () => {
      await kill('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
