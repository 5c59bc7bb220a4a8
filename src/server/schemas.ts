/** Schemas and helpers shared by several routes (response serialization is schema-driven for speed). */
import { Type, type TUnsafe } from 'typebox';

declare module 'fastify' {
  interface FastifySchema {
    /** The route's name in openapi.yaml (test/integration/openapi.test.ts checks they agree). */
    operationId?: string;
  }
}

export const ErrorBody = Type.Object({ error: Type.String(), message: Type.String() });

export const errorResponses = { '4xx': ErrorBody, '5xx': ErrorBody } as const;

/** A list the handler may hand over as it got it (readonly arrays from the services). */
export const Strings = Type.Immutable(Type.Array(Type.String()));

export const AuditReceipt = Type.Object({
  index: Type.Integer(),
  treeSize: Type.Integer(),
  rootHash: Type.String(),
  leafHash: Type.String(),
  inclusionProof: Strings,
  /** The signed checkpoint note (C2SP tlog-checkpoint) of size treeSize the proof is against. */
  checkpoint: Type.String(),
});

/** A string with one of `values` (`{type: string, enum}`, as JSON Schema users expect it). */
export function StringEnum<const T extends readonly string[]>(values: T): TUnsafe<T[number]> {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values] });
}

/** A decimal query parameter (the app does not coerce types): checked by pattern, range-checked by the route. */
export const DecimalString = Type.String({ pattern: '^(0|[1-9][0-9]{0,15})$' });

/** A page size of 1 to 9999 as a decimal query parameter. */
export const LimitString = Type.String({ pattern: '^[1-9][0-9]{0,3}$' });

/** The rest of a path matched by a wildcard route: a secret name "a/b/c". */
export const WildcardParams = Type.Object({ '*': Type.String() });

export const iso = (ms: number): string => new Date(ms).toISOString();

/** Returns text as-is when it is valid UTF-8, else base64 (binary secrets survive JSON unharmed). */
export function encodeValue(value: Buffer): { value: string; encoding: 'utf8' | 'base64' } {
  const text = value.toString('utf8');
  return Buffer.from(text, 'utf8').equals(value) ? { value: text, encoding: 'utf8' } : { value: value.toString('base64'), encoding: 'base64' };
}
