/**
 * A second disk with the other logical block size, so the goals are measured on 512-byte and
 * 4096-byte logical blocks in one run: a loop device over a file with `--sector-size` (4096 when the
 * machine's disk has 512-byte logical blocks, 512 when it is 4K-native), ext4 on it, mounted in a
 * temp folder. The loop device does direct I/O to its file, so its reads and writes reach the disk
 * below instead of a second page cache. Needs root and losetup; dispose() unmounts and detaches
 * (also run on SIGINT/SIGTERM, so an interrupted benchmark leaves no device behind).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { which } from './peers.ts';

export interface LoopDisk {
  mountPoint: string;
  device: string;
  sectorSize: number;
  dispose(): void;
}

/** Why no loop disk can be made here, or null when it can. */
export function loopDiskMissing(): string | null {
  if (process.getuid?.() !== 0) return 'not root';
  for (const bin of ['losetup', 'mkfs.ext4', 'mount', 'umount']) if (!which(bin)) return `${bin} not found`;
  return null;
}

export async function makeLoopDisk(backingDir: string, sizeBytes: number, sectorSize: number): Promise<LoopDisk> {
  const backing = path.join(backingDir, `loop-${sectorSize}.img`);
  const fh = await fs.open(backing, 'w');
  await fh.truncate(sizeBytes); // sparse: the file grows as the file system is used
  await fh.close();
  let device = '';
  let mountPoint = '';
  let mounted = false;
  // Each step is tried even when one before it failed, and a failure is said, not thrown: dispose
  // runs in finally blocks and signal handlers, where a throw would hide the benchmark's own outcome.
  const attempt = (what: string, fn: () => void): boolean => {
    try {
      fn();
      return true;
    } catch (err) {
      console.log(`  loop disk: ${what} failed (${(err as Error).message.split('\n')[0]}); clean up by hand`);
      return false;
    }
  };
  const dispose = (): void => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (mounted) {
      // A lazy unmount as a last resort: the mount goes once nothing uses it, and detach follows then.
      if (!attempt(`umount ${mountPoint}`, () => execFileSync('umount', [mountPoint], { stdio: 'pipe' }))) attempt(`umount -l ${mountPoint}`, () => execFileSync('umount', ['-l', mountPoint], { stdio: 'pipe' }));
      mounted = false;
    }
    if (device) {
      attempt(`losetup -d ${device}`, () => execFileSync('losetup', ['-d', device], { stdio: 'pipe' }));
      device = '';
    }
    if (mountPoint) attempt(`removing ${mountPoint}`, () => rmSync(mountPoint, { recursive: true, force: true }));
    attempt(`removing ${backing}`, () => rmSync(backing, { force: true }));
  };
  function onSignal(sig: NodeJS.Signals): void {
    dispose();
    process.kill(process.pid, sig);
  }
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    device = execFileSync('losetup', ['--find', '--show', '--sector-size', String(sectorSize), '--direct-io=on', backing], { encoding: 'utf8' }).trim();
    // Few inodes and no lazy initialisation: mkfs writes its tables now, instead of a kernel thread
    // writing them in the background while tools are being timed.
    execFileSync('mkfs.ext4', ['-q', '-F', '-N', '65536', '-E', 'lazy_itable_init=0,lazy_journal_init=0', device], { stdio: 'ignore' });
    mountPoint = mkdtempSync(path.join(os.tmpdir(), `haven-bench-loop${sectorSize}-`));
    execFileSync('mount', [device, mountPoint]);
    mounted = true;
    return { mountPoint, device, sectorSize, dispose };
  } catch (err) {
    dispose();
    throw err;
  }
}
