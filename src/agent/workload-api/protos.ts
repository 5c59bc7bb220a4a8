/**
 * The gRPC definitions the agent serves, loaded from proto/ (written from the SPIFFE and Envoy
 * specifications) with protobufjs, and turned into grpc-js service definitions. Messages are plain
 * objects with the proto's own (snake_case) field names; bytes are Buffers. A serializer also accepts
 * a Buffer that is already an encoded message, so one rotation is encoded once for every open stream.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js';
import protobuf from 'protobufjs';

/** proto/ at the package root: three levels up from src/agent/workload-api and from dist/agent/workload-api. */
export const PROTO_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../proto');

export const WORKLOAD_PROTO = 'spiffe/workload/workload.proto';
export const SDS_PROTO = 'envoy/service/secret/v3/sds.proto';
export const TLS_PROTO = 'envoy/extensions/transport_sockets/tls/v3/tls.proto';

export const WORKLOAD_SERVICE = 'SpiffeWorkloadAPI';
export const SDS_SERVICE = 'envoy.service.secret.v3.SecretDiscoveryService';
export const SECRET_TYPE = 'envoy.extensions.transport_sockets.tls.v3.Secret';
export const SECRET_TYPE_URL = `type.googleapis.com/${SECRET_TYPE}`;

export type Message = Record<string, unknown>;

export interface Codec {
  readonly type: protobuf.Type;
  encode(message: Message | Buffer): Buffer;
  decode(bytes: Buffer): Message;
}

const TO_OBJECT: protobuf.IConversionOptions = { defaults: true, arrays: true, objects: true, oneofs: true };

let rootCache: protobuf.Root | undefined;

/** Every proto file, parsed once (imports resolved against proto/, google/protobuf/* built in). */
export function protoRoot(): protobuf.Root {
  if (rootCache === undefined) {
    const root = new protobuf.Root();
    // Every import is relative to proto/; google/protobuf/* are protobufjs' built-in copies.
    root.resolvePath = (_origin, target) => (target.startsWith('google/protobuf/') ? target : path.join(PROTO_DIR, target));
    root.loadSync([WORKLOAD_PROTO, SDS_PROTO, TLS_PROTO], { keepCase: true });
    root.resolveAll();
    rootCache = root;
  }
  return rootCache;
}

const codecs = new Map<string, Codec>();

/** Encoder/decoder for one message type, by full name (e.g. "X509SVIDResponse", "envoy.…Secret"). */
export function codec(typeName: string): Codec {
  let c = codecs.get(typeName);
  if (c === undefined) {
    const type = protoRoot().lookupType(typeName);
    c = {
      type,
      encode: (message) => (Buffer.isBuffer(message) ? message : Buffer.from(type.encode(type.fromObject(message)).finish())),
      decode: (bytes) => type.toObject(type.decode(bytes), TO_OBJECT),
    };
    codecs.set(typeName, c);
  }
  return c;
}

/** A grpc-js service definition (for Server.addService and makeGenericClientConstructor). */
export function serviceDefinition(serviceName: string): ServiceDefinition {
  const service = protoRoot().lookupService(serviceName);
  const def: Record<string, MethodDefinition<Message, Message>> = {};
  for (const method of service.methodsArray) {
    method.resolve();
    const req = codec(method.resolvedRequestType?.fullName.slice(1) ?? method.requestType);
    const res = codec(method.resolvedResponseType?.fullName.slice(1) ?? method.responseType);
    def[method.name] = {
      path: `/${service.fullName.slice(1)}/${method.name}`,
      requestStream: method.requestStream === true,
      responseStream: method.responseStream === true,
      requestSerialize: (m: Message) => req.encode(m),
      requestDeserialize: (b: Buffer) => req.decode(b),
      responseSerialize: (m: Message) => res.encode(m),
      responseDeserialize: (b: Buffer) => res.decode(b),
      originalName: method.name,
    };
  }
  return def;
}

// ---- google.protobuf.Struct <-> JSON ----

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

function toValue(v: unknown): Message {
  if (v === null || v === undefined) return { nullValue: 0 };
  if (typeof v === 'boolean') return { boolValue: v };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  if (typeof v === 'object') return { structValue: toStruct(v as Record<string, unknown>) };
  return { stringValue: typeof v === 'bigint' ? v.toString() : '' };
}

/** A JSON object as a google.protobuf.Struct message object. */
export function toStruct(obj: Record<string, unknown>): Message {
  // No prototype: a claim named "__proto__" (legal JSON) stays a claim instead of replacing the prototype.
  const fields = Object.create(null) as Record<string, Message>;
  for (const [k, v] of Object.entries(obj)) fields[k] = toValue(v);
  return { fields };
}

function fromValue(v: Message): Json {
  if (typeof v.boolValue === 'boolean') return v.boolValue;
  if (typeof v.numberValue === 'number') return v.numberValue;
  if (typeof v.stringValue === 'string') return v.stringValue;
  if (typeof v.listValue === 'object' && v.listValue !== null) {
    const values = (v.listValue as { values?: Message[] }).values ?? [];
    return values.map(fromValue);
  }
  if (typeof v.structValue === 'object' && v.structValue !== null) return fromStruct(v.structValue as Message);
  return null;
}

/** A google.protobuf.Struct message object (as decoded) as JSON. */
export function fromStruct(struct: Message): Record<string, Json> {
  const out = Object.create(null) as Record<string, Json>;
  const fields = (struct.fields ?? {}) as Record<string, Message>;
  for (const [k, v] of Object.entries(fields)) out[k] = fromValue(v);
  return out;
}
