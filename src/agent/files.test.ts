import { lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, realpathSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DATA_LINK, OutputDirectory } from './files.js';

const tmp = (): string => mkdtempSync(path.join(tmpdir(), 'tessera-out-'));
const gens = (dir: string): string[] => readdirSync(dir).filter((n) => n.startsWith('..') && n !== DATA_LINK);

function set(n: number): { path: string; data: string; mode: number }[] {
  return [
    { path: 'svid.pem', data: `cert ${n}\n`, mode: 0o644 },
    { path: 'svid.key', data: `key ${n}\n`, mode: 0o600 },
    { path: 'jwt/payments.token', data: `jwt ${n}`, mode: 0o600 },
  ];
}

describe('OutputDirectory', () => {
  it('publishes through ..data with stable links, exact modes and no stray files', async () => {
    const dir = path.join(tmp(), 'out'); // created on first publish
    const out = new OutputDirectory(dir);
    expect(await out.current()).toBeUndefined();
    const gen = await out.publish(set(1));
    expect(readlinkSync(path.join(dir, DATA_LINK))).toBe(gen);
    expect(readlinkSync(path.join(dir, 'svid.pem'))).toBe(`${DATA_LINK}/svid.pem`);
    expect(readlinkSync(path.join(dir, 'jwt'))).toBe(`${DATA_LINK}/jwt`);
    expect(readFileSync(path.join(dir, 'svid.key'), 'utf8')).toBe('key 1\n');
    expect(readFileSync(path.join(dir, 'jwt', 'payments.token'), 'utf8')).toBe('jwt 1');
    expect(statSync(path.join(dir, 'svid.key')).mode & 0o777).toBe(0o600);
    expect(statSync(path.join(dir, 'jwt', 'payments.token')).mode & 0o777).toBe(0o600);
    expect(statSync(path.join(dir, 'svid.pem')).mode & 0o777).toBe(0o644);
    expect(readdirSync(dir).sort()).toEqual([gen, DATA_LINK, 'jwt', 'svid.key', 'svid.pem'].sort());
  });

  it('keeps the current and the previous generation only', async () => {
    const dir = tmp();
    const out = new OutputDirectory(dir);
    const g1 = await out.publish(set(1));
    const g2 = await out.publish(set(2));
    expect(gens(dir).sort()).toEqual([g1, g2].sort());
    const g3 = await out.publish(set(3));
    expect(gens(dir).sort()).toEqual([g2, g3].sort());
    expect(readFileSync(path.join(dir, 'svid.pem'), 'utf8')).toBe('cert 3\n');
    // A reader that resolved the previous generation can still read all of it.
    expect(readFileSync(path.join(dir, g2, 'svid.key'), 'utf8')).toBe('key 2\n');
  });

  it('replaces a plain file left where a link belongs, leaves foreign entries alone, refuses a directory', async () => {
    const dir = tmp();
    writeFileSync(path.join(dir, 'svid.pem'), 'old plain file');
    symlinkSync('/nonexistent', path.join(dir, 'unrelated'));
    await new OutputDirectory(dir).publish(set(1));
    expect(lstatSync(path.join(dir, 'svid.pem')).isSymbolicLink()).toBe(true);
    expect(readFileSync(path.join(dir, 'svid.pem'), 'utf8')).toBe('cert 1\n');
    expect(readlinkSync(path.join(dir, 'unrelated'))).toBe('/nonexistent');

    const blocked = tmp();
    mkdirSync(path.join(blocked, 'svid.key'));
    await expect(new OutputDirectory(blocked).publish(set(1))).rejects.toThrow(/is a directory/);
  });

  it('refuses paths that would escape or hide in the directory, and leaves nothing behind', async () => {
    for (const bad of ['../x', '/etc/passwd', 'a/../../x', '.hidden', 'jwt/..', '']) {
      const dir = tmp();
      await expect(new OutputDirectory(dir).publish([{ path: bad, data: 'x', mode: 0o600 }])).rejects.toThrow(/invalid output path/);
      expect(readdirSync(dir)).toEqual([]);
    }
  });

  it('a reader never sees a torn file or a mixed pair while generations are swapped', async () => {
    const dir = tmp();
    const out = new OutputDirectory(dir);
    const big = (tag: string, n: number): string => `${tag}:${n}:${'x'.repeat(64 * 1024)}:${tag}:${n}\n`;
    const files = (n: number) => [
      { path: 'svid.pem', data: big('cert', n), mode: 0o644 },
      { path: 'svid.key', data: big('key', n), mode: 0o600 },
    ];
    await out.publish(files(0));
    let stop = false;
    let reads = 0;
    let straddles = 0;
    const problems: string[] = [];
    const reader = (async () => {
      while (!stop) {
        const before = readlinkSync(path.join(dir, DATA_LINK));
        const cert = readFileSync(path.join(dir, 'svid.pem'), 'utf8');
        const key = readFileSync(path.join(dir, 'svid.key'), 'utf8');
        const after = readlinkSync(path.join(dir, DATA_LINK));
        const c = /^cert:(\d+):x+:cert:(\d+)\n$/.exec(cert);
        const k = /^key:(\d+):x+:key:(\d+)\n$/.exec(key);
        if (!c || !k || c[1] !== c[2] || k[1] !== k[2]) problems.push('torn file');
        else if (before === after && c[1] !== k[1]) problems.push(`mixed pair ${c[1]}/${k[1]}`);
        else if (before !== after) straddles += 1;
        // Reading from the resolved generation directory is consistent without any check.
        const resolved = realpathSync(path.join(dir, DATA_LINK));
        try {
          const rc = readFileSync(path.join(resolved, 'svid.pem'), 'utf8').split(':')[1];
          const rk = readFileSync(path.join(resolved, 'svid.key'), 'utf8').split(':')[1];
          if (rc !== rk) problems.push(`mixed pair in ${resolved}`);
        } catch {
          // pruned two generations later: only possible if this reader stalled for two publishes
        }
        reads += 1;
        await new Promise((r) => setImmediate(r));
      }
    })();
    for (let n = 1; n <= 40; n++) await out.publish(files(n));
    stop = true;
    await reader;
    expect(problems).toEqual([]);
    expect(reads).toBeGreaterThan(40);
    expect(straddles).toBeLessThan(reads);
    expect(readFileSync(path.join(dir, 'svid.key'), 'utf8').startsWith('key:40:')).toBe(true);
  });
});
