import { describe, expect, it } from 'vitest';
import { namespaceOfSpiffeId } from './guard.js';
import { normalizeSerial, normalizeTarget } from './revocation.js';

describe('revocation targets', () => {
  it('serials compare as numbers: case, colons and leading zeros do not matter', () => {
    expect(normalizeSerial('00:AB:cd')).toBe('abcd');
    expect(normalizeSerial('0000')).toBe('0');
    expect(normalizeSerial('abcd')).toBe('abcd');
    expect(normalizeSerial('xyz')).toBeUndefined();
    expect(normalizeSerial('')).toBeUndefined();
    expect(normalizeSerial('a'.repeat(65))).toBeUndefined();
  });

  it('SPIFFE IDs and namespaces are validated', () => {
    expect(normalizeTarget('spiffeId', 'spiffe://example.org/ns/shop/sa/web')).toBe('spiffe://example.org/ns/shop/sa/web');
    expect(() => normalizeTarget('spiffeId', 'spiffe://example.org')).toThrow(/not a whole trust domain/);
    expect(() => normalizeTarget('spiffeId', 'spiffe://EXAMPLE.org/x')).toThrow();
    expect(() => normalizeTarget('namespace', '../etc')).toThrow(/namespace/);
    expect(normalizeTarget('namespace', 'shop')).toBe('shop');
  });

  it('the namespace of a default-shaped SPIFFE ID', () => {
    expect(namespaceOfSpiffeId('spiffe://example.org/ns/shop/sa/web')).toBe('shop');
    expect(namespaceOfSpiffeId('spiffe://example.org/ns/shop')).toBe('shop');
    expect(namespaceOfSpiffeId('spiffe://example.org/web/ns/shop/sa/x')).toBeUndefined();
    expect(namespaceOfSpiffeId('spiffe://example.org/nss/shop')).toBeUndefined();
  });
});
