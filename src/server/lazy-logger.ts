/**
 * A request's logger, made only when the request first logs: fastify makes a pino child per request
 * (for the request id) and observe.ts adds the caller's SPIFFE ID with another child(), each ~5 µs on the
 * hot path, while at `warn` most requests never log at all. Bindings added before the first line are
 * merged, so a request that does log gets one child with both.
 */
import type { FastifyBaseLogger } from 'fastify';

// fastify's own names for pino's child() arguments (fastify does not re-export the pino types).
type Bindings = Parameters<FastifyBaseLogger['child']>[0];
type ChildLoggerOptions = NonNullable<Parameters<FastifyBaseLogger['child']>[1]>;

type Level = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export class LazyLogger implements FastifyBaseLogger {
  #real: FastifyBaseLogger | undefined;
  readonly #parent: FastifyBaseLogger;
  readonly #bindings: Bindings;
  readonly #opts: ChildLoggerOptions;

  constructor(parent: FastifyBaseLogger, bindings: Bindings, opts: ChildLoggerOptions = {}) {
    this.#parent = parent;
    this.#bindings = bindings;
    this.#opts = opts;
  }

  #logger(): FastifyBaseLogger {
    this.#real ??= this.#parent.child(this.#bindings, this.#opts);
    return this.#real;
  }

  #log(level: Level, args: unknown[]): void {
    const real = this.#logger();
    Reflect.apply(real[level], real, args);
  }

  // Prototype methods (not per-instance closures): one LazyLogger is made per request.
  fatal(...args: unknown[]): void {
    this.#log('fatal', args);
  }
  error(...args: unknown[]): void {
    this.#log('error', args);
  }
  warn(...args: unknown[]): void {
    this.#log('warn', args);
  }
  info(...args: unknown[]): void {
    this.#log('info', args);
  }
  debug(...args: unknown[]): void {
    this.#log('debug', args);
  }
  trace(...args: unknown[]): void {
    this.#log('trace', args);
  }
  silent(...args: unknown[]): void {
    this.#log('silent', args);
  }

  get level(): string {
    return this.#real?.level ?? this.#opts.level ?? this.#parent.level;
  }

  set level(level: string) {
    this.#logger().level = level;
  }

  /** Before the first line, more bindings are merged into the one child still to be made. */
  child(bindings: Bindings, options?: ChildLoggerOptions): FastifyBaseLogger {
    if (this.#real === undefined && (options === undefined || Object.keys(options).length === 0)) {
      return new LazyLogger(this.#parent, { ...this.#bindings, ...bindings }, this.#opts);
    }
    return this.#logger().child(bindings, options);
  }
}
