// The bench's child servers (brokers, the TLS-floor server): wait for the address they print, and stop them.

/**
 * Resolves once `child` prints `listening on https://host:port`, with that URL and a reader of all it
 * printed so far (stdout and stderr); rejects with the end of its output if it exits first.
 */
export function untilListening(child, what) {
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d.toString();
      const m = /listening on (https:\/\/[\d.]+:\d+)/.exec(out);
      if (m) resolve({ url: m[1], output: () => out });
    });
    child.stderr.on('data', (d) => (out += d.toString()));
    child.on('exit', (code) => reject(new Error(`${what} exited ${code}: ${out.slice(-2000)}`)));
  });
}

/** SIGTERM, then waits for the exit (at once if the child already exited). */
export async function stopChild(child) {
  if (child.exitCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await done;
}
