/**
 * The two kinds of scheduled policies, as ScheduleSources: VBS backup policies (start times, week
 * days or every N days, time zone) and CSBS policies (RRULE pattern, read in UTC unless it names
 * its own TZID; the policy's `timezone` is for retention only). One scheduler, one slot model, one
 * claim protocol for both.
 */
import type { Catalog } from '../catalog/catalog.ts';
import type { CsbsPolicy } from '../domain/csbs-policy.ts';
import type { PolicyWithCount } from '../domain/policy.ts';
import type { Logger } from '../services/job-runner.ts';
import type { CsbsPolicyService } from '../services/csbs-policy-service.ts';
import type { PolicyService } from '../services/policy-service.ts';
import { parsePattern, rruleSchedule } from './rrule.ts';
import { vbsSchedule } from './schedule-spec.ts';
import type { ScheduleSource } from './scheduler.ts';

/** Task history kept (the reference: 30 days). */
export const TASK_HISTORY_MS = 30 * 86_400_000;

export function vbsPolicySource(catalog: Catalog, policies: PolicyService): ScheduleSource<PolicyWithCount> {
  return {
    kind: 'vbs',
    unscheduled: (limit) => catalog.policies.unscheduledPolicies(limit),
    due: (now, limit) => catalog.policies.duePolicies(now, limit),
    claim: (id, expected, next) => catalog.policies.claimSchedule(id, expected, next),
    scheduleOf: (p) => vbsSchedule({ startTime: p.startTime, timeZone: p.timeZone, weekFrequency: p.weekFrequency, frequency: p.frequency, anchorMs: p.scheduleAnchor }),
    fire: async (p, slot) => {
      await policies.execute(p.projectId, p.id, { slotAt: slot, refuseWhileRunning: false });
    },
    recordSkipped: (p, slot, now) => policies.recordSkippedSlot(p.projectId, p.id, slot, now),
    housekeeping: async (now) => {
      await catalog.policies.deleteTasksBefore(now - TASK_HISTORY_MS);
    },
  };
}

/**
 * The schedule of a CSBS policy: its RRULE in UTC, or in the pattern's own TZID. Never in the
 * retention `timezone` (csbs.md §3.5): clients written for OTC expect BYHOUR=14 to run at 14:00 UTC.
 */
export function csbsScheduleOf(p: Pick<CsbsPolicy, 'pattern' | 'scheduleAnchor'>) {
  return rruleSchedule(parsePattern(p.pattern), p.scheduleAnchor);
}

export function csbsPolicySource(catalog: Catalog, policies: CsbsPolicyService, log: Logger): ScheduleSource<CsbsPolicy> {
  return {
    kind: 'csbs',
    unscheduled: (limit) => catalog.csbsPolicies.unscheduled(limit),
    due: (now, limit) => catalog.csbsPolicies.due(now, limit),
    claim: (id, expected, next) => catalog.csbsPolicies.claimSchedule(id, expected, next),
    scheduleOf: csbsScheduleOf,
    fire: async (p) => {
      await policies.execute(p.projectId, p.id, { autoTrigger: true });
    },
    // CSBS has no task list: a skipped run is logged (the next run backs the servers up).
    recordSkipped: async (p, slot) => {
      log.warn({ policyId: p.id, slot: new Date(slot).toISOString() }, 'CSBS policy run skipped: missed while Haven was not running');
    },
  };
}
