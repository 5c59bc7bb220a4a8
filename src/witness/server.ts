/**
 * The witness's HTTP interface (node:http, nothing else):
 *
 *   POST /add-checkpoint            tlog-witness add-checkpoint (witness.ts)
 *   GET  /<hex SHA-256(origin)>/checkpoint   the latest cosigned checkpoint of that log (monitoring)
 *
 * Bodies are read up to MAX_REQUEST_BYTES (a larger one is answered 413 and the connection closed),
 * with header and request timeouts, and keep-alive as the spec asks. Plain HTTP: put TLS in front
 * (a proxy, a bastion) when the witness is reached over a network you do not trust; the protocol itself
 * needs no secrecy, and the log's signature is the only authentication it relies on.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MAX_REQUEST_BYTES } from './request.js';
import type { Witness, WitnessAnswer } from './witness.js';

export interface WitnessServerOptions {
  readonly host: string;
  readonly port: number;
  /** Unexpected failures (a state write that failed); the client gets a 500 and nothing was cosigned. */
  readonly onError?: (err: unknown) => void;
}

function send(res: ServerResponse, a: WitnessAnswer, close = false): void {
  res.writeHead(a.status, {
    'content-type': a.contentType,
    'content-length': Buffer.byteLength(a.body),
    'cache-control': 'no-store',
    ...(close ? { connection: 'close' } : {}),
  });
  res.end(a.body);
}

const plain = (status: number, message: string): WitnessAnswer => ({ status, contentType: 'text/plain; charset=utf-8', body: `${message}\n` });

/** Reads the body, or undefined once it exceeds the limit (the rest is not read). */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      resolve(undefined);
      return;
    }
    const chunks: Buffer[] = [];
    let n = 0;
    let done = false;
    req.on('data', (c: Buffer) => {
      if (done) return;
      n += c.length;
      if (n > limit) {
        done = true;
        resolve(undefined);
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (!done) resolve(Buffer.concat(chunks, n));
    });
    req.on('error', reject);
  });
}

export async function startWitnessServer(witness: Witness, opts: WitnessServerOptions): Promise<{ server: Server; url: string; close(): Promise<void> }> {
  const onError = opts.onError ?? (() => {});
  const server = createServer({ requestTimeout: 10_000, headersTimeout: 5_000, keepAliveTimeout: 30_000 }, (req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://witness');
      if (url.pathname === '/add-checkpoint') {
        if (req.method !== 'POST') {
          res.setHeader('allow', 'POST');
          send(res, plain(405, 'add-checkpoint takes POST'));
          return;
        }
        const body = await readBody(req, MAX_REQUEST_BYTES);
        if (body === undefined) {
          send(res, plain(413, `request body is larger than ${MAX_REQUEST_BYTES} bytes`), true);
          req.destroy();
          return;
        }
        send(res, await witness.addCheckpoint(body));
        return;
      }
      const m = /^\/([0-9a-f]{64})\/checkpoint$/.exec(url.pathname);
      if (m !== null && (req.method === 'GET' || req.method === 'HEAD')) {
        send(res, witness.checkpoint(m[1] as string));
        return;
      }
      send(res, plain(404, 'not found'));
    })().catch((err: unknown) => {
      onError(err);
      if (!res.headersSent) send(res, plain(500, 'internal error: nothing was cosigned'), true);
      else res.destroy();
    });
  });
  server.on('clientError', (_err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
    else socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    server,
    url: `http://${host}:${addr.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
