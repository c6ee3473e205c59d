/**
 * SqlDatabase on PostgreSQL (node-postgres pool): the scale-out catalog, shared by any number of
 * Haven processes. Statements are written with `?` placeholders (sql.ts); they are numbered here.
 * BIGINT and COUNT results arrive as numbers (the catalog's times are ms since the epoch, far below
 * 2^53).
 */
import pg from 'pg';
import type { SqlDatabase, SqlExecutor, SqlValue } from './sql.ts';

pg.types.setTypeParser(20, (v) => Number(v)); // int8
pg.types.setTypeParser(1700, (v) => Number(v)); // numeric (SUM)

/** `?` -> `$1, $2, ...` (the catalog's statements never contain a literal `?`). */
export function numberPlaceholders(sql: string): string {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
}

const cache = new Map<string, string>();
function translate(sql: string): string {
  let t = cache.get(sql);
  if (t === undefined) {
    t = numberPlaceholders(sql);
    if (cache.size > 5000) cache.clear();
    cache.set(sql, t);
  }
  return t;
}

function executor(q: (text: string, values: readonly SqlValue[]) => Promise<pg.QueryResult>): SqlExecutor {
  return {
    all: async <T>(sql: string, params: readonly SqlValue[] = []) => (await q(translate(sql), params)).rows as T[],
    get: async <T>(sql: string, params: readonly SqlValue[] = []) => (await q(translate(sql), params)).rows[0] as T | undefined,
    run: async (sql: string, params: readonly SqlValue[] = []) => ({ changes: (await q(translate(sql), params)).rowCount ?? 0 }),
  };
}

export class PostgresDatabase implements SqlDatabase {
  readonly dialect = 'postgres' as const;
  private readonly pool: pg.Pool;
  private readonly direct: SqlExecutor;

  constructor(connectionString: string, opts: { max?: number } = {}) {
    this.pool = new pg.Pool({ connectionString, max: opts.max ?? 10 });
    // An idle client's error (the server restarted) must not crash the process; the next query reconnects.
    this.pool.on('error', () => undefined);
    this.direct = executor((text, values) => this.pool.query(text, values as unknown[]));
  }

  all<T>(sql: string, params?: readonly SqlValue[]): Promise<T[]> {
    return this.direct.all<T>(sql, params);
  }

  get<T>(sql: string, params?: readonly SqlValue[]): Promise<T | undefined> {
    return this.direct.get<T>(sql, params);
  }

  run(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }> {
    return this.direct.run(sql, params);
  }

  async transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      const result = await fn(executor((text, values) => client.query(text, values as unknown[])));
      await client.query('COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined); // the original error is what matters
      throw err;
    } finally {
      client.release();
    }
  }

  async exec(script: string): Promise<void> {
    await this.pool.query(script);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
