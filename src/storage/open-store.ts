/**
 * Opens the object store a repository location names: a local folder, or `s3://bucket/prefix`.
 * The S3 store (and with it the AWS SDK) is loaded only when asked for.
 */
import { AppError, ErrorCode } from '../domain/errors.ts';
import { LocalObjectStore } from './local-store.ts';
import type { ObjectStore } from './object-store.ts';
import { isS3Url } from './s3-url.ts';

/** What an S3 location needs besides its URL (HAVEN_S3_* settings; config.ts reads them for the service and the CLI). */
export interface S3Settings {
  endpoint?: string | undefined;
  region?: string | undefined;
  /** false: the server has no `If-None-Match: *` on PUT; create the config with a claim (S3ObjectStore.claimedPut). */
  conditionalWrites?: boolean | undefined;
  /** Pack uploads in flight per backup (HAVEN_S3_CONCURRENCY); each holds a pack buffer. */
  concurrency?: number | undefined;
}

export async function openObjectStore(location: string, s3: S3Settings = {}): Promise<ObjectStore> {
  if (!isS3Url(location)) return new LocalObjectStore(location);
  const { S3ObjectStore } = await import('./s3-store.ts');
  return new S3ObjectStore({ url: location, endpoint: s3.endpoint || undefined, region: s3.region || undefined, conditionalWrites: s3.conditionalWrites, writeConcurrency: s3.concurrency });
}

/**
 * For `.catch()` on opening a repository at `location`: Haven's own errors say what is wrong
 * already; anything else (a network error) is rethrown with the where.
 */
export function openFailure(location: string): (err: unknown) => never {
  return (err) => {
    // The engine does not know where the store is: the message says it here.
    if (err instanceof AppError && err.code === ErrorCode.RepositoryNotFound) throw new AppError(err.code, `no Haven repository at ${location} (run haven init first)`, { cause: err });
    if (err instanceof AppError) throw err;
    throw new Error(`cannot open the repository at ${location}: ${(err as Error).message}`, { cause: err });
  };
}
