/** The agent's log: pino JSON lines on stderr in the broker's shape (level as a number, time, pid, hostname, msg, fields). */
import { pino, type DestinationStream, type Logger } from 'pino';

/** What the agent writes with: pino's `log.info({ fields }, 'message')`. */
export type AgentLogger = Pick<Logger, 'info' | 'warn' | 'error'>;

/** Synchronous by default: the agent may exit right after its last line. */
export function agentLogger(destination: DestinationStream = pino.destination({ dest: 2, sync: true })): Logger {
  return pino({}, destination).child({ component: 'tessera-agent' });
}
