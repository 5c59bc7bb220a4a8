// Runs npm scripts at the same time (`node scripts/parallel.mjs typecheck lint`) and keeps failures
// readable: each script's output is held back and printed as one block, in the order given, under a
// header with its exit status and time. Exits 1 when any failed (after all have finished).
import { spawn } from 'node:child_process';

const names = process.argv.slice(2);
if (names.length === 0) {
  console.error('usage: node scripts/parallel.mjs SCRIPT...');
  process.exit(2);
}
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

function run(name) {
  const started = performance.now();
  return new Promise((resolve) => {
    const chunks = [];
    const child = spawn(npm, ['run', '--silent', name], { stdio: ['ignore', 'pipe', 'pipe'], env: process.stdout.isTTY ? { ...process.env, FORCE_COLOR: '1' } : process.env });
    child.stdout.on('data', (d) => chunks.push(d));
    child.stderr.on('data', (d) => chunks.push(d));
    child.on('error', (err) => chunks.push(Buffer.from(`${err.message}\n`)));
    child.on('close', (code, signal) => resolve({ name, code: code ?? 1, signal, output: Buffer.concat(chunks).toString('utf8'), seconds: (performance.now() - started) / 1000 }));
  });
}

const results = await Promise.all(names.map(run));
for (const r of results) {
  const status = r.code === 0 ? 'ok' : `FAILED (${r.signal ?? `exit ${r.code}`})`;
  process.stdout.write(`\n── npm run ${r.name}: ${status}, ${r.seconds.toFixed(1)} s ──\n`);
  if (r.output.trim() !== '') process.stdout.write(r.output.endsWith('\n') ? r.output : `${r.output}\n`);
}
const failed = results.filter((r) => r.code !== 0).map((r) => r.name);
if (failed.length > 0) {
  process.stdout.write(`\n✖ failed: ${failed.map((n) => `npm run ${n}`).join(', ')}\n`);
  process.exit(1);
}
