import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BrokerError } from '../errors.js';
import { formatSpiffeId, isSpiffeId, parseSpiffeId, workloadSpiffeId } from './id.js';

describe('parseSpiffeId', () => {
  it('accepts valid IDs and splits them', () => {
    expect(parseSpiffeId('spiffe://example.org/ns/shop/sa/web')).toEqual({
      trustDomain: 'example.org',
      path: '/ns/shop/sa/web',
      uri: 'spiffe://example.org/ns/shop/sa/web',
    });
    expect(parseSpiffeId('spiffe://example.org').path).toBe('');
    expect(isSpiffeId('spiffe://a_b-c.9/x.y/Z_1-2')).toBe(true);
  });

  // Cases from the SPIFFE-ID specification's rules (scheme, trust domain and path character sets).
  it.each([
    ['', 'empty'],
    ['http://example.org/a', 'wrong scheme'],
    ['SPIFFE://example.org/a', 'uppercase scheme'],
    ['spiffe://', 'empty trust domain'],
    ['spiffe:///path', 'empty trust domain with path'],
    ['spiffe://Example.org/a', 'uppercase trust domain'],
    ['spiffe://example.org:8080/a', 'port'],
    ['spiffe://user@example.org/a', 'user info'],
    ['spiffe://example.org/', 'trailing slash'],
    ['spiffe://example.org/a/', 'trailing slash after segment'],
    ['spiffe://example.org//a', 'empty segment'],
    ['spiffe://example.org/./a', 'dot segment'],
    ['spiffe://example.org/a/..', 'dot-dot segment'],
    ['spiffe://example.org/a?b=c', 'query'],
    ['spiffe://example.org/a#b', 'fragment'],
    ['spiffe://example.org/a%20b', 'percent-encoding'],
    ['spiffe://example.org/a b', 'space'],
    [`spiffe://example.org/${'a'.repeat(2048)}`, 'too long'],
  ])('rejects %j (%s)', (input) => {
    expect(() => parseSpiffeId(input)).toThrow(BrokerError);
    expect(isSpiffeId(input)).toBe(false);
  });

  it('never throws anything but a 400 BrokerError, and what it accepts round-trips', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.string().map((s) => `spiffe://${s}`), fc.webUrl()), (input) => {
        try {
          const id = parseSpiffeId(input);
          expect(id.uri).toBe(input);
          expect(`spiffe://${id.trustDomain}${id.path}`).toBe(input);
        } catch (err) {
          expect(err).toBeInstanceOf(BrokerError);
          expect((err as BrokerError).status).toBe(400);
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('formatSpiffeId', () => {
  it('builds the default workload ID', () => {
    expect(workloadSpiffeId('example.org', 'shop', 'web')).toBe('spiffe://example.org/ns/shop/sa/web');
  });
  it('refuses segments that would change the path', () => {
    expect(() => formatSpiffeId('example.org', ['a/b'])).toThrow(BrokerError);
    expect(() => formatSpiffeId('example.org', ['..'])).toThrow(BrokerError);
    expect(() => formatSpiffeId('example.org', [''])).toThrow(BrokerError);
  });
  it('formats only what parses back to the same segments', () => {
    const segment = fc.stringMatching(/^[a-zA-Z0-9._-]{1,20}$/).filter((s) => s !== '.' && s !== '..');
    fc.assert(
      fc.property(fc.array(segment, { maxLength: 6 }), (segments) => {
        const uri = formatSpiffeId('example.org', segments);
        expect(parseSpiffeId(uri).path).toBe(segments.map((s) => `/${s}`).join(''));
      }),
    );
  });
});
