/**
 * The one mapping from errors to HTTP: status codes and the error envelope of each API family.
 *
 *   vbs       {"error": {"code": "VolumeBackup.0010", "message": "..."}}      (VBS-specific APIs)
 *   cinder    {"badRequest": {"code": 400, "message": "..."}}                 (native backups, volumes)
 *   keystone  {"error": {"code": 401, "title": "Unauthorized", "message": "..."}}
 *   csbs      {"error_code": "CSBS.3001", "error_msg": "..."}                 (Cloud Server Backup)
 *
 * Services throw AppErrors with domain codes and never set HTTP statuses. A route may name, per
 * domain code, the OTC code and status its reference prescribes (RouteErrorCodes); otherwise the
 * defaults below apply.
 */
import { AppError, ErrorCode, isNoSpaceError } from '../domain/errors.ts';
import { Type, type TSchema } from 'typebox';

export type Envelope = 'vbs' | 'cinder' | 'keystone' | 'csbs';

/** Thrown by the HTTP layer itself (validation rules, auth) with an exact status and code. */
export class ApiError extends Error {
  readonly statusCode: number;
  /** The OTC code for the vbs envelope (e.g. "VolumeBackup.0010"); ignored by the others. */
  readonly otcCode: string | undefined;
  constructor(statusCode: number, message: string, otcCode?: string) {
    super(message);
    this.name = 'ApiError';
    this.statusCode = statusCode;
    this.otcCode = otcCode;
  }
}

const DEFAULT_STATUS: Partial<Record<ErrorCode, number>> = {
  [ErrorCode.InvalidArgument]: 400,
  [ErrorCode.AuthenticationFailed]: 401,
  [ErrorCode.TokenInvalid]: 401,
  [ErrorCode.Forbidden]: 403,
  [ErrorCode.ProjectNotFound]: 404,
  [ErrorCode.UserNotFound]: 404,
  [ErrorCode.RoleNotFound]: 404,
  [ErrorCode.NameConflict]: 409,
  [ErrorCode.TooManyRequests]: 429,
  [ErrorCode.ServiceBusy]: 503,
  [ErrorCode.VolumeNotFound]: 404,
  [ErrorCode.SnapshotNotFound]: 404,
  [ErrorCode.BackupNotFound]: 404,
  [ErrorCode.JobNotFound]: 404,
  [ErrorCode.VolumeInvalidState]: 400,
  [ErrorCode.VolumeTooSmall]: 400,
  [ErrorCode.VolumePathRefused]: 400,
  [ErrorCode.SnapshotInvalidState]: 400,
  [ErrorCode.BackupInvalidState]: 400,
  [ErrorCode.BackupInProgress]: 400,
  [ErrorCode.BackupNotOwned]: 403,
  [ErrorCode.QuotaBackupsExceeded]: 413,
  [ErrorCode.QuotaGigabytesExceeded]: 413,
  [ErrorCode.QuotaVolumesExceeded]: 413,
  [ErrorCode.QuotaVolumeGigabytesExceeded]: 413,
  [ErrorCode.PolicyNotFound]: 404,
  [ErrorCode.PolicyBusy]: 409,
  [ErrorCode.QuotaPoliciesExceeded]: 400,
  [ErrorCode.TagNotFound]: 404,
  [ErrorCode.TooManyTags]: 400,
  [ErrorCode.ScheduleInvalid]: 400,
  [ErrorCode.RetentionInvalid]: 400,
  [ErrorCode.SharingNotFound]: 404,
  [ErrorCode.ServerNotFound]: 404,
  [ErrorCode.ServerHasNoVolume]: 400,
  [ErrorCode.ServerBusy]: 400,
  [ErrorCode.CheckpointItemNotFound]: 404,
  [ErrorCode.CheckpointItemBusy]: 400,
  [ErrorCode.CheckpointItemUnavailable]: 400,
  [ErrorCode.RestoreMappingInvalid]: 400,
  [ErrorCode.ServerInOtherPolicy]: 400,
  [ErrorCode.PolicyHasNoServer]: 500,
  [ErrorCode.NoSpace]: 507,
  [ErrorCode.HostUnavailable]: 503,
  [ErrorCode.AgentNotFound]: 404,
  [ErrorCode.AgentConflict]: 409,
  [ErrorCode.WorkNotHeld]: 409,
  [ErrorCode.ExportNotFound]: 404,
  [ErrorCode.ExportUnavailable]: 503,
};

/** Per route: domain code -> [OTC code, HTTP status]. */
export type RouteErrorCodes = Partial<Record<ErrorCode, readonly [string, number]>>;

/** Per route: validation failures -> OTC code, by JSON path and schema keyword. */
export interface ValidationCodes {
  /**
   * '/backup/name' -> { maxLength: 'VolumeBackup.0003', not: ['VolumeBackup.0005', 'must not start with "auto"'] }:
   * a code, or a code and the message to use instead of the schema validator's.
   */
  paths?: Record<string, Record<string, string | readonly [string, string]>>;
  /** Code when no path matches (e.g. "request format incorrect"). */
  fallback: string;
}

const CINDER_FAULT: Record<number, string> = {
  400: 'badRequest', 401: 'unauthorized', 403: 'forbidden', 404: 'itemNotFound', 405: 'badMethod', 409: 'conflictingRequest', 413: 'overLimit', 414: 'badRequest', 415: 'badMediaType', 429: 'overLimit', 431: 'badRequest', 500: 'computeFault', 503: 'serviceUnavailable', 507: 'overLimit',
};
const TITLE: Record<number, string> = {
  400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 409: 'Conflict', 413: 'Request Entity Too Large', 414: 'URI Too Long', 415: 'Unsupported Media Type', 429: 'Too Many Requests', 431: 'Request Header Fields Too Large', 500: 'Internal Server Error', 503: 'Service Unavailable', 507: 'Insufficient Storage',
};
/** VBS codes for failures the reference gives no per-endpoint code for. */
const VBS_GENERIC: Record<number, string> = { 400: 'VolumeBackup.0002', 401: 'AutoBackup.0003', 403: 'VolumeBackup.0042', 404: 'common.0011', 405: 'VolumeBackup.0002', 409: 'VolumeBackup.0013', 413: 'VolumeBackup.0002', 414: 'VolumeBackup.0002', 415: 'VolumeBackup.0002', 429: 'VolumeBackup.0002', 431: 'VolumeBackup.0002', 500: 'VolumeBackup.0014', 503: 'VolumeBackup.0900', 507: 'VolumeBackup.0014' };

export interface ErrorReply {
  statusCode: number;
  body: Record<string, unknown>;
}

/** The error bodies of each family (what envelope() makes), as response schemas for 4xx and 5xx. */
export function errorResponses(kind: Envelope): Record<'4xx' | '5xx', TSchema> {
  const body = ERROR_SCHEMAS[kind];
  return { '4xx': body, '5xx': body };
}

const Message = Type.String({ description: 'what went wrong, for a person' });
const ERROR_SCHEMAS: Record<Envelope, TSchema> = {
  vbs: Type.Object({ error: Type.Object({ code: Type.String({ description: 'OTC error code, e.g. VolumeBackup.0010' }), message: Message }) }, { description: 'VBS error' }),
  cinder: Type.Record(Type.String({ description: 'the fault: badRequest, itemNotFound, …' }), Type.Object({ code: Type.Integer(), message: Message }), { description: 'Cinder fault', minProperties: 1, maxProperties: 1 }),
  keystone: Type.Object({ error: Type.Object({ code: Type.Integer(), title: Type.String(), message: Message }) }, { description: 'Keystone error' }),
  csbs: Type.Object({ error_code: Type.String({ description: 'CSBS.xxxx' }), error_msg: Message }, { description: 'CSBS error' }),
};

export function envelope(kind: Envelope, statusCode: number, message: string, otcCode?: string): ErrorReply {
  switch (kind) {
    case 'vbs':
      return { statusCode, body: { error: { code: otcCode ?? VBS_GENERIC[statusCode] ?? 'VolumeBackup.0014', message } } };
    case 'cinder':
      return { statusCode, body: { [CINDER_FAULT[statusCode] ?? 'computeFault']: { code: statusCode, message } } };
    case 'keystone':
      return { statusCode, body: { error: { code: statusCode, title: TITLE[statusCode] ?? 'Error', message } } };
    case 'csbs':
      // Codes of other families (an auth failure's AutoBackup code) do not apply here.
      return { statusCode, body: { error_code: otcCode?.startsWith('CSBS.') ? otcCode : statusCode >= 500 ? 'CSBS.9999' : 'CSBS.9001', error_msg: message } };
  }
}

/**
 * The reply for an error thrown while handling a request. Unknown errors become a 500 whose body
 * says nothing of the cause (it is logged with the request id instead).
 */
export function replyForError(kind: Envelope, err: unknown, codes: RouteErrorCodes | undefined): ErrorReply {
  if (err instanceof ApiError) return envelope(kind, err.statusCode, err.message, err.otcCode);
  // Lack of space, wherever it surfaced (a file write, the catalog, the repository), whatever wraps
  // it: 507, saying so, never a 500. The operator frees space; nothing else is wrong.
  if (isNoSpaceError(err)) return envelope(kind, 507, 'Insufficient storage: the service\'s disk is full. Retry once the operator has freed space.');
  if (err instanceof AppError) {
    // A service may name the reference's own code for a rule it checks (details.csbs).
    const named = typeof err.details?.csbs === 'string' ? err.details.csbs : undefined;
    if (kind === 'csbs' && named && DEFAULT_STATUS[err.code]) return envelope(kind, DEFAULT_STATUS[err.code]!, err.message, named);
    const mapped = codes?.[err.code];
    if (mapped) return envelope(kind, mapped[1], err.message, mapped[0]);
    const status = DEFAULT_STATUS[err.code];
    if (status) return envelope(kind, status, err.message);
  }
  return envelope(kind, 500, 'The server has either erred or is incapable of performing the requested operation.');
}

export function isClientError(err: unknown): boolean {
  if (err instanceof ApiError) return err.statusCode < 500;
  return err instanceof AppError && (DEFAULT_STATUS[err.code] ?? 500) < 500;
}
