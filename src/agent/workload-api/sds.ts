/**
 * Envoy's Secret Discovery Service v3, state of the world, with SPIRE's resource names:
 *   "default"                    the workload's certificate chain and key (TlsCertificate)
 *   "ROOTCA", "spiffe://<td>"    the trust domain's roots (CertificateValidationContext)
 * An empty resource_names list means all of them. The first request gets the current secrets as
 * soon as the agent holds an SVID; each rotation pushes a new version. A request whose
 * response_nonce is not the last one sent is stale and ignored; one with error_detail is a NACK:
 * logged, and that version is not sent again (the next rotation is). Unknown names are left out.
 */
import { randomBytes } from 'node:crypto';
import { Metadata, status, type sendUnaryData, type ServerDuplexStream, type ServerUnaryCall, type UntypedServiceImplementation } from '@grpc/grpc-js';
import type { IdentitySource, X509Identity } from './identity.js';
import { codec, SECRET_TYPE, SECRET_TYPE_URL, type Message } from './protos.js';
import { Push, type GrpcError, type StreamLimiter } from './streams.js';
import type { WorkloadLogger } from './workload.js';

export const TLS_CERTIFICATE_NAME = 'default';
export const ROOT_CA_NAME = 'ROOTCA';
const MAX_RESOURCE_NAMES = 16;
const MAX_RESOURCE_NAME_LENGTH = 512;

const err = (code: status, details: string): GrpcError => ({ code, details });

function secretFor(name: string, id: X509Identity): Message | undefined {
  if (name === TLS_CERTIFICATE_NAME) {
    return {
      name,
      tls_certificate: {
        certificate_chain: { inline_bytes: Buffer.from(id.chainPem) },
        private_key: { inline_bytes: Buffer.from(id.keyPem) },
      },
    };
  }
  if (name === ROOT_CA_NAME || name === id.trustDomainId) {
    return { name, validation_context: { trusted_ca: { inline_bytes: Buffer.from(id.bundlePem) } } };
  }
  return undefined;
}

/** The DiscoveryResponse for `names` (all when empty) at the identity's version (its serial). */
export function discoveryResponse(names: readonly string[], id: X509Identity, nonce: string): Message {
  const wanted = names.length === 0 ? [TLS_CERTIFICATE_NAME, ROOT_CA_NAME, id.trustDomainId] : names;
  const secret = codec(SECRET_TYPE);
  const resources = wanted
    .map((n) => secretFor(n, id))
    .filter((s): s is Message => s !== undefined)
    .map((s) => ({ type_url: SECRET_TYPE_URL, value: secret.encode(s) }));
  return { version_info: id.serial, resources, type_url: SECRET_TYPE_URL, nonce };
}

function requestProblem(req: Message): GrpcError | undefined {
  const typeUrl = typeof req.type_url === 'string' ? req.type_url : '';
  if (typeUrl !== '' && typeUrl !== SECRET_TYPE_URL) return err(status.INVALID_ARGUMENT, `type_url must be ${SECRET_TYPE_URL}`);
  const names = (req.resource_names ?? []) as string[];
  if (names.length > MAX_RESOURCE_NAMES || names.some((n) => n.length > MAX_RESOURCE_NAME_LENGTH)) {
    return err(status.INVALID_ARGUMENT, `resource_names: at most ${MAX_RESOURCE_NAMES} names of at most ${MAX_RESOURCE_NAME_LENGTH} characters`);
  }
  return undefined;
}

const sameNames = (a: readonly string[], b: readonly string[]): boolean => a.length === b.length && a.every((n, i) => n === b[i]);

export function sdsService(source: IdentitySource, limiter: StreamLimiter, log: WorkloadLogger): UntypedServiceImplementation {
  return {
    StreamSecrets: (call: ServerDuplexStream<Message, Message>) => {
      const push = new Push(call);
      const release = limiter.tryAcquire();
      if (release === undefined) return push.fail(err(status.RESOURCE_EXHAUSTED, `too many open streams (limit ${limiter.max})`));
      push.onClose(release);
      let names: string[] | undefined;
      let lastNonce = '';
      let lastSent: X509Identity | undefined;
      let nacked: string | undefined;

      const send = (id: X509Identity | undefined): void => {
        if (names === undefined || id === undefined || push.closed) return;
        lastNonce = randomBytes(8).toString('hex');
        lastSent = id;
        push.send(discoveryResponse(names, id, lastNonce));
      };

      call.on('data', (req: Message) => {
        const problem = requestProblem(req);
        if (problem !== undefined) return push.fail(problem);
        const nonce = typeof req.response_nonce === 'string' ? req.response_nonce : '';
        if (nonce !== lastNonce) return; // answers an older response: stale
        const wanted = [...((req.resource_names ?? []) as string[])];
        const detail = req.error_detail as { code?: number; message?: string } | null | undefined;
        if (nonce !== '' && detail !== null && detail !== undefined && ((detail.code ?? 0) !== 0 || (detail.message ?? '') !== '')) {
          nacked = lastSent?.serial;
          log.warn({ version: nacked, code: detail.code, error: detail.message }, 'SDS client rejected (NACK) the secrets; waiting for the next rotation');
        }
        const changed = names === undefined || !sameNames(names, wanted);
        names = wanted;
        // First request, or a new subscription: answer with the current state. An ACK alone needs no answer.
        if (changed) send(source.x509());
      });
      call.on('end', () => call.end());
      const onX509 = (id: X509Identity | undefined): void => {
        if (id !== undefined && id !== lastSent && id.serial !== nacked) send(id);
      };
      source.on('x509', onX509);
      push.onClose(() => source.off('x509', onX509));
    },

    FetchSecrets: (call: ServerUnaryCall<Message, Message>, callback: sendUnaryData<Message>) => {
      const problem = requestProblem(call.request);
      if (problem !== undefined) return callback({ code: problem.code, details: problem.details, metadata: new Metadata() });
      const id = source.x509();
      if (id === undefined) return callback({ code: status.UNAVAILABLE, details: 'no X.509-SVID yet; retry', metadata: new Metadata() });
      callback(null, discoveryResponse([...((call.request.resource_names ?? []) as string[])], id, randomBytes(8).toString('hex')));
    },
  };
}
