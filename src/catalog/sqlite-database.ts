/**
 * SqlDatabase on node:sqlite: one synchronous connection in WAL mode, prepared statements cached.
 *
 * A transaction spans awaits (the catalog's callbacks are async), so while one is open every other
 * statement of this process waits for it: otherwise it would run inside the open transaction on the
 * shared connection and commit or roll back with it.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { AppError, ErrorCode } from '../domain/errors.ts';
import type { SqlDatabase, SqlExecutor, SqlValue } from './sql.ts';

export class SqliteDatabase implements SqlDatabase {
  readonly dialect = 'sqlite' as const;
  private readonly db: DatabaseSync;
  private readonly statements = new Map<string, StatementSync>();
  /** Resolves when no transaction is open; transactions queue on it. */
  private gate: Promise<void> = Promise.resolve();
  private inTransaction = false;
  private readonly direct: SqlExecutor;
  /** Marks the async context of the open transaction, to catch a statement that would deadlock. */
  private readonly txContext = new AsyncLocalStorage<number>();
  private txSeq = 0;

  constructor(file: string) {
    this.db = new DatabaseSync(file);
    // busy_timeout first: switching a new file to WAL needs its lock, which another process
    // starting at the same moment may hold for a moment.
    this.db.exec('PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;');
    this.direct = {
      all: async <T>(sql: string, params: readonly SqlValue[] = []) => this.prepare(sql).all(...params) as T[],
      get: async <T>(sql: string, params: readonly SqlValue[] = []) => this.prepare(sql).get(...params) as T | undefined,
      run: async (sql: string, params: readonly SqlValue[] = []) => ({ changes: Number(this.prepare(sql).run(...params).changes) }),
    };
  }

  private prepare(sql: string): StatementSync {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }

  private async outside<T>(fn: () => T): Promise<T> {
    if (this.inTransaction && this.txContext.getStore() !== undefined) {
      // Inside a transaction's callback, through the database instead of the callback's executor:
      // it would wait for the transaction to end, which waits for it. Fail loudly instead.
      throw new AppError(ErrorCode.CatalogError, 'a catalog statement inside a transaction must use the transaction\'s executor');
    }
    while (this.inTransaction) await this.gate;
    return fn();
  }

  all<T>(sql: string, params: readonly SqlValue[] = []): Promise<T[]> {
    return this.outside(() => this.prepare(sql).all(...params) as T[]);
  }

  get<T>(sql: string, params: readonly SqlValue[] = []): Promise<T | undefined> {
    return this.outside(() => this.prepare(sql).get(...params) as T | undefined);
  }

  run(sql: string, params: readonly SqlValue[] = []): Promise<{ changes: number }> {
    return this.outside(() => ({ changes: Number(this.prepare(sql).run(...params).changes) }));
  }

  async transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T> {
    while (this.inTransaction) await this.gate;
    this.inTransaction = true;
    let open!: () => void;
    this.gate = new Promise<void>((r) => (open = r));
    try {
      this.db.exec('BEGIN IMMEDIATE');
      try {
        const result = await this.txContext.run(++this.txSeq, () => fn(this.direct));
        this.db.exec('COMMIT');
        return result;
      } catch (err) {
        // SQLite may have rolled the transaction back itself (SQLITE_FULL, SQLITE_IOERR, ...): a
        // ROLLBACK then fails with "no transaction is active" and would hide the real error.
        if (this.db.isTransaction) this.db.exec('ROLLBACK');
        throw err;
      }
    } finally {
      this.inTransaction = false;
      open();
    }
  }

  async exec(script: string): Promise<void> {
    await this.outside(() => this.db.exec(script));
  }

  async close(): Promise<void> {
    while (this.inTransaction) await this.gate;
    this.statements.clear();
    if (this.db.isOpen) this.db.close();
  }
}
