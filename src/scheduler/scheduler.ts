/**
 * PolicyScheduler: fires each due slot of every enabled policy exactly once, in any number of
 * processes sharing the catalog.
 *
 * State: `policies.next_run_at`, the next slot not yet handled (NULL until first computed from the
 * policy's anchor, and reset to NULL by any schedule change or OFF->ON). A tick reads only policies
 * whose next_run_at is due (or NULL) through an index, so its cost follows the slots due, not the
 * number of policies. Handling a policy is claimed by compare-and-set of next_run_at from the value
 * read to the next slot after now: the process that wins fires; the others move on.
 *
 * Missed slots (Haven was down, or a tick was late): the newest missed slot fires once if it is
 * less than `graceMs` old; every other missed slot is recorded as skipped (task status SKIP) —
 * never a burst of catch-up backups. The clock is injected; tests drive tick() with a fake clock.
 */
import type { Clock } from '../domain/clock.ts';
import type { Logger } from '../services/job-runner.ts';
import { nextSlot, ScheduleError, slotsBetween, type VbsSchedule } from './schedule-spec.ts';

export const DEFAULT_GRACE_MS = 3600_000;
/** Skipped slots recorded per policy per tick at most (the newest ones). */
export const MAX_SKIPPED_RECORDED = 24;

/** What the scheduler needs of a policy, whatever its API (VBS policy, CSBS plan). */
export interface ScheduledPolicy {
  id: string;
  projectId: string;
  scheduleAnchor: number;
  nextRunAt: number | null;
}

/**
 * One kind of scheduled policy (sources.ts has the VBS and CSBS ones): how to find the due ones in
 * the catalog, claim a slot, compute slots, run a slot and record a skipped one.
 */
export interface ScheduleSource<P extends ScheduledPolicy = ScheduledPolicy> {
  readonly kind: string;
  unscheduled(limit: number): Promise<P[]>;
  due(nowMs: number, limit: number): Promise<P[]>;
  /** Compare-and-set of next_run_at from `expected` to `next`. */
  claim(id: string, expected: number | null, next: number): Promise<boolean>;
  /** Throws ScheduleError for a schedule that cannot run. */
  scheduleOf(p: P): VbsSchedule;
  fire(p: P, slotMs: number): Promise<void>;
  recordSkipped(p: P, slotMs: number, nowMs: number): Promise<void>;
  /** Per-tick housekeeping (task history), optional. */
  housekeeping?(nowMs: number): Promise<void>;
}

export interface SchedulerOptions {
  graceMs?: number;
  tickMs?: number;
  /** Policies read from the catalog at a time. */
  batch?: number;
}

export interface TickResult {
  fired: number;
  skipped: number;
  initialized: number;
}

export class PolicyScheduler {
  private readonly clock: Clock;
  private readonly sources: ScheduleSource[];
  private readonly log: Logger;
  private readonly graceMs: number;
  private readonly tickMs: number;
  private readonly batch: number;
  private timer: NodeJS.Timeout | null = null;
  private ticking: Promise<TickResult> | null = null;

  constructor(clock: Clock, sources: ScheduleSource[], log: Logger, opts: SchedulerOptions = {}) {
    this.clock = clock;
    this.sources = sources;
    this.log = log;
    this.graceMs = opts.graceMs ?? DEFAULT_GRACE_MS;
    this.tickMs = opts.tickMs ?? 20_000;
    this.batch = opts.batch ?? 500;
  }

  start(): void {
    const run = (): void => {
      this.tick().catch((err: unknown) => this.log.error({ err }, 'scheduler tick failed'));
    };
    run();
    this.timer = setInterval(run, this.tickMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.ticking?.catch(() => undefined); // reported by the tick itself
  }

  /** One pass over the due policies of every source. Ticks never overlap within a process. */
  tick(): Promise<TickResult> {
    this.ticking ??= this.tickOnce().finally(() => (this.ticking = null));
    return this.ticking;
  }

  private async tickOnce(): Promise<TickResult> {
    const now = this.clock.now();
    const result: TickResult = { fired: 0, skipped: 0, initialized: 0 };
    for (const source of this.sources) {
      // In batches, so memory stays bounded however many policies are due at once.
      for (;;) {
        const batch = await source.unscheduled(this.batch);
        for (const p of batch) {
          // First computation starts at the anchor: a slot between the policy's creation (or its
          // schedule change, or switching ON) and now is due; nothing before the anchor ever is.
          const first = this.safeNext(source, p, p.scheduleAnchor);
          if (first === null) {
            await source.claim(p.id, null, Number.MAX_SAFE_INTEGER); // never due
            continue;
          }
          if (await source.claim(p.id, null, first)) {
            result.initialized++;
            p.nextRunAt = first;
            if (first <= now) await this.handleDue(source, p, now, result);
          }
        }
        if (batch.length < this.batch) break;
      }
      for (;;) {
        const batch = await source.due(now, this.batch);
        for (const p of batch) await this.handleDue(source, p, now, result);
        if (batch.length < this.batch) break;
      }
      await source.housekeeping?.(now);
    }
    return result;
  }

  private safeNext(source: ScheduleSource, p: ScheduledPolicy, fromMs: number): number | null {
    try {
      return nextSlot(source.scheduleOf(p), fromMs);
    } catch (err) {
      if (!(err instanceof ScheduleError)) throw err;
      this.log.warn({ policyId: p.id, kind: source.kind, err: err.message }, 'policy has an invalid schedule; it does not run');
      return null;
    }
  }

  private async handleDue(source: ScheduleSource, p: ScheduledPolicy, now: number, result: TickResult): Promise<void> {
    const due = p.nextRunAt!;
    let s: VbsSchedule;
    try {
      s = source.scheduleOf(p);
    } catch (err) {
      if (!(err instanceof ScheduleError)) throw err;
      // A stored schedule that no longer parses must not stop the tick for everyone after it.
      this.log.warn({ policyId: p.id, kind: source.kind, err: err.message }, 'policy has an invalid schedule; it does not run');
      await source.claim(p.id, due, Number.MAX_SAFE_INTEGER);
      return;
    }
    const missed = slotsBetween(s, due, now, 10_000);
    const next = nextSlot(s, now + 1);
    if (!(await source.claim(p.id, due, next))) return; // another process handles it
    const newest = missed.at(-1);
    const fire = newest !== undefined && now - newest <= this.graceMs ? newest : null;
    const skippedSlots = missed.filter((t) => t !== fire).slice(-MAX_SKIPPED_RECORDED);
    for (const slot of skippedSlots) {
      await source.recordSkipped(p, slot, now);
      result.skipped++;
    }
    if (fire !== null) {
      try {
        await source.fire(p, fire);
        result.fired++;
        this.log.info({ policyId: p.id, kind: source.kind, slot: new Date(fire).toISOString() }, 'policy slot fired');
      } catch (err) {
        this.log.error({ err, policyId: p.id, kind: source.kind }, 'policy slot could not run');
      }
    }
  }
}
