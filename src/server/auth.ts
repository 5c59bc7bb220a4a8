/**
 * Who is calling: a Kubernetes service-account token in `Authorization: Bearer`, or else the
 * X.509-SVID presented in the TLS handshake. A presented client certificate that fails verification
 * is refused even if a token is also sent: a bad certificate is never ignored. An admin certificate
 * is refused here too (it is for /v1/admin/* only), and so is any caller an operator has revoked.
 *
 * Rate limits (server/limits.ts) are applied here and only here: anything not authenticated by an
 * accepted SVID counts against the client address before it is verified; every authenticated caller
 * counts against its SPIFFE ID.
 */
import type { TLSSocket } from 'node:tls';
import type { FastifyRequest } from 'fastify';
import type { Identity } from '../attest/identity.js';
import type { Broker } from '../broker.js';
import { unauthenticated } from '../errors.js';
import { logIdentity } from './observe.js';

const BEARER = /^Bearer ([A-Za-z0-9._~+/=-]+)$/;

export async function authenticate(broker: Broker, request: FastifyRequest): Promise<Identity> {
  const socket = request.raw.socket as TLSSocket;
  const peer = broker.mtls.peer(socket);
  const header = request.headers.authorization;
  let identity: Identity;
  if (peer.kind === 'identity' && header === undefined) {
    identity = peer.identity;
  } else {
    // The address is a counter key for unauthenticated attempts, nothing more.
    await broker.limits.source(socket.remoteAddress);
    if (peer.kind === 'rejected') throw peer.error;
    // An admin certificate (admin CA) is never a workload identity, not even next to a token.
    if (peer.kind === 'admin') {
      throw unauthenticated('an admin certificate is not a workload identity; it is accepted on /v1/admin/* only', 'invalid_client_certificate');
    }
    if (header === undefined) {
      throw unauthenticated('present a service-account token (Authorization: Bearer) or an X.509-SVID client certificate');
    }
    const m = BEARER.exec(header);
    if (!m) throw unauthenticated('Authorization must be "Bearer <service-account token>"', 'invalid_token');
    identity = await broker.tokens.attest(m[1] as string);
  }
  logIdentity(request, identity);
  await broker.limits.identity(identity);
  // Revocations, in the one place every credential path passes: SPIFFE ID, namespace, presented serial.
  await broker.guard.assertCallerAllowed(identity);
  return identity;
}
