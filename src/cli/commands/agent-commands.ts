/**
 * `haven agent` (the agent of this host: agent/agent.ts) and `haven agent token create --host NAME`
 * (a new agent token, made in the catalog by its operator: the cloud admin).
 */
import type { Command } from 'commander';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { checkNbdListenSecurity, loadConfig, s3Settings, type Config } from '../../config/config.ts';
import { AppError, ErrorCode } from '../../domain/errors.ts';

function configFrom(opts: { dataDir?: string }): Config {
  return loadConfig(process.env, opts.dataDir ? { dataDir: opts.dataDir } : {});
}

/** The token in HAVEN_AGENT_TOKEN_FILE: its first line. */
function readToken(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new AppError(ErrorCode.InvalidArgument, `cannot read HAVEN_AGENT_TOKEN_FILE ${file}: ${(err as Error).message}`, { cause: err });
  }
  const token = text.split(/\r?\n/)[0]!.trim();
  if (!token) throw new AppError(ErrorCode.InvalidArgument, `HAVEN_AGENT_TOKEN_FILE ${file} is empty`);
  return token;
}

export function registerAgentCommands(program: Command): void {
  const agent = program
    .command('agent')
    .description('run the agent of this host: it does the work on this host\'s volumes for the control plane (HAVEN_CONTROL_URL, HAVEN_AGENT_TOKEN_FILE, HAVEN_VOLUME_ROOTS)')
    .option('--data-dir <dir>', 'this host\'s data folder: the volumes and snapshots Haven makes here (default: HAVEN_DATA_DIR or ./data)')
    .action(async (opts: { dataDir?: string }) => {
      const config = configFrom(opts);
      if (!config.controlUrl) throw new AppError(ErrorCode.InvalidArgument, 'HAVEN_CONTROL_URL is not set: the URL of the control plane (haven serve)');
      if (!config.agentTokenFile) throw new AppError(ErrorCode.InvalidArgument, 'HAVEN_AGENT_TOKEN_FILE is not set: the file holding this host\'s agent token (haven agent token create --host NAME makes one)');
      checkNbdListenSecurity(config);
      const token = readToken(config.agentTokenFile);
      const [{ createLogger, announce, humanLogs }, { secureDataFolder }, { openObjectStore, openFailure }, { BackupEngine, readPasswordFile }, { VolumeFiles }, { LocalVolumeHost }, { Agent }, { HAVEN_VERSION, hostCapabilities }, { isS3Url }] = await Promise.all([
        import('../../app/logger.ts'), import('../../app/data-folder.ts'), import('../../storage/open-store.ts'), import('../../services/backup-engine.ts'), import('../../services/volume-files.ts'),
        import('../../services/local-volume-host.ts'), import('../../agent/agent.ts'), import('../../agent/capabilities.ts'), import('../../storage/s3-url.ts'),
      ]);
      // Readable lines on a terminal; JSON (the start-up lines too) for a journal or a collector.
      const human = humanLogs();
      const log = createLogger(config.logLevel, { human });
      secureDataFolder(config.dataDir, { sqliteCatalog: false });
      const store = await openObjectStore(config.repositoryUrl, s3Settings(config));
      const password = config.repoPasswordFile ? await readPasswordFile(config.repoPasswordFile) : undefined;
      const engine = await BackupEngine.open(store, { password, nice: config.workerNice }).catch(openFailure(config.repositoryUrl));
      const files = new VolumeFiles({ dataDir: config.dataDir, volumeRoots: config.volumeRoots, privateDirs: isS3Url(config.repositoryUrl) ? [] : [config.repositoryUrl] });
      // Live restores of this host's volumes are served from here (HAVEN_NBD_LISTEN, with TLS when
      // HAVEN_TLS_CERT/KEY are set), started at the first.
      const [{ NbdEndpoint }, { LiveExports }, { loadTlsFiles }, { createSecureContext }] = await Promise.all([import('../../nbd/nbd-endpoint.ts'), import('../../services/live-exports.ts'), import('../../app/tls.ts'), import('node:tls')]);
      const tlsFiles = config.tlsCert ? loadTlsFiles(config.tlsCert, config.tlsKey) : null;
      const nbdTls = tlsFiles ? createSecureContext({ cert: tlsFiles.cert, key: tlsFiles.key }) : null;
      const nbd = new NbdEndpoint({ listen: config.nbdListen, publicHost: config.nbdPublicHost, tls: nbdTls ? () => nbdTls : null, onError: (err, where) => log.warn({ err, where }, 'NBD') });
      const live = new LiveExports(() => engine.imageSource(config.nbdCacheMib * 1024 * 1024), nbd, (err, where) => log.warn({ err, where }, 'live restore'));
      const host = new LocalVolumeHost({ host: config.hostName, files, engine, dataDir: config.dataDir, freezeCommand: config.freezeCommand, thawCommand: config.thawCommand, live });
      const agentEvents: { superseded?: (why: string) => void } = {};
      // This agent's identity across its restarts: a restart takes its own session over, and a
      // second agent started for the same host is refused while this one is online.
      const instanceFile = path.join(config.dataDir, 'agent-instance');
      let instance = existsSync(instanceFile) ? readFileSync(instanceFile, 'utf8').trim() : '';
      if (!/^[0-9a-f]{32}$/.test(instance)) {
        instance = randomBytes(16).toString('hex');
        writeFileSync(instanceFile, `${instance}\n`, { mode: 0o600 });
      }
      const a = new Agent({ instance, onSuperseded: (why) => agentEvents.superseded?.(why), controlUrl: config.controlUrl, token, host, version: HAVEN_VERSION, volumeRoots: config.volumeRoots, capabilities: hostCapabilities(), slots: config.jobConcurrency, log });
      try {
        await a.start();
      } catch (err) {
        await engine.close();
        throw err;
      }
      const roots = config.volumeRoots.join(':') || '(none)';
      if (human) announce(log, true, `Haven agent of host ${a.hostName} working for ${config.controlUrl}\n  volume roots: ${roots}\n  data: ${config.dataDir}\n  repository: ${config.repositoryUrl}`);
      else announce(log, false, `Haven agent of host ${a.hostName} working for ${config.controlUrl}`, { host: a.hostName, controlUrl: config.controlUrl, volumeRoots: config.volumeRoots, dataDir: config.dataDir, repository: config.repositoryUrl });
      const superseded = await new Promise<string | null>((resolve) => {
        const stop = (): void => {
          announce(log, human, 'Haven agent stopping: running work is cancelled and reported failed');
          resolve(null);
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
        agentEvents.superseded = (why) => resolve(why);
      });
      await a.stop();
      await live.close();
      await nbd.close();
      await engine.close();
      if (superseded) throw new AppError(ErrorCode.InvalidArgument, superseded);
    });

  const token = agent.command('token').description('agent credentials (made in the catalog: run these where HAVEN_CATALOG_URL or the data folder is, as the cloud admin)');
  token
    .command('create')
    .description('print a new agent token for a host; the agent reads it from HAVEN_AGENT_TOKEN_FILE')
    .requiredOption('--host <name>', 'the host the agent runs on (its volumes belong to it)')
    .option('--data-dir <dir>', 'data folder (SQLite catalog)')
    .option('--json', 'print JSON')
    .action(async (_opts: unknown, cmd: Command) => {
      // `agent` itself takes --data-dir too, and commander gives it to the outer command.
      const opts = cmd.optsWithGlobals<{ host: string; dataDir?: string; json?: boolean }>();
      const t = await withAgents(configFrom(opts), (a) => a.createToken(opts.host));
      process.stdout.write(opts.json ? `${JSON.stringify({ id: t.id, host: t.host, token: t.token })}\n` : `${t.token}\n`);
    });
  token
    .command('list')
    .description('list agent tokens: id, host, created, revoked (never the secret)')
    .option('--data-dir <dir>', 'data folder (SQLite catalog)')
    .option('--json', 'print JSON')
    .action(async (_opts: unknown, cmd: Command) => {
      const opts = cmd.optsWithGlobals<{ dataDir?: string; json?: boolean }>();
      const all = await withAgents(configFrom(opts), (a) => a.listTokens());
      const rows = all.map((t) => ({ id: t.id, host: t.host, created_at: new Date(t.createdAt).toISOString(), revoked_at: t.revokedAt === null ? null : new Date(t.revokedAt).toISOString() }));
      process.stdout.write(opts.json ? `${JSON.stringify(rows)}\n` : rows.map((r) => `${r.id}  ${r.host}  ${r.created_at}${r.revoked_at ? `  revoked ${r.revoked_at}` : ''}`).join('\n') + (rows.length ? '\n' : ''));
    });
  token
    .command('revoke <id>')
    .description('revoke an agent token (the id is the part after hvagent_): its agent is refused from its next call')
    .option('--data-dir <dir>', 'data folder (SQLite catalog)')
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      const opts = cmd.optsWithGlobals<{ dataDir?: string }>();
      await withAgents(configFrom(opts), (a) => a.revokeToken(id));
      process.stdout.write(`revoked agent token ${id}\n`);
    });
}

/** Runs `fn` with the agent service on the catalog (PostgreSQL with HAVEN_CATALOG_URL, else the data folder's SQLite), migrated first. */
async function withAgents<T>(config: Config, fn: (agents: import('../../services/agent-service.ts').AgentService) => Promise<T>): Promise<T> {
  const [{ Catalog }, { migrate }, { AgentService }, { systemClock }] = await Promise.all([
    import('../../catalog/catalog.ts'), import('../../catalog/migrate.ts'), import('../../services/agent-service.ts'), import('../../domain/clock.ts'),
  ]);
  let db;
  if (config.catalogUrl) db = new (await import('../../catalog/postgres-database.ts')).PostgresDatabase(config.catalogUrl);
  else {
    (await import('../../app/data-folder.ts')).secureDataFolder(config.dataDir, { sqliteCatalog: true });
    db = new (await import('../../catalog/sqlite-database.ts')).SqliteDatabase(path.join(config.dataDir, 'catalog.sqlite'));
  }
  try {
    await migrate(db);
    return await fn(new AgentService(new Catalog(db), systemClock, { leaseMs: config.agentLeaseSeconds * 1000 }));
  } finally {
    await db.close();
  }
}
