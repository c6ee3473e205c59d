/**
 * What a benchmark ran on, for its header: cores, memory, Node, and for each folder it worked in the
 * file system and the block device under it with its logical and physical block sizes (the issue's
 * first finding was a 512e disk: 512-byte logical, 4096-byte physical blocks).
 */
import { existsSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface DiskInfo {
  /** The folder asked about. */
  folder: string;
  mountPoint: string;
  fsType: string;
  /** The block device (the whole disk for a partition), or null for a file system without one (tmpfs, overlay). */
  device: string | null;
  logicalBlockSize: number | null;
  physicalBlockSize: number | null;
}

interface Mount {
  majorMinor: string;
  mountPoint: string;
  fsType: string;
  source: string;
}

/** /proc/self/mountinfo: `id parent major:minor root mountpoint options ... - fstype source superoptions`. */
function mounts(): Mount[] {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [pre, post] = line.split(' - ');
      const f = pre!.split(' ');
      const g = post!.split(' ');
      return { majorMinor: f[2]!, mountPoint: unescape(f[4]!), fsType: g[0]!, source: g[1]! };
    });
}

function readNumber(file: string): number | null {
  try {
    return Number(readFileSync(file, 'utf8').trim());
  } catch {
    return null;
  }
}

/** The file system and disk a folder lives on: the longest mount point containing it (the last mounted wins a tie). */
export function diskOf(folder: string): DiskInfo {
  const real = realpathSync(folder);
  let best: Mount | undefined;
  for (const m of mounts()) {
    const inside = m.mountPoint === '/' || real === m.mountPoint || real.startsWith(`${m.mountPoint}/`);
    if (inside && (!best || m.mountPoint.length >= best.mountPoint.length)) best = m;
  }
  if (!best) return { folder, mountPoint: '?', fsType: '?', device: null, logicalBlockSize: null, physicalBlockSize: null };
  const sys = `/sys/dev/block/${best.majorMinor}`;
  if (!existsSync(sys)) return { folder, mountPoint: best.mountPoint, fsType: best.fsType, device: null, logicalBlockSize: null, physicalBlockSize: null };
  // A partition's folder sits inside its disk's folder in sysfs, and only the disk has queue/.
  let devDir = path.resolve('/sys/dev/block', readlinkSync(sys));
  if (existsSync(path.join(devDir, 'partition'))) devDir = path.dirname(devDir);
  const name = path.basename(devDir);
  return {
    folder,
    mountPoint: best.mountPoint,
    fsType: best.fsType,
    device: name,
    logicalBlockSize: readNumber(`/sys/block/${name}/queue/logical_block_size`),
    physicalBlockSize: readNumber(`/sys/block/${name}/queue/physical_block_size`),
  };
}

export function describeDisk(d: DiskInfo): string {
  const dev = d.device ? `/dev/${d.device}, logical block ${d.logicalBlockSize ?? '?'} B, physical block ${d.physicalBlockSize ?? '?'} B` : 'no block device';
  return `${d.folder}: ${d.fsType} on ${dev} (mounted at ${d.mountPoint})`;
}

export function describeMachine(): string[] {
  const cpus = os.cpus();
  return [
    `machine: ${cpus.length} cores (${cpus[0]?.model.trim() ?? 'unknown model'}), ${(os.totalmem() / 1024 ** 3).toFixed(1)} GiB memory, ${os.type()} ${os.release()}, Node ${process.version}`,
  ];
}

/** The machine's CPU time so far (/proc/stat, in clock ticks), or null where there is none. */
export function cpuTicks(): { total: number; steal: number; idle: number } | null {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is inside user already)
    const total = f.slice(0, 8).reduce((n, x) => n + x, 0);
    return { total, steal: f[7] ?? 0, idle: (f[3] ?? 0) + (f[4] ?? 0) };
  } catch {
    return null;
  }
}

/** The share of CPU time the hypervisor took (steal) between two readings, as a percentage; null without /proc/stat. */
export function stealPercent(a: ReturnType<typeof cpuTicks>, b: ReturnType<typeof cpuTicks>): number | null {
  if (!a || !b || b.total <= a.total) return null;
  return (100 * (b.steal - a.steal)) / (b.total - a.total);
}
