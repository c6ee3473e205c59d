/**
 * What the process is doing on whose behalf, for the work it starts and for its log lines:
 *
 * - the API request being served (api/server.ts sets it around each request): a job records the
 *   request that created it (its id is the x-openstack-request-id the client saw);
 * - the job being run (services/job-runner.ts sets it around each job): every log line written
 *   while the job runs, its handler's and the engine's included, carries the job's id, type and
 *   the request that created it (app/logger.ts reads `logContext()` into each line).
 *
 * Outside both (a scheduler's tick, the CLI) there is none.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

interface Context {
  requestId: string | null;
  jobId?: string;
  jobType?: string;
}

const context = new AsyncLocalStorage<Context>();

export function runInRequest<T>(requestId: string, fn: () => T): T {
  return context.run({ requestId }, fn);
}

/** Runs a job's work as the request that created it (null: a policy's run, a recovery). */
export function runInJob<T>(job: { id: string; type: string; requestId?: string | null | undefined }, fn: () => T): T {
  return context.run({ requestId: job.requestId ?? null, jobId: job.id, jobType: job.type }, fn);
}

/**
 * Runs `fn` outside any request or job: for work that outlives the one that started it (a listener
 * started lazily, a GC after a delete, the job runner's claim loop), whose log lines and timers
 * must not carry the first caller's ids for the rest of the process's life.
 */
export function detached<T>(fn: () => T): T {
  return context.exit(fn);
}

/** The id of the request being served, or the one that created the job being run; else null. */
export function currentRequestId(): string | null {
  return context.getStore()?.requestId ?? null;
}

/** The fields every log line written in this context carries (none outside a request or job). */
export function logContext(): { requestId?: string; jobId?: string; jobType?: string } {
  const c = context.getStore();
  if (!c) return {};
  return { ...(c.requestId ? { requestId: c.requestId } : {}), ...(c.jobId ? { jobId: c.jobId } : {}), ...(c.jobType ? { jobType: c.jobType } : {}) };
}
