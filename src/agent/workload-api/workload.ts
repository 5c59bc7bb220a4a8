/**
 * The SPIFFE Workload API (SPIFFE_Workload_API.md, SPIFFE_Workload_Endpoint.md) over the agent's
 * identity: every call must carry `workload.spiffe.io: true` (InvalidArgument otherwise); before the
 * agent holds an SVID, and after it expires unrenewed, calls answer PermissionDenied and the client
 * retries; streams send the full state at once and again on every change.
 */
import { Metadata, status, type sendUnaryData, type ServerUnaryCall, type ServerWritableStream, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { TesseraError } from '../../sdk/errors.js';
import type { IdentitySource, JwtBundle, X509Identity } from './identity.js';
import { JwtSvidInvalid, validateJwtSvid } from './jwt.js';
import { codec, toStruct, type Message } from './protos.js';
import { Push, type GrpcError, type StreamLimiter } from './streams.js';

export const SECURITY_HEADER = 'workload.spiffe.io';
export const MAX_AUDIENCES = 16;
export const MAX_AUDIENCE_LENGTH = 256;
/** JWT-SVID requests to the broker in flight at once; more are refused with ResourceExhausted. */
export const MAX_JWT_FETCHES = 8;

export interface WorkloadLogger {
  info(fields: Record<string, unknown>, msg: string): void;
  warn(fields: Record<string, unknown>, msg: string): void;
}

const err = (code: status, details: string): GrpcError => ({ code, details });
const NO_IDENTITY = err(status.PERMISSION_DENIED, 'no X.509-SVID yet (the agent is still obtaining one from the broker, or it expired unrenewed); retry with backoff');

/** The spec's SSRF guard: exactly one `workload.spiffe.io` value, and it is "true". */
export function headerProblem(metadata: Metadata): GrpcError | undefined {
  const values = metadata.get(SECURITY_HEADER);
  if (values.length !== 1 || values[0] !== 'true') {
    return err(status.INVALID_ARGUMENT, `security header missing from request: send gRPC metadata "${SECURITY_HEADER}: true"`);
  }
  return undefined;
}

/** The encoded X509SVIDResponse and X509BundlesResponse for one identity, made once per rotation. */
const encoded = new WeakMap<X509Identity, { svid: Buffer; bundles: Buffer }>();
function encodedFor(id: X509Identity): { svid: Buffer; bundles: Buffer } {
  let e = encoded.get(id);
  if (e === undefined) {
    e = {
      svid: codec('X509SVIDResponse').encode({
        svids: [{ spiffe_id: id.spiffeId, x509_svid: id.chainDer, x509_svid_key: id.keyDer, bundle: id.bundleDer }],
        federated_bundles: Object.fromEntries(id.federatedDer),
      }),
      // Own bundle and every federated one, each keyed by its trust domain.
      bundles: codec('X509BundlesResponse').encode({ bundles: { ...Object.fromEntries(id.federatedDer), [id.trustDomainId]: id.bundleDer } }),
    };
    encoded.set(id, e);
  }
  return e;
}

function jwtBundlesMessage(bundles: ReadonlyMap<string, JwtBundle>): Buffer {
  return codec('JWTBundlesResponse').encode({ bundles: Object.fromEntries([...bundles].map(([td, b]) => [td, b.json])) });
}

/** TesseraError from the broker → the Workload API's status. */
function jwtFetchStatus(e: unknown): GrpcError {
  if (e instanceof TesseraError) {
    if (e.status === 403 || e.code === 'forbidden') return err(status.PERMISSION_DENIED, `the broker refused a JWT-SVID for this audience: ${e.message}`);
    if (e.status === 400 || e.code === 'bad_request') return err(status.INVALID_ARGUMENT, e.message);
    if (e.status === 429) return err(status.RESOURCE_EXHAUSTED, e.message);
    return err(status.UNAVAILABLE, `the broker could not issue a JWT-SVID: ${e.message}`);
  }
  return err(status.UNAVAILABLE, `the broker could not issue a JWT-SVID: ${e instanceof Error ? e.message : String(e)}`);
}

export function workloadApiService(source: IdentitySource, limiter: StreamLimiter, log: WorkloadLogger): UntypedServiceImplementation {
  let jwtFetches = 0;

  /** Header, stream slot, then `run` with a Push; a refusal ends the call with its status. */
  const stream = (call: ServerWritableStream<Message, Message>, run: (push: Push) => GrpcError | undefined): void => {
    const push = new Push(call);
    const problem = headerProblem(call.metadata);
    if (problem !== undefined) return push.fail(problem);
    const release = limiter.tryAcquire();
    if (release === undefined) return push.fail(err(status.RESOURCE_EXHAUSTED, `too many open streams (limit ${limiter.max})`));
    push.onClose(release);
    const refusal = run(push);
    if (refusal !== undefined) push.fail(refusal);
  };

  /** Follows source events until the stream closes. */
  const onX509 = (push: Push, fn: (id: X509Identity | undefined) => void): void => {
    source.on('x509', fn);
    push.onClose(() => source.off('x509', fn));
  };
  const onJwtBundles = (push: Push, fn: (bundles: ReadonlyMap<string, JwtBundle>) => void): void => {
    source.on('jwtBundles', fn);
    push.onClose(() => source.off('jwtBundles', fn));
  };

  return {
    FetchX509SVID: (call: ServerWritableStream<Message, Message>) =>
      stream(call, (push) => {
        const id = source.x509();
        if (id === undefined) return NO_IDENTITY;
        push.send(encodedFor(id).svid);
        let last = id;
        onX509(push, (next) => {
          if (next === undefined) return push.fail(NO_IDENTITY);
          if (next === last) return;
          last = next;
          push.send(encodedFor(last).svid);
        });
        return undefined;
      }),

    FetchX509Bundles: (call: ServerWritableStream<Message, Message>) =>
      stream(call, (push) => {
        const id = source.x509();
        if (id === undefined) return NO_IDENTITY;
        let sent = encodedFor(id).bundles;
        push.send(sent);
        onX509(push, (next) => {
          if (next === undefined) return push.fail(NO_IDENTITY);
          const bundles = encodedFor(next).bundles;
          if (bundles.equals(sent)) return;
          sent = bundles;
          push.send(bundles);
        });
        return undefined;
      }),

    FetchJWTBundles: (call: ServerWritableStream<Message, Message>) =>
      stream(call, (push) => {
        if (source.x509() === undefined) return NO_IDENTITY;
        const bundles = source.jwtBundles();
        // The bundle follows the first SVID by one GET; until then the stream waits for it.
        if (bundles !== undefined) push.send(jwtBundlesMessage(bundles));
        onJwtBundles(push, (next) => push.send(jwtBundlesMessage(next)));
        onX509(push, (next) => {
          if (next === undefined) push.fail(NO_IDENTITY);
        });
        return undefined;
      }),

    FetchJWTSVID: (call: ServerUnaryCall<Message, Message>, callback: sendUnaryData<Message>) => {
      const reply = (e: GrpcError | undefined, value?: Message): void => {
        if (e !== undefined) callback({ code: e.code, details: e.details, metadata: new Metadata() });
        else callback(null, value);
      };
      const problem = headerProblem(call.metadata);
      if (problem !== undefined) return reply(problem);
      const audience = (call.request.audience ?? []) as string[];
      const spiffeId = typeof call.request.spiffe_id === 'string' ? call.request.spiffe_id : '';
      if (audience.length === 0) return reply(err(status.INVALID_ARGUMENT, 'audience is required: give at least one'));
      if (audience.length > MAX_AUDIENCES || audience.some((a) => a.length === 0 || a.length > MAX_AUDIENCE_LENGTH)) {
        return reply(err(status.INVALID_ARGUMENT, `audience: 1 to ${MAX_AUDIENCES} non-empty values of at most ${MAX_AUDIENCE_LENGTH} characters`));
      }
      const id = source.x509();
      if (id === undefined) return reply(NO_IDENTITY);
      if (spiffeId !== '' && spiffeId !== id.spiffeId) return reply(err(status.PERMISSION_DENIED, `this workload has no identity ${JSON.stringify(spiffeId)}`));
      if (jwtFetches >= MAX_JWT_FETCHES) return reply(err(status.RESOURCE_EXHAUSTED, 'too many JWT-SVID requests in flight; retry'));
      jwtFetches += 1;
      source.jwtSvid(audience).then(
        (svid) => {
          jwtFetches -= 1;
          reply(undefined, { svids: [{ spiffe_id: svid.spiffeId, svid: svid.token }] });
        },
        (e: unknown) => {
          jwtFetches -= 1;
          const s = jwtFetchStatus(e);
          log.warn({ audience, code: status[s.code], error: s.details }, 'JWT-SVID request refused');
          reply(s);
        },
      );
    },

    ValidateJWTSVID: (call: ServerUnaryCall<Message, Message>, callback: sendUnaryData<Message>) => {
      const reply = (e: GrpcError | undefined, value?: Message): void => {
        if (e !== undefined) callback({ code: e.code, details: e.details, metadata: new Metadata() });
        else callback(null, value);
      };
      const problem = headerProblem(call.metadata);
      if (problem !== undefined) return reply(problem);
      const audience = typeof call.request.audience === 'string' ? call.request.audience : '';
      const token = typeof call.request.svid === 'string' ? call.request.svid : '';
      if (audience === '') return reply(err(status.INVALID_ARGUMENT, 'audience is required'));
      if (token === '') return reply(err(status.INVALID_ARGUMENT, 'svid is required'));
      if (source.x509() === undefined) return reply(NO_IDENTITY);
      const bundles = source.jwtBundles();
      if (bundles === undefined) return reply(err(status.UNAVAILABLE, 'no JWT bundle yet; retry'));
      validateJwtSvid(token, audience, bundles).then(
        (v) => reply(undefined, { spiffe_id: v.spiffeId, claims: toStruct(v.claims as Record<string, unknown>) }),
        (e: unknown) => reply(err(status.INVALID_ARGUMENT, e instanceof JwtSvidInvalid ? `invalid JWT-SVID: ${e.message}` : 'invalid JWT-SVID')),
      );
    },
  };
}
