/**
 * serve (what `npm start` runs), and the operator commands that manage tenants in the service's catalog:
 * project create/list, user create/list, role add. They use the same services as the HTTP API.
 */
import type { Command } from 'commander';
import { checkListenSecurity, loadConfig, type Config } from '../../config/config.ts';
import { AppError, ErrorCode } from '../../domain/errors.ts';
import { systemClock } from '../../domain/clock.ts';
import type { IdentityService } from '../../services/identity-service.ts';
import { readFileSync } from 'node:fs';

// The service's modules (fastify, the catalog, pino) load only when a command here runs: every
// `haven` command would otherwise pay ~0.4 s for them, engine commands included.
const identityModule = (): Promise<typeof import('../../services/identity-service.ts')> => import('../../services/identity-service.ts');
const parseRole = async (name: string): Promise<ReturnType<typeof IdentityService.parseRole>> => (await identityModule()).IdentityService.parseRole(name);

function configFrom(opts: { dataDir?: string }): Config {
  return loadConfig(process.env, opts.dataDir ? { dataDir: opts.dataDir } : {});
}

/** Runs `fn` with the identity service on the service's catalog (HAVEN_CATALOG_URL, else the data folder's; migrated first). */
async function withIdentity<T>(config: Config, fn: (identity: IdentityService) => Promise<T>): Promise<T> {
  const [{ openCatalog }, { IdentityService }] = await Promise.all([import('../../app/open-catalog.ts'), identityModule()]);
  const { db, catalog } = await openCatalog(config);
  try {
    return await fn(new IdentityService(catalog, systemClock, config.tokenTtlSeconds, { adminProject: config.adminProject }));
  } finally {
    await db.close();
  }
}

function print(json: boolean | undefined, obj: unknown, text: string): void {
  process.stdout.write(json ? `${JSON.stringify(obj)}\n` : `${text}\n`);
}

function readSecret(opts: { password?: string; passwordFile?: string }): string {
  if (opts.passwordFile) return readFileSync(opts.passwordFile, 'utf8').replace(/\r?\n$/, '');
  if (opts.password) return opts.password;
  throw new AppError(ErrorCode.InvalidArgument, 'give the password with --password-file FILE (or --password)');
}

export function registerServiceCommands(program: Command): void {
  program
    .command('serve')
    .description('run the Haven service: HTTP API, job runner and scheduler (what npm start runs)')
    .option('--data-dir <dir>', 'data folder (default: HAVEN_DATA_DIR or ./data)')
    .action(async (opts: { dataDir?: string }) => {
      const config = configFrom(opts);
      checkListenSecurity(config);
      const [{ createLogger, announce, humanLogs }, { composeApp }] = await Promise.all([import('../../app/logger.ts'), import('../../app/compose.ts')]);
      // For a person on a terminal: readable lines; for a journal or a collector: JSON, these included.
      const human = humanLogs();
      const logger = createLogger(config.logLevel, { human });
      const say = (text: string, fields: Record<string, unknown> = {}): void => announce(logger, human, text, fields);
      const app = await composeApp(config, { logger });
      const address = await app.server.listen({ host: config.host, port: config.port });
      const url = address.replace('[::1]', 'localhost');
      // Opted into (HAVEN_METRICS_PORT): /metrics without a token, on its own (loopback) address.
      const metricsAddress = app.metricsServer ? await app.metricsServer.listen({ host: config.metricsHost, port: config.metricsPort }) : null;
      const adminPassword = app.adminPasswordFile ? `in ${app.adminPasswordFile}`
        : app.adminPasswordShared ? 'the one of the process that first started on this catalog (its data folder\'s admin-password), or set HAVEN_ADMIN_PASSWORD'
        : 'HAVEN_ADMIN_PASSWORD';
      if (human) {
        say(`Haven listening on ${url}`);
        say(`  identity (Keystone v3): ${url}/v3   user admin, project ${config.adminProject} (cloud admin), domain Default`);
        say(`  web console: ${url}/console/`);
        if (metricsAddress) say(`  metrics (no token): ${metricsAddress}/metrics`);
        say(`  admin password: ${adminPassword}`);
        say(`  data: ${config.dataDir}`);
        say(`  repository: ${config.repositoryUrl}`);
        if (config.tlsCert) say(`  TLS: ${config.tlsCert} (kill -HUP ${process.pid} re-reads it and its key)`);
      } else {
        say(`Haven listening on ${url}`, {
          url, identity: `${url}/v3`, console: `${url}/console/`, adminProject: config.adminProject, adminPassword, dataDir: config.dataDir, repository: config.repositoryUrl,
          ...(metricsAddress ? { metrics: `${metricsAddress}/metrics` } : {}), ...(config.tlsCert ? { tlsCert: config.tlsCert } : {}),
        });
      }
      // SIGHUP re-reads the certificate and key (renewed by certbot & co.): new connections get
      // them, open connections keep theirs. A bad pair is reported and the old one kept.
      const reload = (): void => {
        try {
          say(`Haven TLS certificate reloaded: ${app.reloadTls()}`);
        } catch (err) {
          const text = `Haven TLS certificate NOT reloaded, the previous one stays in use: ${(err as Error).message}`;
          if (human) say(text);
          else logger.error(text);
        }
      };
      if (config.tlsCert) process.on('SIGHUP', reload);
      await new Promise<void>((resolve) => {
        const stop = (): void => {
          say('Haven stopping: running jobs are cancelled and marked failed');
          resolve();
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      process.off('SIGHUP', reload);
      await app.close();
    });

  const catalogCmd = program.command('catalog').description("the service's catalog (HAVEN_CATALOG_URL, else the data folder's)");
  catalogCmd
    .command('rebuild')
    .description('give every backup in the repository that the catalog does not know its record back (after the catalog was lost); run it with the service stopped')
    .option('--data-dir <dir>', 'data folder (default: HAVEN_DATA_DIR or ./data)')
    .option('--project <project>', 'project (name or id) of backups whose own project is unknown (default: the admin project)')
    .option('--dry-run', 'report what would be added, add nothing')
    .option('--json', 'print JSON')
    .action(async (opts: { dataDir?: string; project?: string; dryRun?: boolean; json?: boolean }) => {
      const config = configFrom(opts);
      const [{ openCatalog }, { openObjectStore, openFailure }, { Repository }, { readPasswordFile }, { rebuildCatalog }, { s3Settings }, { DEFAULT_DOMAIN }] = await Promise.all([
        import('../../app/open-catalog.ts'), import('../../storage/open-store.ts'), import('../../engine/repository.ts'), import('../../services/backup-engine.ts'),
        import('../../services/catalog-rebuild.ts'), import('../../config/config.ts'), import('../../domain/model.ts'),
      ]);
      const password = config.repoPasswordFile ? await readPasswordFile(config.repoPasswordFile) : undefined;
      const repo = await Repository.open(await openObjectStore(config.repositoryUrl, s3Settings(config)), { password }).catch(openFailure(config.repositoryUrl));
      const { db, catalog } = await openCatalog(config);
      try {
        const wanted = opts.project ?? config.adminProject;
        const project = (await catalog.identity.getProject(wanted)) ?? (await catalog.identity.findProjectByName(DEFAULT_DOMAIN.id, wanted));
        if (!project) throw new AppError(ErrorCode.InvalidArgument, `no project ${JSON.stringify(wanted)} in the catalog (haven project list)`);
        const r = await rebuildCatalog(catalog, repo, { fallbackProjectId: project.id, availabilityZone: config.availabilityZone, nowMs: Date.now(), dryRun: opts.dryRun === true });
        const lines = [
          `${opts.dryRun ? 'would add' : 'added'} ${r.added.length} backup record(s) of ${r.repositoryBackups} in the repository ${config.repositoryUrl}`,
          ...r.added.map((a) => `  ${a.id}  ${a.name}  project ${a.projectId}`),
          ...(r.unreadable.length ? [`${r.unreadable.length} manifest(s) unreadable, not added (run haven verify): ${r.unreadable.map((d) => d.id).join(', ')}`] : []),
          ...(r.missingFromRepository.length ? [`${r.missingFromRepository.length} catalog record(s) have no backup in the repository (left as they are): ${r.missingFromRepository.join(', ')}`] : []),
        ];
        print(opts.json, { ...r, dryRun: opts.dryRun === true }, lines.join('\n'));
      } finally {
        await db.close();
      }
    });

  const project = program.command('project').description("manage projects (tenants) in the service's catalog (HAVEN_CATALOG_URL, else the data folder's)");
  project
    .command('create <name>')
    .description('create a project')
    .option('--description <text>', 'description', '')
    .option('--data-dir <dir>', 'data folder')
    .option('--json', 'print JSON')
    .action(async (name: string, opts: { description: string; dataDir?: string; json?: boolean }) => {
      const p = await withIdentity(configFrom(opts), (id) => id.createProject({ name, description: opts.description }));
      print(opts.json, { id: p.id, name: p.name, domain_id: p.domainId }, `created project ${p.name} (${p.id})`);
    });
  project
    .command('list')
    .description('list projects')
    .option('--data-dir <dir>', 'data folder')
    .option('--json', 'print JSON')
    .action(async (opts: { dataDir?: string; json?: boolean }) => {
      const all = await withIdentity(configFrom(opts), (id) => id.listProjects());
      print(opts.json, all.map((p) => ({ id: p.id, name: p.name })), all.map((p) => `${p.id}  ${p.name}`).join('\n'));
    });

  const user = program.command('user').description("manage users in the service's catalog (HAVEN_CATALOG_URL, else the data folder's)");
  user
    .command('create <name>')
    .description('create a user, optionally with a role on a project')
    .option('--password-file <file>', 'file holding the password')
    .option('--password <password>', 'the password (visible in the process list; prefer --password-file)')
    .option('--project <project>', 'grant a role on this project (name or id) and make it the default')
    .option('--role <role>', 'role on --project: member or admin (admin on the admin project, HAVEN_ADMIN_PROJECT: a cloud admin)', 'member')
    .option('--data-dir <dir>', 'data folder')
    .option('--json', 'print JSON')
    .action(async (name: string, opts: { password?: string; passwordFile?: string; project?: string; role: string; dataDir?: string; json?: boolean }) => {
      const password = readSecret(opts);
      const role = await parseRole(opts.role);
      const u = await withIdentity(configFrom(opts), async (id) => {
        const p = opts.project ? await id.findProject(opts.project) : null;
        const created = await id.createUser({ name, password, defaultProjectId: p?.id ?? null });
        if (p) await id.grantRole(p.id, created.id, role);
        return created;
      });
      print(opts.json, { id: u.id, name: u.name, default_project_id: u.defaultProjectId }, `created user ${u.name} (${u.id})${opts.project ? ` with role ${role} on ${opts.project}` : ''}`);
    });
  user
    .command('list')
    .description('list users')
    .option('--data-dir <dir>', 'data folder')
    .option('--json', 'print JSON')
    .action(async (opts: { dataDir?: string; json?: boolean }) => {
      const all = await withIdentity(configFrom(opts), (id) => id.listUsers());
      print(opts.json, all.map((u) => ({ id: u.id, name: u.name })), all.map((u) => `${u.id}  ${u.name}`).join('\n'));
    });

  program
    .command('role')
    .description('manage role assignments')
    .command('add <role>')
    .description('grant a role (member or admin) to a user on a project; admin on the admin project (HAVEN_ADMIN_PROJECT, default admin) makes a cloud admin, admin on another project gives power over that project only')
    .requiredOption('--user <user>', 'user name or id')
    .requiredOption('--project <project>', 'project name or id')
    .option('--data-dir <dir>', 'data folder')
    .action(async (roleName: string, opts: { user: string; project: string; dataDir?: string }) => {
      const role = await parseRole(roleName);
      await withIdentity(configFrom(opts), async (id) => {
        const p = await id.findProject(opts.project);
        const u = await id.findUser(opts.user);
        await id.grantRole(p.id, u.id, role);
      });
      process.stdout.write(`granted ${role} on ${opts.project} to ${opts.user}\n`);
    });
}
