/**
 * System errors as words a person reads ("it does not exist"), not errno codes ("ENOENT"): for
 * messages that name the path themselves. Codes not listed here fall back to the system's message.
 */
const SENTENCES: Record<string, string> = {
  ENOENT: 'it does not exist',
  EACCES: 'permission denied',
  EPERM: 'the operation is not permitted',
  EISDIR: 'it is a folder',
  ENOTDIR: 'a part of the path is not a folder',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'the disk quota is used up',
  EROFS: 'the file system is read-only',
  EBUSY: 'it is in use',
  EEXIST: 'it already exists',
  EMFILE: 'too many open files',
  ELOOP: 'too many symbolic links',
  ENAMETOOLONG: 'the name is too long',
  EIO: 'an input/output error',
  EADDRINUSE: 'the address is already in use',
  EADDRNOTAVAIL: 'the address is not one of this host\'s',
  ECONNREFUSED: 'the connection was refused',
};

/** What went wrong, in words (for `cannot read X: <this>`). */
export function errnoText(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown } | null;
  if (e && typeof e.code === 'string' && SENTENCES[e.code]) return SENTENCES[e.code]!;
  return e && typeof e.message === 'string' ? e.message : String(err);
}

/** A system error on its own, as a sentence that names its path where it has one. */
export function describeSystemError(err: unknown): string | null {
  const e = err as { code?: unknown; path?: unknown; dest?: unknown } | null;
  if (!e || typeof e.code !== 'string' || !SENTENCES[e.code]) return null;
  return typeof e.path === 'string' ? `${e.path}: ${SENTENCES[e.code]}` : SENTENCES[e.code]!;
}
