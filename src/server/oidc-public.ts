/**
 * The public OIDC listener (config `oidc.public`): HTTPS serving the discovery document and the JWKS and
 * nothing else — every other path is 404, no client certificate is ever asked for, no request body is
 * read. It is the one listener meant to face the internet (cloud IAM fetches the issuer's keys from
 * there), so it carries no credentials, no workload or admin route, and answers from memory.
 */
import { createPublicKey, type KeyObject, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { createSecureContext } from 'node:tls';
import Fastify from 'fastify';
import { BrokerError } from '../errors.js';
import { ConfigError } from '../config/load.js';
import { errorHandler } from './errors.js';
import { oidcRoutes, type OidcOptions } from './routes/oidc.js';

export interface OidcPublicListenerConfig {
  readonly host: string;
  readonly port: number;
  /** PEM certificate chain and key; the broker's own when absent. */
  readonly certFile?: string | undefined;
  readonly keyFile?: string | undefined;
}

export interface OidcPublicServer {
  /** https://host:port of the listener (what it is bound to, not the issuer). */
  readonly url: string;
  close(): Promise<void>;
}

function readPem(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`config.oidc.public.${what}: cannot read ${file}: ${(err as Error).message}`);
  }
}

export interface PemPair {
  readonly certPem: string;
  readonly keyPem: string;
}

/**
 * The public listener's certificate and key: its own files, or the broker's (`tls`). Read and checked
 * before the broker starts, so a bad one stops `tessera serve` before anything is opened.
 */
export function readOidcPublicTls(listen: OidcPublicListenerConfig, brokerTls: { readonly certFile: string; readonly keyFile: string }): PemPair {
  const pair =
    listen.certFile !== undefined && listen.keyFile !== undefined
      ? { certPem: readPem(listen.certFile, 'certFile'), keyPem: readPem(listen.keyFile, 'keyFile') }
      : { certPem: readFileSync(brokerTls.certFile, 'utf8'), keyPem: readFileSync(brokerTls.keyFile, 'utf8') };
  try {
    createSecureContext({ cert: pair.certPem, key: pair.keyPem });
    // OpenSSL keeps one key per type, so a key of another type than the certificate's passes above.
    const spki = (k: KeyObject): Buffer => k.export({ type: 'spki', format: 'der' });
    if (!spki(new X509Certificate(pair.certPem).publicKey).equals(spki(createPublicKey(pair.keyPem)))) throw new Error('the key is not the certificate\'s');
  } catch (err) {
    throw new ConfigError(`config.oidc.public: cannot use its TLS certificate and key: ${(err as Error).message}`);
  }
  return pair;
}

export async function startOidcPublicServer(listen: Pick<OidcPublicListenerConfig, 'host' | 'port'>, tls: PemPair, routes: OidcOptions): Promise<OidcPublicServer> {
  const { certPem: cert, keyPem: key } = tls;
  const app = Fastify({
    // requestCert is false (the default): the handshake never asks for a client certificate.
    https: { cert, key, minVersion: 'TLSv1.2', headersTimeout: 5_000, connectionsCheckingInterval: 1_000, handshakeTimeout: 10_000 },
    // Two GETs without bodies: anything large or slow is not a relying party.
    bodyLimit: 1024,
    requestTimeout: 10_000,
    connectionTimeout: 30_000,
    keepAliveTimeout: 65_000,
    logger: false,
    return503OnClosing: true,
    frameworkErrors: (err, request, reply) => errorHandler(err, request, reply),
  });
  app.server.headersTimeout = 5_000;
  app.removeAllContentTypeParsers();
  app.setErrorHandler((err, request, reply) => errorHandler(err, request, reply));
  app.setNotFoundHandler((request, reply) => {
    errorHandler(new BrokerError('not_found', `only OIDC discovery is served here, not ${request.method} ${request.url.split('?')[0] ?? ''}`), request, reply);
  });
  await app.register(oidcRoutes, routes);
  await app.listen({ host: listen.host, port: listen.port });
  const { port } = app.server.address() as AddressInfo;
  const host = listen.host.includes(':') ? `[${listen.host}]` : listen.host;
  return {
    url: `https://${host}:${port}`,
    close: async () => {
      await app.close();
    },
  };
}
