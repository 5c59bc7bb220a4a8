/**
 * The documentation's walkthrough as a test: shell blocks fenced as "```bash walkthrough" are pulled out
 * of a Markdown file in order and run, one bash session per file (a reader pastes them into one shell,
 * so variables and `cd` carry from block to block), with `set -euo pipefail`. A failure names the file,
 * the block, its first line number, the block's text and what it printed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const WALKTHROUGH_FENCE = '```bash walkthrough';
/** docs/federation.md's two-broker walkthrough: its own fence, since it needs two brokers of its own. */
export const FEDERATION_WALKTHROUGH_FENCE = '```bash federation-walkthrough';

export interface WalkthroughBlock {
  /** File the block came from (as given to extractWalkthrough). */
  readonly file: string;
  /** 1-based line of the opening fence. */
  readonly line: number;
  /** 1-based position among the file's walkthrough blocks. */
  readonly index: number;
  readonly text: string;
}

/** The blocks fenced `fence` (default `bash walkthrough`) of a Markdown text, in order. An unclosed fence is an error. */
export function extractWalkthrough(markdown: string, file: string, fence = WALKTHROUGH_FENCE): WalkthroughBlock[] {
  const lines = markdown.split('\n');
  const blocks: WalkthroughBlock[] = [];
  for (let i = 0; i < lines.length; i += 1) {
    const open = lines[i] as string;
    if (open.trim() !== fence) continue;
    const indent = open.length - open.trimStart().length;
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length && (lines[j] as string).trim() !== '```'; j += 1) body.push((lines[j] as string).slice(indent));
    if (j >= lines.length) throw new Error(`${file}:${i + 1}: walkthrough block is never closed`);
    blocks.push({ file, line: i + 1, index: blocks.length + 1, text: body.join('\n') });
    i = j;
  }
  return blocks;
}

export interface WalkthroughRun {
  readonly ok: boolean;
  /** The block that failed (or was running at the timeout). */
  readonly failed?: WalkthroughBlock;
  readonly exitCode: number | null;
  readonly timedOut: boolean;
  /** Everything the session printed (stdout and stderr, interleaved). */
  readonly output: string;
  /** What the failing block printed. */
  readonly blockOutput: string;
}

const MARK = '@@tessera-walkthrough-block';

/**
 * The docs show `curl -s` (a reader wants to see the broker's `{error, message}`), which exits 0 on a 404
 * or 403. In the session, curl fails on any HTTP error, still printing the body, unless the command
 * already decides that itself: it fails on errors (`-f`, `--fail`) or prints the status (`-w`), which is
 * how a page shows a refusal on purpose.
 */
export const CURL_FAILS_ON_HTTP_ERRORS = [
  `__walkthrough_curl_own=' (-w|--write-out|--fail|--fail-with-body|-[A-Za-z]*f[A-Za-z]*) '`,
  'curl() { if [[ " $* " =~ $__walkthrough_curl_own ]]; then command curl "$@"; else command curl --fail-with-body "$@"; fi; }',
].join('\n');

/** The script one session runs: each block preceded by a marker line, so output maps back to blocks. */
export function walkthroughScript(blocks: readonly WalkthroughBlock[]): string {
  const parts = ['set -euo pipefail', 'exec 2>&1', CURL_FAILS_ON_HTTP_ERRORS];
  for (const [i, b] of blocks.entries()) {
    parts.push(`printf '\\n${MARK} %s@@\\n' ${i}`, b.text);
  }
  parts.push(`printf '\\n${MARK} %s@@\\n' end`);
  return `${parts.join('\n')}\n`;
}

/**
 * Runs the blocks in one `bash` session in `cwd`. The session gets its own process group, which is
 * killed afterwards, so a background process a block forgot to stop cannot outlive the run.
 */
export async function runWalkthrough(
  blocks: readonly WalkthroughBlock[],
  opts: { cwd: string; env: NodeJS.ProcessEnv; timeoutMs: number },
): Promise<WalkthroughRun> {
  const child = spawn('bash', ['-c', walkthroughScript(blocks)], { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  let timedOut = false;
  const killGroup = (): void => {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  };
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup();
  }, opts.timeoutMs);
  // 'exit', not 'close': a background process still holding the pipes must not keep us waiting.
  const exitCode = await new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  clearTimeout(timer);
  killGroup();
  const marks = [...output.matchAll(new RegExp(`^${MARK} (\\d+|end)@@$`, 'gm'))];
  const last = marks.at(-1);
  const ok = exitCode === 0 && !timedOut && last?.[1] === 'end';
  if (ok) return { ok, exitCode, timedOut, output, blockOutput: '' };
  const at = last === undefined || last[1] === 'end' ? blocks.length - 1 : Number(last[1]);
  const failed = blocks[Math.max(0, at)];
  const blockOutput = last === undefined ? output : output.slice((last.index ?? 0) + last[0].length).trim();
  return { ok, exitCode, timedOut, output, blockOutput, ...(failed !== undefined ? { failed } : {}) };
}

/** A failure report a reader can act on. */
export function describeFailure(run: WalkthroughRun): string {
  const b = run.failed;
  const where = b === undefined ? 'the walkthrough' : `${b.file} walkthrough block ${b.index} (line ${b.line})`;
  const why = run.timedOut ? 'did not finish in time' : `failed with exit code ${String(run.exitCode)}`;
  return [`${where} ${why}`, '--- block ---', b?.text ?? '', '--- its output ---', run.blockOutput].join('\n');
}

/** The block with each port number of `ports` (as named in the docs → free port of this run) rewritten. */
export function withPorts(block: WalkthroughBlock, ports: ReadonlyMap<number, number>): WalkthroughBlock {
  let text = block.text;
  for (const [from, to] of ports) text = text.replace(new RegExp(`\\b${from}\\b`, 'g'), String(to));
  return { ...block, text };
}

/**
 * A temp folder laid out like the repository root for a reader's commands: `npx tessera` and
 * `tessera/sdk` resolve to the checkout at `root` (npm is offline in walkthroughEnv, so npx can never
 * fetch some other package called "tessera"), and dist/ is linked for steps that run it directly.
 */
export function scratchRoot(root: string, prefix: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'tessera-walkthrough', private: true, type: 'module' }));
  mkdirSync(path.join(dir, 'node_modules', '.bin'), { recursive: true });
  symlinkSync(root, path.join(dir, 'node_modules', 'tessera'), 'dir');
  symlinkSync(path.join(root, 'dist'), path.join(dir, 'dist'), 'dir');
  const bin = path.join(dir, 'node_modules', '.bin', 'tessera');
  writeFileSync(bin, `#!/bin/sh\nexec "${process.execPath}" "${path.join(root, 'dist/cli/main.js')}" "$@"\n`);
  chmodSync(bin, 0o755);
  return dir;
}

/** This process's environment without Tessera's, Redis' and npm's own settings, npm offline. */
export function walkthroughEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^(TESSERA_|REDIS_URL$|npm_)/.test(k)) env[k] = v;
  return {
    ...env,
    PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}`,
    // npx must resolve tessera from node_modules/.bin, never download a package of that name.
    NPM_CONFIG_OFFLINE: 'true',
    NPM_CONFIG_UPDATE_NOTIFIER: 'false',
    NO_UPDATE_NOTIFIER: '1',
  };
}

/** A `tessera serve` started for a walkthrough, and everything it printed. */
export interface ServeProcess {
  readonly proc: ChildProcess;
  readonly output: () => string;
  /** SIGTERM, then SIGKILL after 15 s. */
  readonly stop: () => Promise<void>;
}

/** Starts `node <cli> serve …args` in `cwd`; resolves once it says it is listening (rejects if it exits or takes 90 s). */
export async function startServe(cli: string, args: readonly string[], opts: { cwd: string; env: NodeJS.ProcessEnv }): Promise<ServeProcess> {
  const proc = spawn(process.execPath, [cli, 'serve', ...args], { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const stop = async (): Promise<void> => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGTERM');
    await new Promise<void>((r) => {
      const t = setTimeout(() => {
        proc.kill('SIGKILL');
        r();
      }, 15_000);
      proc.once('exit', () => {
        clearTimeout(t);
        r();
      });
    });
  };
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`tessera serve did not start in 90 s:\n${out}`)), 90_000);
      proc.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('Tessera broker listening on https://127.0.0.1:')) {
          clearTimeout(timer);
          resolve();
        }
      });
      proc.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`tessera serve exited with ${String(code)}:\n${out}`));
      });
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { proc, output: () => out, stop };
}
