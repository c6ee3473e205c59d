/**
 * SqlDatabase on PostgreSQL (node-postgres pool): the scale-out catalog, shared by any number of
 * Haven processes. Statements are written with `?` placeholders (sql.ts); they are numbered here.
 * BIGINT and COUNT results arrive as numbers (the catalog's times are ms since the epoch, far below
 * 2^53).
 */
import pg from 'pg';
import { AppError, ErrorCode } from '../domain/errors.ts';
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

/**
 * A lost connection (the server restarted, an administrator terminated the backend, the network
 * dropped): SQLSTATE class 08 or 57P01-57P03, or the client's own socket errors.
 */
export function isConnectionLoss(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  if (typeof e?.code === 'string' && (/^08/.test(e.code) || ['57P01', '57P02', '57P03', 'ECONNRESET', 'ECONNREFUSED', 'EPIPE'].includes(e.code))) return true;
  return typeof e?.message === 'string' && /Connection terminated|terminating connection|Client has encountered a connection error|Client was closed/i.test(e.message);
}

/** A lost connection becomes a 503 (retry), not a 500; the pool opens a new one for the next statement. */
function classify(err: unknown): unknown {
  return isConnectionLoss(err) ? new AppError(ErrorCode.ServiceBusy, 'the catalog database connection was lost; retry the request', { cause: err }) : err;
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
    // Every client, checked out or not, has an error listener from its first moment: a backend
    // terminated right after it connected sends its FATAL message before a promise-style checkout
    // has attached one, and an 'error' event without a listener would end the process. (Queries in
    // flight still get the error through their own callbacks, and the pool discards the client.)
    this.pool.on('connect', (client) => client.on('error', () => undefined));
    this.direct = executor(async (text, values) => {
      try {
        return await this.pool.query(text, values as unknown[]);
      } catch (err) {
        // A read met a connection that was just lost: once more, on a new connection. (Writes are
        // not repeated: whether a lost one committed is unknown.)
        if (!isConnectionLoss(err) || !/^\s*SELECT\b/i.test(text)) throw classify(err);
        return this.pool.query(text, values as unknown[]).catch((e: unknown) => Promise.reject(classify(e)));
      }
    });
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
    const client = await this.pool.connect().catch((err: unknown) => Promise.reject(classify(err)));
    // A checked-out client whose connection is lost between statements emits 'error': without a
    // listener that is an uncaught exception (the process dies). The client is then discarded.
    let lost: Error | undefined;
    const onError = (err: Error): void => {
      lost = err;
    };
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      const result = await fn(executor((text, values) => client.query(text, values as unknown[])));
      await client.query('COMMIT');
      return result;
    } catch (err) {
      if (isConnectionLoss(err)) lost ??= err as Error;
      else await client.query('ROLLBACK').catch(() => undefined); // the original error is what matters
      throw classify(err);
    } finally {
      client.off('error', onError);
      client.release(lost);
    }
  }

  async exec(script: string): Promise<void> {
    await this.pool.query(script);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
