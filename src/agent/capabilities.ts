/** What this host can do, as its agent registers it: the kinds of disk it can back up and restore. */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';

export const HAVEN_VERSION: string = (JSON.parse(readFileSync(path.resolve(import.meta.dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;

let cached: string[] | null = null;

/** raw files and block devices always; qcow2 with qemu-img and qemu-nbd; running QEMU guests also need an NBD-capable QEMU (checked per guest). */
export function hostCapabilities(): string[] {
  if (cached) return cached;
  const has = (tool: string): boolean => spawnSync(tool, ['--version'], { stdio: 'ignore', timeout: 5000 }).status === 0;
  const caps = ['raw', 'block-device'];
  if (has('qemu-img') && has('qemu-nbd')) caps.push('qcow2', 'qemu-guest');
  cached = caps;
  return caps;
}
