/**
 * The narrow SQL interface the catalog is written against, so the same queries run on SQLite (the
 * embedded default, node:sqlite) and PostgreSQL (scale-out).
 *
 * Queries use `?` placeholders (the PostgreSQL adapter numbers them), integers for times (ms since
 * the epoch) and booleans (0/1), and TEXT for JSON: the common ground of both dialects. Statements
 * never contain a literal `?`.
 */
export type SqlValue = string | number | null;

export interface SqlExecutor {
  all<T>(sql: string, params?: readonly SqlValue[]): Promise<T[]>;
  get<T>(sql: string, params?: readonly SqlValue[]): Promise<T | undefined>;
  /** Runs a statement; `changes` is the number of rows it inserted, updated or deleted. */
  run(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }>;
}

export interface SqlDatabase extends SqlExecutor {
  readonly dialect: 'sqlite' | 'postgres';
  /**
   * Runs `fn` in one transaction: all its statements commit together or none does. `fn` must use
   * the executor it is given, not the database, for statements that belong to the transaction.
   */
  transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T>;
  /** Runs a script of several statements (migrations). */
  exec(script: string): Promise<void>;
  close(): Promise<void>;
}
