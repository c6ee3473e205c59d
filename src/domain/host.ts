/**
 * Hosts: the machines that hold volumes, each worked on by its agent (services/volume-hosts.ts).
 * A host's name is what its agent token names and what `HAVEN_HOST_NAME` sets.
 */

/** A host name: letters, digits, ".", "_" and "-", starting with a letter or digit, at most 253. */
export const HOST_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/;

/** Whether an agent was heard from within its lease. */
export function agentOnline(a: { heartbeatAt: number }, nowMs: number, leaseMs: number): boolean {
  return nowMs - a.heartbeatAt <= leaseMs;
}
