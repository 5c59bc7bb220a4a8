/**
 * Open server streams: a global cap (a client opening thousands of streams gets RESOURCE_EXHAUSTED
 * beyond it, and everyone else keeps being served), and a writer that never queues more than one
 * message for a slow reader — each message is the complete current state, so an unsent one is simply
 * replaced by the newer one.
 */
import { status, type ServerDuplexStream, type ServerWritableStream } from '@grpc/grpc-js';
import type { Message } from './protos.js';

export class StreamLimiter {
  #open = 0;
  constructor(readonly max: number) {}

  get open(): number {
    return this.#open;
  }

  /** A release function, or undefined when the cap is reached. */
  tryAcquire(): (() => void) | undefined {
    if (this.#open >= this.max) return undefined;
    this.#open += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#open -= 1;
    };
  }
}

export interface GrpcError {
  readonly code: status;
  readonly details: string;
}

type Writable = ServerWritableStream<Message, Message> | ServerDuplexStream<Message, Message>;

/** One open server stream: latest-state writes with backpressure, an end with a status, cleanup once. */
export class Push {
  readonly #call: Writable;
  #waitingDrain = false;
  #pending: Message | Buffer | undefined;
  #done = false;
  readonly #cleanups: (() => void)[] = [];

  constructor(call: Writable) {
    this.#call = call;
    const finish = (): void => this.#cleanup();
    call.on('cancelled', finish);
    call.on('close', finish);
    call.on('finish', finish);
    call.on('error', finish);
    call.on('drain', () => {
      this.#waitingDrain = false;
      const next = this.#pending;
      this.#pending = undefined;
      if (next !== undefined) this.send(next);
    });
  }

  get closed(): boolean {
    return this.#done || this.#call.cancelled || this.#call.destroyed;
  }

  /** Runs `fn` when the stream ends, however it ends (or now, if it already has). */
  onClose(fn: () => void): void {
    if (this.closed) fn();
    else this.#cleanups.push(fn);
  }

  send(message: Message | Buffer): void {
    if (this.closed) return;
    if (this.#waitingDrain) {
      this.#pending = message;
      return;
    }
    try {
      // The serializer passes an already-encoded Buffer through (see protos.ts).
      if (!this.#call.write(message as Message)) this.#waitingDrain = true;
    } catch {
      this.#cleanup();
    }
  }

  fail(err: GrpcError): void {
    if (this.closed) return;
    this.#call.emit('error', err);
    this.#cleanup();
  }

  #cleanup(): void {
    if (this.#done) return;
    this.#done = true;
    this.#pending = undefined;
    for (const fn of this.#cleanups.splice(0)) fn();
  }
}
