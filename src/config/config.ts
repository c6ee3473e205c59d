/**
 * Haven's configuration: loaded and validated once at start-up, then passed down as a typed object.
 *
 * Sources, later wins: built-in defaults < a JSON config file (HAVEN_CONFIG, or --config) < HAVEN_*
 * environment variables. Every setting is listed in SETTINGS with its environment name, so the README
 * table, the file keys and the validation all come from one place.
 */
import { hostname } from 'node:os';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { parseListen } from '../domain/listen.ts';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { HOST_NAME_RE } from '../domain/host.ts';
import type { S3Settings } from '../storage/open-store.ts';
import { resolveLocation } from '../storage/s3-url.ts';

export interface Config {
  host: string;
  port: number;
  dataDir: string;
  /** PostgreSQL URL of a shared catalog (scale-out); empty: SQLite in the data folder. */
  catalogUrl: string;
  /** Base URL put into the token catalog; empty: derived from each request's Host header. */
  publicUrl: string;
  region: string;
  availabilityZone: string;
  adminPassword: string;
  /** The project whose admin role makes a cloud admin (Keystone's admin project). */
  adminProject: string;
  /** A separate listener serving /metrics without a token (0: none); HAVEN_METRICS_HOST its address. */
  metricsPort: number;
  metricsHost: string;
  /** Folders under which os-volume-manage may adopt images or devices. */
  volumeRoots: string[];
  tokenTtlSeconds: number;
  logLevel: string;
  /** The chunk repository: a folder, or s3://bucket/prefix (scale-out); empty: <dataDir>/repository. */
  repositoryUrl: string;
  /** S3 endpoint for S3-compatible stores (empty: AWS) and region. */
  s3Endpoint: string;
  s3Region: string;
  /** false: the S3 server lacks conditional writes; the repository is created with a claim (S3ObjectStore.claimedPut). */
  s3ConditionalWrites: boolean;
  /** Pack uploads to S3 in flight per backup. */
  s3Concurrency: number;
  /** Password file of an encrypted chunk repository (empty: unencrypted). */
  repoPasswordFile: string;
  /** Jobs this process runs at once. */
  jobConcurrency: number;
  workerNice: number;
  /** Per-project quotas; -1 = unlimited. */
  quotaBackups: number;
  quotaBackupGigabytes: number;
  /** Default volume quotas of a project (the cloud admin may set others per project); -1 = unlimited. */
  quotaVolumes: number;
  quotaGigabytes: number;
  /** Largest volume Haven creates, in GB. */
  maxVolumeGb: number;
  maxPoliciesPerProject: number;
  bodyLimitBytes: number;
  /** Shell commands run around the snapshot of a server backup (application-consistent backups). */
  freezeCommand: string;
  thawCommand: string;
  /** Missed policy slots younger than this fire once at start-up; older ones are skipped. */
  scheduleGraceSeconds: number;
  /** PEM certificate chain and private key: HTTPS only when set (both or neither). */
  tlsCert: string;
  tlsKey: string;
  /** Listen on a non-loopback address without TLS (a TLS proxy in front). */
  allowPlaintext: boolean;
  /** This host's name: its volumes' host, and the agent's (default: the system's host name). */
  hostName: string;
  /** `haven serve` holds volumes itself (the embedded default); false for a control plane of agents only. */
  localAgent: boolean;
  agentLeaseSeconds: number;
  sampleRestoreHours: number;
  /** `haven agent`: the control plane's URL and the file holding this host's agent token. */
  controlUrl: string;
  agentTokenFile: string;
  /** Where backups exported over NBD are served (HOST:PORT, unix:PATH, or off). */
  nbdListen: string;
  /** The host name NBD URIs give clients (default: the listen address). */
  nbdPublicHost: string;
  /** Longest life of an export, in hours. */
  exportMaxHours: number;
  /** Decoded chunks the exports keep in memory, in MiB. */
  nbdCacheMib: number;
}

type Kind = 'string' | 'int' | 'list' | 'bool';
interface Setting {
  key: keyof Config;
  env: string;
  /** Other names read too (older ones): the value is the same whichever is set; two that differ are refused. */
  aliases?: readonly string[];
  kind: Kind;
  default: string;
  help: string;
  min?: number;
  max?: number;
}

export const SETTINGS: readonly Setting[] = [
  { key: 'host', env: 'HAVEN_HOST', kind: 'string', default: '127.0.0.1', help: 'address the API listens on' },
  { key: 'port', env: 'HAVEN_PORT', kind: 'int', default: '8080', min: 0, max: 65535, help: 'port the API listens on (0: any free port)' },
  { key: 'dataDir', env: 'HAVEN_DATA_DIR', kind: 'string', default: './data', help: 'catalog, chunk repository, volumes and the admin password file' },
  { key: 'catalogUrl', env: 'HAVEN_CATALOG_URL', kind: 'string', default: '', help: 'PostgreSQL URL (postgres://user@host:5432/db) of a catalog shared by several Haven processes; default: SQLite in the data folder' },
  { key: 'publicUrl', env: 'HAVEN_PUBLIC_URL', kind: 'string', default: '', help: 'base URL written into the token catalog (default: from the request\'s Host header)' },
  { key: 'region', env: 'HAVEN_REGION', kind: 'string', default: 'eu-de', help: 'region of the catalog endpoints' },
  { key: 'availabilityZone', env: 'HAVEN_AVAILABILITY_ZONE', kind: 'string', default: 'eu-de-01', help: 'availability zone reported for volumes and backups' },
  { key: 'adminPassword', env: 'HAVEN_ADMIN_PASSWORD', kind: 'string', default: '', help: 'password of the bootstrap user admin (default: generated into <data>/admin-password)' },
  { key: 'volumeRoots', env: 'HAVEN_VOLUME_ROOTS', kind: 'list', default: '', help: 'folders (separated by ":") whose images and devices os-volume-manage may adopt' },
  { key: 'tokenTtlSeconds', env: 'HAVEN_TOKEN_TTL', kind: 'int', default: '86400', min: 60, max: 31 * 86400, help: 'token lifetime in seconds' },
  { key: 'logLevel', env: 'HAVEN_LOG_LEVEL', kind: 'string', default: 'info', help: 'fatal, error, warn, info, debug, trace or silent' },
  { key: 'repositoryUrl', env: 'HAVEN_REPOSITORY', aliases: ['HAVEN_REPOSITORY_URL'], kind: 'string', default: '', help: 'the chunk repository: a folder, or s3://bucket/prefix in an S3-compatible object store shared by several Haven processes (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the AWS SDK\'s other sources); default: <data>/repository' },
  { key: 's3Endpoint', env: 'HAVEN_S3_ENDPOINT', kind: 'string', default: '', help: 'URL of an S3-compatible server (MinIO, Ceph RGW, ...; path-style addressing); default: AWS S3' },
  { key: 's3Region', env: 'HAVEN_S3_REGION', kind: 'string', default: '', help: 'region of the S3 repository (default: AWS_REGION, else us-east-1)' },
  { key: 's3ConditionalWrites', env: 'HAVEN_S3_CONDITIONAL_WRITES', kind: 'bool', default: 'true', help: 'false for an S3 server without conditional writes (If-None-Match: * on PUT, e.g. OpenStack Swift\'s s3api): the repository is then created with a create claim checked by listing, which is safe only when the server\'s listings show a finished PUT within a second (read-after-write), as one Swift cluster\'s do' },
  { key: 's3Concurrency', env: 'HAVEN_S3_CONCURRENCY', kind: 'int', default: '3', min: 1, max: 16, help: 'pack uploads to the S3 repository a backup keeps in flight at once; each holds a pack buffer (the repository\'s pack size, 32 MiB by default, plus 1 MiB) and, over HTTPS, its encrypted copy while it is sent, so a backup holds about twice this many plus one: ~230 MiB at 3, ~1 GiB at 16' },
  { key: 'repoPasswordFile', env: 'HAVEN_REPO_PASSWORD_FILE', aliases: ['HAVEN_PASSWORD_FILE'], kind: 'string', default: '', help: 'file holding the chunk repository password: encrypts the repository at creation' },
  { key: 'jobConcurrency', env: 'HAVEN_JOB_CONCURRENCY', kind: 'int', default: '2', min: 1, max: 64, help: 'backup/restore jobs this process runs at once; one project runs at most half of them (rounded up)' },
  { key: 'workerNice', env: 'HAVEN_WORKER_NICE', kind: 'int', default: '10', min: 0, max: 19, help: 'CPU priority (nice) of the engine\'s hashing/compression threads, so the ordered whole-volume hash sets the pace and VMs on the host come first (0: the process\'s own)' },
  { key: 'quotaBackups', env: 'HAVEN_QUOTA_BACKUPS', kind: 'int', default: '-1', min: -1, help: 'backups per project (-1: unlimited)' },
  { key: 'adminProject', env: 'HAVEN_ADMIN_PROJECT', kind: 'string', default: 'admin', help: 'the admin project: the admin role on it makes a cloud admin (identity management, adopting host files, other projects\' quotas); created at first start with the user admin' },
  { key: 'metricsPort', env: 'HAVEN_METRICS_PORT', kind: 'int', default: '0', min: 0, max: 65535, help: 'port of a separate listener serving /metrics without a token, for Prometheus (0: none; /metrics on the API then needs a cloud-admin token)' },
  { key: 'metricsHost', env: 'HAVEN_METRICS_HOST', kind: 'string', default: '127.0.0.1', help: 'address of the HAVEN_METRICS_PORT listener' },
  { key: 'quotaBackupGigabytes', env: 'HAVEN_QUOTA_BACKUP_GIGABYTES', kind: 'int', default: '-1', min: -1, help: 'backup gigabytes per project (-1: unlimited)' },
  { key: 'quotaVolumes', env: 'HAVEN_QUOTA_VOLUMES', kind: 'int', default: '-1', min: -1, help: 'default volumes per project (-1: unlimited); the cloud admin sets others per project (os-quota-sets)' },
  { key: 'quotaGigabytes', env: 'HAVEN_QUOTA_GIGABYTES', kind: 'int', default: '-1', min: -1, help: 'default volume gigabytes per project, created and adopted volumes together (-1: unlimited)' },
  { key: 'maxVolumeGb', env: 'HAVEN_MAX_VOLUME_GB', kind: 'int', default: '32768', min: 1, max: 32768, help: 'largest volume Haven creates (GB; larger: 400); the data folder\'s file system may allow less (ext4: 16383)' },
  { key: 'maxPoliciesPerProject', env: 'HAVEN_MAX_POLICIES', kind: 'int', default: '10', min: 1, help: 'backup policies per project' },
  { key: 'scheduleGraceSeconds', env: 'HAVEN_SCHEDULE_GRACE', kind: 'int', default: '3600', min: 0, help: 'a policy slot missed while Haven was down fires once at start-up if it is younger than this (seconds); older ones are recorded as skipped' },
  { key: 'freezeCommand', env: 'HAVEN_FREEZE_COMMAND', kind: 'string', default: '', help: 'shell command run before a server backup snapshots its volumes (env: HAVEN_SERVER_ID, HAVEN_SERVER_NAME, HAVEN_VOLUME_PATHS); a failure fails the backup' },
  { key: 'thawCommand', env: 'HAVEN_THAW_COMMAND', kind: 'string', default: '', help: 'shell command run right after the snapshots (always, once the freeze command ran)' },
  { key: 'tlsCert', env: 'HAVEN_TLS_CERT', kind: 'string', default: '', help: 'PEM file with the server certificate (and its chain): Haven then serves HTTPS only; re-read on SIGHUP' },
  { key: 'tlsKey', env: 'HAVEN_TLS_KEY', kind: 'string', default: '', help: 'PEM file with the private key of HAVEN_TLS_CERT; re-read on SIGHUP' },
  { key: 'allowPlaintext', env: 'HAVEN_ALLOW_PLAINTEXT', kind: 'bool', default: 'false', help: 'true: serve plain HTTP on a non-loopback HAVEN_HOST (behind a TLS proxy; set HAVEN_PUBLIC_URL to its https URL)' },
  { key: 'hostName', env: 'HAVEN_HOST_NAME', kind: 'string', default: '', help: 'this host\'s name, which its volumes belong to (default: the system\'s host name); an agent\'s is the one its token names' },
  { key: 'localAgent', env: 'HAVEN_LOCAL_AGENT', kind: 'bool', default: 'true', help: 'haven serve holds volumes itself, as this host\'s agent (false: a control plane whose volumes are all on hosts running haven agent)' },
  { key: 'agentLeaseSeconds', env: 'HAVEN_AGENT_LEASE_SECONDS', kind: 'int', default: '30', min: 3, max: 3600, help: 'an agent silent this long is offline: the work it held fails (it heartbeats three times per lease)' },
  { key: 'sampleRestoreHours', env: 'HAVEN_SAMPLE_RESTORE_HOURS', kind: 'int', default: '24', min: 0, max: 8760, help: 'every this many hours one random available backup is restored into a scratch file of the data folder and checked; a damaged one becomes error (0: never)' },
  { key: 'controlUrl', env: 'HAVEN_CONTROL_URL', kind: 'string', default: '', help: 'haven agent: the URL of the control plane (haven serve), e.g. https://haven.example:8080' },
  { key: 'agentTokenFile', env: 'HAVEN_AGENT_TOKEN_FILE', kind: 'string', default: '', help: 'haven agent: the file holding this host\'s agent token (haven agent token create --host NAME)' },
  { key: 'nbdListen', env: 'HAVEN_NBD_LISTEN', kind: 'string', default: '127.0.0.1:10809', help: 'HOST:PORT (or unix:PATH) where backups exported through the API (POST .../cloudbackups/{id}/export) and live restores are served over NBD, started at the first export; with TLS (HAVEN_TLS_CERT) clients must use NBD_OPT_STARTTLS; off: no exports' },
  { key: 'nbdPublicHost', env: 'HAVEN_NBD_PUBLIC_HOST', kind: 'string', default: '', help: 'the host name export URIs give clients (default: the HAVEN_NBD_LISTEN address; set it when that is 0.0.0.0 or behind NAT)' },
  { key: 'exportMaxHours', env: 'HAVEN_EXPORT_MAX_HOURS', kind: 'int', default: '24', min: 1, max: 8760, help: 'longest life of an export (hours); a request may ask for less (expires_in)' },
  { key: 'nbdCacheMib', env: 'HAVEN_NBD_CACHE_MIB', kind: 'int', default: '128', min: 16, max: 65536, help: 'decoded chunks kept in memory for exports and live restores (MiB)' },
  { key: 'bodyLimitBytes', env: 'HAVEN_BODY_LIMIT', kind: 'int', default: '1048576', min: 1024, help: 'largest request body accepted (bytes; larger: 413)' },
];

const LOG_LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

function parseValue(s: Setting, raw: unknown, from: string): unknown {
  const bad = (why: string): never => {
    throw new AppError(ErrorCode.InvalidArgument, `invalid ${from}: ${why}`);
  };
  switch (s.kind) {
    case 'string':
      if (typeof raw !== 'string') bad('expected a string');
      return raw;
    case 'bool':
      if (typeof raw === 'boolean') return raw;
      if (raw === 'true' || raw === 'false') return raw === 'true';
      return bad(`expected true or false, got ${JSON.stringify(raw)}`);
    case 'list':
      if (Array.isArray(raw)) return raw.map(String).filter(Boolean);
      if (typeof raw !== 'string') bad('expected a list of paths');
      return (raw as string).split(':').filter(Boolean);
    case 'int': {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^-?\d+$/.test(raw.trim()) ? Number(raw) : NaN;
      if (!Number.isSafeInteger(n)) bad(`expected an integer, got ${JSON.stringify(raw)}`);
      if (s.min !== undefined && n < s.min) bad(`must be at least ${s.min}`);
      if (s.max !== undefined && n > s.max) bad(`must be at most ${s.max}`);
      return n;
    }
  }
}

/** Loads the configuration from defaults, an optional JSON file and the environment. */
function setting(key: keyof Config): Setting {
  return SETTINGS.find((x) => x.key === key)!;
}

/** A setting's value in the environment under its name or an alias, and which name gave it. */
function fromEnv(s: Setting, env: NodeJS.ProcessEnv): { name: string; raw: string } | null {
  let found: { name: string; raw: string } | null = null;
  for (const name of [s.env, ...(s.aliases ?? [])]) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    if (found && found.raw !== raw) throw new AppError(ErrorCode.InvalidArgument, `${found.name} and ${name} name the same setting but differ: set one of them`);
    found ??= { name, raw };
  }
  return found;
}

/**
 * The repository and its password file from the environment, as the service reads them
 * (HAVEN_REPOSITORY, HAVEN_REPO_PASSWORD_FILE, and their older names): for the CLI, whose --repo
 * and --password-file take precedence. Null where not set.
 */
export function repositoryFromEnv(env: NodeJS.ProcessEnv = process.env): { location: string | null; passwordFile: string | null } {
  return { location: fromEnv(setting('repositoryUrl'), env)?.raw ?? null, passwordFile: fromEnv(setting('repoPasswordFile'), env)?.raw ?? null };
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env, overrides: Partial<Config> = {}): Config {
  const values: Record<string, unknown> = {};
  for (const s of SETTINGS) values[s.key] = parseValue(s, s.default, `default of ${s.env}`);
  const file = env.HAVEN_CONFIG;
  if (file) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      throw new AppError(ErrorCode.InvalidArgument, `cannot read config file ${file}: ${(err as Error).message}`, { cause: err });
    }
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new AppError(ErrorCode.InvalidArgument, `config file ${file} must hold a JSON object`);
    for (const [k, v] of Object.entries(parsed)) {
      const s = SETTINGS.find((x) => x.key === k);
      if (!s) throw new AppError(ErrorCode.InvalidArgument, `config file ${file}: unknown setting "${k}" (known: ${SETTINGS.map((x) => x.key).join(', ')})`);
      values[k] = parseValue(s, v, `setting "${k}" in ${file}`);
    }
  }
  for (const s of SETTINGS) {
    const set = fromEnv(s, env);
    if (set) values[s.key] = parseValue(s, set.raw, set.name);
  }
  Object.assign(values, overrides);
  const config = values as unknown as Config;
  if (!LOG_LEVELS.has(config.logLevel)) throw new AppError(ErrorCode.InvalidArgument, `invalid HAVEN_LOG_LEVEL: ${config.logLevel}`);
  config.dataDir = path.resolve(config.dataDir);
  config.hostName ||= hostname();
  if (!HOST_NAME_RE.test(config.hostName)) throw new AppError(ErrorCode.InvalidArgument, `invalid HAVEN_HOST_NAME: ${JSON.stringify(config.hostName)} (letters, digits, ".", "_" and "-")`);
  if (config.controlUrl && !/^https?:\/\/[^/]+/.test(config.controlUrl)) throw new AppError(ErrorCode.InvalidArgument, `invalid HAVEN_CONTROL_URL: expected http(s)://host[:port], got ${JSON.stringify(config.controlUrl)}`);
  config.controlUrl = config.controlUrl.replace(/\/+$/, '');
  config.volumeRoots = config.volumeRoots.map((r) => path.resolve(r));
  if (config.publicUrl) config.publicUrl = config.publicUrl.replace(/\/+$/, '');
  try {
    config.repositoryUrl = resolveLocation(config.repositoryUrl || path.join(config.dataDir, 'repository'));
  } catch (err) {
    throw new AppError(ErrorCode.InvalidArgument, `invalid ${fromEnv(setting('repositoryUrl'), env)?.name ?? 'repositoryUrl'}: ${(err as Error).message}`);
  }
  if (!config.tlsCert !== !config.tlsKey) throw new AppError(ErrorCode.InvalidArgument, `HAVEN_TLS_CERT and HAVEN_TLS_KEY go together: ${config.tlsCert ? 'HAVEN_TLS_KEY' : 'HAVEN_TLS_CERT'} is not set`);
  if (config.tlsCert) {
    config.tlsCert = path.resolve(config.tlsCert);
    config.tlsKey = path.resolve(config.tlsKey);
  }
  if (config.nbdListen !== 'off') {
    try {
      parseListen(config.nbdListen);
    } catch (err) {
      throw new AppError(ErrorCode.InvalidArgument, `invalid HAVEN_NBD_LISTEN: ${(err as Error).message} (or off)`);
    }
  }
  if (config.s3Endpoint && !/^https?:\/\/[^/]+/.test(config.s3Endpoint)) throw new AppError(ErrorCode.InvalidArgument, `invalid HAVEN_S3_ENDPOINT: expected http(s)://host[:port], got ${JSON.stringify(config.s3Endpoint)}`);
  return config;
}

/**
 * The S3 settings alone, from the environment, validated as loadConfig validates them: for the CLI,
 * which reads HAVEN_S3_* but no service configuration.
 */
export function s3SettingsFromEnv(env: NodeJS.ProcessEnv = process.env): S3Settings {
  const value = (key: keyof Config): unknown => {
    const s = setting(key);
    const set = fromEnv(s, env);
    return parseValue(s, set?.raw ?? s.default, set?.name ?? s.env);
  };
  const endpoint = value('s3Endpoint') as string;
  if (endpoint && !/^https?:\/\/[^/]+/.test(endpoint)) throw new AppError(ErrorCode.InvalidArgument, `invalid HAVEN_S3_ENDPOINT: expected http(s)://host[:port], got ${JSON.stringify(endpoint)}`);
  return { endpoint, region: value('s3Region') as string, conditionalWrites: value('s3ConditionalWrites') as boolean, concurrency: value('s3Concurrency') as number };
}

/** The S3 settings of a loaded configuration, for openObjectStore. */
export function s3Settings(config: Config): S3Settings {
  return { endpoint: config.s3Endpoint, region: config.s3Region, conditionalWrites: config.s3ConditionalWrites, concurrency: config.s3Concurrency };
}

/** True for addresses only this host can reach (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || /^::ffff:127\./.test(h);
}

/**
 * Refuses to serve passwords and tokens in clear on a network: a non-loopback HAVEN_HOST needs TLS
 * (HAVEN_TLS_CERT/KEY) or HAVEN_ALLOW_PLAINTEXT=true (a TLS proxy in front).
 */
export function checkListenSecurity(config: Config): void {
  checkNbdListenSecurity(config);
  if (config.tlsCert || config.allowPlaintext || isLoopbackHost(config.host)) return;
  throw new AppError(ErrorCode.InvalidArgument, `refusing to listen on ${config.host} without TLS: passwords and tokens would cross the network in clear. Set HAVEN_TLS_CERT and HAVEN_TLS_KEY, or HAVEN_ALLOW_PLAINTEXT=true when a TLS proxy is in front (and HAVEN_PUBLIC_URL to its https URL), or HAVEN_HOST=127.0.0.1`);
}

/** NBD exports carry disk contents and their secret names: in clear only on loopback or a socket. */
export function checkNbdListenSecurity(config: Config): void {
  if (!config.tlsCert && config.nbdListen !== 'off') {
    const at = parseListen(config.nbdListen);
    if ('host' in at && !isLoopbackHost(at.host)) {
      throw new AppError(ErrorCode.InvalidArgument, `refusing to serve NBD exports on ${config.nbdListen} without TLS: disk contents and export names would cross the network in clear. Set HAVEN_TLS_CERT and HAVEN_TLS_KEY (NBD then requires STARTTLS), or HAVEN_NBD_LISTEN=127.0.0.1:10809, unix:PATH or off`);
    }
  }
}
