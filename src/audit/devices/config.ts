/**
 * What a schema cannot say about `audit.devices` (config/config.ts): which keys each type takes, that
 * addresses parse, that TLS material is readable PEM. Checked once at load time, so a bad device is a
 * startup error naming the field (`config.audit.devices[0].address: …`), never a failure at first use.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { AuditDeviceConfig } from '../../config/config.js';

export type DeviceAddress =
  | { readonly transport: 'tcp' | 'tls' | 'udp'; readonly host: string; readonly port: number }
  | { readonly transport: 'unix'; readonly path: string };

/** RFC 5424 §6.2.1 facility names, in code order (0 = kern … 23 = local7). */
export const FACILITIES = [
  'kern', 'user', 'mail', 'daemon', 'auth', 'syslog', 'lpr', 'news', 'uucp', 'cron', 'authpriv', 'ftp',
  'ntp', 'audit', 'alert', 'clock', 'local0', 'local1', 'local2', 'local3', 'local4', 'local5', 'local6', 'local7',
] as const;

/** RFC 5424 APP-NAME: 1*48 PRINTUSASCII (%d33-126). */
export const APP_NAME = /^[\x21-\x7e]{1,48}$/;

const HOST = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** A field and what is wrong with it; the loader prefixes `config.audit.devices[i].`. */
export interface DeviceProblem {
  readonly field: string;
  readonly message: string;
}

class Problem extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/** Parses `tcp://host:port`, `tls://…`, `udp://…` or `unix:///path` (throws with the reason). */
export function parseDeviceAddress(address: string, allowed: readonly DeviceAddress['transport'][]): DeviceAddress {
  const m = /^([a-z]+):\/\/(.*)$/.exec(address);
  const scheme = m?.[1];
  const expected = `expected ${allowed.map((t) => (t === 'unix' ? 'unix:///path' : `${t}://host:port`)).join(', ')}`;
  if (m === null || scheme === undefined || !(allowed as readonly string[]).includes(scheme)) throw new Error(expected);
  const rest = m[2] ?? '';
  if (scheme === 'unix') {
    if (!rest.startsWith('/') || rest.length < 2 || rest.includes('\0') || Buffer.byteLength(rest) > 107) throw new Error('expected unix:///absolute/path (at most 107 bytes)');
    return { transport: 'unix', path: rest };
  }
  const hp = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:/?#@[\]]+)):(\d{1,5})$/.exec(rest);
  if (hp === null) throw new Error(`${expected} (host and port, nothing else)`);
  const host = hp[1] ?? hp[2] ?? '';
  const port = Number(hp[3]);
  if (hp[1] !== undefined ? isIP(host) !== 6 : isIP(host) !== 4 && !HOST.test(host)) throw new Error(`"${host}" is not a host name or IP address`);
  if (!Number.isInteger(port) || port < 1 || port > 65_535) throw new Error('the port must be in 1..65535');
  return { transport: scheme as 'tcp' | 'tls' | 'udp', host, port };
}

const ONLY: Record<AuditDeviceConfig['type'], readonly (keyof AuditDeviceConfig)[]> = {
  file: ['path', 'maxBytes', 'keep', 'fsync'],
  syslog: ['address', 'facility', 'appName', 'tls'],
  socket: ['address'],
};
const TYPED: readonly (keyof AuditDeviceConfig)[] = ['path', 'maxBytes', 'keep', 'fsync', 'address', 'facility', 'appName', 'tls'];

function readPem(file: string, field: string, check: (pem: string) => void): void {
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Problem(field, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    check(pem);
  } catch {
    throw new Problem(field, `${file} is not what was expected (PEM)`);
  }
}

function check(d: AuditDeviceConfig): void {
  for (const k of TYPED) if (d[k] !== undefined && !ONLY[d.type].includes(k)) throw new Problem(k, `not used by a ${d.type} device`);
  if (d.retryMaxMs < d.retryInitialMs) throw new Problem('retryMaxMs', 'must be at least retryInitialMs');
  if (d.type === 'file') {
    if (d.path === undefined) throw new Problem('path', 'a file device needs a path');
    return;
  }
  if (d.address === undefined) throw new Problem('address', `a ${d.type} device needs an address`);
  let addr: DeviceAddress;
  try {
    addr = parseDeviceAddress(d.address, d.type === 'syslog' ? ['tcp', 'tls', 'udp'] : ['tcp', 'unix']);
  } catch (err) {
    throw new Problem('address', (err as Error).message);
  }
  if (d.type !== 'syslog') return;
  if (d.facility !== undefined && !(FACILITIES as readonly string[]).includes(d.facility)) throw new Problem('facility', `expected one of ${FACILITIES.join(', ')}`);
  if (d.appName !== undefined && !APP_NAME.test(d.appName)) throw new Problem('appName', 'expected 1-48 printable US-ASCII characters, no spaces');
  if (addr.transport !== 'tls') {
    if (d.tls !== undefined) throw new Problem('tls', 'only used with a tls:// address');
    return;
  }
  if (d.tls === undefined) throw new Problem('tls', 'a tls:// address needs tls.caFile (the CA that signed the syslog server certificate)');
  readPem(d.tls.caFile, 'tls.caFile', (pem) => void new X509Certificate(pem));
  if ((d.tls.certFile === undefined) !== (d.tls.keyFile === undefined)) throw new Problem(d.tls.certFile === undefined ? 'tls.certFile' : 'tls.keyFile', 'give both certFile and keyFile, or neither');
  if (d.tls.certFile !== undefined) readPem(d.tls.certFile, 'tls.certFile', (pem) => void new X509Certificate(pem));
  if (d.tls.keyFile !== undefined) readPem(d.tls.keyFile, 'tls.keyFile', (pem) => void createPrivateKey(pem));
}

/** The first problem of one device, or undefined. */
export function deviceProblem(d: AuditDeviceConfig): DeviceProblem | undefined {
  try {
    check(d);
    return undefined;
  } catch (err) {
    if (err instanceof Problem) return { field: err.field, message: err.message };
    throw err;
  }
}
