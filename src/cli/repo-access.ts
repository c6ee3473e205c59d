/**
 * Opening a repository from CLI options: the directory (or s3://bucket/prefix, with the S3 server
 * from the HAVEN_S3_* settings as the service reads them, credentials from the AWS SDK's usual sources), and
 * the password file when encrypted. Without --repo and --password-file, HAVEN_REPOSITORY and
 * HAVEN_REPO_PASSWORD_FILE, read as the service reads them (config/config.ts).
 */
import { readFileSync } from 'node:fs';
import { repositoryFromEnv, s3SettingsFromEnv } from '../config/config.ts';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { Repository } from '../engine/repository.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { openObjectStore, openFailure } from '../storage/open-store.ts';
import { isS3Url, resolveLocation } from '../storage/s3-url.ts';
import { errnoText } from '../domain/errno.ts';

export interface RepoOptions {
  /** --repo; default: HAVEN_REPOSITORY. */
  repo?: string;
  passwordFile?: string;
}

/** The password from --password-file or HAVEN_REPO_PASSWORD_FILE (one trailing newline is dropped). */
export function readPassword(opts: RepoOptions): string | undefined {
  const file = opts.passwordFile ?? repositoryFromEnv().passwordFile;
  return file ? readPasswordFile(file) : undefined;
}

/** A password file's text, one trailing newline dropped. */
export function readPasswordFile(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new AppError(ErrorCode.InvalidArgument, `cannot read the password file ${file}: ${errnoText(err)}`, { cause: err });
  }
  return text.replace(/\r?\n$/, '');
}

/** The repository's location as users write it: an absolute folder, or the S3 URL. */
export function repoLocation(opts: RepoOptions): string {
  const given = opts.repo ?? repositoryFromEnv().location;
  if (!given) throw new AppError(ErrorCode.InvalidArgument, 'no repository given: use --repo DIR (or s3://bucket/prefix), or set HAVEN_REPOSITORY');
  try {
    return resolveLocation(given);
  } catch (err) {
    throw new AppError(ErrorCode.InvalidArgument, `${opts.repo !== undefined ? '--repo' : 'HAVEN_REPOSITORY'}: ${(err as Error).message}`);
  }
}

export function openStore(opts: RepoOptions): Promise<ObjectStore> {
  const location = repoLocation(opts);
  // Read (and checked) only for an S3 location: a stray HAVEN_S3_* must not stop a local repository.
  return openObjectStore(location, isS3Url(location) ? s3SettingsFromEnv() : {});
}

export async function openRepository(opts: RepoOptions): Promise<Repository> {
  const password = readPassword(opts);
  return Repository.open(await openStore(opts), { password }).catch(openFailure(repoLocation(opts)));
}
