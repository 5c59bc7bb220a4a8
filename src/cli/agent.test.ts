import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { devMaterial } from '../../test/helpers/broker.js';
import { parseAgentArgs } from './agent.js';
import { UsageError } from './usage.js';

let dir: string;
let base: string[];

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'tessera-agent-args-'));
  const { material } = await devMaterial();
  writeFileSync(path.join(dir, 'bundle.pem'), readFileSync(material.bundleFile));
  writeFileSync(path.join(dir, 'token'), 'a.b.c');
  writeFileSync(path.join(dir, 'not-a-bundle.pem'), 'hello');
  writeFileSync(path.join(dir, 'file'), 'x');
  base = ['--broker', 'https://tessera:8443', '--bundle', path.join(dir, 'bundle.pem'), '--token-file', path.join(dir, 'token'), '--out', path.join(dir, 'out')];
});

function usage(args: string[]): string {
  try {
    parseAgentArgs(args);
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError);
    return (err as Error).message;
  }
  throw new Error(`accepted: ${args.join(' ')}`);
}

const without = (flag: string): string[] => {
  const i = base.indexOf(flag);
  return [...base.slice(0, i), ...base.slice(i + 2)];
};

describe('parseAgentArgs', () => {
  it('accepts the documented flags', () => {
    const opts = parseAgentArgs([...base, '--once', '--jwt-audience', 'payments', '--jwt-audience', 'https://api.example.com', '--jwt-audience', 'payments', '--on-rotate', 'kill -HUP 1', '--deadline', '30']);
    expect(opts).toMatchObject({
      broker: 'https://tessera:8443',
      once: true,
      jwtAudiences: ['payments', 'https://api.example.com'],
      onRotate: 'kill -HUP 1',
      deadlineSeconds: 30,
    });
    expect(parseAgentArgs([...base, '--health-port', '0']).healthPort).toBe(0);
    expect(parseAgentArgs(base)).toMatchObject({ once: false, jwtAudiences: [] });
  });

  it('names each missing required flag', () => {
    expect(usage(without('--broker'))).toMatch(/--broker URL/);
    expect(usage(without('--bundle'))).toMatch(/--bundle FILE/);
    expect(usage(without('--token-file'))).toMatch(/--token-file FILE/);
    expect(usage(without('--out'))).toMatch(/--out DIR/);
  });

  it('refuses bad values with a message naming the flag', () => {
    const set = (flag: string, value: string): string[] => base.map((v, i) => (base[i - 1] === flag ? value : v));
    expect(usage(set('--broker', 'http://tessera:8443'))).toMatch(/--broker: .*https/);
    expect(usage(set('--broker', 'not a url'))).toMatch(/--broker: .*not a URL/);
    expect(usage(set('--broker', 'https://user:pw@tessera'))).toMatch(/credentials/);
    expect(usage(set('--bundle', path.join(dir, 'missing.pem')))).toMatch(/--bundle .*ENOENT/);
    expect(usage(set('--bundle', path.join(dir, 'not-a-bundle.pem')))).toMatch(/no PEM certificate/);
    expect(usage(set('--token-file', path.join(dir, 'missing')))).toMatch(/--token-file .*ENOENT/);
    expect(usage(set('--token-file', dir))).toMatch(/--token-file .*not a file/);
    expect(usage(set('--out', path.join(dir, 'file')))).toMatch(/--out .*not a directory/);
    expect(usage([...base, '--health-port', '70000'])).toMatch(/--health-port must be a whole number from 0 to 65535/);
    expect(usage([...base, '--health-port', '-1'])).toMatch(/--health-port/);
    expect(usage([...base, '--deadline', '0'])).toMatch(/--deadline must be a whole number from 1 to 86400/);
    expect(usage([...base, '--deadline', '1.5'])).toMatch(/--deadline/);
    expect(usage([...base, '--jwt-audience', ''])).toMatch(/--jwt-audience/);
    expect(usage([...base, '--jwt-audience', 'a\nb'])).toMatch(/printable/);
    expect(usage([...base, '--jwt-audience', 'é'.repeat(100)])).toMatch(/too long for a file name/);
    expect(usage([...base, '--on-rotate', '  '])).toMatch(/--on-rotate needs a command/);
    expect(usage([...base, '--once', '--health-port', '8081'])).toMatch(/no use with --once/);
  });

  it('refuses unknown flags and stray arguments', () => {
    expect(usage([...base, '--onse'])).toMatch(/Unknown option '--onse'/);
    expect(usage([...base, 'extra'])).toMatch(/extra/);
    expect(usage([...base, '--once=yes'])).toMatch(/--once/);
  });
});
