// The agent logs through pino, in the same JSON shape as the broker's fastify logger.
import Fastify from 'fastify';
import { describe, expect, it } from 'vitest';
import { agentLogger } from './log.js';

function capture(): { stream: { write: (line: string) => void }; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  return { lines, stream: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) } };
}

describe('agentLogger', () => {
  it('writes pino JSON lines: level as a number, time, msg and the fields', () => {
    const { stream, lines } = capture();
    const log = agentLogger(stream);
    log.info({ serial: '0a', out: '/run/svid' }, 'files written');
    log.warn({ code: 'unavailable' }, 'renewal failed; will retry');
    log.error('giving up');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatchObject({ level: 30, msg: 'files written', serial: '0a', out: '/run/svid', component: 'tessera-agent' });
    expect(typeof lines[0]?.time).toBe('number');
    expect(lines.map((l) => l.level)).toEqual([30, 40, 50]);
  });

  it('has the keys of a broker log line', () => {
    const broker = capture();
    Fastify({ logger: { stream: broker.stream } }).log.info({ signal: 'SIGTERM' }, 'shutting down');
    const agent = capture();
    agentLogger(agent.stream).info({ signal: 'SIGTERM' }, 'stopping');
    const keys = (l: Record<string, unknown> | undefined): string[] => Object.keys(l ?? {}).filter((k) => k !== 'component').sort();
    expect(keys(agent.lines[0])).toEqual(keys(broker.lines[0]));
  });
});
