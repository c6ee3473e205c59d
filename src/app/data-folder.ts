/**
 * The data folder holds password hashes (the catalog), the generated admin password and volume
 * images: only Haven's user may read it. At start the folder is made 0700 and the catalog files
 * 0600, whatever mode they were created with earlier (an existing 0755 folder, a catalog created
 * under a 022 umask); when Haven cannot change them (not their owner), it refuses to start and
 * says what to do.
 */
import { chmodSync, closeSync, mkdirSync, openSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { AppError, ErrorCode } from '../domain/errors.ts';

/** Files of the data folder that must be private, when they exist. */
const PRIVATE_FILES = ['catalog.sqlite', 'catalog.sqlite-wal', 'catalog.sqlite-shm', 'catalog.sqlite-journal', 'admin-password'];

function makePrivate(file: string, mode: number, what: string): void {
  let st;
  try {
    st = statSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if ((st.mode & 0o777) === mode || (st.mode & 0o077) === 0) return;
  try {
    chmodSync(file, mode);
  } catch (err) {
    const owner = typeof process.getuid === 'function' ? ` (it belongs to uid ${st.uid}, Haven runs as uid ${process.getuid()})` : '';
    throw new AppError(ErrorCode.InvalidArgument, `${what} ${file} is readable by other users (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}) and Haven cannot make it ${mode.toString(8).padStart(4, '0')}${owner}: ${(err as Error).message}. Run \`chmod ${mode.toString(8)} ${file}\` or start Haven as its owner.`, { cause: err });
  }
}

/**
 * Creates the data folder (0700) if needed and makes it and the catalog files private. With a
 * SQLite catalog, the catalog file is created empty with 0600 before SQLite opens it, so it is
 * never readable by others, not even for a moment (SQLite gives its WAL files the same mode).
 */
export function secureDataFolder(dataDir: string, opts: { sqliteCatalog: boolean }): void {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  makePrivate(dataDir, 0o700, 'the data folder');
  for (const f of PRIVATE_FILES) makePrivate(path.join(dataDir, f), 0o600, 'the file');
  if (opts.sqliteCatalog) closeSync(openSync(path.join(dataDir, 'catalog.sqlite'), 'a', 0o600));
}
