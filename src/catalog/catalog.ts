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
import type { SqlDatabase, SqlExecutor } from './sql.ts';
import { VolumeQueries } from './volume-queries.ts';

export class CatalogQueries {
  readonly identity: IdentityQueries;
  readonly volumes: VolumeQueries;
  readonly backups: BackupQueries;
  readonly jobs: JobQueries;
  readonly policies: PolicyQueries;
  readonly servers: ServerQueries;
  readonly checkpoints: CheckpointQueries;
  readonly csbsPolicies: CsbsPolicyQueries;
  constructor(exec: SqlExecutor) {
    this.identity = new IdentityQueries(exec);
    this.volumes = new VolumeQueries(exec);
    this.backups = new BackupQueries(exec);
    this.jobs = new JobQueries(exec);
    this.policies = new PolicyQueries(exec);
    this.servers = new ServerQueries(exec);
    this.checkpoints = new CheckpointQueries(exec);
    this.csbsPolicies = new CsbsPolicyQueries(exec);
  }
}

export class Catalog extends CatalogQueries {
  readonly db: SqlDatabase;
  constructor(db: SqlDatabase) {
    super(db);
    this.db = db;
  }

  transaction<T>(fn: (c: CatalogQueries) => Promise<T>): Promise<T> {
    return this.db.transaction((tx) => fn(new CatalogQueries(tx)));
  }

  close(): Promise<void> {
    return this.db.close();
  }
}
