/**
 * The catalog: Haven's metadata (identity, volumes, backups, jobs) behind one object, whatever the
 * database. `transaction(fn)` hands `fn` a catalog bound to one transaction.
 */
import { BackupQueries } from './backup-queries.ts';
import { IdentityQueries } from './identity-queries.ts';
import { JobQueries } from './job-queries.ts';
import { PolicyQueries } from './policy-queries.ts';
import { ServerQueries } from './server-queries.ts';
import { CheckpointQueries } from './checkpoint-queries.ts';
import { CsbsPolicyQueries } from './csbs-policy-queries.ts';
import { AgentQueries } from './agent-queries.ts';
import { RepositorySampleQueries } from './repository-sample-queries.ts';
import type { SqlDatabase, SqlExecutor } from './sql.ts';
import { VolumeQueries } from './volume-queries.ts';

/**
 * What a transaction lock serialises, each per key (see CatalogQueries.lockKey): all but the
 * bootstrap and the repository's samples per project.
 */
export const ProjectLock = { policies: 1, csbsPolicies: 2, backupQuota: 3, identityBootstrap: 4, csbsQuota: 5, volumeQuota: 11, repositorySamples: 12 } as const;
export type ProjectLockScope = (typeof ProjectLock)[keyof typeof ProjectLock];

export class CatalogQueries {
  private readonly exec: SqlExecutor;
  private readonly dialect: SqlDatabase['dialect'];
  readonly identity: IdentityQueries;
  readonly volumes: VolumeQueries;
  readonly backups: BackupQueries;
  readonly jobs: JobQueries;
  readonly policies: PolicyQueries;
  readonly servers: ServerQueries;
  readonly checkpoints: CheckpointQueries;
  readonly csbsPolicies: CsbsPolicyQueries;
  readonly agents: AgentQueries;
  readonly repositorySamples: RepositorySampleQueries;
  private readonly inTransaction: boolean;
  constructor(exec: SqlExecutor, dialect: SqlDatabase['dialect'], inTransaction = true) {
    this.exec = exec;
    this.dialect = dialect;
    this.inTransaction = inTransaction;
    this.identity = new IdentityQueries(exec);
    this.volumes = new VolumeQueries(exec);
    this.backups = new BackupQueries(exec);
    this.jobs = new JobQueries(exec);
    this.policies = new PolicyQueries(exec);
    this.servers = new ServerQueries(exec);
    this.checkpoints = new CheckpointQueries(exec);
    this.csbsPolicies = new CsbsPolicyQueries(exec);
    this.agents = new AgentQueries(exec);
    this.repositorySamples = new RepositorySampleQueries(exec);
  }

  /**
   * Inside a transaction: waits until no other transaction holds the same (scope, key) lock,
   * and holds it until this one ends, so a count-then-insert (a policy limit, a backup quota) cannot
   * interleave with another process's. PostgreSQL: a transaction-scoped advisory lock (the two-key
   * form, whose keys never meet the migration lock's single key). SQLite: nothing to do, as its
   * transactions begin with the write lock (BEGIN IMMEDIATE) and so never interleave.
   */
  async lockKey(scope: ProjectLockScope, key: string): Promise<void> {
    // Outside a transaction the lock would end with its own statement: a silent no-op.
    if (!this.inTransaction) throw new Error('lockKey needs a transaction (catalog.transaction(c => c.lockKey(...)))');
    if (this.dialect === 'postgres') await this.exec.get('SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), hashtext(?))', [scope, key]);
  }
}

export class Catalog extends CatalogQueries {
  readonly db: SqlDatabase;
  constructor(db: SqlDatabase) {
    super(db, db.dialect, false);
    this.db = db;
  }

  transaction<T>(fn: (c: CatalogQueries) => Promise<T>): Promise<T> {
    return this.db.transaction((tx) => fn(new CatalogQueries(tx, this.db.dialect)));
  }

  close(): Promise<void> {
    return this.db.close();
  }
}
