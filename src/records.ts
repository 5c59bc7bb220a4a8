/**
 * Stored records (audit entries, leases, sealed secrets) are read back through compiled TypeBox
 * validators: the schema is the record's type, and nothing reaches the rest of the code unchecked.
 */
import Type, { type Static, type TSchema } from 'typebox';
import { Compile } from 'typebox/compile';

/** A JSON number that is an integer and exact in a double (timestamps, counters). */
export const SafeInteger = () => Type.Integer({ minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER });

export type RecordParse<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly why: string };

/**
 * Compiles `schema` into a parser of stored JSON text or bytes. `why` names the first field that does
 * not fit ("not JSON", "not an object", or the field's path), for the caller's own error.
 */
export function recordParser<S extends TSchema>(schema: S): (stored: string | Uint8Array) => RecordParse<Static<S>> {
  const validator = Compile(schema);
  return (stored) => {
    let value: unknown;
    try {
      value = JSON.parse(typeof stored === 'string' ? stored : Buffer.from(stored.buffer, stored.byteOffset, stored.byteLength).toString('utf8'));
    } catch {
      return { ok: false, why: 'not JSON' };
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return { ok: false, why: 'not an object' };
    if (validator.Check(value)) return { ok: true, value: value };
    const [first] = validator.Errors(value);
    const field =
      first === undefined ? '' :
      first.keyword === 'required' ? first.params.requiredProperties.join(', ') :
      first.keyword === 'additionalProperties' ? `unexpected field ${first.params.additionalProperties.join(', ')}` :
      first.instancePath.slice(1).replace(/\//g, '.');
    return { ok: false, why: field === '' ? 'unexpected shape' : field };
  };
}
