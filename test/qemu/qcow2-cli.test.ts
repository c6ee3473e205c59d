/**
 * qcow2 images through the real `haven` CLI: a backup reads the disk as the guest sees it (virtual
 * size, holes not read, a backing file's data included) and records the same volume digest as the
 * same disk in raw; a restore writes raw bytes or creates a qcow2 image, identical by `qemu-img
 * compare`, and replaces an existing target only once it succeeded; formats Haven does not read
 * are refused with a clear message.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { constants as fsc, existsSync, promises as fs, watch, type FSWatcher } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { imageInfo } from '../../src/qemu/qemu-tools.ts';
import { qemuImg, qemuImgCompare, qemuIo, qemuNbdProcesses, qemuToolsMissing } from '../helpers/qemu.ts';
import { cliErrorMessage, KiB, MiB, Rng, runCli, runCliJson, sha256File, spawnCli, collectCli, TempDirs } from '../helpers/volumes.ts';

const skip = qemuToolsMissing();
const temp = new TempDirs('haven-qcow2-cli-');
after(() => temp.cleanup());

const SIZE = 96 * MiB;
const CHUNK = 64 * KiB; // the repository's default chunk size, and qcow2's default cluster size
const UNKNOWN_ID = '01234567-89ab-4def-8123-456789abcdef';
const TMP_RE = /\.haven-[0-9a-f]{8}\.tmp$/;

interface BackupJson {
  id: string;
  kind: string;
  sizeBytes: number;
  readBytes: number;
  changedBlockTracking: boolean;
  volumeDigest: string;
  newBytes: number;
}

interface RestoreJson {
  id: string;
  target: string;
  format: string;
  sizeBytes: number;
  writtenBytes: number;
  volumeDigest: string;
  verified: boolean;
}

/** A qemu-io write: a byte pattern, or the bytes of a file. */
type Write = { offset: number; length: number; pattern: number } | { offset: number; length: number; file: string };

function ioWrite(w: Write): string {
  return 'file' in w ? `write -q -s ${w.file} ${w.offset} ${w.length}` : `write -q -P ${w.pattern} ${w.offset} ${w.length}`;
}

/** Bytes of the chunks (= qcow2 clusters here) that hold any written byte: what a backup must read. */
function chunkCoverage(writes: Write[]): number {
  const chunks = new Set<number>();
  for (const w of writes) for (let c = Math.floor(w.offset / CHUNK); c * CHUNK < w.offset + w.length; c++) chunks.add(c);
  return chunks.size * CHUNK;
}

/** The files of a folder that are leftovers of a qcow2 restore (`<target>.haven-XXXXXXXX.tmp`). */
async function tmpLeftovers(folder: string): Promise<string[]> {
  return (await fs.readdir(folder)).filter((n) => TMP_RE.test(n));
}

function assertNoQemuNbd(needle: string): void {
  assert.deepEqual(qemuNbdProcesses(needle), [], `qemu-nbd still serving something under ${needle}`);
}

let dir: string;
let repo: string;
let img: string;
let writes: Write[];
let first: BackupJson;

before(async () => {
  if (skip) return;
  dir = temp.make();
  repo = path.join(dir, 'repo');
  img = path.join(dir, 'img.qcow2');
  const blob = path.join(dir, 'blob.bin');
  await fs.writeFile(blob, new Rng(11).bytes(3_000_000));
  writes = [
    { offset: 12_345, length: 70_000, pattern: 0x5a },
    { offset: 20_000_001, length: 3_000_000, file: blob },
    { offset: 64 * MiB - 1, length: 1, pattern: 0xa5 },
    { offset: 100_000_000, length: SIZE - 100_000_000, pattern: 0x33 }, // to the last byte
  ];
  await qemuImg(['create', '-q', '-f', 'qcow2', img, String(SIZE)]);
  await qemuIo(img, writes.map(ioWrite));
  const init = await runCliJson<{ encrypted: boolean; chunkSizeBytes: number }>(['init', '--repo', repo, '--json']);
  assert.equal(init.chunkSizeBytes, CHUNK);
});

describe('haven backup and restore of qcow2 images', { skip }, () => {
  it('backup of a qcow2 image: the virtual size, only the allocated clusters read, no changed-block tracking', async () => {
    assert.equal((await imageInfo(img)).clusterSize, CHUNK);
    first = await runCliJson<BackupJson>(['backup', '--repo', repo, '--volume', img, '--json']);
    assert.equal(first.kind, 'full');
    assert.equal(first.sizeBytes, SIZE);
    assert.equal(first.sizeBytes, (await imageInfo(img)).virtualSize);
    assert.equal(first.changedBlockTracking, false);
    // Holes are not read: only the chunks that hold written bytes.
    assert.equal(first.readBytes, chunkCoverage(writes));
    assert.ok(first.readBytes < SIZE / 20, `${first.readBytes} bytes read of ${SIZE}`);
    assert.match(first.volumeDigest, /^[0-9a-f]{64}$/);
    assertNoQemuNbd(dir);
  });

  it('the same disk converted to raw records the same volume digest', async () => {
    const raw = path.join(dir, 'img.raw');
    await qemuImg(['convert', '-O', 'raw', img, raw]);
    const b = await runCliJson<BackupJson>(['backup', '--repo', repo, '--volume', raw, '--json']);
    assert.equal(b.sizeBytes, SIZE);
    assert.equal(b.volumeDigest, first.volumeDigest);
    assert.equal(b.newBytes, 0, 'every chunk was already stored by the qcow2 backup');
    const d = await runCliJson<{ volumeDigest: string }>(['digest', raw, '--repo', repo, '--json']);
    assert.equal(d.volumeDigest, first.volumeDigest);
    // The qcow2 image again, its format said: an incremental with nothing new, the same digest.
    const again = await runCliJson<BackupJson>(['backup', '--repo', repo, '--volume', img, '--format', 'qcow2', '--json']);
    assert.equal(again.kind, 'incremental');
    assert.equal(again.newBytes, 0);
    assert.equal(again.volumeDigest, first.volumeDigest);
  });

  it('restore --format qcow2 creates a qcow2 image identical to the source, over an existing file', async () => {
    const target = path.join(dir, 'restored.qcow2');
    await fs.writeFile(target, 'an old file in the way\n');
    const r = await runCliJson<RestoreJson>(['restore', '--force', '--repo', repo, '--backup', first.id, '--target', target, '--format', 'qcow2', '--json']);
    assert.equal(r.format, 'qcow2');
    assert.equal(r.verified, true);
    assert.equal(r.sizeBytes, SIZE);
    assert.equal(r.volumeDigest, first.volumeDigest);
    assert.equal(r.target, target);
    const info = await imageInfo(target);
    assert.equal(info.format, 'qcow2');
    assert.equal(info.virtualSize, SIZE);
    assert.equal(info.backingFilename, null);
    assert.ok(info.actualSize < 16 * MiB, `the image takes ${info.actualSize} bytes: holes were written`);
    const cmp = await qemuImgCompare([img, target]);
    assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
    assert.deepEqual(await tmpLeftovers(dir), []);
    assertNoQemuNbd(dir);
  });

  it('restore without --format writes the guest\'s bytes into a raw file', async () => {
    const target = path.join(dir, 'restored.raw');
    const r = await runCliJson<RestoreJson>(['restore', '--force', '--repo', repo, '--backup', first.id, '--target', target, '--json']);
    assert.equal(r.format, 'raw');
    assert.equal(r.verified, true);
    assert.equal((await fs.stat(target)).size, SIZE);
    assert.equal((await imageInfo(target)).format, 'raw');
    const cmp = await qemuImgCompare(['-f', 'raw', '-F', 'qcow2', target, img]);
    assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
    await qemuIo(target, ['read -q -P 0x5a 12345 70000', 'read -q -P 0xa5 67108863 1', `read -q -P 0 ${64 * MiB} ${MiB}`], { format: 'raw', readOnly: true });
  });

  it('a qcow2 image with a backing file is backed up as the guest sees it, the backing file\'s data included', async () => {
    const base = path.join(dir, 'base.qcow2');
    const top = path.join(dir, 'top.qcow2');
    const baseWrites: Write[] = [
      { offset: MiB + 7, length: 300_000, pattern: 0x11 },
      { offset: 9 * MiB + 3, length: 70_000, pattern: 0x22 },
    ];
    const topWrites: Write[] = [
      { offset: 9 * MiB + 10_000, length: 5000, pattern: 0x99 }, // over the base's data
      { offset: 20 * MiB + 1, length: 1000, pattern: 0x44 },
    ];
    await qemuImg(['create', '-q', '-f', 'qcow2', base, String(32 * MiB)]);
    await qemuIo(base, baseWrites.map(ioWrite));
    await qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    await qemuIo(top, topWrites.map(ioWrite));
    assert.equal((await imageInfo(top)).backingFilename, base);
    const b = await runCliJson<BackupJson>(['backup', '--repo', repo, '--volume', top, '--json']);
    assert.equal(b.sizeBytes, 32 * MiB);
    assert.equal(b.readBytes, chunkCoverage([...baseWrites, ...topWrites]));
    const target = path.join(dir, 'top-restored.raw');
    await runCliJson<RestoreJson>(['restore', '--force', '--repo', repo, '--backup', b.id, '--target', target, '--json']);
    const cmp = await qemuImgCompare(['-f', 'raw', '-F', 'qcow2', target, top]);
    assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
    // The base's bytes where the top image has none, the top's where it wrote over them.
    await qemuIo(target, [`read -q -P 0x11 ${MiB + 7} 300000`, `read -q -P 0x22 ${9 * MiB + 3} 9997`, `read -q -P 0x99 ${9 * MiB + 10_000} 5000`, `read -q -P 0x44 ${20 * MiB + 1} 1000`], { format: 'raw', readOnly: true });
    // Restored as qcow2: one image, no backing file, the same disk.
    const asQcow2 = path.join(dir, 'top-restored.qcow2');
    await runCliJson<RestoreJson>(['restore', '--force', '--repo', repo, '--backup', b.id, '--target', asQcow2, '--format', 'qcow2', '--json']);
    assert.equal((await imageInfo(asQcow2)).backingFilename, null);
    const cmp2 = await qemuImgCompare([asQcow2, top]);
    assert.equal(cmp2.code, 0, cmp2.stdout + cmp2.stderr);
    assertNoQemuNbd(dir);
  });
});

describe('restore --format qcow2 replaces an existing target only on success', { skip }, () => {
  let folder: string;
  let target: string;
  let targetSha: string;

  before(async () => {
    folder = temp.make('target');
    target = path.join(folder, 'vm.qcow2');
    // The target is a qcow2 image with data of its own (the volume a failed restore must not destroy).
    await qemuImg(['create', '-q', '-f', 'qcow2', target, String(8 * MiB)]);
    await qemuIo(target, ['write -q -P 0x77 4096 65536']);
    targetSha = await sha256File(target);
  });

  it('an unknown backup id: an error, the old file untouched, no temporary file left', async () => {
    const r = await runCli(['restore', '--force', '--repo', repo, '--backup', UNKNOWN_ID, '--target', target, '--format', 'qcow2', '--json']);
    assert.match(cliErrorMessage(r), new RegExp(`backup ${UNKNOWN_ID} not found`));
    assert.equal(r.stdout, '');
    assert.equal(await sha256File(target), targetSha);
    assert.deepEqual(await fs.readdir(folder), ['vm.qcow2']);
  });

  it('a pack damaged in the middle: the restore fails after it began writing its image, the old file is untouched, the image removed', async () => {
    // A repository of its own with one backup, whose packs are then damaged (sizes intact, so the
    // restore's checks before it starts pass and the damage is found while decoding).
    const repo2 = path.join(temp.make('repo2'), 'repo');
    await runCliJson(['init', '--repo', repo2, '--json']);
    const b = await runCliJson<BackupJson>(['backup', '--repo', repo2, '--volume', img, '--json']);
    const packsDir = path.join(repo2, 'packs');
    const packs = (await fs.readdir(packsDir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
    assert.ok(packs.length > 0);
    for (const p of packs) {
      const fh = await fs.open(p, 'r+');
      try {
        const size = (await fh.stat()).size;
        for (const at of [0.1, 0.3, 0.5, 0.7]) await fh.write(Buffer.alloc(16, 0xff), 0, 16, Math.floor(size * at));
      } finally {
        await fh.close();
      }
    }
    // Watch the target's folder: the restore's temporary image appears there, then goes.
    const seen = new Set<string>();
    let watcher: FSWatcher | undefined;
    try {
      watcher = watch(folder, (_event, name) => {
        if (name && TMP_RE.test(name)) seen.add(name);
      });
      const r = await runCli(['restore', '--force', '--repo', repo2, '--backup', b.id, '--target', target, '--format', 'qcow2', '--json']);
      assert.match(cliErrorMessage(r), /damaged|corrupt|does not match/i);
      assert.equal(r.stdout, '');
      await new Promise((res) => setTimeout(res, 100)); // the last events
    } finally {
      watcher?.close();
    }
    assert.ok(seen.size > 0, 'the restore never created its temporary image (it failed before starting)');
    for (const name of seen) assert.match(name, /^vm\.qcow2\.haven-[0-9a-f]{8}\.tmp$/);
    assert.equal(await sha256File(target), targetSha, 'the old target was changed');
    assert.deepEqual(await tmpLeftovers(folder), []);
    assert.deepEqual(await fs.readdir(folder), ['vm.qcow2']);
    assertNoQemuNbd(folder);
    // The old image still reads as it did.
    await qemuIo(target, ['read -q -P 0x77 4096 65536'], { readOnly: true });
  });

  it('a restore that succeeds then replaces it', async () => {
    const r = await runCliJson<RestoreJson>(['restore', '--force', '--repo', repo, '--backup', first.id, '--target', target, '--format', 'qcow2', '--json']);
    assert.equal(r.verified, true);
    const cmp = await qemuImgCompare([img, target]);
    assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
    assert.deepEqual(await fs.readdir(folder), ['vm.qcow2']);
  });
});

describe('formats Haven does not handle are refused', { skip }, () => {
  it('--format vmdk is refused by restore and backup, with a clear message and nothing created', async () => {
    const target = path.join(dir, 'never.vmdk');
    const r = await runCli(['restore', '--force', '--repo', repo, '--backup', first.id, '--target', target, '--format', 'vmdk']);
    assert.notEqual(r.code, 0);
    assert.match(cliErrorMessage(r), /--format must be one of raw, qcow2, not "vmdk"/);
    assert.equal(existsSync(target), false);
    const before = await runCliJson<unknown[]>(['list', '--repo', repo, '--json']);
    const b = await runCli(['backup', '--repo', repo, '--volume', img, '--format', 'vmdk']);
    assert.notEqual(b.code, 0);
    assert.match(cliErrorMessage(b), /--format must be one of raw, qcow2, not "vmdk"/);
    assert.equal((await runCliJson<unknown[]>(['list', '--repo', repo, '--json'])).length, before.length);
  });

  it('--format qcow2 on a raw file fails with one error line, records no backup and leaves no qemu-nbd', async (t) => {
    const raw = path.join(dir, 'plain.raw');
    await fs.writeFile(raw, new Rng(5).bytes(2 * MiB));
    const before = await runCliJson<unknown[]>(['list', '--repo', repo, '--json']);
    for (let i = 0; i < 3; i++) {
      const r = await runCli(['backup', '--repo', repo, '--volume', raw, '--format', 'qcow2', '--json']);
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stdout, '');
      const message = cliErrorMessage(r);
      // Whether qemu-nbd's refusal is seen at start or after Haven connected, the message names the file and why.
      assert.equal(message, `cannot serve ${raw} over NBD: Failed to blk_new_open '${raw}': Image is not in qcow2 format`);
      assertNoQemuNbd(raw);
    }
    assert.equal((await runCliJson<unknown[]>(['list', '--repo', repo, '--json'])).length, before.length);
    // Probed instead of told, the same file is raw and backs up.
    const ok = await runCliJson<BackupJson>(['backup', '--repo', repo, '--volume', raw, '--json']);
    assert.equal(ok.sizeBytes, 2 * MiB);
  });

  it(
    '--format qcow2 on a file qemu-nbd refuses names the file, also when the refusal comes after Haven connected',
    async () => {
      // A FIFO holds qemu-nbd in open() until a writer comes, so Haven is connected when qemu-nbd refuses the image.
      const fifo = path.join(temp.make('fifo'), 'slow.img');
      execFileSync('mkfifo', [fifo]);
      const child = spawnCli(['backup', '--repo', repo, '--volume', fifo, '--format', 'qcow2', '--json']);
      const done = collectCli(child, 30_000);
      try {
        const deadline = Date.now() + 15_000;
        while (qemuNbdProcesses(fifo).length === 0 && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 20));
        await new Promise((r) => setTimeout(r, 1000)); // Haven sees the socket and connects
        for (;;) {
          try {
            await (await fs.open(fifo, fsc.O_WRONLY | fsc.O_NONBLOCK)).close();
            break;
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'ENXIO' || Date.now() > deadline || child.exitCode !== null) break;
            await new Promise((r) => setTimeout(r, 20));
          }
        }
      } finally {
        const r = await done;
        // Should Haven have given up first, a qemu-nbd still waiting in open() is let go (it then refuses the empty image).
        if (qemuNbdProcesses(fifo).length) await (await fs.open(fifo, fsc.O_WRONLY | fsc.O_NONBLOCK).catch(() => null))?.close();
        const until = Date.now() + 5000;
        while (qemuNbdProcesses(fifo).length && Date.now() < until) await new Promise((res) => setTimeout(res, 20));
        assertNoQemuNbd(fifo);
        assert.equal(r.code, 1, r.stderr);
        assert.ok(cliErrorMessage(r).includes(`cannot serve ${fifo} over NBD`), r.stderr);
      }
    },
  );
});
