/** `tessera agent` as a real process (node dist/cli/main.js agent …), its JSON log lines, and waiting on them. */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

export const CLI = path.resolve('dist/cli/main.js');

export interface AgentRun {
  readonly proc: ChildProcess;
  stderr(): string;
  logs(): Record<string, unknown>[];
  readonly exited: Promise<number | null>;
  /** SIGTERM and wait for the exit. */
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();

export function spawnAgent(args: readonly string[]): AgentRun {
  const proc = spawn(process.execPath, [CLI, 'agent', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(proc);
  let err = '';
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  proc.stdout?.resume();
  const exited = new Promise<number | null>((resolve) =>
    proc.on('exit', (code) => {
      running.delete(proc);
      resolve(code);
    }),
  );
  return {
    proc,
    stderr: () => err,
    logs: () =>
      err
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    exited,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited;
    },
  };
}

/** SIGKILL every agent this helper started that is still running (for afterAll). */
export function killAgents(): void {
  for (const p of running) p.kill('SIGKILL');
}

export async function waitFor<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Resolves once the agent logged a line with this message. */
export const logged = (run: AgentRun, msg: string, timeoutMs = 30_000): Promise<true> =>
  waitFor(`"${msg}" in the agent's log`, () => (run.logs().some((l) => l.msg === msg) ? true : undefined), timeoutMs);
