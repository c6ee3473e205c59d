/**
 * VBS backup policies: CRUD, volume association (one policy per volume; associating elsewhere
 * moves it), tags, "execute now" and the task history. A policy run creates one automatic backup
 * (`autobk_xxxx`) per associated volume through BackupService, recorded as a task.
 */
import { randomBytes } from 'node:crypto';
import { ProjectLock, type Catalog } from '../catalog/catalog.ts';
import type { Clock } from '../domain/clock.ts';
import { AppError, ErrorCode, isAppError } from '../domain/errors.ts';
import { newUuid } from '../domain/ids.ts';
import type { Backup, Tag } from '../domain/model.ts';
import { selectBackupsToDelete } from '../domain/retention.ts';
import { parseTimeZone, type Policy, type PolicyTask, type PolicyWithCount, type WeekDay } from '../domain/policy.ts';
import type { BackupService } from './backup-service.ts';

export const MAX_TAGS_PER_POLICY = 10;
export const MAX_VOLUMES_PER_POLICY = 200;

export interface PolicyInput {
  name?: string | undefined;
  startTime?: string | undefined;
  frequency?: number | undefined;
  weekFrequency?: WeekDay[] | undefined;
  retentionNum?: number | undefined;
  retentionDay?: number | undefined;
  remainFirstBackupOfCurMonth?: boolean | undefined;
  status?: 'ON' | 'OFF' | undefined;
  timeZone?: string | undefined;
}

export interface ResourceResult {
  resourceId: string;
  resourceType: string;
  availabilityZone: string | null;
  failure?: { code: string; message: string };
}


export class PolicyService {
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly backups: BackupService;
  private readonly maxPolicies: number;
  /** Policies whose run is queuing its backups in this process (P7 refuses a second run). */
  private readonly executing = new Set<string>();

  constructor(catalog: Catalog, clock: Clock, backups: BackupService, maxPolicies: number) {
    this.catalog = catalog;
    this.clock = clock;
    this.backups = backups;
    this.maxPolicies = maxPolicies;
  }

  async createPolicy(projectId: string, input: PolicyInput & { name: string; startTime: string; status: 'ON' | 'OFF' }, tags: Tag[]): Promise<Policy> {
    if (input.frequency === undefined && input.weekFrequency === undefined) throw new AppError(ErrorCode.ScheduleInvalid, 'scheduled_policy needs frequency or week_frequency.');
    if (input.retentionNum === undefined && input.retentionDay === undefined) throw new AppError(ErrorCode.RetentionInvalid, 'scheduled_policy needs rentention_num or rentention_day.');
    const now = this.clock.now();
    const p: Policy = {
      id: newUuid(), projectId, name: input.name, startTime: input.startTime,
      // Both given: frequency wins, and the count retention wins (vbs.md §3.0).
      frequency: input.frequency ?? null, weekFrequency: input.frequency !== undefined ? null : (input.weekFrequency ?? null),
      retentionNum: input.retentionNum ?? null, retentionDay: input.retentionNum !== undefined ? null : (input.retentionDay ?? null),
      remainFirstBackupOfCurMonth: input.remainFirstBackupOfCurMonth ?? false, status: input.status, timeZone: input.timeZone ?? null,
      scheduleAnchor: now, nextRunAt: null, createdAt: now, updatedAt: now,
    };
    await this.catalog.transaction(async (c) => {
      await c.lockKey(ProjectLock.policies, projectId); // the count and the insert, as one step across processes
      if ((await c.policies.countPolicies(projectId)) >= this.maxPolicies) throw new AppError(ErrorCode.QuotaPoliciesExceeded, `The number of backup policies has reached the upper limit (${this.maxPolicies}).`);
      await c.policies.insertPolicy(p);
      for (const t of tags) await c.policies.upsertTag(p.id, t.key, t.value);
    });
    return p;
  }

  async getPolicy(projectId: string, id: string): Promise<PolicyWithCount> {
    const p = await this.catalog.policies.getPolicy(projectId, id);
    if (!p) throw new AppError(ErrorCode.PolicyNotFound, `The policy ${id} does not exist.`);
    return p;
  }

  listPolicies(projectId: string): Promise<PolicyWithCount[]> {
    return this.catalog.policies.listPolicies(projectId);
  }

  /** Partial update: fields not given stay; giving one schedule (or retention) mode clears the other. */
  async updatePolicy(projectId: string, id: string, input: PolicyInput): Promise<Policy> {
    return this.catalog.transaction(async (c) => {
      const p = await c.policies.getPolicy(projectId, id);
      if (!p) throw new AppError(ErrorCode.PolicyNotFound, `The policy ${id} does not exist.`);
      const next: Policy = { ...p, updatedAt: this.clock.now() };
      if (input.name !== undefined) next.name = input.name;
      if (input.startTime !== undefined) next.startTime = input.startTime;
      if (input.frequency !== undefined) (next.frequency = input.frequency, next.weekFrequency = null);
      else if (input.weekFrequency !== undefined) (next.weekFrequency = input.weekFrequency, next.frequency = null);
      if (input.retentionNum !== undefined) (next.retentionNum = input.retentionNum, next.retentionDay = null);
      else if (input.retentionDay !== undefined) (next.retentionDay = input.retentionDay, next.retentionNum = null);
      if (input.remainFirstBackupOfCurMonth !== undefined) next.remainFirstBackupOfCurMonth = input.remainFirstBackupOfCurMonth;
      if (input.status !== undefined) next.status = input.status;
      if (input.timeZone !== undefined) next.timeZone = input.timeZone;
      const scheduleChanged = next.startTime !== p.startTime || next.frequency !== p.frequency || JSON.stringify(next.weekFrequency) !== JSON.stringify(p.weekFrequency) || next.timeZone !== p.timeZone;
      // Switching ON never fires slots missed while OFF: the schedule starts again from now.
      if (scheduleChanged || (p.status === 'OFF' && next.status === 'ON')) {
        next.scheduleAnchor = next.updatedAt;
        next.nextRunAt = null; // the scheduler computes the next slot from the new anchor
      }
      await c.policies.updatePolicy(next);
      if (next.nextRunAt === null && p.nextRunAt !== null) await c.policies.resetSchedule(id);
      return next;
    });
  }

  async deletePolicy(projectId: string, id: string): Promise<void> {
    await this.catalog.transaction(async (c) => {
      if (!(await c.policies.getPolicy(projectId, id))) throw new AppError(ErrorCode.PolicyNotFound, `The policy ${id} does not exist.`);
      await c.policies.deletePolicy(id); // its backups are kept (UMN)
    });
  }

  async associate(projectId: string, policyId: string, resources: { resourceId: string; resourceType: string }[]): Promise<{ success: ResourceResult[]; fail: ResourceResult[] }> {
    const now = this.clock.now();
    return this.catalog.transaction(async (c) => {
      const p = await c.policies.getPolicy(projectId, policyId);
      if (!p) throw new AppError(ErrorCode.PolicyNotFound, `The policy ${policyId} does not exist.`);
      const success: ResourceResult[] = [];
      const fail: ResourceResult[] = [];
      let count = p.resourceCount;
      for (const r of resources) {
        const v = await c.volumes.getVolume(projectId, r.resourceId);
        const item = { resourceId: r.resourceId, resourceType: r.resourceType, availabilityZone: v?.availabilityZone ?? null };
        if (r.resourceType !== 'volume') fail.push({ ...item, failure: { code: 'AutoBackup.0211', message: `Resource type ${r.resourceType} is invalid; only volume is supported.` } });
        else if (!v) fail.push({ ...item, failure: { code: 'AutoBackup.1400', message: `Volume ${r.resourceId} does not exist.` } });
        else if (v.status !== 'available' && v.status !== 'in-use') fail.push({ ...item, failure: { code: 'AutoBackup.0206', message: `Volume ${v.id} is ${v.status}.` } });
        else {
          const already = (await c.policies.policyVolumes(policyId)).includes(v.id);
          if (!already && count >= MAX_VOLUMES_PER_POLICY) {
            fail.push({ ...item, failure: { code: 'AutoBackup.0204', message: `The policy already has ${MAX_VOLUMES_PER_POLICY} volumes.` } });
            continue;
          }
          await c.policies.bindVolume(policyId, projectId, v.id, now);
          if (!already) count++;
          success.push(item);
        }
      }
      return { success, fail };
    });
  }

  async disassociate(projectId: string, policyId: string, volumeIds: string[]): Promise<{ success: string[]; fail: { resourceId: string; code: string; message: string }[] }> {
    return this.catalog.transaction(async (c) => {
      if (!(await c.policies.getPolicy(projectId, policyId))) throw new AppError(ErrorCode.PolicyNotFound, `The policy ${policyId} does not exist.`);
      const success: string[] = [];
      const fail: { resourceId: string; code: string; message: string }[] = [];
      for (const id of volumeIds) {
        if (await c.policies.unbindVolume(policyId, id)) success.push(id);
        else fail.push({ resourceId: id, code: 'AutoBackup.1400', message: `Volume ${id} is not associated with policy ${policyId}.` });
      }
      return { success, fail };
    });
  }

  async tags(projectId: string, policyId: string): Promise<Tag[]> {
    await this.getPolicy(projectId, policyId);
    return this.catalog.policies.policyTags(policyId);
  }

  async projectTags(projectId: string): Promise<{ key: string; values: string[] }[]> {
    const byKey = new Map<string, Set<string>>();
    for (const t of await this.catalog.policies.projectTags(projectId)) {
      let s = byKey.get(t.key);
      if (!s) byKey.set(t.key, (s = new Set()));
      s.add(t.value);
    }
    return [...byKey].map(([key, values]) => ({ key, values: [...values] }));
  }

  async setTags(projectId: string, policyId: string, tags: Tag[]): Promise<void> {
    await this.catalog.transaction(async (c) => {
      if (!(await c.policies.getPolicy(projectId, policyId))) throw new AppError(ErrorCode.PolicyNotFound, `The policy ${policyId} does not exist.`);
      const have = new Map((await c.policies.policyTags(policyId)).map((t) => [t.key, t.value]));
      for (const t of tags) have.set(t.key, t.value);
      if (have.size > MAX_TAGS_PER_POLICY) throw new AppError(ErrorCode.TooManyTags, `A policy holds at most ${MAX_TAGS_PER_POLICY} tags.`);
      for (const t of tags) await c.policies.upsertTag(policyId, t.key, t.value);
    });
  }

  /** Deletes tags; with `mustExist`, a missing key fails the whole call (AutoBackup.0216). */
  async deleteTags(projectId: string, policyId: string, keys: string[], mustExist: boolean): Promise<void> {
    await this.catalog.transaction(async (c) => {
      if (!(await c.policies.getPolicy(projectId, policyId))) throw new AppError(ErrorCode.PolicyNotFound, `The policy ${policyId} does not exist.`);
      const have = new Set((await c.policies.policyTags(policyId)).map((t) => t.key));
      const missing = keys.find((k) => !have.has(k));
      if (mustExist && missing !== undefined) throw new AppError(ErrorCode.TagNotFound, `The tag ${missing} does not exist.`);
      for (const k of keys) await c.policies.deleteTag(policyId, k);
    });
  }

  /** Policies with their tags (for the tag filter, T6). */
  async policiesWithTags(projectId: string): Promise<{ policy: PolicyWithCount; tags: Tag[] }[]> {
    const out = [];
    for (const p of await this.listPolicies(projectId)) out.push({ policy: p, tags: await this.catalog.policies.policyTags(p.id) });
    return out;
  }

  /**
   * Runs the policy now (P7; the scheduler calls it for each due slot): one automatic backup per
   * associated volume. A volume whose previous backup is still being created is skipped (task SKIP),
   * never backed up twice.
   */
  async execute(projectId: string, policyId: string, opts: { slotAt?: number; refuseWhileRunning?: boolean } = {}): Promise<PolicyTask[]> {
    const p = await this.getPolicy(projectId, policyId);
    if (opts.refuseWhileRunning === false) return this.run(projectId, p, opts.slotAt);
    // A run still queuing its backups has no active task yet: without this guard two concurrent
    // requests would both pass the activeTasks check (and the second would only SKIP).
    if (this.executing.has(policyId)) throw new AppError(ErrorCode.PolicyBusy, `The policy ${policyId} is being executed.`);
    this.executing.add(policyId);
    try {
      if ((await this.catalog.policies.activeTasks(policyId)).length) throw new AppError(ErrorCode.PolicyBusy, `The policy ${policyId} is being executed.`);
      return await this.run(projectId, p, opts.slotAt);
    } finally {
      this.executing.delete(policyId);
    }
  }

  private async run(projectId: string, p: Policy, slotAt: number | undefined): Promise<PolicyTask[]> {
    const policyId = p.id;
    const tags = await this.catalog.policies.policyTags(policyId);
    const tasks: PolicyTask[] = [];
    for (const volumeId of await this.catalog.policies.policyVolumes(p.id)) {
      const name = `autobk_${randomBytes(2).toString('hex')}`;
      const task: PolicyTask = { id: newUuid(), policyId, projectId, volumeId, backupId: null, backupName: name, jobId: null, status: 'WAITING', failReason: null, slotAt: slotAt ?? null, createdAt: this.clock.now(), finishedAt: null };
      try {
        const { backup, job } = await this.backups.createBackup(projectId, { volumeId, name, origin: 'policy', policyId, tags });
        task.backupId = backup.id;
        task.jobId = job.id;
      } catch (err) {
        if (!(err instanceof AppError)) throw err;
        task.status = isAppError(err, ErrorCode.BackupInProgress) ? 'SKIP' : 'EXECUTE_FAIL';
        task.failReason = err.message;
        task.finishedAt = this.clock.now();
      }
      await this.catalog.policies.insertTask(task);
      tasks.push(task);
    }
    return tasks;
  }

  /** Records a slot that did not run (missed while Haven was down): one SKIP task per volume. */
  async recordSkippedSlot(projectId: string, policyId: string, slotAt: number, nowMs: number): Promise<void> {
    for (const volumeId of await this.catalog.policies.policyVolumes(policyId)) {
      await this.catalog.policies.insertTask({
        id: newUuid(), policyId, projectId, volumeId, backupId: null, backupName: '', jobId: null, status: 'SKIP',
        failReason: `slot ${new Date(slotAt).toISOString()} was missed (Haven was not running) and is older than the grace period`, slotAt, createdAt: nowMs, finishedAt: nowMs,
      });
    }
  }

  /**
   * Retention after an automatic backup succeeded: prunes the policy's older automatic backups of
   * that volume (domain/retention.ts) through the normal delete (jobs, then GC). Manual backups are
   * never touched; a backup being restored from is left for a later run.
   */
  async applyRetention(backup: Backup): Promise<string[]> {
    if (backup.origin !== 'policy' || !backup.policyId) return [];
    const p = await this.catalog.policies.getPolicyById(backup.policyId);
    if (!p) return []; // policy deleted meanwhile: its backups are kept
    const rule = { keepCount: p.retentionNum, keepDays: p.retentionDay, keepFirstOfMonth: p.remainFirstBackupOfCurMonth, offsetMinutes: (p.timeZone ? parseTimeZone(p.timeZone) : 0) ?? 0 };
    const doomed = selectBackupsToDelete(await this.catalog.backups.automaticBackups(backup.volumeId, p.id), rule, this.clock.now());
    const deleted: string[] = [];
    for (const id of doomed) {
      try {
        await this.backups.deleteBackup(p.projectId, id);
        deleted.push(id);
      } catch (err) {
        // Its status changed since it was read (e.g. a restore started): the next run decides again.
        if (!isAppError(err, ErrorCode.BackupInvalidState) && !isAppError(err, ErrorCode.BackupNotFound)) throw err;
      }
    }
    return deleted;
  }

  async listTasks(projectId: string, policyId: string, f: { status?: string | undefined; jobId?: string | undefined; sortDir: 'asc' | 'desc'; limit: number; offset: number; marker?: string | undefined }): Promise<{ tasks: PolicyTask[]; count: number }> {
    await this.getPolicy(projectId, policyId);
    return this.catalog.policies.listTasks(policyId, f);
  }
}
