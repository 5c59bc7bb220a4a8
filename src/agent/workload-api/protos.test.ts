import fc from 'fast-check';
import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import { codec, fromStruct, protoRoot, serviceDefinition, SDS_SERVICE, toStruct, WORKLOAD_SERVICE } from './protos.js';

/** Every message type defined in proto/ (the google/protobuf ones come with protobufjs and are used through these). */
function ourTypes(): protobuf.Type[] {
  const out: protobuf.Type[] = [];
  const walk = (ns: protobuf.NamespaceBase): void => {
    for (const child of ns.nestedArray) {
      if (child instanceof protobuf.Type) {
        if (!child.fullName.startsWith('.google.protobuf.')) out.push(child);
        walk(child);
      } else if (child instanceof protobuf.Namespace) walk(child);
    }
  };
  walk(protoRoot());
  return out;
}

const SCALARS: Record<string, () => fc.Arbitrary<unknown>> = {
  string: () => fc.string({ maxLength: 20 }),
  bytes: () => fc.uint8Array({ maxLength: 20 }).map((a) => Buffer.from(a)),
  bool: () => fc.boolean(),
  int32: () => fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
  uint32: () => fc.nat({ max: 2 ** 32 - 1 }),
  double: () => fc.double({ noNaN: true }),
  enum: () => fc.constant(0),
};

/** An arbitrary message object of `type` with every field present (oneofs: one member set). */
function arbitrary(type: protobuf.Type, depth = 0): fc.Arbitrary<Record<string, unknown>> {
  const valueOf = (field: protobuf.Field): fc.Arbitrary<unknown> => {
    const resolved = field.resolvedType;
    if (resolved instanceof protobuf.Type) {
      if (resolved.fullName === '.google.protobuf.Struct') {
        return fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.string({ maxLength: 8 }), fc.boolean(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.constant(null)), { maxKeys: 4 }).map((o) => toStruct(o));
      }
      return depth > 3 ? fc.constant({}) : arbitrary(resolved, depth + 1);
    }
    if (resolved instanceof protobuf.Enum) return fc.constantFrom(...Object.values(resolved.values));
    const scalar = SCALARS[field.type];
    if (scalar === undefined) throw new Error(`no arbitrary for ${field.type}`);
    return scalar();
  };
  const plain: Record<string, fc.Arbitrary<unknown>> = {};
  const oneofs: fc.Arbitrary<Record<string, unknown>>[] = [];
  for (const field of type.fieldsArray) {
    field.resolve();
    if (field.partOf !== null && field.partOf !== undefined) continue;
    const v = valueOf(field);
    if (field instanceof protobuf.MapField) plain[field.name] = fc.dictionary(fc.string({ maxLength: 12 }), v, { maxKeys: 3 });
    else if (field.repeated) plain[field.name] = fc.array(v, { maxLength: 3 });
    else plain[field.name] = v;
  }
  for (const oneof of type.oneofsArray) {
    oneofs.push(fc.oneof(...oneof.fieldsArray.map((f) => valueOf(f).map((v) => ({ [f.name]: v })))));
  }
  return fc.tuple(fc.record(plain), ...oneofs).map(([p, ...o]) => Object.assign({}, p, ...o) as Record<string, unknown>);
}

describe('proto definitions', () => {
  it('define the services and paths clients call', () => {
    expect(Object.values(serviceDefinition(WORKLOAD_SERVICE)).map((m) => m.path)).toEqual([
      '/SpiffeWorkloadAPI/FetchX509SVID',
      '/SpiffeWorkloadAPI/FetchX509Bundles',
      '/SpiffeWorkloadAPI/FetchJWTSVID',
      '/SpiffeWorkloadAPI/FetchJWTBundles',
      '/SpiffeWorkloadAPI/ValidateJWTSVID',
    ]);
    expect(Object.values(serviceDefinition(SDS_SERVICE)).map((m) => [m.path, m.requestStream, m.responseStream])).toEqual([
      ['/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets', true, true],
      ['/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets', false, false],
    ]);
  });

  it('encode X509SVID with the field numbers of the SPIFFE standard', () => {
    const bytes = codec('X509SVID').encode({ spiffe_id: 'a', x509_svid: Buffer.from([1]), x509_svid_key: Buffer.from([2]), bundle: Buffer.from([3]), hint: 'h' });
    // tag = field number << 3 | wire type 2 (length-delimited)
    expect(bytes.toString('hex')).toBe('0a0161' + '120101' + '1a0102' + '220103' + '2a0168');
  });

  const types = ourTypes();
  it('cover every message of the Workload API and SDS', () => {
    const names = types.map((t) => t.fullName.slice(1));
    for (const n of ['X509SVIDRequest', 'X509SVIDResponse', 'X509SVID', 'X509BundlesRequest', 'X509BundlesResponse', 'JWTSVIDRequest', 'JWTSVIDResponse', 'JWTSVID', 'JWTBundlesRequest', 'JWTBundlesResponse', 'ValidateJWTSVIDRequest', 'ValidateJWTSVIDResponse', 'envoy.service.discovery.v3.DiscoveryRequest', 'envoy.service.discovery.v3.DiscoveryResponse', 'envoy.extensions.transport_sockets.tls.v3.Secret', 'envoy.extensions.transport_sockets.tls.v3.TlsCertificate', 'envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext', 'envoy.config.core.v3.Node', 'envoy.config.core.v3.DataSource', 'google.rpc.Status']) {
      expect(names).toContain(n);
    }
  });

  it.each(types.map((t) => [t.fullName.slice(1), t] as const))('%s round-trips through the wire format', (name, type) => {
    const c = codec(name);
    fc.assert(
      fc.property(arbitrary(type), (message) => {
        const bytes = c.encode(message);
        const decoded = c.decode(bytes);
        // What was sent is what is read (compared in protobufjs' canonical object form) …
        const expected = type.toObject(type.fromObject(message), { defaults: true, arrays: true, objects: true, oneofs: true });
        expect(decoded).toEqual(expected);
        // … and re-encoding gives the same bytes.
        expect(c.encode(decoded).equals(bytes)).toBe(true);
      }),
      { numRuns: 60 },
    );
  });

  it('decoding arbitrary bytes either yields a message or throws an Error (never anything else)', () => {
    fc.assert(
      fc.property(fc.constantFrom(...types), fc.uint8Array({ maxLength: 64 }), (type, bytes) => {
        try {
          codec(type.fullName.slice(1)).decode(Buffer.from(bytes));
        } catch (e) {
          expect(e).toBeInstanceOf(Error);
        }
      }),
      { numRuns: 500 },
    );
  });

  it('Struct: a claim named __proto__ stays a claim (found by the property below)', () => {
    const c = codec('ValidateJWTSVIDResponse');
    const claims = JSON.parse('{"__proto__":false,"nested":{"__proto__":{"x":1}},"sub":"s"}') as Record<string, unknown>;
    const back = fromStruct(c.decode(c.encode({ spiffe_id: 'x', claims: toStruct(claims) })).claims as Record<string, unknown>);
    expect(Object.keys(back)).toEqual(['__proto__', 'nested', 'sub']);
    expect(JSON.stringify(back)).toBe(JSON.stringify(claims));
    expect(Object.getPrototypeOf(back.nested)).toBe(null);
  });

  it('Struct: JSON claims survive toStruct → wire → fromStruct', () => {
    const c = codec('ValidateJWTSVIDResponse');
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 3 }).filter((v) => typeof v === 'object' && v !== null && !Array.isArray(v)), (claims) => {
        const clean = JSON.parse(JSON.stringify(claims)) as Record<string, unknown>;
        const back = fromStruct(c.decode(c.encode({ spiffe_id: 'x', claims: toStruct(clean) })).claims as Record<string, unknown>);
        expect(back).toEqual(clean);
      }),
      { numRuns: 200 },
    );
  });
});
