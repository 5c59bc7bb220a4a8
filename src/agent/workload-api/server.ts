/**
 * One gRPC server on one Unix socket serving the SPIFFE Workload API and Envoy SDS. The socket is
 * created 0770 (the umask is narrowed around bind(2), so it is never wider, even for an instant),
 * messages are capped in both directions, streams are capped per connection and in total, and a
 * client's mistakes end its own call or connection, never the agent.
 */
import { chmod, lstat, unlink } from 'node:fs/promises';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import type { IdentitySource } from './identity.js';
import { SDS_SERVICE, serviceDefinition, WORKLOAD_SERVICE } from './protos.js';
import { sdsService } from './sds.js';
import { prepareSocketPath, SocketPathError } from './socket.js';
import { StreamLimiter } from './streams.js';
import { workloadApiService, type WorkloadLogger } from './workload.js';

export const SOCKET_MODE = 0o770;
export const DEFAULT_MAX_STREAMS = 512;
/** Requests are tiny except an Envoy node description (its extension list runs to tens of KiB). */
export const MAX_RECEIVE_BYTES = 256 * 1024;
export const MAX_SEND_BYTES = 4 * 1024 * 1024;
export const MAX_STREAMS_PER_CONNECTION = 256;

export interface WorkloadApiOptions {
  /** Absolute path of the Unix socket. */
  readonly socketPath: string;
  /** Open streams (all connections together) before new ones get ResourceExhausted. */
  readonly maxStreams?: number;
}

export interface WorkloadApiServer {
  readonly socketPath: string;
  /** Streams open now. */
  openStreams(): number;
  close(): Promise<void>;
}

export async function startWorkloadApi(source: IdentitySource, opts: WorkloadApiOptions, log: WorkloadLogger): Promise<WorkloadApiServer> {
  const limiter = new StreamLimiter(opts.maxStreams ?? DEFAULT_MAX_STREAMS);
  await prepareSocketPath(opts.socketPath);
  const server = new Server({
    'grpc.max_receive_message_length': MAX_RECEIVE_BYTES,
    'grpc.max_send_message_length': MAX_SEND_BYTES,
    'grpc.max_concurrent_streams': MAX_STREAMS_PER_CONNECTION,
    'grpc.enable_channelz': 0,
  });
  server.addService(serviceDefinition(WORKLOAD_SERVICE), workloadApiService(source, limiter, log));
  server.addService(serviceDefinition(SDS_SERVICE), sdsService(source, limiter, log));
  const previous = process.umask(0o007);
  try {
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(`unix://${opts.socketPath}`, ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve()));
    });
  } finally {
    process.umask(previous);
  }
  try {
    await chmod(opts.socketPath, SOCKET_MODE);
    const st = await lstat(opts.socketPath);
    if (!st.isSocket()) throw new SocketPathError(`${opts.socketPath} is not the socket just bound`);
  } catch (e) {
    server.forceShutdown();
    throw e;
  }
  log.info({ socket: opts.socketPath, mode: SOCKET_MODE.toString(8), maxStreams: limiter.max }, 'Workload API and SDS listening');
  let closing: Promise<void> | undefined;
  return {
    socketPath: opts.socketPath,
    openStreams: () => limiter.open,
    close: () => {
      closing ??= (async () => {
        // Streams never end on their own: a graceful shutdown would wait for ever, so give it a moment.
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            server.forceShutdown();
            resolve();
          }, 1_000);
          server.tryShutdown(() => {
            clearTimeout(timer);
            resolve();
          });
        });
        await unlink(opts.socketPath).catch(() => undefined);
      })();
      return closing;
    },
  };
}
