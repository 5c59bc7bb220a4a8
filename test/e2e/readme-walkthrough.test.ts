/**
 * The README cannot rot: every "```bash walkthrough" block of README.md and docs/*.md runs, in order,
 * with bash (set -euo pipefail), against a live dev broker started the way `npm start` starts it
 * (`node dist/cli/main.js serve`, no config file: dev defaults, certs-dev/ and data/ in its folder).
 *
 * The run happens in a temp folder laid out like the repository root: the broker's certs-dev/ and
 * data/, and a node_modules/ where `npx tessera` and `tessera/sdk` resolve to this checkout (npm is
 * offline, so npx can never fetch some other package called "tessera"). Each file is one shell
 * session that starts at that root, as a reader opening the page in a new terminal would.
 *
 * Ports: the README names 8443 (where `npm start` listens), 9443 (the mTLS demo server) and 8081 (the
 * agent's health port). The test never takes those ports from whoever is using them on this machine:
 * it runs the broker on a free port and rewrites each of these port numbers in the blocks to a free
 * one. It checks that 8443 is the dev default, and fails on any other loopback port in a block.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { freePort } from '../helpers/broker-process.js';
import { inCi } from '../helpers/redis.js';
import { describeFailure, extractWalkthrough, runWalkthrough, scratchRoot, startServe, walkthroughEnv, withPorts, type ServeProcess, type WalkthroughBlock } from '../helpers/walkthrough.js';

const ROOT = path.resolve('.');
const CLI = path.join(ROOT, 'dist/cli/main.js');
const DOCS = ['README.md', ...readdirSync(path.join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`)];
const byFile = new Map<string, WalkthroughBlock[]>();
for (const f of DOCS) {
  const blocks = extractWalkthrough(readFileSync(path.join(ROOT, f), 'utf8'), f);
  if (blocks.length > 0) byFile.set(f, blocks);
}

/** Port numbers the walkthrough names, and what listens there. */
const PORTS: Record<number, string> = { 8443: 'the dev broker (npm start)', 9443: 'the mTLS demo server', 8081: "the agent's health port" };

const TOOLS = ['bash', 'curl', 'jq', 'openssl'];
const missing = TOOLS.filter((t) => spawnSync(t, ['--version'], { encoding: 'utf8' }).error !== undefined);
const why = `missing ${missing.join(', ')} (apt-get install -y ${missing.join(' ')})`;
if (missing.length > 0) console.warn(`[walkthrough] SKIPPED: ${why}`);

describe('walkthrough tools', () => {
  it(`bash, curl, jq and openssl are installed${inCi ? ' (required: CI=true)' : ' (or the walkthrough is skipped)'}`, () => {
    if (inCi) expect(missing, why).toEqual([]);
  });
});

describe('walkthrough blocks', () => {
  it('README.md has the whole walkthrough marked, and the docs their paste-able parts', () => {
    expect(byFile.get('README.md')?.length ?? 0).toBeGreaterThanOrEqual(10);
    for (const f of ['docs/audit.md', 'docs/agent-sdk.md']) expect(byFile.has(f), f).toBe(true);
  });

  it('name no loopback port but the ones the test maps, and 8443 is where npm start listens', () => {
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.start).toBe('node dist/cli/main.js serve');
    expect(loadConfig({ env: {} }).listen).toEqual({ host: '127.0.0.1', port: 8443 });
    for (const blocks of byFile.values()) {
      for (const b of blocks) {
        for (const m of b.text.matchAll(/(?:127\.0\.0\.1|localhost):(\d+)/g)) {
          expect(PORTS[Number(m[1])], `${b.file}:${b.line} uses port ${String(m[1])}; add it to PORTS`).toBeDefined();
        }
      }
    }
  });
});

describe('walkthrough runner (the check can fail)', () => {
  it('extracts blocks in order, with their lines, and refuses an unclosed one', () => {
    const md = ['# t', '```bash walkthrough', 'echo one', '```', 'text', '```sh', 'echo not me', '```', '  ```bash walkthrough', '  echo two', '  ```', ''].join('\n');
    expect(extractWalkthrough(md, 'x.md')).toEqual([
      { file: 'x.md', line: 2, index: 1, text: 'echo one' },
      { file: 'x.md', line: 9, index: 2, text: 'echo two' },
    ]);
    expect(() => extractWalkthrough('```bash walkthrough\necho\n', 'y.md')).toThrow(/y\.md:1: walkthrough block is never closed/);
  });

  it('names the failing block and shows its output: a failed command, a failed pipeline stage, an unset variable', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tessera-walk-self-'));
    try {
      for (const bad of ['echo reached; false', 'echo reached; false | cat', 'echo reached; echo "$NOT_SET"']) {
        const blocks = extractWalkthrough(['```bash walkthrough', 'X=1; echo first', '```', '```bash walkthrough', bad, '```', '```bash walkthrough', 'echo never', '```'].join('\n'), 'self.md');
        const run = await runWalkthrough(blocks, { cwd: dir, env: process.env, timeoutMs: 30_000 });
        expect(run.ok, bad).toBe(false);
        expect(run.failed?.index, bad).toBe(2);
        expect(run.blockOutput, bad).toContain('reached');
        expect(run.output, bad).not.toContain('never');
        expect(describeFailure(run)).toMatch(/^self\.md walkthrough block 2 \(line 4\) failed with exit code [1-9]/);
      }
      // curl -s exits 0 on a 404; in the session it fails (body shown), unless it prints the status itself.
      const http404 = createServer((_req, res) => res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not_found"}'));
      await new Promise<void>((r) => http404.listen(0, '127.0.0.1', r));
      const url = `http://127.0.0.1:${(http404.address() as AddressInfo).port}/nope`;
      try {
        const refused = await runWalkthrough(extractWalkthrough(`\`\`\`bash walkthrough\ncurl -s ${url} | cat\n\`\`\`\n`, 'curl.md'), { cwd: dir, env: process.env, timeoutMs: 30_000 });
        expect(refused).toMatchObject({ ok: false, failed: { index: 1 } });
        expect(refused.blockOutput).toContain('not_found');
        const shown = await runWalkthrough(extractWalkthrough(`\`\`\`bash walkthrough\ncurl -s -w ' HTTP %{http_code}\\n' ${url}\n\`\`\`\n`, 'curl.md'), { cwd: dir, env: process.env, timeoutMs: 30_000 });
        expect(shown.ok, shown.output).toBe(true);
        expect(shown.output).toContain('HTTP 404');
      } finally {
        http404.close();
      }
      const ok = await runWalkthrough(extractWalkthrough('```bash walkthrough\nA=ok\n```\n```bash walkthrough\necho "$A"\n```\n', 'ok.md'), { cwd: dir, env: process.env, timeoutMs: 30_000 });
      expect(ok.ok).toBe(true);
      expect(ok.output).toContain('ok');
      // A block that hangs is stopped and named, background processes included.
      const hang = await runWalkthrough(extractWalkthrough('```bash walkthrough\nsleep 300 &\nsleep 300\n```\n', 'hang.md'), { cwd: dir, env: process.env, timeoutMs: 1_000 });
      expect(hang).toMatchObject({ ok: false, timedOut: true, failed: { index: 1 } });
      expect(describeFailure(hang)).toMatch(/hang\.md walkthrough block 1 \(line 1\) did not finish in time/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe.skipIf(missing.length > 0)('the walkthrough against a live dev broker', () => {
  let dir = '';
  let broker: ServeProcess | undefined;
  const ports = new Map<number, number>();

  beforeAll(async () => {
    // The temp folder stands in for the repository root.
    dir = scratchRoot(ROOT, 'tessera-walkthrough-');
    for (const p of Object.keys(PORTS)) ports.set(Number(p), await freePort());
    broker = await startServe(CLI, [], { cwd: dir, env: { ...walkthroughEnv(), TESSERA_PORT: String(ports.get(8443)) } });
    expect(broker.output()).toContain('DEV defaults');
  }, 120_000);

  afterAll(async () => {
    await broker?.stop();
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  for (const [file, blocks] of byFile) {
    it(`${file}: all ${blocks.length} walkthrough blocks run green, in order`, async () => {
      // Admin commands (tessera entry …) default to the dev broker's https://127.0.0.1:8443; here it is on
      // another port, so TESSERA_URL (which those commands read) stands in for the default, as the port
      // rewriting does for URLs written out in the blocks.
      const env = { ...walkthroughEnv(), TESSERA_URL: `https://127.0.0.1:${String(ports.get(8443))}` };
      const run = await runWalkthrough(blocks.map((b) => withPorts(b, ports)), { cwd: dir, env, timeoutMs: 240_000 });
      expect(run.ok, `${describeFailure(run)}\n--- broker output (last 3000 chars) ---\n${broker?.output().slice(-3000) ?? ''}`).toBe(true);
    }, 300_000);
  }

  it('left no private key outside the git-ignored scratch folder', () => {
    // Every file a walkthrough step wrote is under walkthrough/ (or is the broker's own certs-dev/, data/).
    const top = readdirSync(dir).sort();
    expect(top.filter((f) => !['certs-dev', 'data', 'dist', 'node_modules', 'package.json', 'walkthrough'].includes(f))).toEqual([]);
    const ignored = spawnSync('git', ['check-ignore', '--no-index', 'walkthrough/web.key', 'web.key', 'token.jwt', 'run/web/svid.key', 'api.pem', 'certs-dev/x.key', 'data/x'], { cwd: ROOT, encoding: 'utf8' });
    expect(ignored.stdout.trim().split('\n')).toHaveLength(7);
  });
});
