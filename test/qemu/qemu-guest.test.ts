/**
 * `haven backup --qmp SOCKET --node NODE`: the disk of a running guest (qemu-storage-daemon holding
 * a qcow2 image) backed up at one point in time, with changed-block tracking through a persistent
 * dirty bitmap per backup. The guest writes through its NBD export with qemu-io; every restore is
 * compared with the disk as the guest sees it (read through the same export), or with a copy taken
 * while no writes ran.
 */
import { CBT_SAMPLE_CHUNKS } from '../../src/engine/changed-blocks.ts';
import assert from 'node:assert/strict';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { changedReadBounds, compareImages, Guest, imageInfo, noQemu, QmpProxy, tool, type GuestState } from '../helpers/qsd.ts';
import { cliErrorMessage, collectCli, KiB, makeSparseFile, MiB, Rng, runCli, runCliJson, sleep, spawnCli, TempDirs, type CliResult } from '../helpers/volumes.ts';

interface BackupJson {
  id: string;
  volumeId: string;
  kind: 'full' | 'incremental';
  parentId: string | null;
  sizeBytes: number;
  readBytes: number;
  changedBlockTracking: boolean;
  fullReadReason?: string;
  volumeDigest: string;
}

interface ListJson {
  id: string;
  volumeId: string;
  kind: string;
  parentId: string | null;
}

const BLOCK = 4 * KiB;
const temp = new TempDirs('haven-qemu-guest-');
const guests: Guest[] = [];
const proxies: QmpProxy[] = [];
/** The repository most guests' backups go to (a guest may have one of its own: repoOf). */
let repo: string;
const repos = new Map<Guest, string>();
const repoOf = (g: Guest): string => repos.get(g) ?? repo;
let chunkSize: number;
/** Haven's temporary folder (its fleece overlays): removed with the test's folders. */
let havenTmp: string;

async function setUp(): Promise<void> {
  const dir = temp.make();
  repo = path.join(dir, 'repo');
  havenTmp = path.join(dir, 'tmp');
  await fs.mkdir(havenTmp);
  const init = await runCliJson<{ chunkSizeBytes: number }>(['init', '--repo', repo, '--json']);
  chunkSize = init.chunkSizeBytes;
}

async function tearDown(): Promise<void> {
  for (const p of proxies.splice(0)) await p.close().catch(() => undefined);
  for (const g of guests.splice(0)) await g.stop().catch(() => undefined);
  temp.cleanup();
}

const env = (): Record<string, string> => ({ TMPDIR: havenTmp });

/** A guest of `sizeBytes` whose disk holds seeded random data in `extents` ([start, length]), the rest unallocated. */
async function startGuest(name: string, sizeBytes: number, seed: number, extents: Array<[number, number]>, opts: { ownRepo?: boolean; silentSockets?: number } = {}): Promise<Guest> {
  const dir = temp.make(name);
  const raw = path.join(dir, 'base.raw');
  const rng = new Rng(seed);
  await makeSparseFile(raw, sizeBytes, extents.map(([offset, length]) => ({ offset, data: rng.bytes(length) })));
  const g = await Guest.start(dir, { sizeBytes, baseRaw: raw, ...(opts.silentSockets ? { silentSockets: opts.silentSockets } : {}) });
  guests.push(g);
  await fs.rm(raw);
  if (opts.ownRepo) {
    repos.set(g, path.join(dir, 'repo'));
    await runCliJson(['init', '--repo', repoOf(g), '--json']);
  }
  return g;
}

function backupArgs(g: Guest, extra: string[] = []): string[] {
  return ['backup', '--repo', repoOf(g), '--qmp', g.qmpSocket, '--node', 'disk0', '--json', ...extra];
}

async function backup(g: Guest, extra: string[] = []): Promise<BackupJson> {
  return await runCliJson<BackupJson>(backupArgs(g, extra), { env: env() });
}

/** The backups of `g`'s disk (volume id: its image file, or `volumeId`). */
async function list(g: Guest, volumeId = g.image): Promise<ListJson[]> {
  return (await runCliJson<ListJson[]>(['list', '--repo', repoOf(g), '--json'])).filter((m) => m.volumeId === volumeId);
}

/** Restores `id` and asserts it reads as the guest's disk does now (or as `copy`, a raw file). */
async function assertRestoreEquals(g: Guest, id: string, opts: { format?: 'raw' | 'qcow2'; copy?: string } = {}): Promise<void> {
  const format = opts.format ?? 'raw';
  const target = path.join(g.dir, `restore-${id.slice(0, 8)}.${format}`);
  const r = await runCliJson<{ verified: boolean; format: string }>(['restore', '--repo', repoOf(g), '--backup', id, '--target', target, '--format', format, '--json']);
  assert.equal(r.verified, true);
  const diff = opts.copy ? await compareImages(target, format, opts.copy, 'raw') : await g.compare(target, format);
  assert.equal(diff, null, `restore of ${id} (${format}) differs from ${opts.copy ? 'the copy' : 'the disk'}: ${diff}`);
  await fs.rm(target);
}

/**
 * After a successful backup `id`: exactly one Haven bitmap on disk0, haven-<id>, recording, persistent,
 * consistent, at 4 KiB; no fleece node, job or export of Haven's left; the guest's own export still there.
 */
function assertBookkeeping(s: GuestState, id: string): void {
  const ours = s.bitmaps.filter((b) => b.name?.startsWith('haven-'));
  assert.deepEqual(ours.map((b) => b.name), [`haven-${id}`], 'exactly the bitmap of the last backup');
  assert.equal(s.bitmaps.length, 1, 'no other bitmap on disk0 (a job\'s copy bitmap would be one)');
  const b = ours[0]!;
  assert.equal(b.recording, true, 'recording');
  assert.equal(b.persistent, true, 'persistent');
  assert.equal(b.busy, false, 'not busy');
  assert.notEqual(b.inconsistent, true, 'consistent');
  assert.equal(b.granularity, BLOCK, '4 KiB granularity');
  assert.deepEqual(s.strayBitmaps, [], 'no Haven bitmap on another node');
  assert.deepEqual(s.nodes.filter((n) => n.startsWith('haven-')), [], 'no Haven node left');
  assert.deepEqual([...s.nodes].sort(), ['disk0', 'file0'], 'no node left at all (a copy-before-write filter would be one)');
  assert.deepEqual(s.jobs, [], 'no job left');
  assert.deepEqual(s.exports, ['exp0'], 'only the guest\'s own export');
}

/** `n` distinct random 4 KiB blocks of a disk of `sizeBytes`. */
function pickBlocks(rng: Rng, sizeBytes: number, n: number): number[] {
  const total = Math.floor(sizeBytes / BLOCK);
  const got = new Set<number>();
  while (got.size < n) got.add(rng.int(total));
  return [...got];
}

/** qemu-io commands writing a random non-zero byte pattern over each block. */
function patternWrites(rng: Rng, blocks: number[]): string[] {
  return blocks.map((b) => `write -q -P 0x${(1 + rng.int(255)).toString(16)} ${b * BLOCK} ${BLOCK}`);
}

function blocksOf(start: number, length: number): number[] {
  const out: number[] = [];
  for (let b = Math.floor(start / BLOCK); b * BLOCK < start + length; b++) out.push(b);
  return out;
}

/** What a whole read of the disk reads: its data bytes at least, at most the chunks they touch. */
async function wholeReadBounds(g: Guest): Promise<{ min: number; max: number }> {
  const chunks = new Set<number>();
  let min = 0;
  for (const e of await g.dataExtents()) {
    min += e.length;
    for (let c = Math.floor(e.start / chunkSize); c * chunkSize < e.start + e.length; c++) chunks.add(c);
  }
  let max = 0;
  for (const c of chunks) max += Math.min(chunkSize, g.sizeBytes - c * chunkSize);
  return { min, max };
}

function assertReadBytes(b: BackupJson, bounds: { min: number; max: number }, what: string): void {
  assert.ok(b.readBytes >= bounds.min && b.readBytes <= bounds.max, `${what}: readBytes ${b.readBytes} not within [${bounds.min}, ${bounds.max}]`);
}

/** The changed-block read of writes covering `blocks` on `g`'s disk: every dirty block, at most the chunks' share. */
function changedBounds(g: Guest, blocks: Iterable<number>): { min: number; max: number } {
  const { dirtyBytes, maxReadBytes } = changedReadBounds(blocks, chunkSize, g.sizeBytes);
  return { min: dirtyBytes, max: maxReadBytes };
}

/** Starts `haven backup` through a QMP proxy, and resolves once QEMU has answered Haven's `command` (held back from Haven). */
async function backupHeldAt(g: Guest, command: string): Promise<{ proxy: QmpProxy; done: Promise<CliResult>; child: ReturnType<typeof spawnCli>; release: () => void }> {
  const proxy = await QmpProxy.start(path.join(g.dir, 'proxy.sock'), g.qmpSocket);
  proxies.push(proxy);
  const hold = proxy.holdReply(command);
  const args = ['backup', '--repo', repoOf(g), '--qmp', proxy.socketPath, '--node', 'disk0', '--nbd-socket', g.nbdSocket, '--json'];
  const child = spawnCli(args, { env: env() });
  const done = collectCli(child, 120_000);
  await Promise.race([
    hold.reached,
    done.then((r) => {
      throw new Error(`haven backup ended before QEMU answered its ${command} (exit ${r.code ?? r.signal}): ${r.stderr}`);
    }),
  ]);
  return { proxy, done, child, release: hold.release };
}

async function closeProxy(p: QmpProxy): Promise<void> {
  const at = proxies.indexOf(p);
  if (at >= 0) proxies.splice(at, 1);
  await p.close();
}

// Each group below has a guest of its own, and runs its steps in order; two groups run at once.
describe('haven backup --qmp: a running guest (qemu-storage-daemon)', { skip: noQemu, concurrency: 2 }, () => {
  before(setUp);
  after(tearDown);

  describe('full, then incremental from the dirty bitmap', { concurrency: 1 }, () => {
    const size = 256 * MiB;
    let g: Guest;
    let b1: BackupJson;
    let b2: BackupJson;

    before(async () => {
      // 24 MiB of data at 4 KiB-aligned (not chunk-aligned) places, the rest never written.
      const rng = new Rng(11);
      const extents: Array<[number, number]> = [];
      for (let i = 0; i < 24; i++) extents.push([i * 10 * MiB + rng.int(256) * BLOCK, MiB]);
      g = await startGuest('full-incr', size, 12, extents);
    });

    it('the first backup reads the whole allocated disk and leaves one bitmap, haven-<its id>', async () => {
      b1 = await backup(g);
      assert.equal(b1.kind, 'full');
      assert.equal(b1.parentId, null);
      assert.equal(b1.sizeBytes, size);
      assert.equal(b1.volumeId, g.image, 'the volume is the guest\'s image file');
      assert.equal(b1.changedBlockTracking, false);
      assert.match(b1.fullReadReason ?? '', /no previous backup/);
      assertReadBytes(b1, await wholeReadBounds(g), 'first backup');
      assertBookkeeping(await g.state(), b1.id);
    });

    it('after 1 % of the 4 KiB blocks are rewritten, the incremental reads only those; its restore is the disk', async () => {
      const rng = new Rng(13);
      const blocks = pickBlocks(rng, size, Math.round((size / BLOCK) * 0.01));
      // Also zeros written over a whole chunk of data (it becomes a hole) and over one block of data.
      const used = new Set(blocks.map((b) => Math.floor((b * BLOCK) / chunkSize)));
      const dataChunks = (await g.dataExtents()).flatMap((e) => {
        const out: number[] = [];
        for (let c = Math.ceil(e.start / chunkSize); (c + 1) * chunkSize <= e.start + e.length; c++) out.push(c);
        return out;
      });
      const [zc1, zc2] = dataChunks.filter((c) => !used.has(c)).slice(-2);
      assert.ok(zc1 !== undefined && zc2 !== undefined);
      const zeroWrites = [`write -q -z ${zc1 * chunkSize} ${chunkSize}`, `write -q -z ${zc2 * chunkSize + BLOCK} ${BLOCK}`];
      await g.io([...patternWrites(rng, blocks), ...zeroWrites]);

      b2 = await backup(g);
      assert.equal(b2.kind, 'incremental');
      assert.equal(b2.parentId, b1.id);
      assert.equal(b2.changedBlockTracking, true);
      assert.equal(b2.fullReadReason, undefined);
      const bounds = changedBounds(g, [...blocks, ...blocksOf(zc1 * chunkSize, chunkSize), ...blocksOf(zc2 * chunkSize + BLOCK, BLOCK)]);
      // Every rewritten block is read (the zeroed chunk is a hole now: nothing to read there).
      assertReadBytes(b2, { min: blocks.length * BLOCK, max: bounds.max }, 'incremental');
      assert.ok(b2.readBytes < size / 50, `readBytes ${b2.readBytes} far below the disk size`);
      assert.notEqual(b2.volumeDigest, b1.volumeDigest);
      assertBookkeeping(await g.state(), b2.id);
      await assertRestoreEquals(g, b2.id);
      await assertRestoreEquals(g, b2.id, { format: 'qcow2' });
    });

    it('a backup with no writes since reads nothing', async () => {
      const b3 = await backup(g);
      assert.equal(b3.kind, 'incremental');
      assert.equal(b3.parentId, b2.id);
      assert.equal(b3.changedBlockTracking, true);
      assert.ok(b3.readBytes <= CBT_SAMPLE_CHUNKS * chunkSize, `readBytes ${b3.readBytes}: only the sample of unchanged chunks`);
      assert.equal(b3.volumeDigest, b2.volumeDigest);
      assertBookkeeping(await g.state(), b3.id);
      const mine = await list(g);
      assert.deepEqual(mine.map((m) => [m.id, m.kind, m.parentId]).sort(), [[b1.id, 'full', null], [b2.id, 'incremental', b1.id], [b3.id, 'incremental', b2.id]].sort());
    });
  });

  describe('one point in time', { concurrency: 1 }, () => {
    // Not a multiple of the chunk size: the last chunk is short.
    const size = 64 * MiB + 36 * KiB;
    let g: Guest;
    let b1: BackupJson;
    let b2: BackupJson;
    const during: number[] = [];

    before(async () => {
      g = await startGuest('pit', size, 21, [[0, 20 * MiB], [24 * MiB + 12 * KiB, 20 * MiB], [size - 100 * KiB, 100 * KiB]]);
      b1 = await backup(g);
    });

    it('guest writes after the point in time, before and while Haven reads, are not in the backup', async () => {
      const rng = new Rng(22);
      const before1 = pickBlocks(rng, size, 300);
      await g.io(patternWrites(rng, before1));
      const copy = path.join(g.dir, 'at-point.raw');
      await g.copyTo(copy); // no writes run now: the disk as the backup must see it

      // Haven's transaction (copy-before-write job, new bitmap, parent's stopped) is done in QEMU, and
      // Haven has read nothing: the guest overwrites its start, middle, holes and short last chunk.
      const held = await backupHeldAt(g, 'transaction');
      const regions: Array<[number, number, number]> = [[0, 8 * MiB, 0xa5], [30 * MiB, 4 * MiB, 0x5a], [46 * MiB, 2 * MiB, 0x3c], [size - 36 * KiB, 36 * KiB, 0x77]];
      const mid = pickBlocks(rng, size, 200);
      await g.io([...regions.map(([s, l, p]) => `write -q -P 0x${p.toString(16)} ${s} ${l}`), ...patternWrites(rng, mid), `write -q -z ${12 * MiB} ${MiB}`]);
      for (const [s, l] of regions) during.push(...blocksOf(s, l));
      during.push(...mid, ...blocksOf(12 * MiB, MiB));
      held.release();
      // More writes while Haven reads.
      const late = pickBlocks(rng, size, 200);
      during.push(...late, ...blocksOf(40 * MiB, 3 * MiB));
      await g.io([...patternWrites(rng, late), `write -q -P 0x99 ${40 * MiB} ${3 * MiB}`]);
      const r = await held.done;
      await closeProxy(held.proxy);
      assert.equal(r.code, 0, r.stderr);
      b2 = JSON.parse(r.stdout) as BackupJson;

      assert.equal(b2.kind, 'incremental');
      assert.equal(b2.parentId, b1.id);
      assert.equal(b2.changedBlockTracking, true);
      // The parent's bitmap stopped at the point in time: only the writes before it are read.
      assertReadBytes(b2, changedBounds(g, before1), 'backup at the point in time');
      await assertRestoreEquals(g, b2.id, { copy });
      assert.notEqual(await compareImages(copy, 'raw', g.url, 'raw'), null, 'the disk did change after the point in time');
      assertBookkeeping(await g.state(), b2.id);
    });

    it('the next backup reads the writes made during the previous one', async () => {
      const b3 = await backup(g);
      assert.equal(b3.parentId, b2.id);
      assert.equal(b3.changedBlockTracking, true);
      // The 1 MiB of zeros written over data reads as a hole now; every other block written is read.
      const zeroed = new Set(blocksOf(12 * MiB, MiB));
      assertReadBytes(b3, { min: new Set(during.filter((b) => !zeroed.has(b))).size * BLOCK, max: changedBounds(g, during).max }, 'next backup');
      assertBookkeeping(await g.state(), b3.id);
      await assertRestoreEquals(g, b3.id);
    });
  });

  describe('the dirty bitmap in the image', { concurrency: 1 }, () => {
    const size = 32 * MiB;
    let g: Guest;
    let b1: BackupJson;
    let last: BackupJson;

    before(async () => {
      g = await startGuest('bitmap', size, 31, [[MiB, 6 * MiB], [20 * MiB, 4 * MiB]]);
    });

    it('is stored in the qcow2 image and used again after QEMU restarts', async () => {
      b1 = await backup(g);
      assertBookkeeping(await g.state(), b1.id);
      await g.stop(); // QEMU stores persistent bitmaps as it closes the image
      const stored = (await imageInfo(g.image))['format-specific']?.data?.bitmaps ?? [];
      assert.deepEqual(stored.map((b) => b.name), [`haven-${b1.id}`]);
      assert.equal(stored[0]!.granularity, BLOCK);
      assert.ok(stored[0]!.flags.includes('auto'), `flags ${stored[0]!.flags.join(',')}: enabled`);
      assert.ok(!stored[0]!.flags.includes('in-use'), `flags ${stored[0]!.flags.join(',')}: not in use`);

      await g.boot();
      assertBookkeeping(await g.state(), b1.id);
      const rng = new Rng(32);
      const blocks = pickBlocks(rng, size, 80);
      await g.io(patternWrites(rng, blocks));
      const b2 = await backup(g);
      assert.equal(b2.parentId, b1.id);
      assert.equal(b2.changedBlockTracking, true);
      assertReadBytes(b2, changedBounds(g, blocks), 'after a restart');
      assertBookkeeping(await g.state(), b2.id);
      await assertRestoreEquals(g, b2.id);
      last = b2;
    });

    it('a QEMU that crashed before storing the bitmap loses it: the next backup reads the whole disk and says why', async () => {
      const rng = new Rng(33);
      await g.io(patternWrites(rng, pickBlocks(rng, size, 50)));
      await g.stop('SIGKILL'); // haven-<last> was made in this run of QEMU: only QEMU's memory held it
      assert.deepEqual((await imageInfo(g.image))['format-specific']?.data?.bitmaps ?? [], []);
      await g.boot();
      assert.deepEqual((await g.state()).bitmaps, []);

      const b3 = await backup(g);
      assert.equal(b3.kind, 'incremental');
      assert.equal(b3.parentId, last.id);
      assert.equal(b3.changedBlockTracking, false);
      assert.match(b3.fullReadReason ?? '', /no dirty bitmap/);
      assert.ok(b3.fullReadReason!.includes(`haven-${last.id}`), b3.fullReadReason);
      assertReadBytes(b3, await wholeReadBounds(g), 'after a crash');
      assertBookkeeping(await g.state(), b3.id);
      last = b3;
    });

    it('a QEMU that crashed with the bitmap loaded from the image leaves it inconsistent: the next backup reads the whole disk', async () => {
      await g.stop();
      await g.boot(); // haven-<last> loaded from the image, marked in use there
      const rng = new Rng(34);
      await g.io(patternWrites(rng, pickBlocks(rng, size, 50)));
      await g.stop('SIGKILL');
      const stored = (await imageInfo(g.image))['format-specific']?.data?.bitmaps ?? [];
      assert.deepEqual(stored.map((b) => b.name), [`haven-${last.id}`]);
      assert.ok(stored[0]!.flags.includes('in-use'), `flags ${stored[0]!.flags.join(',')}: left in use`);
      await g.boot();
      assert.equal((await g.state()).bitmaps.find((b) => b.name === `haven-${last.id}`)?.inconsistent, true);

      const b4 = await backup(g);
      assert.equal(b4.parentId, last.id);
      assert.equal(b4.changedBlockTracking, false);
      assert.match(b4.fullReadReason ?? '', /inconsistent/);
      assert.ok(b4.fullReadReason!.includes(`haven-${last.id}`), b4.fullReadReason);
      assertReadBytes(b4, await wholeReadBounds(g), 'after a crash');
      assertBookkeeping(await g.state(), b4.id);
      await assertRestoreEquals(g, b4.id);
    });
  });

  describe('whole reads, when they must be', { concurrency: 1 }, () => {
    const size = 64 * MiB;
    let g: Guest;
    let last: BackupJson;
    const rng = new Rng(41);

    before(async () => {
      g = await startGuest('fallback', size, 42, [[0, 4 * MiB], [30 * MiB + 8 * KiB, 8 * MiB], [60 * MiB, 4 * MiB]]);
      last = await backup(g);
    });

    it('a bitmap removed through QMP: the next backup reads the whole allocated disk and names the bitmap', async () => {
      await g.qmp((q) => q.execute('block-dirty-bitmap-remove', { node: 'disk0', name: `haven-${last.id}` }));
      await g.io(patternWrites(rng, pickBlocks(rng, size, 40)));
      const b = await backup(g);
      assert.equal(b.kind, 'incremental');
      assert.equal(b.parentId, last.id);
      assert.equal(b.changedBlockTracking, false);
      assert.match(b.fullReadReason ?? '', /bitmap/);
      assert.ok(b.fullReadReason!.includes(`haven-${last.id}`), b.fullReadReason);
      assertReadBytes(b, await wholeReadBounds(g), 'without the bitmap');
      assertBookkeeping(await g.state(), b.id);
      await assertRestoreEquals(g, b.id);
      last = b;
    });

    it('--full reads everything, records no parent, and the next backup counts changes from it', async () => {
      await g.io(patternWrites(rng, pickBlocks(rng, size, 40)));
      const f = await backup(g, ['--full']);
      assert.equal(f.kind, 'full');
      assert.equal(f.parentId, null);
      assert.equal(f.changedBlockTracking, false);
      assertReadBytes(f, await wholeReadBounds(g), '--full');
      assertBookkeeping(await g.state(), f.id);

      const blocks = pickBlocks(rng, size, 40);
      await g.io(patternWrites(rng, blocks));
      const n = await backup(g);
      assert.equal(n.parentId, f.id);
      assert.equal(n.changedBlockTracking, true);
      assertReadBytes(n, changedBounds(g, blocks), 'after --full');
      assertBookkeeping(await g.state(), n.id);
      last = n;
    });

    it('--volume-id other starts a chain of its own, and neither chain takes the other\'s changes', async () => {
      const o1 = await backup(g, ['--volume-id', 'other']);
      assert.equal(o1.volumeId, 'other');
      assert.equal(o1.kind, 'full');
      assert.equal(o1.parentId, null);
      assert.equal(o1.changedBlockTracking, false);
      assertReadBytes(o1, await wholeReadBounds(g), 'other volume');
      assertBookkeeping(await g.state(), o1.id);

      await g.io(patternWrites(rng, pickBlocks(rng, size, 40)));
      // The node has one Haven bitmap, other's now: the image's own chain reads whole, and says why.
      const d = await backup(g);
      assert.equal(d.volumeId, g.image);
      assert.equal(d.parentId, last.id);
      assert.equal(d.changedBlockTracking, false);
      assert.ok((d.fullReadReason ?? '').includes(`haven-${last.id}`), d.fullReadReason);
      assertReadBytes(d, await wholeReadBounds(g), 'back on the image\'s chain');

      await g.io(patternWrites(rng, pickBlocks(rng, size, 40)));
      const o2 = await backup(g, ['--volume-id', 'other']);
      assert.equal(o2.volumeId, 'other');
      assert.equal(o2.parentId, o1.id);
      assert.equal(o2.changedBlockTracking, false);
      assertBookkeeping(await g.state(), o2.id);
    });
  });

  describe('a backup that fails or is killed loses no change', { concurrency: 1 }, () => {
    const size = 64 * MiB;
    let g: Guest;
    let good: BackupJson;
    const rng = new Rng(51);

    before(async () => {
      // A repository of its own: this test makes it refuse a backup.
      g = await startGuest('failed', size, 52, [[0, 10 * MiB], [40 * MiB, 10 * MiB]], { ownRepo: true });
      good = await backup(g);
    });

    it('a backup failing after its point in time folds the changes back into the last backup\'s bitmap', async () => {
      const w1 = pickBlocks(rng, size, 60);
      await g.io(patternWrites(rng, w1));
      const before = (await list(g)).length;
      // The repository refuses the backup's lock, which is taken after the point in time.
      const locks = path.join(repoOf(g), 'locks');
      await fs.rename(locks, `${locks}.aside`);
      await fs.writeFile(locks, 'not a folder');
      let r!: CliResult;
      let proxy!: QmpProxy;
      const wMid = pickBlocks(rng, size, 60);
      try {
        const held = await backupHeldAt(g, 'transaction');
        proxy = held.proxy;
        await g.io(patternWrites(rng, wMid)); // recorded in the failed backup's bitmap only
        held.release();
        r = await held.done;
      } finally {
        await fs.rm(locks);
        await fs.rename(`${locks}.aside`, locks);
      }
      await closeProxy(proxy);
      cliErrorMessage(r);
      assert.ok(proxy.commands.includes('block-dirty-bitmap-merge'), `the failed backup folds its bitmap back (${proxy.commands.join(', ')})`);
      assert.equal((await list(g)).length, before, 'no backup recorded');
      const s = await g.state();
      assert.equal(s.bitmaps.find((b) => b.name === `haven-${good.id}`)?.recording, true, 'the last backup\'s bitmap records again');
      assertBookkeeping(s, good.id);

      const w2 = pickBlocks(rng, size, 60);
      await g.io(patternWrites(rng, w2));
      const b = await backup(g);
      assert.equal(b.parentId, good.id);
      assert.equal(b.changedBlockTracking, true);
      assertReadBytes(b, changedBounds(g, [...w1, ...wMid, ...w2]), 'after a failed backup');
      assertBookkeeping(await g.state(), b.id);
      await assertRestoreEquals(g, b.id);
      good = b;
    });

    /** Blocks written since the last successful backup, by the steps below. */
    const pending: number[] = [];

    it('a backup interrupted (SIGTERM) once it reads exits 130 and leaves only the last backup\'s bitmap, recording', async () => {
      const w1 = pickBlocks(rng, size, 60);
      await g.io(patternWrites(rng, w1));
      const held = await backupHeldAt(g, 'block-export-add');
      const wMid = pickBlocks(rng, size, 60);
      await g.io(patternWrites(rng, wMid));
      held.child.kill('SIGTERM');
      await sleep(300); // Haven, waiting on QEMU's answer, takes the signal now
      held.release();
      const r = await held.done;
      await closeProxy(held.proxy);
      assert.equal(r.code, 130, r.stderr);
      assert.match(cliErrorMessage(r), /interrupted|cancel/);
      assert.ok(held.proxy.commands.includes('block-dirty-bitmap-merge'), `folds its bitmap back (${held.proxy.commands.join(', ')})`);
      assertBookkeeping(await g.state(), good.id);
      pending.push(...w1, ...wMid);
    });

    it('a killed backup leaves its node, job, export and bitmaps; the next one removes them and reads every change', async () => {
      const w1 = pickBlocks(rng, size, 60);
      await g.io(patternWrites(rng, w1));
      w1.push(...pending);
      // Haven is killed once QEMU has added its export, the fleece being in place.
      const held = await backupHeldAt(g, 'block-export-add');
      const wMid = pickBlocks(rng, size, 60);
      await g.io(patternWrites(rng, wMid));
      held.child.kill('SIGKILL');
      held.release();
      const r = await held.done;
      await closeProxy(held.proxy);
      assert.equal(r.signal, 'SIGKILL');

      const left = await g.state();
      assert.equal(left.exports.filter((e) => e.startsWith('haven-e-')).length, 1, `exports ${left.exports.join(', ')}`);
      assert.equal(left.jobs.filter((j) => j.startsWith('haven-j-')).length, 1, `jobs ${left.jobs.join(', ')}`);
      assert.equal(left.nodes.filter((n) => n.startsWith('haven-f-')).length, 1, `nodes ${left.nodes.join(', ')}`);
      const ours = left.bitmaps.filter((b) => b.name?.startsWith('haven-'));
      assert.equal(ours.length, 2, `bitmaps ${ours.map((b) => b.name).join(', ')}`);
      assert.equal(ours.find((b) => b.name === `haven-${good.id}`)?.recording, false, 'the last backup\'s bitmap stopped at the point in time');
      const killedId = ours.find((b) => b.name !== `haven-${good.id}`)!.name!.slice('haven-'.length);
      assert.equal(ours.find((b) => b.name === `haven-${killedId}`)?.recording, true);

      const w2 = pickBlocks(rng, size, 60);
      await g.io(patternWrites(rng, w2));
      // Without --nbd-socket: Haven finds the guest's NBD server itself.
      const b = await backup(g);
      assert.equal(b.parentId, good.id);
      assert.equal(b.changedBlockTracking, true);
      assertReadBytes(b, changedBounds(g, [...w1, ...wMid, ...w2]), 'after a killed backup');
      assertBookkeeping(await g.state(), b.id);
      await assertRestoreEquals(g, b.id);
      assert.ok(!(await list(g)).some((m) => m.id === killedId), 'the killed backup was never recorded');
    });
  });

  describe('errors', { concurrency: 1 }, () => {
    let g: Guest;

    before(async () => {
      g = await startGuest('errors', 8 * MiB, 61, [[0, MiB]]);
    });

    it('a node QEMU does not have: an error naming it, and nothing left behind', async () => {
      const r = await runCli(backupArgs(g).map((a) => (a === 'disk0' ? 'no-such-node' : a)), { env: env() });
      const msg = cliErrorMessage(r);
      assert.match(msg, /no-such-node/);
      assert.match(msg, /disk0/, 'names the nodes there are');
      const s = await g.state();
      assert.deepEqual(s.bitmaps, []);
      assert.deepEqual([...s.nodes.filter((n) => n.startsWith('haven-')), ...s.jobs, ...s.exports.filter((e) => e !== 'exp0')], []);
      assert.deepEqual(await list(g), []);
    });

    it('usage errors: --qmp without --node, with --volume or --format; --node without --qmp; no QMP socket', async () => {
      const cases: Array<[string[], RegExp]> = [
        [['--qmp', g.qmpSocket], /--node/],
        [['--qmp', g.qmpSocket, '--node', 'disk0', '--volume', g.image], /--volume.*--qmp|--qmp.*--volume/],
        [['--qmp', g.qmpSocket, '--node', 'disk0', '--format', 'qcow2'], /--format/],
        [['--volume', g.image, '--node', 'disk0'], /--qmp/],
        [['--qmp', path.join(g.dir, 'nothing.sock'), '--node', 'disk0'], /nothing\.sock/],
      ];
      for (const [args, re] of cases) {
        const r = await runCli(['backup', '--repo', repoOf(g), '--json', ...args], { env: env() });
        assert.match(cliErrorMessage(r), re, args.join(' '));
      }
      assert.ok(existsSync(g.qmpSocket));
      assert.deepEqual((await g.state()).bitmaps, []);
    });

    // A backup job of anyone's on the node (the operator's own, a management tool's) gives it an
    // unnamed copy bitmap; openGuestDisk once read b.name.startsWith(...) of every bitmap and failed
    // with "Cannot read properties of undefined (reading 'startsWith')".
    it('a backup job of someone else\'s on the node (an unnamed bitmap there) is no crash', async () => {
      const target = path.join(g.dir, 'operators-target.qcow2');
      await tool('qemu-img', ['create', '-q', '-f', 'qcow2', target, String(g.sizeBytes)]);
      await g.qmp(async (q) => {
        await q.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'operators-target', file: { driver: 'file', filename: target } });
        await q.execute('blockdev-backup', { device: 'disk0', target: 'operators-target', sync: 'none', 'job-id': 'operators-job' });
      });
      try {
        const r = await runCli(backupArgs(g), { env: env() });
        if (r.code === 0) await assertRestoreEquals(g, (JSON.parse(r.stdout) as BackupJson).id);
        else assert.doesNotMatch(cliErrorMessage(r), /Cannot read properties|undefined/);
      } finally {
        await g.qmp(async (q) => {
          await q.execute('block-job-cancel', { device: 'operators-job', force: true });
          for (let i = 0; i < 500 && (await q.execute<unknown[]>('query-block-jobs')).length; i++) await sleep(10);
          await q.execute('blockdev-del', { 'node-name': 'operators-target' });
        });
      }
    });

    // Without --nbd-socket, findGuestNbdSocket tries an NBD handshake on each Unix socket the
    // guest's QEMU listens on, in the order /proc lists its descriptors; one that accepts and never
    // speaks (a serial console's) once held Haven for ever (no time limit on the handshake; SIGTERM
    // and SIGINT did not end it either).
    it('a guest whose QEMU listens on other, silent sockets: its NBD server is still found, or Haven says why', async () => {
      const s = await startGuest('silent', 8 * MiB, 62, [[0, MiB]], { silentSockets: 3 });
      const r = await runCli(backupArgs(s), { env: env(), timeoutMs: 10_000 });
      assert.notEqual(r.signal, 'SIGKILL', 'haven backup still ran after 10 s');
      if (r.code === 0) await assertRestoreEquals(s, (JSON.parse(r.stdout) as BackupJson).id);
      else assert.match(cliErrorMessage(r), /--nbd-socket/);
    });
  });
});
