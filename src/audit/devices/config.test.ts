import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { configFile, MINIMAL_CONFIG } from '../../../test/helpers/config-file.js';
import { ConfigError, loadConfig } from '../../config/load.js';
import { parseDeviceAddress } from './config.js';

function load(devices: unknown[]): ReturnType<typeof loadConfig> {
  const yaml = MINIMAL_CONFIG.replace('audit: { signingKeyFile: audit.key }', `audit: ${JSON.stringify({ signingKeyFile: 'audit.key', devices })}`);
  return loadConfig({ file: configFile(yaml), env: {} });
}

function refused(devices: unknown[]): string {
  try {
    load(devices);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('expected a ConfigError');
}

describe('audit.devices config', () => {
  it('loads file, syslog and socket devices with their defaults', () => {
    const c = load([
      { name: 'local', type: 'file', path: 'audit.jsonl' },
      { name: 'siem', type: 'syslog', address: 'tcp://127.0.0.1:514', facility: 'local4', required: true, maxLagEntries: 50 },
      { name: 'vector', type: 'socket', address: 'unix:///run/vector.sock' },
    ]);
    expect(c.audit.devices).toHaveLength(3);
    expect(c.audit.devices[0]).toMatchObject({ name: 'local', type: 'file', required: false, maxLagEntries: 10_000, maxLagSeconds: 60, batchSize: 500, writeTimeoutMs: 10_000 });
    expect(path.isAbsolute(c.audit.devices[0]?.path ?? '')).toBe(true);
    expect(c.audit.devices[1]).toMatchObject({ required: true, maxLagEntries: 50, facility: 'local4' });
    expect(load([]).audit.devices).toEqual([]);
  });

  it('names the field of every bad device setting', () => {
    expect(refused([{ name: 'x', type: 'kafka' }])).toMatch(/^config\.audit\.devices\[0\]\.type: expected file, syslog or socket/);
    expect(refused([{ name: 'x', type: 'file' }])).toBe('config.audit.devices[0].path: a file device needs a path');
    expect(refused([{ name: 'x', type: 'syslog' }])).toBe('config.audit.devices[0].address: a syslog device needs an address');
    expect(refused([{ name: 'x', type: 'syslog', address: 'http://a:1' }])).toMatch(/^config\.audit\.devices\[0\]\.address: expected tcp:\/\/host:port, tls:\/\/host:port, udp:\/\/host:port/);
    expect(refused([{ name: 'x', type: 'socket', address: 'udp://a:1' }])).toMatch(/^config\.audit\.devices\[0\]\.address: expected tcp:\/\/host:port, unix:\/\/\/path/);
    expect(refused([{ name: 'x', type: 'syslog', address: 'tcp://a:99999' }])).toBe('config.audit.devices[0].address: the port must be in 1..65535');
    expect(refused([{ name: 'x', type: 'syslog', address: 'tcp://a b:514' }])).toMatch(/^config\.audit\.devices\[0\]\.address: /);
    expect(refused([{ name: 'x', type: 'file', path: 'a', address: 'tcp://a:1' }])).toBe('config.audit.devices[0].address: not used by a file device');
    expect(refused([{ name: 'x', type: 'socket', address: 'tcp://a:1', facility: 'auth' }])).toBe('config.audit.devices[0].facility: not used by a socket device');
    expect(refused([{ name: 'x', type: 'syslog', address: 'tcp://a:1', facility: 'nope' }])).toMatch(/^config\.audit\.devices\[0\]\.facility: expected one of kern/);
    expect(refused([{ name: 'x', type: 'syslog', address: 'tcp://a:1', appName: 'has space' }])).toMatch(/^config\.audit\.devices\[0\]\.appName: /);
    expect(refused([{ name: 'x', type: 'syslog', address: 'tls://a:6514' }])).toMatch(/^config\.audit\.devices\[0\]\.tls: a tls:\/\/ address needs tls\.caFile/);
    expect(refused([{ name: 'x', type: 'syslog', address: 'tcp://a:1', tls: { caFile: 'ca.pem' } }])).toBe('config.audit.devices[0].tls: only used with a tls:// address');
    expect(refused([{ name: 'x', type: 'syslog', address: 'tls://a:6514', tls: { caFile: '/nonexistent/ca.pem' } }])).toMatch(/^config\.audit\.devices\[0\]\.tls\.caFile: cannot read \/nonexistent\/ca\.pem: ENOENT/);
    expect(refused([{ name: 'x', type: 'file', path: 'a', maxLagEntries: 0 }])).toMatch(/^config\.audit\.devices\[0\]\.maxLagEntries: expected an integer/);
    expect(refused([{ name: 'x', type: 'file', path: 'a', retryInitialMs: 5000, retryMaxMs: 100 }])).toBe('config.audit.devices[0].retryMaxMs: must be at least retryInitialMs');
    expect(refused([{ name: 'x', type: 'file', path: 'a', colour: 'red' }])).toBe('config.audit.devices[0].colour: unknown setting');
    expect(refused([{ name: 'bad name', type: 'file', path: 'a' }])).toMatch(/^config\.audit\.devices\[0\]\.name: expected 1-64/);
    expect(refused([{ name: 'a', type: 'file', path: 'a' }, { name: 'a', type: 'file', path: 'b' }])).toBe('config.audit.devices: duplicate device name "a"');
  });

  it('checks TLS material is readable PEM, and needs certFile and keyFile together', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-devtls-'));
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=t', '-days', '1', '-keyout', path.join(dir, 'k.pem'), '-out', path.join(dir, 'c.pem')], { stdio: 'ignore' });
    writeFileSync(path.join(dir, 'junk.pem'), 'not pem');
    const ca = path.join(dir, 'c.pem');
    expect(load([{ name: 'x', type: 'syslog', address: 'tls://a:6514', tls: { caFile: ca, certFile: ca, keyFile: path.join(dir, 'k.pem') } }]).audit.devices).toHaveLength(1);
    expect(refused([{ name: 'x', type: 'syslog', address: 'tls://a:6514', tls: { caFile: path.join(dir, 'junk.pem') } }])).toMatch(/^config\.audit\.devices\[0\]\.tls\.caFile: .* is not what was expected/);
    expect(refused([{ name: 'x', type: 'syslog', address: 'tls://a:6514', tls: { caFile: ca, certFile: ca } }])).toBe('config.audit.devices[0].tls.keyFile: give both certFile and keyFile, or neither');
    expect(refused([{ name: 'x', type: 'syslog', address: 'tls://a:6514', tls: { caFile: ca, certFile: ca, keyFile: ca } }])).toMatch(/^config\.audit\.devices\[0\]\.tls\.keyFile: /);
  });

  it('address parsing never throws anything but an Error with a reason, and round-trips good addresses (property)', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 80 }), (s) => {
        try {
          const a = parseDeviceAddress(s, ['tcp', 'tls', 'udp', 'unix']);
          expect(['tcp', 'tls', 'udp', 'unix']).toContain(a.transport);
        } catch (err) {
          expect(err).toBeInstanceOf(Error);
          expect((err as Error).message.length).toBeGreaterThan(0);
        }
      }),
    );
    fc.assert(
      fc.property(fc.constantFrom('tcp', 'tls', 'udp'), fc.ipV4(), fc.integer({ min: 1, max: 65_535 }), (t, host, port) => {
        expect(parseDeviceAddress(`${t}://${host}:${port}`, ['tcp', 'tls', 'udp'])).toEqual({ transport: t, host, port });
      }),
    );
    expect(parseDeviceAddress('tcp://[::1]:514', ['tcp'])).toEqual({ transport: 'tcp', host: '::1', port: 514 });
    expect(parseDeviceAddress('unix:///run/v.sock', ['unix'])).toEqual({ transport: 'unix', path: '/run/v.sock' });
    expect(() => parseDeviceAddress('unix://relative', ['unix'])).toThrow(/absolute/);
  });
});
