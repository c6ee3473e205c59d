/**
 * File-level restore from a backup, as README "Instant recovery" shows it, with no kernel NBD
 * device and no mount: `haven nbd` serves the backup; qemu-storage-daemon exports the disk, and then
 * one partition of it (a raw node with that partition's offset), as files over FUSE, read on demand;
 * sfdisk reads the partition table from the first, debugfs copies files out of the ext4 file system
 * in the second. Without FUSE (a container that forbids it) the partition is copied out with
 * `qemu-img convert` instead, which the test also runs. Every file copied out is compared with the
 * original.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { after, describe, it } from 'node:test';
import { CLI_MAIN, MiB, randomBytesSeeded, runCliJson, TempDirs } from '../helpers/volumes.ts';

const run = promisify(execFile);
const temp = new TempDirs('haven-file-restore-');
const children: ChildProcess[] = [];
after(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  await Promise.all(children.map((c) => (c.exitCode === null ? new Promise((r) => c.once('exit', r)) : null)));
  temp.cleanup();
});

/** A 48 MiB disk with an MBR and one ext4 partition (1 MiB .. 33 MiB) holding `files`. */
async function makeDisk(dir: string, files: string): Promise<string> {
  const part = path.join(dir, 'part.img');
  await run('mkfs.ext4', ['-q', '-F', '-d', files, part, '32M']);
  const disk = path.join(dir, 'disk.raw');
  const fh = await fs.open(disk, 'w');
  try {
    await fh.truncate(48 * MiB);
    const mbr = Buffer.alloc(512);
    const e = 446;
    mbr[e + 4] = 0x83; // Linux
    mbr.writeUInt32LE(2048, e + 8); // first sector
    mbr.writeUInt32LE((32 * MiB) / 512, e + 12); // sectors
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    await fh.write(mbr, 0, 512, 0);
    await fh.write(await fs.readFile(part), 0, 32 * MiB, MiB);
  } finally {
    await fh.close();
  }
  return disk;
}

/** Starts `haven nbd` and resolves with its JSON line. */
async function serve(repo: string, id: string): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, [CLI_MAIN, 'nbd', '--repo', repo, '--backup', id, '--listen', '127.0.0.1:0', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  const line = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl));
    });
    child.once('exit', (code) => reject(new Error(`haven nbd exited with ${code}`)));
  });
  const j = JSON.parse(line) as { listen: string };
  return { child, port: Number(j.listen.split(':').pop()) };
}

/** qemu-storage-daemon exporting a node chain over FUSE at `mountpoint`; resolves once the file has its size. */
async function fuseExport(blockdevs: string[], node: string, mountpoint: string, size: number): Promise<ChildProcess> {
  await fs.writeFile(mountpoint, '');
  const qsd = spawn('qemu-storage-daemon', [...blockdevs.flatMap((b) => ['--blockdev', b]), '--export', `type=fuse,id=e0,node-name=${node},mountpoint=${mountpoint}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(qsd);
  let err = '';
  qsd.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  for (let i = 0; i < 200; i++) {
    if (qsd.exitCode !== null) throw new Error(`qemu-storage-daemon: ${err.trim()}`);
    if ((await fs.stat(mountpoint)).size === size) return qsd;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error('the FUSE export did not appear');
}

async function stop(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null) return;
  const done = new Promise((r) => c.once('exit', r));
  c.kill('SIGTERM');
  await done;
}

describe('file-level restore from a served backup (README "Instant recovery")', () => {
  it('copies files out of a partition of the backup, read on demand over FUSE and by copying the partition out', async () => {
    const dir = temp.make('work');
    const files = path.join(dir, 'files');
    await fs.mkdir(path.join(files, 'etc', 'app'), { recursive: true });
    await fs.writeFile(path.join(files, 'etc', 'hostname'), 'web1\n');
    const blob = randomBytesSeeded(3 * MiB + 123, 5);
    await fs.writeFile(path.join(files, 'etc', 'app', 'data.bin'), blob);
    const disk = await makeDisk(dir, files);
    const repo = path.join(dir, 'repo');
    await runCliJson(['init', '--repo', repo, '--json']);
    const { id } = await runCliJson<{ id: string }>(['backup', '--repo', repo, '--volume', disk, '--json']);
    // The disk changes after the backup: what comes out is the backup's.
    await fs.writeFile(disk, Buffer.alloc(MiB));
    const { child, port } = await serve(repo, id);
    const nbd = `driver=nbd,node-name=n0,server.type=inet,server.host=127.0.0.1,server.port=${port},export=${id},read-only=on`;

    // 1. The partition table, from the whole disk exported over FUSE.
    const whole = path.join(dir, 'disk.fuse');
    const q1 = await fuseExport([nbd], 'n0', whole, 48 * MiB);
    const table = JSON.parse((await run('sfdisk', ['--json', whole])).stdout) as { partitiontable: { sectorsize?: number; partitions: { start: number; size: number }[] } };
    await stop(q1);
    const p = table.partitiontable.partitions[0]!;
    const sector = table.partitiontable.sectorsize ?? 512;
    assert.deepEqual([p.start * sector, p.size * sector], [MiB, 32 * MiB]);

    // 2. The partition alone over FUSE: debugfs reads the file system where it lies, on demand.
    const partFile = path.join(dir, 'part.fuse');
    const q2 = await fuseExport([nbd, `driver=raw,node-name=p0,file=n0,offset=${p.start * sector},size=${p.size * sector},read-only=on`], 'p0', partFile, p.size * sector);
    const out = path.join(dir, 'out');
    await fs.mkdir(out);
    await run('debugfs', ['-R', `dump /etc/hostname ${path.join(out, 'hostname')}`, partFile]);
    await run('debugfs', ['-R', `rdump /etc/app ${out}`, partFile]);
    await stop(q2);
    assert.equal(await fs.readFile(path.join(out, 'hostname'), 'utf8'), 'web1\n');
    assert.ok((await fs.readFile(path.join(out, 'app', 'data.bin'))).equals(blob), 'the file copied out over FUSE is the one backed up');

    // 3. Without FUSE: the partition copied out (its holes skipped), then read the same way.
    const copy = path.join(dir, 'part-copy.img');
    await run('qemu-img', ['convert', '-O', 'raw', '--image-opts', `driver=raw,offset=${p.start * sector},size=${p.size * sector},file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,file.server.port=${port},file.export=${id}`, copy]);
    const out2 = path.join(dir, 'out2');
    await fs.mkdir(out2);
    await run('debugfs', ['-R', `rdump /etc ${out2}`, copy]);
    assert.equal(await fs.readFile(path.join(out2, 'etc', 'hostname'), 'utf8'), 'web1\n');
    assert.ok((await fs.readFile(path.join(out2, 'etc', 'app', 'data.bin'))).equals(blob));
    await stop(child);
    assert.equal(child.exitCode, 0);
    assert.equal(existsSync(path.join(repo, 'locks')) ? (await fs.readdir(path.join(repo, 'locks'))).length : 0, 0, 'the read lock is gone');
  });
});
