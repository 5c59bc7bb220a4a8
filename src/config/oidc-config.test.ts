import { describe, expect, it } from 'vitest';
import { configFile, MINIMAL_CONFIG } from '../../test/helpers/config-file.js';
import { loadConfig } from './load.js';

const load = (yaml: string) => loadConfig({ file: configFile(`${MINIMAL_CONFIG}${yaml}`), env: {} });

describe('jwt.issuer and oidc config', () => {
  it('changes nothing when absent', () => {
    const c = load('');
    expect(c.jwt.issuer).toBeUndefined();
    expect(c.oidc).toEqual({ enabled: false });
  });

  it('takes an issuer and a public listener whose certificate defaults to the broker\'s', () => {
    const c = load('jwt: { issuer: "https://oidc.prod.example" }\noidc: { enabled: true, public: { host: 0.0.0.0, port: 443 } }\n');
    expect(c.jwt.issuer).toBe('https://oidc.prod.example');
    expect(c.oidc).toEqual({ enabled: true, public: { host: '0.0.0.0', port: 443 } });
  });

  it.each([
    ['jwt: { issuer: "http://oidc.prod.example" }', /^config\.jwt\.issuer: expected an https:\/\/ URL/],
    ['jwt: { issuer: "https://oidc.prod.example/" }', /^config\.jwt\.issuer: no trailing slash/],
    ['jwt: { issuer: "https://oidc.prod.example/tessera" }', /^config\.jwt\.issuer: a path is not allowed/],
    ['jwt: { issuer: "https://Oidc.Prod.Example" }', /^config\.jwt\.issuer: not in canonical form \(write https:\/\/oidc\.prod\.example\)/],
    ['oidc: { enabled: true }', /^config\.oidc\.enabled: needs jwt\.issuer/],
    ['jwt: { issuer: "https://o.example" }\noidc: { public: { port: 443 } }', /^config\.oidc\.public: needs oidc\.enabled: true/],
    ['jwt: { issuer: "https://o.example" }\noidc: { enabled: true, public: { port: 443, certFile: c.pem } }', /^config\.oidc\.public: set both certFile and keyFile/],
    ['jwt: { issuer: "https://o.example" }\noidc: { enabled: true, public: { host: 0.0.0.0 } }', /^config\.oidc\.public/],
    ['jwt: { issuer: "https://o.example" }\noidc: { enabled: true, public: { port: 8443 } }', /^config\.oidc\.public\.port: 8443 is the broker's own listen\.port/],
    ['oidc: { enabled: true, listen: 443 }', /^config\.oidc/],
  ])('refuses %j with a clear message', (yaml, message) => {
    expect(() => load(`${yaml}\n`)).toThrow(message);
  });
});
