/**
 * Who is calling: a Kubernetes service-account token in `Authorization: Bearer`, or else the
 * X.509-SVID presented in the TLS handshake. A presented client certificate that fails verification
 * is refused even if a token is also sent: a bad certificate is never ignored. When a valid SVID and
 * a valid token name different SPIFFE IDs the request is refused (400 `ambiguous_identity`): the broker
 * never picks one of two identities. An admin certificate is refused here too (it is for /v1/admin/*
 * only), and so is any caller an operator has revoked.
 *
 * Rate limits (server/limits.ts) are applied here and only here: a request whose attestation FAILS
 * (bad token, bad certificate, no credential, two identities) counts against the client address; a
 * request that attests counts against its SPIFFE ID only, so a flood of junk from a node's address
 * never locks out the valid workloads that share it.
 */
import type { TLSSocket } from 'node:tls';
import type { FastifyRequest } from 'fastify';
import type { Identity } from '../attest/identity.js';
import type { PeerResult } from '../attest/mtls.js';
import type { Broker } from '../broker.js';
import { BrokerError, unauthenticated } from '../errors.js';
import { logIdentity } from './observe.js';

const BEARER = /^Bearer ([A-Za-z0-9._~+/=-]+)$/;

export async function authenticate(broker: Broker, request: FastifyRequest): Promise<Identity> {
  const socket = request.raw.socket as TLSSocket;
  const peer = broker.mtls.peer(socket);
  let attested: { identity: Identity; alsoPresented?: Identity };
  try {
    attested = await attest(broker, peer, request.headers.authorization);
  } catch (err) {
    // Only the caller's own failures count; a 503 (JWKS or store unreachable) is ours.
    if (err instanceof BrokerError && err.status >= 400 && err.status < 500) {
      await broker.limits.failedAttempt(socket.remoteAddress);
    }
    throw err;
  }
  const { identity, alsoPresented } = attested;
  logIdentity(request, identity);
  await broker.limits.identity(identity);
  // Revocations, in the one place every credential path passes: SPIFFE ID, namespace, presented serial.
  await broker.guard.assertCallerAllowed(identity);
  // An SVID sent beside a token for the same ID must not be a revoked one either.
  if (alsoPresented !== undefined) await broker.guard.assertCallerAllowed(alsoPresented);
  return identity;
}

/** The one identity the request proves, or the attestation error (every 4xx here is a failed attempt). */
async function attest(
  broker: Broker,
  peer: PeerResult,
  header: string | undefined,
): Promise<{ identity: Identity; alsoPresented?: Identity }> {
  if (peer.kind === 'rejected') throw peer.error;
  // An admin certificate (admin CA) is never a workload identity, not even next to a token.
  if (peer.kind === 'admin') {
    throw unauthenticated('an admin certificate is not a workload identity; it is accepted on /v1/admin/* only', 'invalid_client_certificate');
  }
  if (header === undefined) {
    if (peer.kind === 'identity') return { identity: peer.identity };
    throw unauthenticated('present a service-account token (Authorization: Bearer) or an X.509-SVID client certificate');
  }
  const m = BEARER.exec(header);
  if (!m) throw unauthenticated('Authorization must be "Bearer <service-account token>"', 'invalid_token');
  const fromToken = await broker.tokens.attest(m[1] as string);
  if (peer.kind !== 'identity') return { identity: fromToken };
  if (peer.identity.spiffeId !== fromToken.spiffeId) {
    throw new BrokerError(
      'ambiguous_identity',
      `the client certificate is ${peer.identity.spiffeId} but the token is ${fromToken.spiffeId}; present one identity per request`,
    );
  }
  return { identity: fromToken, alsoPresented: peer.identity };
}
