/**
 * Byte transports for the socket and syslog devices: a stream (TCP, TLS, Unix socket) and UDP.
 *
 * A stream connects lazily on the first send and keeps one connection. Anything the peer sends back is
 * read and dropped (a receiver that answers garbage cannot fill memory). When the connection fails or
 * the peer closes it, `generation` is bumped: frames the kernel had taken may not have reached the
 * receiver. Timeouts are the caller's (the shipper races each write against its writeTimeoutMs and
 * calls reset(), which destroys the socket and fails the pending send).
 */
import { readFileSync } from 'node:fs';
import dgram from 'node:dgram';
import net from 'node:net';
import tls from 'node:tls';
import type { DeviceAddress } from './config.js';

export interface Transport {
  send(frames: readonly Buffer[]): Promise<void>;
  readonly generation: number;
  readonly lossyAfterWrite: boolean;
  reset(): void;
  close(): Promise<void>;
}

export interface TransportTls {
  readonly caFile: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly serverName?: string;
}

export class StreamTransport implements Transport {
  readonly lossyAfterWrite = true;
  #generation = 0;
  #socket: net.Socket | null = null;
  #connecting: Promise<net.Socket> | null = null;
  #closed = false;
  readonly #tls: { ca: string; cert?: string; key?: string; servername?: string } | undefined;

  constructor(
    private readonly address: DeviceAddress,
    tlsFiles?: TransportTls,
  ) {
    if (tlsFiles !== undefined) {
      // Read once at start (load.ts already checked they are readable PEM).
      this.#tls = {
        ca: readFileSync(tlsFiles.caFile, 'utf8'),
        ...(tlsFiles.certFile !== undefined ? { cert: readFileSync(tlsFiles.certFile, 'utf8') } : {}),
        ...(tlsFiles.keyFile !== undefined ? { key: readFileSync(tlsFiles.keyFile, 'utf8') } : {}),
        ...(tlsFiles.serverName !== undefined ? { servername: tlsFiles.serverName } : {}),
      };
    }
  }

  get generation(): number {
    return this.#generation;
  }

  async send(frames: readonly Buffer[]): Promise<void> {
    if (this.#closed) throw new Error('transport closed');
    const socket = this.#socket ?? (await this.#connect());
    const data = frames.length === 1 ? (frames[0] as Buffer) : Buffer.concat(frames);
    await new Promise<void>((resolve, reject) => {
      const onClose = (): void => reject(new Error('connection closed while writing'));
      socket.once('close', onClose);
      socket.write(data, (err) => {
        socket.off('close', onClose);
        if (err) reject(err);
        else resolve();
      });
    });
  }

  #connect(): Promise<net.Socket> {
    if (this.#connecting !== null) return this.#connecting;
    const addr = this.address;
    this.#connecting = new Promise<net.Socket>((resolve, reject) => {
      let socket: net.Socket;
      const ready = 'secureConnect';
      if (addr.transport === 'unix') socket = net.connect({ path: addr.path });
      else if (addr.transport === 'tls' && this.#tls !== undefined) {
        const servername = this.#tls.servername ?? (net.isIP(addr.host) === 0 ? addr.host : undefined);
        socket = tls.connect({ host: addr.host, port: addr.port, ...this.#tls, ...(servername !== undefined ? { servername } : {}) });
      } else socket = net.connect({ host: addr.host, port: addr.port });
      const event = socket instanceof tls.TLSSocket ? ready : 'connect';
      const fail = (err: Error): void => {
        socket.destroy();
        reject(err);
      };
      socket.once('error', fail);
      socket.once(event, () => {
        socket.off('error', fail);
        socket.setNoDelay(true);
        socket.setKeepAlive(true, 10_000);
        // What the receiver sends us is not read as anything: drop it.
        socket.on('data', () => {});
        socket.on('error', () => {});
        socket.on('end', () => socket.destroy());
        socket.once('close', () => {
          if (this.#socket === socket) {
            this.#socket = null;
            this.#generation++;
          }
        });
        this.#socket = socket;
        resolve(socket);
      });
      this.#pendingConnect = socket;
    }).finally(() => {
      this.#connecting = null;
      this.#pendingConnect = null;
    });
    return this.#connecting;
  }

  #pendingConnect: net.Socket | null = null;

  reset(): void {
    this.#pendingConnect?.destroy(new Error('connect abandoned'));
    const s = this.#socket;
    if (s !== null) {
      this.#socket = null;
      this.#generation++;
      s.destroy();
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    const s = this.#socket;
    this.reset();
    if (s !== null && !s.closed) await new Promise<void>((r) => s.once('close', () => r()));
  }
}

/** RFC 5426 syslog over UDP: one message per datagram, loss accepted (never resent). */
export class DatagramTransport implements Transport {
  readonly lossyAfterWrite = false;
  readonly generation = 0;
  #socket: dgram.Socket | null = null;

  constructor(private readonly address: { host: string; port: number }) {}

  async send(frames: readonly Buffer[]): Promise<void> {
    const socket = this.#socket ?? (await this.#open());
    for (const f of frames) {
      await new Promise<void>((resolve, reject) => socket.send(f, (err) => (err ? reject(err) : resolve())));
    }
  }

  #open(): Promise<dgram.Socket> {
    return new Promise((resolve, reject) => {
      const socket = dgram.createSocket(net.isIP(this.address.host) === 6 ? 'udp6' : 'udp4');
      socket.on('message', () => {});
      socket.once('error', (err) => {
        socket.close();
        reject(err);
      });
      socket.connect(this.address.port, this.address.host, () => {
        socket.removeAllListeners('error');
        socket.on('error', () => this.reset());
        this.#socket = socket;
        resolve(socket);
      });
    });
  }

  reset(): void {
    const s = this.#socket;
    this.#socket = null;
    try {
      s?.close();
    } catch {
      /* already closed */
    }
  }

  async close(): Promise<void> {
    this.reset();
  }
}
