/**
 * The API request being served, for work it starts: a job records the request that created it
 * (its id is the x-openstack-request-id the client saw), and the job's log lines carry it. Set by
 * the API server around each request (api/server.ts); outside a request there is none.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

const context = new AsyncLocalStorage<{ requestId: string }>();

export function runInRequest<T>(requestId: string, fn: () => T): T {
  return context.run({ requestId }, fn);
}

/** The id of the request being served, or null (a scheduler's run, a recovery, the CLI). */
export function currentRequestId(): string | null {
  return context.getStore()?.requestId ?? null;
}
