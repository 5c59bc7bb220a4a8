import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { RotateHook } from './hook.js';
import { agentLogger } from './log.js';

interface Line {
  level: string;
  msg: string;
  fields: Record<string, unknown>;
}

/** The agent's pino logger, its lines read back as level name, message and fields. */
function recorder(): { logger: ReturnType<typeof agentLogger>; lines: Line[] } {
  const lines: Line[] = [];
  const logger = agentLogger({
    write: (line: string) => {
      const { level, msg, time: _t, pid: _p, hostname: _h, component: _c, ...fields } = JSON.parse(line) as Record<string, unknown>;
      lines.push({ level: pino.levels.labels[level as number] as string, msg: msg as string, fields });
    },
  });
  return { lines, logger };
}

describe('RotateHook', () => {
  it('runs the command with the rotation environment', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-hook-'));
    const file = path.join(dir, 'out');
    const { logger, lines } = recorder();
    const hook = new RotateHook(`printf '%s %s' "$TESSERA_SPIFFE_ID" "$TESSERA_SVID_SERIAL" > '${file}'`, logger);
    await hook.trigger({ TESSERA_SPIFFE_ID: 'spiffe://example.org/a', TESSERA_SVID_SERIAL: '0a' });
    expect(readFileSync(file, 'utf8')).toBe('spiffe://example.org/a 0a');
    expect(lines.at(-1)).toMatchObject({ level: 'info', msg: 'on-rotate command finished', fields: { exitCode: 0 } });
  });

  it('never runs twice at once, and coalesces a burst into one more run with the newest env', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-hook-'));
    const file = path.join(dir, 'runs');
    const { logger } = recorder();
    // Each run appends "start N" and "end N"; overlapping runs would interleave them.
    const hook = new RotateHook(`echo "start $N" >> '${file}'; sleep 0.2; echo "end $N" >> '${file}'`, logger);
    const first = hook.trigger({ N: '1' });
    for (let n = 2; n <= 6; n++) void hook.trigger({ N: String(n) });
    await first;
    await hook.idle();
    expect(readFileSync(file, 'utf8').trim().split('\n')).toEqual(['start 1', 'end 1', 'start 6', 'end 6']);
  });

  it('logs a failing command and a command that hangs is killed', async () => {
    const { logger, lines } = recorder();
    await new RotateHook('exit 3', logger).trigger({});
    expect(lines.at(-1)).toMatchObject({ level: 'warn', msg: 'on-rotate command failed', fields: { exitCode: 3 } });
    const started = Date.now();
    await new RotateHook('sleep 30', logger, 200).trigger({});
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(lines.some((l) => l.msg.includes('timed out'))).toBe(true);
    expect(lines.at(-1)).toMatchObject({ level: 'warn', fields: { signal: 'SIGKILL' } });
  });
});
