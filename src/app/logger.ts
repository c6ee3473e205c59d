/**
 * The service's and the agent's logger (pino). When standard output is a terminal, lines are for a
 * person (pino-pretty: time, level, message, fields); otherwise (systemd's journal, a container's
 * log driver, a file) every line, the start-up announcement included, is one JSON object for a
 * log collector. Secrets in request headers and password fields are redacted either way.
 */
import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';
import { logContext } from '../domain/request-context.ts';

export type { Logger };

const REDACT = ['req.headers["x-auth-token"]', 'req.headers["x-subject-token"]', 'password', '*.password'];

/** Whether logs are for a person (stdout is a terminal). */
export function humanLogs(): boolean {
  return process.stdout.isTTY === true;
}

export function createLogger(level: string, opts: { human?: boolean } = {}): Logger {
  const human = opts.human ?? humanLogs();
  // Every line written for a request or a job says which (request-context.ts); a line's own fields win.
  const options = { level, redact: REDACT, mixin: () => logContext() };
  if (!human) return pino(options);
  // Synchronous, in this thread: a line is on the terminal before the next one is made.
  return pino(options, pretty({ sync: true, colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' }));
}

/**
 * Start-up lines (where Haven listens, where its data is): plain text to a person on a terminal,
 * else one JSON log line with the same facts as fields.
 */
export function announce(log: Logger, human: boolean, text: string, fields: Record<string, unknown> = {}): void {
  if (human) process.stderr.write(`${text}\n`);
  // Shown whatever HAVEN_LOG_LEVEL says (warn hides info lines, not these).
  else log.child({}, { level: 'info' }).info(fields, text.trim());
}
