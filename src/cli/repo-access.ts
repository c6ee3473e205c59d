/** Opening a repository from CLI options: the directory, and the password file when encrypted. */
import { readFileSync } from 'node:fs';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { Repository } from '../engine/repository.ts';
import { LocalObjectStore } from '../storage/local-store.ts';

export interface RepoOptions {
  repo: string;
  passwordFile?: string;
}

/** The password from --password-file or HAVEN_PASSWORD_FILE (one trailing newline is dropped). */
export function readPassword(opts: RepoOptions): string | undefined {
  const file = opts.passwordFile ?? process.env.HAVEN_PASSWORD_FILE;
  if (!file) return undefined;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new AppError(ErrorCode.InvalidArgument, `cannot read password file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
  return text.replace(/\r?\n$/, '');
}

export function openStore(opts: RepoOptions): LocalObjectStore {
  return new LocalObjectStore(opts.repo);
}

export async function openRepository(opts: RepoOptions): Promise<Repository> {
  return Repository.open(openStore(opts), { password: readPassword(opts) });
}
