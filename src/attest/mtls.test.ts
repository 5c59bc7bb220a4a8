import { describe, expect, it } from 'vitest';
import { uriSans } from './mtls.js';

describe('uriSans', () => {
  it('extracts URI SANs from Node’s subjectAltName text', () => {
    expect(uriSans('URI:spiffe://example.org/ns/a/sa/b, DNS:web')).toEqual(['spiffe://example.org/ns/a/sa/b']);
    expect(uriSans('DNS:a, DNS:b')).toEqual([]);
    expect(uriSans(undefined)).toEqual([]);
    expect(uriSans('URI:spiffe://a/b, URI:spiffe://a/c')).toEqual(['spiffe://a/b', 'spiffe://a/c']);
  });
  it('refuses quoted URIs, which no valid SPIFFE ID needs', () => {
    expect(uriSans('URI:"spiffe://example.org/a, DNS:b"')).toBeUndefined();
  });
});
