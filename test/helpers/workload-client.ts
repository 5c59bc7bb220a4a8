/**
 * A Workload API / SDS client for tests: grpc-js over the agent's real Unix socket, speaking the
 * proto files in proto/ (the same definitions a go-spiffe or Envoy client speaks on the wire).
 */
import { X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { SDS_SERVICE, serviceDefinition, WORKLOAD_SERVICE, type Message } from '../../src/agent/workload-api/protos.js';

export type Client = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

let channelSeq = 0;

/** A client on its own connection (no subchannel shared with other clients of the test). */
function client(service: string, socketPath: string): Client {
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(service), service);
  return new Ctor(`unix://${socketPath}`, grpc.credentials.createInsecure(), {
    'grpc.use_local_subchannel_pool': 1,
    'grpc.initial_reconnect_backoff_ms': 200,
    'grpc.max_reconnect_backoff_ms': 1000,
    'test.channel': ++channelSeq,
  }) as unknown as Client;
}

export const workloadClient = (socketPath: string): Client => client(WORKLOAD_SERVICE, socketPath);
export const sdsClient = (socketPath: string): Client => client(SDS_SERVICE, socketPath);

/** The metadata the SPIFFE Workload Endpoint requires on every call (null: none at all). */
export function header(value: string | null = 'true'): grpc.Metadata {
  const md = new grpc.Metadata();
  if (value !== null) md.set('workload.spiffe.io', value);
  return md;
}

export function unary(c: Client, method: string, request: Message, md: grpc.Metadata = header()): Promise<Message> {
  return new Promise((resolve, reject) => {
    (c[method] as (r: Message, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, v?: Message) => void) => void)(
      request,
      md,
      { deadline: Date.now() + 15_000 },
      (e, v) => (e ? reject(e) : resolve(v as Message)),
    );
  });
}

/** The status a call failed with (fails the test if it succeeded). */
export async function refusal(p: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (e) {
    return e as grpc.ServiceError;
  }
  throw new Error('the call succeeded; a refusal was expected');
}

/** A server or bidi stream with an awaitable queue of messages and its final status. */
export class Stream {
  readonly messages: { at: number; message: Message }[] = [];
  #waiters: (() => void)[] = [];
  error: grpc.ServiceError | undefined;
  ended = false;
  readonly call: grpc.ClientReadableStream<Message> | grpc.ClientDuplexStream<Message, Message>;

  constructor(call: grpc.ClientReadableStream<Message> | grpc.ClientDuplexStream<Message, Message>) {
    this.call = call;
    call.on('data', (m: Message) => {
      this.messages.push({ at: Date.now(), message: m });
      this.#wake();
    });
    call.on('error', (e: grpc.ServiceError) => {
      this.error = e;
      this.#wake();
    });
    call.on('end', () => {
      this.ended = true;
      this.#wake();
    });
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Waits for message number `index` (0-based); rejects on stream error or timeout. */
  async nth(index: number, timeoutMs = 20_000): Promise<{ at: number; message: Message }> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const m = this.messages[index];
      if (m !== undefined) return m;
      if (this.error !== undefined) throw this.error;
      if (this.ended) throw new Error('stream ended');
      const left = until - Date.now();
      if (left <= 0) throw new Error(`no message #${index} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Waits for the stream's error status. */
  async failure(timeoutMs = 20_000): Promise<grpc.ServiceError> {
    const until = Date.now() + timeoutMs;
    while (this.error === undefined) {
      if (Date.now() > until) throw new Error('the stream did not fail');
      await new Promise((r) => setTimeout(r, 20));
    }
    return this.error;
  }

  cancel(): void {
    this.call.cancel();
  }
}

export function serverStream(c: Client, method: string, md: grpc.Metadata = header()): Stream {
  const call = (c[method] as (r: Message, m: grpc.Metadata) => grpc.ClientReadableStream<Message>)({}, md);
  call.on('error', () => undefined);
  return new Stream(call);
}

export function bidiStream(c: Client, method: string, md: grpc.Metadata = new grpc.Metadata()): Stream & { call: grpc.ClientDuplexStream<Message, Message> } {
  const call = (c[method] as (m: grpc.Metadata) => grpc.ClientDuplexStream<Message, Message>)(md);
  call.on('error', () => undefined);
  return new Stream(call) as Stream & { call: grpc.ClientDuplexStream<Message, Message> };
}

/** Concatenated DER certificates (as the Workload API sends chains and bundles) → certificates. */
export function splitDer(buf: Buffer): X509Certificate[] {
  const out: X509Certificate[] = [];
  let i = 0;
  while (i < buf.length) {
    if (buf[i] !== 0x30) throw new Error('not a DER SEQUENCE');
    const first = buf[i + 1] as number;
    let len: number;
    let head: number;
    if (first < 0x80) {
      len = first;
      head = 2;
    } else {
      const n = first & 0x7f;
      len = 0;
      for (let k = 0; k < n; k++) len = len * 256 + (buf[i + 2 + k] as number);
      head = 2 + n;
    }
    out.push(new X509Certificate(buf.subarray(i, i + head + len)));
    i += head + len;
  }
  return out;
}
