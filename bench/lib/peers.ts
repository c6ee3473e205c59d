/**
 * The tools the benchmark compares, each driven through its own command line under /usr/bin/time
 * (peak RSS): Haven's CLI, restic and borg (Debian packages, installed when missing and possible).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

export interface RunResult {
  ms: number;
  rssKiB: number;
  /** CPU time (user + system) of the tool and its children. */
  cpuMs: number;
  stdout: string;
}

export async function run(cmd: string, args: string[], opts: { env?: Record<string, string>; cwd?: string } = {}): Promise<RunResult> {
  // Outside the tool's folders (borg extracts into its cwd) and the project (an interrupted run leaves it).
  const rssFile = path.join(tmpdir(), `haven-bench-rss-${process.pid}-${Date.now()}`);
  const started = performance.now();
  const child = spawn('/usr/bin/time', ['-f', '%M %U %S', '-o', rssFile, cmd, ...args], {
    cwd: opts.cwd,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? 1)));
  const ms = performance.now() - started;
  const [rss = 0, user = 0, sys = 0] = (await fs.readFile(rssFile, 'utf8').catch(() => '0 0 0')).trim().split('\n').pop()!.split(' ').map(Number);
  await fs.rm(rssFile, { force: true });
  if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${code}): ${stderr.slice(-2000)}`);
  return { ms, rssKiB: rss, cpuMs: Math.round((user + sys) * 1000), stdout };
}

export function which(bin: string): string | null {
  try {
    return execFileSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' }).trim() || null;
  } catch {
    return null;
  }
}

/**
 * Installs the Debian packages of missing peers (and with `s3`, what the S3 part runs: OpenStack
 * Swift and openssl for the proxy's certificate) when running as root; returns the packages still
 * missing after.
 */
export function ensurePeers(s3 = false): string[] {
  const want: [string, string][] = [['restic', 'restic'], ['borg', 'borgbackup'], ['/usr/bin/time', 'time']];
  if (s3) want.push(['openssl', 'openssl'], ...['proxy', 'object', 'container', 'account'].map((s): [string, string] => [`/usr/bin/swift-${s}-server`, `swift-${s}`]));
  const missing = want.filter(([b]) => (b.startsWith('/') ? !existsSync(b) : !which(b)));
  if (missing.length && process.getuid?.() === 0) {
    const packages = missing.map(([, p]) => p);
    console.log(`installing ${packages.join(', ')} (Debian packages)`);
    try {
      execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore' });
      execFileSync('apt-get', ['install', '-y', '-qq', ...packages], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    } catch (err) {
      // Reported as missing peers; the benchmark still measures what it can.
      console.log(`apt-get install ${packages.join(' ')} failed: ${String((err as { stderr?: Buffer }).stderr ?? (err as Error).message).trim().slice(-500)}`);
    }
  }
  return want.filter(([b]) => (b.startsWith('/') ? !existsSync(b) : !which(b))).map(([, p]) => p);
}

export interface Tool {
  name: string;
  /** The repository: a folder, or for S3 the URL the tool is given. */
  repo: string;
  init(): Promise<RunResult>;
  /** Backs up `volume`; `id` names the backup for restore. */
  backup(volume: string): Promise<RunResult & { id: string }>;
  /** Restores backup `id` of `volume` into `dir`; returns the restored file's path. */
  restore(id: string, volume: string, dir: string): Promise<RunResult & { file: string }>;
}

export interface ToolOptions {
  /** Repository location (default: a folder in `work`). */
  repo?: string;
  /** Extra environment (S3 endpoint and credentials). */
  env?: Record<string, string>;
  /** Extra arguments for every command (restic's --cacert). */
  args?: string[];
}

export const BENCH_PASSWORD = 'haven-bench-password';

/** Haven's CLI, started as `<node 24> bin/haven.js` (not through npx, whose start-up would be timed too). */
export function havenTool(work: string, nodeBin: string, cli: string, opts: ToolOptions = {}): Tool {
  const repo = opts.repo ?? path.join(work, 'repo-haven');
  const pwFile = path.join(work, 'haven-password');
  const h = (args: string[]): Promise<RunResult> => run(nodeBin, [cli, ...args, '--repo', repo, '--password-file', pwFile], { env: opts.env ?? {} });
  return {
    name: 'Haven',
    repo,
    async init() {
      await fs.writeFile(pwFile, BENCH_PASSWORD, { mode: 0o600 });
      return h(['init']);
    },
    async backup(volume) {
      const r = await h(['backup', '--volume', volume, '--json']);
      return { ...r, id: (JSON.parse(r.stdout) as { id: string }).id };
    },
    async restore(id, _volume, dir) {
      const file = path.join(dir, 'haven-restored.img');
      const r = await h(['restore', '--backup', id, '--target', file, '--force', '--json']);
      return { ...r, file };
    },
  };
}

/** The snapshot id from `restic backup --json` (its last line is the summary). */
function resticSnapshotId(stdout: string): string {
  for (const line of stdout.trim().split('\n').reverse()) {
    try {
      const m = JSON.parse(line) as { message_type?: string; snapshot_id?: string };
      if (m.message_type === 'summary' && m.snapshot_id) return m.snapshot_id;
    } catch {
      // a status line cut short; the summary comes last
    }
  }
  throw new Error(`restic backup printed no snapshot id: ${stdout.slice(-500)}`);
}

export function resticTool(work: string, opts: ToolOptions = {}): Tool {
  const repo = opts.repo ?? path.join(work, 'repo-restic');
  const env = { RESTIC_PASSWORD: BENCH_PASSWORD, RESTIC_REPOSITORY: repo, RESTIC_CACHE_DIR: path.join(work, 'restic-cache'), ...opts.env };
  const restic = (args: string[]): Promise<RunResult> => run('restic', [...args, ...(opts.args ?? [])], { env });
  return {
    name: 'restic',
    repo,
    init: () => restic(['init', '--repository-version', '2']),
    async backup(volume) {
      const r = await restic(['backup', '--json', volume]);
      return { ...r, id: resticSnapshotId(r.stdout) };
    },
    async restore(id, volume, dir) {
      const r = await restic(['restore', id, '--target', dir]);
      return { ...r, file: path.join(dir, volume) };
    },
  };
}

export function borgTool(work: string, opts: ToolOptions = {}): Tool {
  const repo = opts.repo ?? path.join(work, 'repo-borg');
  const env = { BORG_PASSPHRASE: BENCH_PASSWORD, BORG_BASE_DIR: path.join(work, 'borg-base'), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes', ...opts.env };
  let n = 0;
  return {
    name: 'borg',
    repo,
    init: () => run('borg', ['init', '--encryption=repokey-blake2', repo], { env }),
    async backup(volume) {
      const id = `b${n++}`;
      const r = await run('borg', ['create', '--chunker-params', 'fixed,4194304', `${repo}::${id}`, volume], { env });
      return { ...r, id };
    },
    async restore(id, volume, dir) {
      const r = await run('borg', ['extract', '--sparse', `${repo}::${id}`], { env, cwd: dir });
      return { ...r, file: path.join(dir, volume.replace(/^\//, '')) };
    },
  };
}

export async function dirStats(dir: string): Promise<{ bytes: number; files: number }> {
  let bytes = 0;
  let files = 0;
  const walk = async (d: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) {
        bytes += (await fs.stat(p)).size;
        files++;
      }
    }
  };
  await walk(dir);
  return { bytes, files };
}
