/**
 * CSBS backup policies: servers, one scheduled operation (RRULE pattern + retention), run now (B1)
 * or by the scheduler, and retention after each scheduled backup — the same retention function as
 * VBS policies, with CSBS's rules (domain/retention.ts). The pattern is read in UTC unless it names
 * its own TZID (scheduler/rrule.ts); the operation's `timezone` only places backups in the days,
 * weeks, months and years of the long-term retention rules.
 */
import { ProjectLock, type Catalog, type CatalogQueries } from '../catalog/catalog.ts';
import type { Checkpoint, CheckpointItem } from '../domain/checkpoint.ts';
import type { Clock } from '../domain/clock.ts';
import { MAX_CSBS_POLICIES, MAX_SERVERS_PER_POLICY, type CsbsPolicy, type CsbsPolicyResource, type CsbsRetention } from '../domain/csbs-policy.ts';
import { AppError, ErrorCode, isAppError } from '../domain/errors.ts';
import { newUuid } from '../domain/ids.ts';
import { parseTimeZone } from '../domain/policy.ts';
import { selectBackupsToDelete } from '../domain/retention.ts';
import type { ServerBackupService } from './server-backup-service.ts';

export interface CsbsPolicyInput {
  name: string;
  description: string;
  parameters: Record<string, unknown>;
  resources: CsbsPolicyResource[];
  tags: { key: string; value: string }[];
  operation: { name: string; description: string; enabled: boolean; retention: CsbsRetention; pattern: string };
}

export type CsbsPolicyUpdate = Partial<Omit<CsbsPolicyInput, 'operation'>> & { operation?: Partial<CsbsPolicyInput['operation']> & { id: string } };

export class CsbsPolicyService {
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly serverBackups: ServerBackupService;
  /** Validates an RRULE pattern (throws AppError InvalidArgument); injected by the composition root. */
  private readonly checkPattern: (pattern: string) => void;

  constructor(catalog: Catalog, clock: Clock, serverBackups: ServerBackupService, checkPattern: (pattern: string) => void) {
    this.catalog = catalog;
    this.clock = clock;
    this.serverBackups = serverBackups;
    this.checkPattern = checkPattern;
  }

  private async checkResources(c: CatalogQueries, projectId: string, policyId: string | null, resources: CsbsPolicyResource[]): Promise<void> {
    if (resources.length > MAX_SERVERS_PER_POLICY) throw new AppError(ErrorCode.InvalidArgument, `A policy holds at most ${MAX_SERVERS_PER_POLICY} servers.`);
    if (new Set(resources.map((r) => r.serverId)).size !== resources.length) throw new AppError(ErrorCode.InvalidArgument, 'A server is listed twice in resources.');
    for (const r of resources) {
      if (!(await c.servers.getServer(projectId, r.serverId))) throw new AppError(ErrorCode.ServerNotFound, `Server ${r.serverId} does not exist.`);
      const bound = await c.csbsPolicies.policyOfServer(r.serverId);
      if (bound && bound !== policyId) throw new AppError(ErrorCode.ServerInOtherPolicy, `Server (${r.serverId}) is already in service.`);
    }
  }

  private checkRetention(r: CsbsRetention): void {
    const longTerm = [r.dayBackups, r.weekBackups, r.monthBackups, r.yearBackups].some((n) => n !== undefined && n > 0);
    if (longTerm && !r.timezone) throw new AppError(ErrorCode.InvalidArgument, 'operation_definition.timezone is required with day/week/month/year_backups.');
    if (r.timezone && parseTimeZone(r.timezone) === null) throw new AppError(ErrorCode.InvalidArgument, `operation_definition.timezone ${r.timezone} is not UTC±HH:mm.`);
  }

  async createPolicy(projectId: string, input: CsbsPolicyInput): Promise<CsbsPolicy> {
    this.checkPattern(input.operation.pattern);
    this.checkRetention(input.operation.retention);
    const now = this.clock.now();
    const p: CsbsPolicy = {
      id: newUuid(), projectId, name: input.name, description: input.description, status: 'suspended', parameters: input.parameters, tags: input.tags,
      operationId: newUuid(), operationName: input.operation.name, operationDescription: input.operation.description, enabled: input.operation.enabled,
      retention: input.operation.retention, pattern: input.operation.pattern, triggerId: newUuid(), triggerStart: now, scheduleAnchor: now, nextRunAt: null, createdAt: now, updatedAt: now,
    };
    await this.catalog.transaction(async (c) => {
      await c.lockKey(ProjectLock.csbsPolicies, projectId); // the count and the insert, as one step across processes
      if ((await c.csbsPolicies.countPolicies(projectId)) >= MAX_CSBS_POLICIES) throw new AppError(ErrorCode.QuotaPoliciesExceeded, 'Service over limit');
      if (await c.csbsPolicies.findByName(projectId, input.name)) throw new AppError(ErrorCode.NameConflict, `duplicate service name: ${input.name}`);
      await this.checkResources(c, projectId, null, input.resources);
      await c.csbsPolicies.insertPolicy(p);
      await c.csbsPolicies.setResources(p.id, projectId, input.resources);
    });
    return p;
  }

  async getPolicy(projectId: string, id: string): Promise<CsbsPolicy> {
    const p = await this.catalog.csbsPolicies.getPolicy(projectId, id);
    if (!p) throw new AppError(ErrorCode.PolicyNotFound, 'plan not found');
    return p;
  }

  resources(policyId: string): Promise<CsbsPolicyResource[]> {
    return this.catalog.csbsPolicies.resources(policyId);
  }

  listPolicies(projectId: string, f: Parameters<Catalog['csbsPolicies']['listPolicies']>[1]): Promise<CsbsPolicy[]> {
    return this.catalog.csbsPolicies.listPolicies(projectId, f);
  }

  async updatePolicy(projectId: string, id: string, u: CsbsPolicyUpdate): Promise<CsbsPolicy> {
    if (u.operation?.pattern !== undefined) this.checkPattern(u.operation.pattern);
    return this.catalog.transaction(async (c) => {
      const p = await c.csbsPolicies.getPolicy(projectId, id);
      if (!p) throw new AppError(ErrorCode.PolicyNotFound, 'plan not found');
      if (u.operation && u.operation.id !== p.operationId) throw new AppError(ErrorCode.InvalidArgument, `scheduled operation ${u.operation.id} is not this policy's (${p.operationId}).`);
      const next: CsbsPolicy = { ...p, updatedAt: this.clock.now() };
      if (u.name !== undefined && u.name !== p.name) {
        if (await c.csbsPolicies.findByName(projectId, u.name)) throw new AppError(ErrorCode.NameConflict, `duplicate service name: ${u.name}`);
        next.name = u.name;
      }
      if (u.description !== undefined) next.description = u.description;
      if (u.parameters !== undefined) next.parameters = u.parameters;
      if (u.operation) {
        const o = u.operation;
        if (o.name !== undefined) next.operationName = o.name;
        if (o.description !== undefined) next.operationDescription = o.description;
        if (o.enabled !== undefined) next.enabled = o.enabled;
        if (o.retention !== undefined) next.retention = { ...p.retention, ...o.retention };
        if (o.pattern !== undefined) next.pattern = o.pattern;
      }
      this.checkRetention(next.retention);
      // A new pattern, or switching the schedule on, starts counting from now: no missed runs fire.
      // The retention timezone does not move the schedule (patterns are read in UTC or their own
      // TZID, csbs.md §3.5), so changing it leaves the schedule alone.
      if (next.pattern !== p.pattern || (next.enabled && !p.enabled)) {
        next.scheduleAnchor = next.updatedAt;
        next.nextRunAt = null;
      }
      if (u.resources !== undefined) {
        await this.checkResources(c, projectId, id, u.resources);
        await c.csbsPolicies.setResources(id, projectId, u.resources);
      }
      await c.csbsPolicies.updatePolicy(next);
      if (next.nextRunAt === null && p.nextRunAt !== null) await c.csbsPolicies.resetSchedule(id);
      return next;
    });
  }

  async deletePolicy(projectId: string, id: string): Promise<void> {
    await this.catalog.transaction(async (c) => {
      if (!(await c.csbsPolicies.getPolicy(projectId, id))) throw new AppError(ErrorCode.PolicyNotFound, 'plan not found');
      await c.csbsPolicies.deletePolicy(id); // its backups stay (UMN)
    });
  }

  /** B1 (manual) or a scheduled slot: one checkpoint, an item per server of the policy (or the subset asked for). */
  async execute(projectId: string, policyId: string, opts: { autoTrigger: boolean; resources?: string[] | undefined }): Promise<{ checkpoint: Checkpoint; items: CheckpointItem[]; policy: CsbsPolicy }> {
    const p = await this.getPolicy(projectId, policyId);
    const members = (await this.resources(policyId)).map((r) => r.serverId);
    const chosen = opts.resources?.length ? opts.resources : members;
    const stranger = chosen.find((id) => !members.includes(id));
    if (stranger) throw new AppError(ErrorCode.InvalidArgument, `Server ${stranger} is not a resource of policy ${policyId}.`);
    if (!chosen.length) throw new AppError(ErrorCode.PolicyHasNoServer, 'plan has no resource backup');
    // The policy's tags go onto every backup it makes (UMN).
    const r = await this.serverBackups.protectServers(projectId, chosen, { policyId, planName: p.name, autoTrigger: opts.autoTrigger, skipBusy: opts.autoTrigger }, p.tags.length ? { tags: p.tags } : {});
    return { ...r, policy: p };
  }

  /** Retention after a scheduled backup of a server (manual runs are never pruned). */
  async applyRetention(item: CheckpointItem): Promise<string[]> {
    if (!item.autoTrigger || !item.policyId) return [];
    const p = await this.catalog.csbsPolicies.getPolicyById(item.policyId);
    if (!p) return [];
    const r = p.retention;
    const rule = {
      keepCount: r.maxBackups === undefined || r.maxBackups < 0 ? null : r.maxBackups,
      keepDays: r.retentionDurationDays === undefined || r.retentionDurationDays < 0 ? null : r.retentionDurationDays,
      keepFirstOfMonth: false, offsetMinutes: (r.timezone ? parseTimeZone(r.timezone) : 0) ?? 0, combine: 'both' as const, permanent: r.permanent === true,
      longTerm: { days: r.dayBackups ?? 0, weeks: r.weekBackups ?? 0, months: r.monthBackups ?? 0, years: r.yearBackups ?? 0 },
    };
    const candidates = (await this.catalog.checkpoints.listItems(item.projectId, { serverId: item.serverId, policyId: p.id }, { sortKey: 'created_at', sortDir: 'desc', limit: 100_000, offset: 0 }))
      .filter((i) => i.autoTrigger)
      .map((i) => ({ id: i.id, createdAt: i.createdAt, status: i.status === 'available' ? ('available' as const) : ('creating' as const), checkpointId: i.checkpointId }));
    const doomed = selectBackupsToDelete(candidates, rule, this.clock.now());
    for (const id of doomed) {
      const c = candidates.find((x) => x.id === id)!;
      try {
        await this.serverBackups.deleteCheckpoint(item.projectId, c.checkpointId, [id]);
      } catch (err) {
        if (!isAppError(err, ErrorCode.CheckpointItemBusy) && !isAppError(err, ErrorCode.CheckpointItemNotFound)) throw err;
      }
    }
    return doomed;
  }
}
