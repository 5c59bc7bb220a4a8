/**
 * Who is calling, decided in one preHandler hook (after schema validation, before the handler) from
 * the route's `config.auth`; the hook records what it learns in `request.caller`.
 *
 * Workload routes: a Kubernetes service-account token in `Authorization: Bearer`, or else the
 * X.509-SVID presented in the TLS handshake. A presented client certificate that fails verification
 * is refused even if a token is also sent: a bad certificate is never ignored. When a valid SVID and
 * a valid token name different SPIFFE IDs the request is refused (400 `ambiguous_identity`): the broker
 * never picks one of two identities. An admin certificate is refused here too (it is for /v1/admin/*
 * only), and so is any caller an operator has revoked.
 *
 * Admin routes: mutual TLS with a certificate from the admin CA (never a workload SVID) of a
 * configured principal (or a live break-glass one) holding one of the route's roles.
 *
 * Rate limits (server/limits.ts) are applied here and only here: a request whose attestation FAILS
 * (bad token, bad certificate, no credential, two identities) counts against the client address; a
 * request that attests counts against its SPIFFE ID only, so a flood of junk from a node's address
 * never locks out the valid workloads that share it.
 */
import type { TLSSocket } from 'node:tls';
import type { FastifyRequest, preHandlerAsyncHookHandler } from 'fastify';
import { AdminAudit, type AdminCaller } from '../admin/audit.js';
import type { AccessGuard } from '../admin/guard.js';
import { type AdminAuthority, type AdminPrincipal, requireRole } from '../admin/principals.js';
import type { Attestors } from '../attest/attestor.js';
import type { Identity } from '../attest/identity.js';
import type { AdminPeer, PeerResult } from '../attest/mtls.js';
import type { AdminRole } from '../config/config.js';
import { BrokerError, forbidden, unauthenticated } from '../errors.js';
import type { RateLimiter } from './limits.js';
import { logIdentity } from './observe.js';

/**
 * Who may call a route: an attested workload, an admin with one of `admin` roles, or (the audit
 * entries) an auditor admin or any workload. Routes without it are public.
 */
export type AuthRequirement = 'workload' | 'auditor-or-workload' | { readonly admin: readonly AdminRole[] };

/** What authentication learned about the caller; present once authentication has started. */
export interface Caller {
  /** The attested workload (past its rate limit and the revocation checks). */
  identity?: Identity;
  /** The admin, authorized for the route's roles. */
  admin?: AdminPrincipal;
  /** Who an admin call is attributed to in the audit log, as far as known (refused calls too). */
  adminCaller?: AdminCaller;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    auth?: AuthRequirement;
  }
  interface FastifyRequest {
    caller?: Caller;
  }
}

export interface AuthDeps {
  readonly attestors: Attestors;
  readonly limits: RateLimiter;
  readonly guard: AccessGuard;
  readonly adminAuthority: AdminAuthority;
}

/** The workload a workload route's handler serves (the auth hook guarantees it). */
export function identityOf(request: FastifyRequest): Identity {
  const identity = request.caller?.identity;
  if (identity === undefined) throw new BrokerError('internal', 'route has no authenticated workload');
  return identity;
}

/** The admin an admin route's handler serves (the auth hook guarantees it). */
export function adminOf(request: FastifyRequest): AdminPrincipal {
  const admin = request.caller?.admin;
  if (admin === undefined) throw new BrokerError('internal', 'route has no authorized admin');
  return admin;
}

/** The one authentication hook: add it to the root app, before the route plugins. */
export function authHook(deps: AuthDeps): preHandlerAsyncHookHandler {
  return async (request) => {
    const auth = request.routeOptions.config.auth;
    if (auth === undefined) return;
    const caller: Caller = {};
    request.caller = caller;
    if (auth === 'workload') caller.identity = await authenticate(deps, request);
    else if (auth === 'auditor-or-workload') await auditorOrWorkload(deps, request, caller);
    else caller.admin = await admit(deps, request, auth.admin, caller);
  };
}

async function authenticate(deps: AuthDeps, request: FastifyRequest): Promise<Identity> {
  const socket = request.raw.socket as TLSSocket;
  const peer = await deps.attestors.peer.attest(socket);
  let attested: { identity: Identity; alsoPresented?: Identity };
  try {
    attested = await attest(deps.attestors, peer, request.headers.authorization);
  } catch (err) {
    // Only the caller's own failures count; a 503 (JWKS or store unreachable) is ours.
    if (err instanceof BrokerError && err.status >= 400 && err.status < 500) {
      await deps.limits.failedAttempt(socket.remoteAddress);
    }
    throw err;
  }
  const { identity, alsoPresented } = attested;
  logIdentity(request, identity);
  await deps.limits.identity(identity);
  // Revocations, in the one place every credential path passes: SPIFFE ID, namespace, presented serial.
  await deps.guard.assertCallerAllowed(identity);
  // An SVID sent beside a token for the same ID must not be a revoked one either.
  if (alsoPresented !== undefined) await deps.guard.assertCallerAllowed(alsoPresented);
  return identity;
}

const BEARER = /^Bearer ([A-Za-z0-9._~+/=-]+)$/;

/** The one identity the request proves, or the attestation error (every 4xx here is a failed attempt). */
async function attest(
  attestors: Attestors,
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
  const fromToken = await attestors.token.attest(m[1] as string);
  if (peer.kind !== 'identity') return { identity: fromToken };
  if (peer.identity.spiffeId !== fromToken.spiffeId) {
    throw new BrokerError(
      'ambiguous_identity',
      `the client certificate is ${peer.identity.spiffeId} but the token is ${fromToken.spiffeId}; present one identity per request`,
    );
  }
  return { identity: fromToken, alsoPresented: peer.identity };
}

/** The admin behind this connection: a verified admin-CA certificate of a configured principal (or a live break-glass one). */
async function admit(deps: AuthDeps, request: FastifyRequest, roles: readonly AdminRole[], caller: Caller): Promise<AdminPrincipal> {
  caller.adminCaller = { spiffeId: null, source: 'none' };
  const socket = request.raw.socket as TLSSocket;
  const peer = await deps.attestors.peer.attest(socket);
  // Like workload routes: a caller that does not attest as an admin counts against the client address.
  if (peer.kind !== 'admin') await deps.limits.failedAttempt(socket.remoteAddress);
  if (peer.kind === 'rejected') throw peer.error;
  if (peer.kind === 'identity') {
    caller.adminCaller = { spiffeId: peer.identity.spiffeId, source: 'mtls' };
    throw forbidden('a workload SVID cannot call the admin API; present an admin certificate from the admin CA');
  }
  if (peer.kind === 'none') {
    throw unauthenticated('the admin API needs mutual TLS with an admin certificate (curl --cert admin.pem --key admin.key)');
  }
  return authorizeAdmin(deps, peer.admin, roles, caller);
}

async function authorizeAdmin(deps: AuthDeps, peer: AdminPeer, roles: readonly AdminRole[], caller: Caller): Promise<AdminPrincipal> {
  caller.adminCaller = { spiffeId: peer.spiffeId, source: 'admin' };
  const principal = await deps.adminAuthority.authorize(peer);
  caller.adminCaller = AdminAudit.callerOf(principal);
  requireRole(principal, roles);
  return principal;
}

/**
 * Who may read audit entries: an admin certificate with the auditor role reads all; any other caller
 * must authenticate as a workload (no credential is a 401) and reads its own.
 */
async function auditorOrWorkload(deps: AuthDeps, request: FastifyRequest, caller: Caller): Promise<void> {
  const peer = await deps.attestors.peer.attest(request.raw.socket as TLSSocket);
  if (peer.kind !== 'admin') {
    caller.identity = await authenticate(deps, request);
    return;
  }
  caller.admin = await authorizeAdmin(deps, peer.admin, ['auditor'], caller);
}
