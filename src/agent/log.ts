/** The agent's log: one JSON object per line on stderr, the format cluster log pipelines expect. */
export type Level = 'debug' | 'info' | 'warn' | 'error';

export interface Logger {
  log(level: Level, msg: string, fields?: Record<string, unknown>): void;
}

export function jsonLogger(write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  return {
    log(level, msg, fields = {}) {
      write(`${JSON.stringify({ ts: new Date().toISOString(), level, component: 'tessera-agent', msg, ...fields })}\n`);
    },
  };
}
