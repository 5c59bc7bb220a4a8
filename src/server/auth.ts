/**
 * Who is calling: a Kubernetes service-account token in `Authorization: Bearer`, or else the
 * X.509-SVID presented in the TLS handshake. A presented client certificate that fails verification
 * is refused even if a token is also sent: a bad certificate is never ignored.
 */
import type { TLSSocket } from 'node:tls';
import type { FastifyRequest } from 'fastify';
import type { Identity } from '../attest/identity.js';
import type { Broker } from '../broker.js';
import { unauthenticated } from '../errors.js';

const BEARER = /^Bearer ([A-Za-z0-9._~+/=-]+)$/;

export async function authenticate(broker: Broker, request: FastifyRequest): Promise<Identity> {
  const peer = broker.mtls.peer(request.raw.socket as TLSSocket);
  if (peer.kind === 'rejected') throw peer.error;
  const header = request.headers.authorization;
  if (header !== undefined) {
    const m = BEARER.exec(header);
    if (!m) throw unauthenticated('Authorization must be "Bearer <service-account token>"', 'invalid_token');
    return broker.tokens.attest(m[1] as string);
  }
  if (peer.kind === 'identity') return peer.identity;
  throw unauthenticated('present a service-account token (Authorization: Bearer) or an X.509-SVID client certificate');
}
