/**
 * CSBS backup policies (Karbor "plans"): servers to back up, one scheduled operation with an RRULE
 * pattern, and retention (csbs.md §3.3-3.4). Names on the wire keep Karbor's spelling.
 */
export interface CsbsRetention {
  maxBackups?: number;
  retentionDurationDays?: number;
  permanent?: boolean;
  dayBackups?: number;
  weekBackups?: number;
  monthBackups?: number;
  yearBackups?: number;
  timezone?: string;
}

export interface CsbsPolicy {
  id: string;
  projectId: string;
  name: string;
  description: string;
  status: 'suspended';
  parameters: Record<string, unknown>;
  tags: { key: string; value: string }[];
  operationId: string;
  operationName: string;
  operationDescription: string;
  enabled: boolean;
  retention: CsbsRetention;
  pattern: string;
  triggerId: string;
  triggerStart: number;
  scheduleAnchor: number;
  nextRunAt: number | null;
  createdAt: number;
  updatedAt: number;
}

export interface CsbsPolicyResource {
  serverId: string;
  name: string;
}

export const MAX_CSBS_POLICIES = 32;
export const MAX_SERVERS_PER_POLICY = 64;
