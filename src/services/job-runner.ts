/**
 * JobRunner: claims queued jobs from the catalog and runs them, in any number of processes.
 *
 * A job is claimed by compare-and-set (INIT -> RUNNING with this process as owner), so two runners
 * never run one job. While it runs, the owner refreshes the job's heartbeat (and progress); a job
 * whose heartbeat is older than `staleAfterMs` belongs to a process that died, and recovery
 * finishes it as FAIL through its handler, which puts the backup and volume back into a defined
 * state (docs/state-machines.md). In the embedded mode one process owns the catalog, so every job
 * found RUNNING at start-up is such an orphan. No job stays RUNNING forever.
 *
 * Fairness: a project runs at most half of this process's slots (rounded up, at least one), so
 * one tenant's long jobs never keep another's waiting; the claim query skips projects at their share.
 *
 * Cancelling: a job whose row carries a cancel request (JobQueries.requestCancel) is aborted
 * through its AbortSignal, at once when this process is told (cancel()), otherwise at its owner's
 * next heartbeat; it ends FAIL with the request's reason, and its slot is free again.
 */
import { randomBytes } from 'node:crypto';
import type { Catalog } from '../catalog/catalog.ts';
import type { Clock } from '../domain/clock.ts';
import { AppError, ErrorCode, isAppError } from '../domain/errors.ts';
import { jobErrorCode, type Job, type JobOf, type JobType } from '../domain/job.ts';
import { detached, runInJob } from '../domain/request-context.ts';

export interface JobContext {
  signal: AbortSignal;
  jobId: string;
  progress(doneBytes: number, totalBytes: number): void;
}

export interface JobFailure {
  /** Haven's error code (domain/errors.ts); the API maps it to the service's (api/wire). */
  errorCode: string;
  failReason: string;
}

/** One kind of job: what runs it, fails it and recovers it (one module each, services/jobs/). */
export interface JobHandler<T extends JobType = JobType> {
  /** Does the work; returns the job's entities. Throwing fails the job through `fail`. */
  run(job: JobOf<T>, ctx: JobContext): Promise<Record<string, string>>;
  /** Puts the job's resources into their failed state; returns what the job reports. */
  fail(job: JobOf<T>, err: unknown): Promise<JobFailure>;
  /**
   * Recovery of a job whose process died: finish it (e.g. the engine completed the backup before
   * the crash) and return its entities, or return null to fail it.
   */
  recover?(job: JobOf<T>): Promise<Record<string, string> | null>;
}

/** A handler for every kind of job. */
export type JobHandlers = { [T in JobType]: JobHandler<T> };

/** The failure a handler reports for `err`: Haven's error code and the reason, prefixed. */
export function jobFailure(err: unknown, prefix: string): JobFailure {
  const reason = err instanceof Error ? err.message : String(err);
  return { errorCode: jobErrorCode(err), failReason: `${prefix}${reason}` };
}

/** What every log line about a job carries: its id and kind, and the API request that created it. */
function jobFields(job: Job): { jobId: string; jobType: string; requestId?: string } {
  return { jobId: job.id, jobType: job.type, ...(job.requestId ? { requestId: job.requestId } : {}) };
}

export interface Logger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface JobRunnerOptions {
  concurrency: number;
  /** Sole user of the catalog (embedded mode): every RUNNING job at start-up is orphaned. */
  exclusive: boolean;
  pollMs?: number;
  heartbeatMs?: number;
  staleAfterMs?: number;
  /** A job ended; `errorCode`: a failed job's (Haven's error code). */
  onJobFinished?: (job: Job, status: 'SUCCESS' | 'FAIL', durationMs: number, errorCode: string | null) => void;
  /** A job started, `waitedMs` after it was queued. */
  onJobStarted?: (job: Job, waitedMs: number) => void;
}

export class JobRunner {
  readonly owner = `${process.pid}-${randomBytes(4).toString('hex')}`;
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly handlers: JobHandlers;
  private readonly log: Logger;
  private readonly opts: Required<Omit<JobRunnerOptions, 'onJobFinished' | 'onJobStarted'>> & Pick<JobRunnerOptions, 'onJobFinished' | 'onJobStarted'>;
  private readonly running = new Map<string, { ac: AbortController; done: Promise<void>; projectId: string }>();
  private timer: NodeJS.Timeout | null = null;
  private claiming: Promise<void> | null = null;
  private claimAgain = false;
  private stopped = true;
  private lastRecovery = 0;

  constructor(catalog: Catalog, clock: Clock, handlers: JobHandlers, log: Logger, opts: JobRunnerOptions) {
    this.catalog = catalog;
    this.clock = clock;
    this.handlers = handlers;
    this.log = log;
    this.opts = { pollMs: 1000, heartbeatMs: 5000, staleAfterMs: 60_000, ...opts };
  }

  async start(): Promise<void> {
    this.stopped = false;
    await this.recover(this.opts.exclusive ? Infinity : this.clock.now() - this.opts.staleAfterMs);
    this.timer = setInterval(() => this.wake(), this.opts.pollMs);
    this.timer.unref();
    this.wake();
  }

  /** Looks for queued work now (called when a job is queued in this process). */
  wake(): void {
    if (this.stopped) return;
    if (this.claiming) {
      this.claimAgain = true;
      return;
    }
    // Woken by whichever request or job queued work, but claims for every project: outside its context.
    this.claiming = detached(() => this.claimLoop())
      .catch((err: unknown) => this.log.error({ err }, 'job runner: claiming jobs failed'))
      .finally(() => {
        this.claiming = null;
        if (this.claimAgain) {
          this.claimAgain = false;
          this.wake();
        }
      });
  }

  private async claimLoop(): Promise<void> {
    if (!this.opts.exclusive && this.clock.now() - this.lastRecovery > this.opts.staleAfterMs) {
      await this.recover(this.clock.now() - this.opts.staleAfterMs);
    }
    while (!this.stopped && this.running.size < this.opts.concurrency) {
      const queued = await this.catalog.jobs.queuedJobs(this.opts.concurrency * 2, this.projectsAtShare());
      let claimed = 0;
      for (const { id, projectId } of queued) {
        if (this.stopped || this.running.size >= this.opts.concurrency) break;
        if (this.projectsAtShare().includes(projectId)) continue; // took its share in this batch
        if (!(await this.catalog.jobs.claimJob(id, this.owner, this.clock.now()))) continue; // another runner won
        // Claimed: from here the job is this process's to run (a lost read would orphan it RUNNING).
        const job = await retryWhileBusy(() => this.catalog.jobs.getJobById(id));
        if (!job) continue;
        claimed++;
        this.execute(job);
      }
      if (!claimed) return;
    }
  }

  /** The most slots one project may hold in this process: half, rounded up, at least one. */
  get projectShare(): number {
    return Math.max(1, Math.ceil(this.opts.concurrency / 2));
  }

  /** Projects holding their share of this process's slots: their queued jobs wait for a free one. */
  private projectsAtShare(): string[] {
    const counts = new Map<string, number>();
    for (const r of this.running.values()) counts.set(r.projectId, (counts.get(r.projectId) ?? 0) + 1);
    return [...counts].filter(([, n]) => n >= this.projectShare).map(([p]) => p);
  }

  /**
   * Aborts a job if this process runs it (the catalog's cancel request reaches other processes at
   * their next heartbeat). Returns whether it ran here.
   */
  cancel(jobId: string, reason: string): boolean {
    const r = this.running.get(jobId);
    if (!r) return false;
    if (!r.ac.signal.aborted) r.ac.abort(new AppError(ErrorCode.Cancelled, `cancelled: ${reason}`));
    return true;
  }

  private execute(job: Job): void {
    const ac = new AbortController();
    const started = this.clock.now();
    let done = 0;
    let total = 0;
    const cancelIfAsked = async (): Promise<void> => {
      const reason = await this.catalog.jobs.cancelReason(job.id);
      if (reason && !ac.signal.aborted) ac.abort(new AppError(ErrorCode.Cancelled, `cancelled: ${reason}`));
    };
    const beat = setInterval(() => {
      this.catalog.jobs.heartbeat(job.id, this.owner, this.clock.now(), done, total)
        .then(cancelIfAsked)
        .catch((err: unknown) => this.log.warn({ err, ...jobFields(job) }, 'job heartbeat failed'));
    }, this.opts.heartbeatMs);
    beat.unref();
    const handler = this.handlerOf(job);
    // Everything the job does runs as the request that created it: its handler's log lines carry
    // the job and request ids (app/logger.ts), and any job it queues records the same request.
    const work = runInJob(job, async () => {
      this.log.info({ ...jobFields(job), projectId: job.projectId }, 'job started');
      this.opts.onJobStarted?.(job, started - job.createdAt);
      try {
        // A cancel that landed between the claim and now (the request's process could not abort
        // a job it did not yet know as running).
        await cancelIfAsked();
        if (ac.signal.aborted) throw ac.signal.reason;
        const entities = await handler.run(job, { signal: ac.signal, jobId: job.id, progress: (d, t) => ((done = d), (total = t)) });
        await retryWhileBusy(() => this.catalog.jobs.heartbeat(job.id, this.owner, this.clock.now(), total, total));
        await retryWhileBusy(() => this.catalog.jobs.finishJob(job.id, this.owner, { status: 'SUCCESS', entities, errorCode: null, failReason: null }, this.clock.now()));
        this.log.info({ ...jobFields(job), durationMs: this.clock.now() - started, bytes: total }, 'job succeeded');
        this.opts.onJobFinished?.(job, 'SUCCESS', this.clock.now() - started, null);
      } catch (err) {
        // A cancelled job fails with the cancel's reason, not with whatever error the abort surfaced as.
        const failure = await this.failJob(job, this.owner, ac.signal.aborted && isAppError(ac.signal.reason, ErrorCode.Cancelled) ? ac.signal.reason : err);
        this.opts.onJobFinished?.(job, 'FAIL', this.clock.now() - started, failure.errorCode);
      }
    }).finally(() => {
      clearInterval(beat);
      this.running.delete(job.id);
      this.wake();
    });
    this.running.set(job.id, { ac, done: work, projectId: job.projectId });
  }

  private async failJob(job: Job, owner: string | null, err: unknown): Promise<JobFailure> {
    // First, work an agent may still do for it is called off: queued work fails now, running work
    // stops at the agent's next heartbeat (and its result is refused); only then are the job's
    // resources put into their failed state.
    await retryWhileBusy(() => this.catalog.agents.cancelWorkOfJob(job.id, `job ${job.id} ended: ${err instanceof Error ? err.message : String(err)}`, this.clock.now())).catch((e: unknown) => this.log.warn({ err: e, ...jobFields(job) }, 'could not cancel the agents\' work of a failed job'));
    let failure: JobFailure;
    try {
      // The failed state of the job's backup and volume must be written, or they stay busy forever.
      failure = await retryWhileBusy(() => this.handlerOf(job).fail(job, err));
    } catch (e) {
      this.log.error({ err: e, ...jobFields(job) }, 'job failure handling failed');
      failure = { errorCode: ErrorCode.Internal, failReason: (err as Error)?.message ?? String(err) };
    }
    const latest = await retryWhileBusy(() => this.catalog.jobs.getJobById(job.id));
    const entities = { ...(latest?.entities ?? job.entities) };
    await retryWhileBusy(() => this.catalog.jobs.finishJob(job.id, owner, { status: 'FAIL', entities, errorCode: failure.errorCode, failReason: failure.failReason }, this.clock.now()));
    this.log.warn({ ...jobFields(job), errorCode: failure.errorCode, reason: failure.failReason, durationMs: this.clock.now() - (job.beginTime ?? job.createdAt) }, 'job failed');
    return failure;
  }

  /** Finishes jobs whose owner stopped before `heartbeatBeforeMs` (Infinity: all running jobs). */
  async recover(heartbeatBeforeMs: number): Promise<number> {
    this.lastRecovery = this.clock.now();
    const stale = (await this.catalog.jobs.staleRunningJobs(heartbeatBeforeMs)).filter((j) => !this.running.has(j.id));
    for (const job of stale) {
      const handler = this.handlerOf(job);
      try {
        const entities = handler.recover ? await handler.recover(job) : null;
        if (entities) {
          await this.catalog.jobs.finishJob(job.id, null, { status: 'SUCCESS', entities, errorCode: null, failReason: null }, this.clock.now());
          this.log.info({ ...jobFields(job) }, 'recovered job completed');
          continue;
        }
      } catch (err) {
        this.log.warn({ err, ...jobFields(job) }, 'job recovery could not complete the job; failing it');
      }
      const failure = await this.failJob(job, null, new AppError(ErrorCode.JobInterrupted, `interrupted: the Haven process running this job (${job.owner ?? 'unknown'}) stopped before it finished`));
      this.opts.onJobFinished?.(job, 'FAIL', this.clock.now() - (job.beginTime ?? job.createdAt), failure.errorCode);
    }
    return stale.length;
  }

  /**
   * The handler of a job's kind. TypeScript cannot tie `handlers[job.type]` to `job`'s own payload
   * type (a correlated union), so the one cast of the runner is here: the table is keyed by type.
   */
  private handlerOf(job: Job): JobHandler {
    return this.handlers[job.type] as unknown as JobHandler;
  }

  /** Cancels running jobs (they finish as FAIL) and stops claiming. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.claiming;
    for (const r of this.running.values()) r.ac.abort(new AppError(ErrorCode.Cancelled, 'Haven is shutting down'));
    await Promise.all([...this.running.values()].map((r) => r.done));
  }

  /** Waits until no job is queued or running in this process (tests, graceful shutdown). */
  async idle(): Promise<void> {
    for (;;) {
      await this.claiming;
      if (!this.running.size) {
        const queued = await this.catalog.jobs.queuedJobs(1);
        if (!queued.length || this.stopped) return;
        this.wake();
        await this.claiming;
        if (!this.running.size) return;
      }
      await Promise.race([...this.running.values()].map((r) => r.done));
    }
  }

  get runningCount(): number {
    return this.running.size;
  }
}

/**
 * Runs a catalog step again while it fails with ServiceBusy (the catalog's connection was lost:
 * the next attempt gets a new one), up to 6 attempts over about 2 s. A job's final writes go through
 * this, so a connection lost at that moment does not leave the job or its backup busy forever.
 */
async function retryWhileBusy<T>(step: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await step();
    } catch (err) {
      if (!isAppError(err, ErrorCode.ServiceBusy) || attempt >= 6) throw err;
      await new Promise((r) => setTimeout(r, 100 * attempt));
    }
  }
}
