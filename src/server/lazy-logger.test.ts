// The lazy per-request logger against a real pino logger: no child until a line is written, bindings
// merged into one child, lines identical to what pino's own children write.
import { describe, it, expect } from 'vitest';
import { Writable } from 'node:stream';
import Fastify, { type FastifyBaseLogger } from 'fastify';
import { LazyLogger } from './lazy-logger.js';

function capture(level: string): { logger: FastifyBaseLogger; lines: Record<string, unknown>[]; childCalls: () => number } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n')) if (l !== '') lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  // fastify's own pino instance, configured the way app.ts does.
  const base = Fastify({ logger: { level, stream } }).log;
  let calls = 0;
  const child = base.child.bind(base);
  const logger = Object.assign(Object.create(base) as FastifyBaseLogger, {
    child: (b: Parameters<FastifyBaseLogger['child']>[0], o?: Parameters<FastifyBaseLogger['child']>[1]) => {
      calls++;
      return child(b, o);
    },
  });
  return { logger, lines, childCalls: () => calls };
}

describe('LazyLogger', () => {
  it('makes no child while nothing is logged, even with bindings added (warn level, info lines dropped)', () => {
    const { logger, lines, childCalls } = capture('warn');
    const req = new LazyLogger(logger, { reqId: 'r-1' }).child({ spiffeId: 'spiffe://example.org/ns/a/sa/b' });
    expect(req.level).toBe('warn');
    expect(childCalls()).toBe(0);
    req.warn({ code: 'audit_unavailable' }, 'request failed closed');
    expect(childCalls()).toBe(1);
    req.error('second line, same child');
    expect(childCalls()).toBe(1);
    expect(lines.map((l) => [l.reqId, l.spiffeId, l.msg])).toEqual([
      ['r-1', 'spiffe://example.org/ns/a/sa/b', 'request failed closed'],
      ['r-1', 'spiffe://example.org/ns/a/sa/b', 'second line, same child'],
    ]);
    expect(lines[0]?.code).toBe('audit_unavailable');
  });

  it('writes what two pino children would have written, with one child', () => {
    const lazy = capture('info');
    const eager = capture('info');
    new LazyLogger(lazy.logger, { reqId: 'r-2' }).child({ spiffeId: 'spiffe://x/y' }).info({ statusCode: 200 }, 'request completed');
    eager.logger.child({ reqId: 'r-2' }).child({ spiffeId: 'spiffe://x/y' }).info({ statusCode: 200 }, 'request completed');
    const strip = (l: Record<string, unknown>): Record<string, unknown> => ({ ...l, time: 0, pid: 0 });
    expect(lazy.lines.map(strip)).toEqual(eager.lines.map(strip));
    expect(lazy.childCalls()).toBe(1);
  });

  it('after the first line, child() and level go to the real child', () => {
    const { logger, lines } = capture('info');
    const req = new LazyLogger(logger, { reqId: 'r-3' });
    req.info('first');
    req.level = 'error';
    req.info('dropped');
    req.child({ extra: 1 }).error('from a grandchild');
    expect(lines.map((l) => [l.msg, l.reqId, l.extra])).toEqual([
      ['first', 'r-3', undefined],
      ['from a grandchild', 'r-3', 1],
    ]);
  });
});
