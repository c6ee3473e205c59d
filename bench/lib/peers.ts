/**
 * The tools the benchmark compares, each driven through its own command line under /usr/bin/time
 * (peak RSS): Haven's CLI, restic and borg (Debian packages, installed when missing and possible).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';

export interface RunResult {
  ms: number;
  rssKiB: number;
  stdout: string;
}

export async function run(cmd: string, args: string[], opts: { env?: Record<string, string>; cwd?: string } = {}): Promise<RunResult> {
  const rssFile = path.join(opts.cwd ?? process.cwd(), `.rss-${process.pid}-${Date.now()}`);
  const started = performance.now();
  const child = spawn('/usr/bin/time', ['-f', '%M', '-o', rssFile, cmd, ...args], {
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
  const rssKiB = Number((await fs.readFile(rssFile, 'utf8').catch(() => '0')).trim().split('\n').pop());
  await fs.rm(rssFile, { force: true });
  if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${code}): ${stderr.slice(-2000)}`);
  return { ms, rssKiB, stdout };
}

export function which(bin: string): string | null {
  try {
    return execFileSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' }).trim() || null;
  } catch {
    return null;
  }
}

/** Installs the Debian packages of missing peers when running as root; returns what is missing after. */
export function ensurePeers(): string[] {
  const want: [string, string][] = [['restic', 'restic'], ['borg', 'borgbackup'], ['/usr/bin/time', 'time']];
  const missing = want.filter(([b]) => (b.startsWith('/') ? !existsSync(b) : !which(b)));
  if (missing.length && process.getuid?.() === 0) {
    try {
      execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore' });
      execFileSync('apt-get', ['install', '-y', '-qq', ...missing.map(([, p]) => p)], { stdio: 'ignore', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    } catch {
      // Reported below as missing peers; the benchmark still measures what it can.
    }
  }
  return want.filter(([b]) => (b.startsWith('/') ? !existsSync(b) : !which(b))).map(([, p]) => p);
}

export interface Tool {
  name: string;
  repo: string;
  init(): Promise<RunResult>;
  backup(volume: string, label: string): Promise<RunResult>;
  /** Restores the latest backup into `dir`; returns the restored file's path. */
  restore(volume: string, dir: string): Promise<RunResult & { file: string }>;
}

const PASSWORD = 'haven-bench-password';

export function havenTool(work: string, nodeBin: string, cli: string): Tool {
  const repo = path.join(work, 'repo-haven');
  const pwFile = path.join(work, 'haven-password');
  let lastId = '';
  const h = (args: string[]): Promise<RunResult> => run(nodeBin, [cli, ...args, '--repo', repo, '--password-file', pwFile]);
  return {
    name: 'Haven',
    repo,
    async init() {
      await fs.writeFile(pwFile, PASSWORD, { mode: 0o600 });
      return h(['init']);
    },
    async backup(volume) {
      const r = await h(['backup', '--volume', volume, '--json']);
      lastId = (JSON.parse(r.stdout) as { id: string }).id;
      return r;
    },
    async restore(_volume, dir) {
      const file = path.join(dir, 'haven-restored.img');
      const r = await h(['restore', '--backup', lastId, '--target', file, '--json']);
      return { ...r, file };
    },
  };
}

export function resticTool(work: string): Tool {
  const repo = path.join(work, 'repo-restic');
  const env = { RESTIC_PASSWORD: PASSWORD, RESTIC_REPOSITORY: repo, RESTIC_CACHE_DIR: path.join(work, 'restic-cache') };
  return {
    name: 'restic',
    repo,
    init: () => run('restic', ['init', '--repository-version', '2'], { env }),
    backup: (volume) => run('restic', ['backup', '--quiet', volume], { env }),
    async restore(volume, dir) {
      const r = await run('restic', ['restore', 'latest', '--target', dir], { env });
      return { ...r, file: path.join(dir, volume) };
    },
  };
}

export function borgTool(work: string): Tool {
  const repo = path.join(work, 'repo-borg');
  const env = { BORG_PASSPHRASE: PASSWORD, BORG_BASE_DIR: path.join(work, 'borg-base'), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes' };
  let n = 0;
  return {
    name: 'borg',
    repo,
    init: () => run('borg', ['init', '--encryption=repokey-blake2', repo], { env }),
    backup: (volume) => run('borg', ['create', '--chunker-params', 'fixed,4194304', `${repo}::b${n++}`, volume], { env }),
    async restore(volume, dir) {
      const r = await run('borg', ['extract', '--sparse', `${repo}::b${n - 1}`], { env, cwd: dir });
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
