import { chmodSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { prepareSocketPath, socketPathOf, SocketPathError } from './socket.js';

const dir = mkdtempSync(path.join(tmpdir(), 'tessera-socket-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('socketPathOf', () => {
  it('accepts unix:///abs and unix:/abs', () => {
    expect(socketPathOf('unix:///run/spiffe/agent.sock')).toBe('/run/spiffe/agent.sock');
    expect(socketPathOf('unix:/run/spiffe/agent.sock')).toBe('/run/spiffe/agent.sock');
  });

  it.each([
    ['tcp://127.0.0.1:8000', /unix:/],
    ['/run/agent.sock', /unix:/],
    ['unix://host/agent.sock', /no authority/],
    ['unix:///run/agent.sock?x=1', /no query/],
    ['unix:///run/agent.sock#x', /no query/],
    ['unix:///run/%2e%2e/agent.sock', /escapes/],
    ['unix:///run/../etc/agent.sock', /normalised/],
    ['unix:///run//agent.sock', /normalised/],
    ['unix:///run/', /absolute path/],
    [`unix:///${'a'.repeat(120)}`, /longer than/],
  ])('refuses %s', (uri, why) => {
    expect(() => socketPathOf(uri)).toThrow(why);
  });

  it('never throws anything but SocketPathError, and what it returns is absolute and normalised', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.string().map((s) => `unix://${s}`), fc.string().map((s) => `unix:///${s}`)), (uri) => {
        try {
          const p = socketPathOf(uri);
          expect(path.posix.normalize(p)).toBe(p);
          expect(p.startsWith('/')).toBe(true);
        } catch (e) {
          expect(e).toBeInstanceOf(SocketPathError);
        }
      }),
    );
  });
});

describe('prepareSocketPath', () => {
  it('creates a missing directory and passes a free path', async () => {
    await expect(prepareSocketPath(path.join(dir, 'new', 'agent.sock'))).resolves.toBeUndefined();
  });

  it('refuses a world-writable directory, a symlink, a regular file and a live socket; removes a stale socket', async () => {
    const open = path.join(dir, 'open');
    await prepareSocketPath(path.join(open, 'x.sock'));
    chmodSync(open, 0o777);
    await expect(prepareSocketPath(path.join(open, 'x.sock'))).rejects.toThrow(/world-writable/);

    const link = path.join(dir, 'link.sock');
    symlinkSync('/tmp/elsewhere.sock', link);
    await expect(prepareSocketPath(link)).rejects.toThrow(/symlink/);

    const file = path.join(dir, 'file.sock');
    writeFileSync(file, 'x');
    await expect(prepareSocketPath(file)).rejects.toThrow(/not a socket/);

    const live = path.join(dir, 'live.sock');
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(live, r));
    try {
      await expect(prepareSocketPath(live)).rejects.toThrow(/in use/);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});
