/**
 * Catalog statements for repository_samples: the repository's size over time (migration 0019), for
 * the console's growth chart. services/repository-service.ts decides when a sample is taken.
 */
import type { SqlExecutor } from './sql.ts';

export interface RepositorySample {
  /** When the size was measured (ms since the epoch). */
  takenAt: number;
  bytes: number;
}

export class RepositorySampleQueries {
  private readonly db: SqlExecutor;
  constructor(db: SqlExecutor) {
    this.db = db;
  }

  /** When the newest sample was taken, or null when there is none. */
  async latestSampleAt(): Promise<number | null> {
    const r = await this.db.get<{ t: number | null }>('SELECT MAX(taken_at) AS t FROM repository_samples');
    return r?.t === null || r?.t === undefined ? null : Number(r.t);
  }

  async insertSample(s: RepositorySample): Promise<void> {
    await this.db.run('INSERT INTO repository_samples (taken_at, bytes) VALUES (?, ?)', [s.takenAt, s.bytes]);
  }

  /**
   * Inserts the sample unless one was taken after `sinceMs`; false when it was not inserted. One
   * statement, so under the caller's lock two processes never both insert.
   */
  async insertSampleUnlessSince(s: RepositorySample, sinceMs: number): Promise<boolean> {
    // The casts give PostgreSQL the parameters' types, which a SELECT list alone does not.
    const r = await this.db.run(
      'INSERT INTO repository_samples (taken_at, bytes) SELECT CAST(? AS BIGINT), CAST(? AS BIGINT) WHERE NOT EXISTS (SELECT 1 FROM repository_samples WHERE taken_at > ?)',
      [s.takenAt, s.bytes, sinceMs],
    );
    return r.changes === 1;
  }

  /** Samples taken at or after `sinceMs`, oldest first. */
  async samplesSince(sinceMs: number): Promise<RepositorySample[]> {
    const rows = await this.db.all<{ taken_at: number; bytes: number }>('SELECT taken_at, bytes FROM repository_samples WHERE taken_at >= ? ORDER BY taken_at', [sinceMs]);
    return rows.map((r) => ({ takenAt: Number(r.taken_at), bytes: Number(r.bytes) }));
  }

  /** Forgets samples taken before `beforeMs`; returns how many. */
  async deleteSamplesBefore(beforeMs: number): Promise<number> {
    return (await this.db.run('DELETE FROM repository_samples WHERE taken_at < ?', [beforeMs])).changes;
  }
}
