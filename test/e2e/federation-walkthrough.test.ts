/**
 * docs/federation.md's "two clusters on one machine" walkthrough, run as written: its blocks fenced
 * "```bash federation-walkthrough" run in order with bash (set -euo pipefail), and the two brokers the
 * page tells the reader to start in shells of their own are started by the test from the page's own
 * `$ (cd DIR && npx tessera serve --config tessera.yaml)` lines, between the first block and the rest.
 *
 * As in the README test, the run happens in a temp folder laid out like the repository root, and every
 * port number the page names is rewritten to a free one (the test fails on a loopback port it does not
 * map), so it never takes a port from whoever uses it on this machine.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/broker-process.js';
import { inCi } from '../helpers/redis.js';
import {
  describeFailure,
  extractWalkthrough,
  FEDERATION_WALKTHROUGH_FENCE,
  runWalkthrough,
  scratchRoot,
  startServe,
  walkthroughEnv,
  withPorts,
  type ServeProcess,
  type WalkthroughBlock,
} from '../helpers/walkthrough.js';

const ROOT = path.resolve('.');
const CLI = path.join(ROOT, 'dist/cli/main.js');
const PAGE = 'docs/federation.md';
const markdown = readFileSync(path.join(ROOT, PAGE), 'utf8');
const blocks = extractWalkthrough(markdown, PAGE, FEDERATION_WALKTHROUGH_FENCE);
/** The folders (under walkthrough/fed) the page starts a broker in, from its console block. */
const serveDirs = [...markdown.matchAll(/^\$ \(cd (\w+) && npx tessera serve --config tessera\.yaml\)$/gm)].map((m) => m[1] as string);

/** Port numbers the page names, and what listens there. */
const PORTS: Record<number, string> = {
  18443: 'example.org broker',
  18444: "example.org's https_spiffe bundle endpoint",
  28443: 'partner.test broker',
  28444: "partner.test's https_spiffe bundle endpoint",
  28450: 'the openssl s_server of the mTLS step',
};

const TOOLS = ['bash', 'curl', 'jq', 'openssl'];
const missing = TOOLS.filter((t) => spawnSync(t, ['--version'], { encoding: 'utf8' }).error !== undefined);
const why = `missing ${missing.join(', ')} (apt-get install -y ${missing.join(' ')})`;
if (missing.length > 0) console.warn(`[federation walkthrough] SKIPPED: ${why}`);

describe('docs/federation.md walkthrough blocks', () => {
  it(`the tools are installed${inCi ? ' (required: CI=true)' : ' (or the walkthrough is skipped)'}`, () => {
    if (inCi) expect(missing, why).toEqual([]);
  });

  it('has the setup block, the two brokers to start, and the steps after them', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(5);
    expect(serveDirs).toEqual(['one', 'two']);
    // The brokers start after the first block (it writes their configs) and before the second.
    const consoleAt = markdown.indexOf('$ (cd one && npx tessera serve');
    const lineOf = (offset: number): number => markdown.slice(0, offset).split('\n').length;
    expect(blocks[0]?.line ?? Infinity).toBeLessThan(lineOf(consoleAt));
    expect(blocks[1]?.line ?? 0).toBeGreaterThan(lineOf(consoleAt));
  });

  it('names no loopback port but the ones the test maps', () => {
    for (const b of blocks) {
      for (const m of b.text.matchAll(/(?:127\.0\.0\.1|localhost):(\d+)|-accept (\d+)|:(\d{4,5})(?=:)/g)) {
        const port = Number(m[1] ?? m[2] ?? m[3]);
        expect(PORTS[port], `${b.file}:${b.line} uses port ${String(port)}; add it to PORTS`).toBeDefined();
      }
    }
  });
});

describe.skipIf(missing.length > 0)('docs/federation.md walkthrough against two live brokers', () => {
  let dir = '';
  const brokers: ServeProcess[] = [];
  const ports = new Map<number, number>();

  beforeAll(async () => {
    dir = scratchRoot(ROOT, 'tessera-fed-walkthrough-');
    for (const p of Object.keys(PORTS)) ports.set(Number(p), await freePort());
  }, 30_000);

  afterAll(async () => {
    await Promise.all(brokers.map((b) => b.stop()));
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  }, 40_000);

  const logs = (): string => brokers.map((b, i) => `--- broker ${serveDirs[i] ?? i} (last 2000 chars) ---\n${b.output().slice(-2000)}`).join('\n');

  it('runs green: setup, two brokers, federation both ways, SVIDs verified across, mutual TLS', async () => {
    const env = walkthroughEnv();
    const setup = await runWalkthrough(blocks.slice(0, 1).map((b) => withPorts(b, ports)), { cwd: dir, env, timeoutMs: 120_000 });
    expect(setup.ok, describeFailure(setup)).toBe(true);

    // "Start both brokers, each in a shell of its own, from walkthrough/fed".
    for (const d of serveDirs) brokers.push(await startServe(CLI, ['--config', 'tessera.yaml'], { cwd: path.join(dir, 'walkthrough', 'fed', d), env }));
    expect(brokers[0]?.output()).toContain('bundle endpoint (https_spiffe)');

    // "Back in the first shell", which the first block left in walkthrough/fed.
    const back: WalkthroughBlock = { file: PAGE, line: 0, index: 0, text: 'cd walkthrough/fed' };
    const rest = await runWalkthrough([back, ...blocks.slice(1)].map((b) => withPorts(b, ports)), { cwd: dir, env, timeoutMs: 240_000 });
    expect(rest.ok, `${describeFailure(rest)}\n${logs()}`).toBe(true);
    // What the page says the reader sees.
    expect(rest.output).toContain('refused, as it should be');
    expect(rest.output).toContain('Verify return code: 0 (ok)');
    expect(rest.output).toContain('URI:spiffe://partner.test/ns/billing/sa/api');
  }, 400_000);
});
