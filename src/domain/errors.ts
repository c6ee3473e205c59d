/**
 * The one error base of Haven and the registry of its error codes.
 *
 * Every failure that crosses a module boundary is an AppError with a stable code; the CLI prints
 * its message as one line, the HTTP layer (later) maps the code to a status and an OTC error body.
 * Never throw strings; wrap with `cause` and add context instead.
 */
export const ErrorCode = {
  InvalidArgument: 'INVALID_ARGUMENT',
  RepositoryNotFound: 'REPOSITORY_NOT_FOUND',
  RepositoryExists: 'REPOSITORY_EXISTS',
  RepositoryCorrupt: 'REPOSITORY_CORRUPT',
  RepositoryLocked: 'REPOSITORY_LOCKED',
  WrongPassword: 'WRONG_PASSWORD',
  PasswordRequired: 'PASSWORD_REQUIRED',
  BackupNotFound: 'BACKUP_NOT_FOUND',
  ChunkMissing: 'CHUNK_MISSING',
  ChunkCorrupt: 'CHUNK_CORRUPT',
  VolumeUnreadable: 'VOLUME_UNREADABLE',
  VolumeChanged: 'VOLUME_CHANGED',
  TargetUnwritable: 'TARGET_UNWRITABLE',
  RestoreMismatch: 'RESTORE_MISMATCH',
  Cancelled: 'CANCELLED',
  StorageError: 'STORAGE_ERROR',
  CatalogError: 'CATALOG_ERROR',
  /** The data folder, the catalog or the repository has no space left (ENOSPC, EDQUOT, SQLITE_FULL). */
  NoSpace: 'NO_SPACE',
  // Identity
  AuthenticationFailed: 'AUTHENTICATION_FAILED',
  TokenInvalid: 'TOKEN_INVALID',
  Forbidden: 'FORBIDDEN',
  ProjectNotFound: 'PROJECT_NOT_FOUND',
  UserNotFound: 'USER_NOT_FOUND',
  RoleNotFound: 'ROLE_NOT_FOUND',
  NameConflict: 'NAME_CONFLICT',
  /** Too many failed logins for a user or from an address; details.retryAfterSeconds says when to retry. */
  TooManyRequests: 'TOO_MANY_REQUESTS',
  /** Too many logins at once (password hashing is capped); details.retryAfterSeconds says when to retry. */
  ServiceBusy: 'SERVICE_BUSY',
  // Volumes and snapshots
  VolumeNotFound: 'VOLUME_NOT_FOUND',
  VolumeInvalidState: 'VOLUME_INVALID_STATE',
  VolumeTooSmall: 'VOLUME_TOO_SMALL',
  VolumePathRefused: 'VOLUME_PATH_REFUSED',
  SnapshotNotFound: 'SNAPSHOT_NOT_FOUND',
  SnapshotInvalidState: 'SNAPSHOT_INVALID_STATE',
  // Backups and jobs
  BackupInvalidState: 'BACKUP_INVALID_STATE',
  BackupInProgress: 'BACKUP_IN_PROGRESS',
  BackupNotOwned: 'BACKUP_NOT_OWNED',
  QuotaBackupsExceeded: 'QUOTA_BACKUPS_EXCEEDED',
  QuotaGigabytesExceeded: 'QUOTA_GIGABYTES_EXCEEDED',
  QuotaVolumesExceeded: 'QUOTA_VOLUMES_EXCEEDED',
  QuotaVolumeGigabytesExceeded: 'QUOTA_VOLUME_GIGABYTES_EXCEEDED',
  JobNotFound: 'JOB_NOT_FOUND',
  JobInterrupted: 'JOB_INTERRUPTED',
  // Policies and sharing
  PolicyNotFound: 'POLICY_NOT_FOUND',
  PolicyBusy: 'POLICY_BUSY',
  QuotaPoliciesExceeded: 'QUOTA_POLICIES_EXCEEDED',
  TagNotFound: 'TAG_NOT_FOUND',
  TooManyTags: 'TOO_MANY_TAGS',
  ScheduleInvalid: 'SCHEDULE_INVALID',
  RetentionInvalid: 'RETENTION_INVALID',
  SharingNotFound: 'SHARING_NOT_FOUND',
  // Servers and CSBS
  ServerNotFound: 'SERVER_NOT_FOUND',
  ServerHasNoVolume: 'SERVER_HAS_NO_VOLUME',
  ServerBusy: 'SERVER_BUSY',
  CheckpointItemNotFound: 'CHECKPOINT_ITEM_NOT_FOUND',
  CheckpointItemBusy: 'CHECKPOINT_ITEM_BUSY',
  CheckpointItemUnavailable: 'CHECKPOINT_ITEM_UNAVAILABLE',
  RestoreMappingInvalid: 'RESTORE_MAPPING_INVALID',
  HookFailed: 'HOOK_FAILED',
  ServerInOtherPolicy: 'SERVER_IN_OTHER_POLICY',
  PolicyHasNoServer: 'POLICY_HAS_NO_SERVER',
  // Hosts and agents
  /** No agent of the volume's host is online (never registered, lease run out, drained). */
  HostUnavailable: 'HOST_UNAVAILABLE',
  AgentNotFound: 'AGENT_NOT_FOUND',
  /** Another agent of the host is online (one agent per host). */
  AgentConflict: 'AGENT_CONFLICT',
  /** The agent running a job's work stopped renewing its lease or restarted before finishing. */
  AgentLost: 'AGENT_LOST',
  /** A work result from an agent session that no longer holds the work. */
  WorkNotHeld: 'WORK_NOT_HELD',
  // Exports (a backup served as an NBD disk)
  ExportNotFound: 'EXPORT_NOT_FOUND',
  /** Exports are switched off (HAVEN_NBD_LISTEN=off) or their listener cannot start. */
  ExportUnavailable: 'EXPORT_UNAVAILABLE',
  /** A failure that is not one of the above (a bug, or an error from a library that was not wrapped). */
  Internal: 'INTERNAL_ERROR',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export class AppError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AppError';
    this.code = code;
    this.details = options?.details;
  }
}

/** A failure as it crosses a process boundary (an agent's result): Haven's code, the message, the details. */
export interface WireError {
  code: string;
  message: string;
  details?: Record<string, unknown>;
}

/** An error as an agent reports it (a non-AppError is an internal error). */
export function errorToWire(err: unknown): WireError {
  if (err instanceof AppError) return { code: err.code, message: err.message, ...(err.details ? { details: err.details } : {}) };
  return { code: ErrorCode.Internal, message: err instanceof Error ? err.message : String(err) };
}

/** A reported error as an AppError again: Haven's code survives the wire; an unknown one is internal. */
export function errorFromWire(e: WireError): AppError {
  const known = (Object.values(ErrorCode) as string[]).includes(e.code);
  return new AppError(known ? (e.code as ErrorCode) : ErrorCode.Internal, e.message, e.details ? { details: e.details } : undefined);
}

export function isAppError(err: unknown, code?: ErrorCode): err is AppError {
  return err instanceof AppError && (code === undefined || err.code === code);
}

/**
 * Whether `err`, or an error it wraps (its `cause` chain), is a lack of space: a file system's
 * ENOSPC or EDQUOT, SQLite's SQLITE_FULL ("database or disk is full"), PostgreSQL's 53100
 * (disk_full), or an AppError NoSpace.
 */
export function isNoSpaceError(err: unknown): boolean {
  for (let e = err, depth = 0; e && typeof e === 'object' && depth < 10; e = (e as { cause?: unknown }).cause, depth++) {
    const x = e as { code?: unknown; errcode?: unknown; errstr?: unknown; message?: unknown };
    if (x.code === 'ENOSPC' || x.code === 'EDQUOT' || x.code === ErrorCode.NoSpace || x.code === '53100') return true;
    if (x.errcode === 13 || x.errstr === 'database or disk is full') return true; // SQLITE_FULL (node:sqlite)
    if (typeof x.message === 'string' && /database or disk is full|no space left on device/i.test(x.message)) return true;
  }
  return false;
}

/** Turns an AbortSignal's reason into the Cancelled error the engine throws. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AppError(ErrorCode.Cancelled, 'operation cancelled', { cause: signal.reason });
}

/**
 * After an abort, the error that surfaces first may be a worker pool's or a store's own abort error;
 * callers see one Cancelled error instead, whatever raced.
 */
export function asCancelledIfAborted(err: unknown, signal: AbortSignal | undefined, what: string): unknown {
  if (signal?.aborted && !isAppError(err, ErrorCode.Cancelled)) return new AppError(ErrorCode.Cancelled, `${what} cancelled`, { cause: signal.reason });
  return err;
}
