/**
 * The --on-rotate command: run through /bin/sh after each publish, never two at once. A trigger that
 * arrives while the command runs schedules exactly one more run afterwards (with the newest
 * environment), so a burst of rotations costs at most two runs. A run that hangs is killed.
 */
import { spawn } from 'node:child_process';
import type { AgentLogger } from './log.js';

export const HOOK_TIMEOUT_MS = 30_000;

export class RotateHook {
  #running: Promise<void> | undefined;
  #pendingEnv: Record<string, string> | undefined;

  constructor(
    private readonly command: string,
    private readonly logger: AgentLogger,
    private readonly timeoutMs = HOOK_TIMEOUT_MS,
  ) {}

  /** Runs the command now, or once more after the current run. Resolves when that run has finished. */
  trigger(env: Record<string, string>): Promise<void> {
    if (this.#running === undefined) {
      this.#running = this.#loop(env);
      return this.#running;
    }
    this.#pendingEnv = env;
    return this.#running;
  }

  /** Resolves once no run is in progress or pending. */
  async idle(): Promise<void> {
    while (this.#running !== undefined) await this.#running;
  }

  async #loop(env: Record<string, string>): Promise<void> {
    let next: Record<string, string> | undefined = env;
    try {
      while (next !== undefined) {
        this.#pendingEnv = undefined;
        await this.#runOnce(next);
        next = this.#pendingEnv;
      }
    } finally {
      this.#running = undefined;
    }
  }

  #runOnce(env: Record<string, string>): Promise<void> {
    const started = Date.now();
    return new Promise<void>((resolve) => {
      const child = spawn('/bin/sh', ['-c', this.command], { env: { ...process.env, ...env }, stdio: ['ignore', 'inherit', 'inherit'] });
      const timer = setTimeout(() => {
        this.logger.warn({ timeoutMs: this.timeoutMs }, 'on-rotate command timed out; killing it');
        child.kill('SIGKILL');
      }, this.timeoutMs);
      child.on('error', (err) => {
        clearTimeout(timer);
        this.logger.error({ error: err.message }, 'on-rotate command could not start');
        resolve();
      });
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        const fields = { exitCode: code, signal, ms: Date.now() - started };
        if (code === 0) this.logger.info(fields, 'on-rotate command finished');
        else this.logger.warn(fields, 'on-rotate command failed');
        resolve();
      });
    });
  }
}
