/**
 * `tessera workload-api fetch`: a SPIFFE Workload API client for checking an agent (or any Workload
 * API server): the X.509-SVID and bundles it serves, and optionally a JWT-SVID it validates. Prints
 * what it got as JSON, never the private key or the token. Retries like a SPIFFE client while the
 * endpoint is not there yet or has no identity yet (PermissionDenied, Unavailable), up to --wait.
 */
import { X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { SECURITY_HEADER } from '../agent/workload-api/workload.js';
import { serviceDefinition, WORKLOAD_SERVICE, type Message } from '../agent/workload-api/protos.js';
import { socketPathOf } from '../agent/workload-api/socket.js';
import { command, type CliIo } from './command.js';
import { CommandFailed, UsageError } from './usage.js';

const HELP = `options:
  --socket URI          the Workload API endpoint, unix:///path (default: $SPIFFE_ENDPOINT_SOCKET)
  --jwt-audience AUD    also fetch a JWT-SVID for AUD and have the endpoint validate it
  --wait SECONDS        keep retrying while the endpoint is absent or has no identity yet (default 10)
`;

const OPTIONS = {
  socket: { type: 'string' },
  'jwt-audience': { type: 'string' },
  wait: { type: 'string' },
} as const;

type WorkloadClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

/** DER certificates concatenated (as the Workload API sends chains) → certificates. */
function splitDer(buf: Buffer): X509Certificate[] {
  const out: X509Certificate[] = [];
  for (let i = 0; i < buf.length; ) {
    const first = buf[i + 1] ?? 0;
    const n = first < 0x80 ? 0 : first & 0x7f;
    let len = first < 0x80 ? first : 0;
    for (let k = 0; k < n; k++) len = len * 256 + (buf[i + 2 + k] ?? 0);
    const end = i + 2 + n + len;
    out.push(new X509Certificate(buf.subarray(i, end)));
    i = end;
  }
  return out;
}

function firstMessage(c: WorkloadClient, method: string, md: grpc.Metadata): Promise<Message> {
  return new Promise((resolve, reject) => {
    const call = (c[method] as (r: Message, m: grpc.Metadata) => grpc.ClientReadableStream<Message>)({}, md);
    call.once('data', (m: Message) => {
      resolve(m);
      call.cancel();
    });
    call.once('error', (e: grpc.ServiceError) => reject(e));
  });
}

function unary(c: WorkloadClient, method: string, req: Message, md: grpc.Metadata): Promise<Message> {
  return new Promise((resolve, reject) => {
    (c[method] as (r: Message, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, v?: Message) => void) => void)(
      req,
      md,
      { deadline: Date.now() + 15_000 },
      (e, v) => (e ? reject(e) : resolve(v as Message)),
    );
  });
}

const RETRYABLE = new Set([grpc.status.PERMISSION_DENIED, grpc.status.UNAVAILABLE]);

async function fetch(values: { socket?: string; 'jwt-audience'?: string; wait?: string }, io: CliIo): Promise<number> {
  const uri = values.socket ?? process.env.SPIFFE_ENDPOINT_SOCKET;
  if (uri === undefined || uri === '') throw new UsageError('workload-api fetch needs --socket URI (or SPIFFE_ENDPOINT_SOCKET)');
  let socketPath: string;
  try {
    socketPath = socketPathOf(uri);
  } catch (err) {
    throw new UsageError(`--socket: ${(err as Error).message}`);
  }
  const wait = values.wait ?? '10';
  if (!/^\d+$/.test(wait) || Number(wait) > 3600) throw new UsageError('--wait must be a whole number of seconds from 0 to 3600');
  const audience = values['jwt-audience'];
  if (audience !== undefined && (audience === '' || audience.length > 256)) throw new UsageError('--jwt-audience must be 1 to 256 characters');

  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(WORKLOAD_SERVICE), WORKLOAD_SERVICE);
  const c = new Ctor(`unix://${socketPath}`, grpc.credentials.createInsecure(), {
    'grpc.initial_reconnect_backoff_ms': 250,
    'grpc.max_reconnect_backoff_ms': 1_000,
  }) as unknown as WorkloadClient;
  const md = new grpc.Metadata();
  md.set(SECURITY_HEADER, 'true');
  const until = Date.now() + Number(wait) * 1000;
  try {
    let x509: Message;
    for (;;) {
      try {
        x509 = await firstMessage(c, 'FetchX509SVID', md);
        break;
      } catch (err) {
        const e = err as grpc.ServiceError;
        if (!RETRYABLE.has(e.code) || Date.now() >= until) throw e;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    const svids = (x509.svids ?? []) as Message[];
    const bundles = (await firstMessage(c, 'FetchX509Bundles', md)).bundles as Record<string, Buffer>;
    const out: Record<string, unknown> = {
      svids: svids.map((s) => {
        const chain = splitDer(s.x509_svid as Buffer);
        const leaf = chain[0];
        return {
          spiffeId: s.spiffe_id,
          serial: leaf?.serialNumber.toLowerCase(),
          notAfter: leaf !== undefined ? new Date(leaf.validTo).toISOString() : undefined,
          chainLength: chain.length,
          ...(s.hint !== '' ? { hint: s.hint } : {}),
        };
      }),
      x509Bundles: Object.fromEntries(Object.entries(bundles).map(([td, der]) => [td, splitDer(der).map((r) => r.subject.replace(/\n/g, ', '))])),
    };
    if (audience !== undefined) {
      const jwt = ((await unary(c, 'FetchJWTSVID', { audience: [audience] }, md)).svids as Message[])[0] as Message;
      const validated = await unary(c, 'ValidateJWTSVID', { audience, svid: jwt.svid }, md);
      out.jwtSvid = { spiffeId: jwt.spiffe_id, audience, validatedAs: validated.spiffe_id };
    }
    io.stdout(`${JSON.stringify(out, null, 2)}\n`);
    return 0;
  } catch (err) {
    const e = err as Partial<grpc.ServiceError>;
    const name = e.code !== undefined ? grpc.status[e.code] : 'ERROR';
    throw new CommandFailed(`${uri}: ${name}: ${e.details ?? e.message ?? String(err)}`);
  } finally {
    c.close();
  }
}

export const WORKLOAD_API_COMMANDS = [
  command({
    name: 'workload-api fetch',
    usage: '[--socket unix:///PATH] [--jwt-audience AUD] [--wait SECONDS]',
    summary: 'fetch (and print, without keys) what a SPIFFE Workload API endpoint serves',
    details: HELP,
    options: OPTIONS,
    run: (values, _positionals, io) => fetch(values, io),
  }),
];
