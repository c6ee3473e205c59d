/**
 * Data extents of sparse volume files (qemu-img map) and the hole test a backup asks per batch:
 * every written byte lies in an extent, and whenever qemu-img cannot vouch for a map (missing,
 * failing, slow, printing something else) the answer is null: read everything.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { ErrorCode, isAppError } from '../../src/domain/errors.ts';
import { isHole, parseQemuImgMap, QemuImgMapParser, qemuImgDataExtents, type Extent } from '../../src/engine/volume-extents.ts';
import { FileVolumeSource, type VolumeSource } from '../../src/engine/volume-source.ts';
import { writeBackup } from '../../src/engine/backup-writer.ts';
import { backupFile, engineTestContext, initRepo, restoreTo } from '../helpers/repo.ts';
import { skipOutsideCi } from '../helpers/skip.ts';
import { GiB, makeSparseFile, MiB, Rng, sha256File } from '../helpers/volumes.ts';

const { temp, pool } = engineTestContext('haven-extents-');
const noQemuImg = skipOutsideCi(spawnSync('qemu-img', ['--version']).status === 0 ? false : 'qemu-img (Debian qemu-utils) is not installed');

/** A sparse file of `size` bytes with each [offset, bytes] written. */
async function sparseFile(file: string, size: number, writes: Array<[number, Buffer]>): Promise<void> {
  await makeSparseFile(file, size, writes.map(([offset, data]) => ({ offset, data })));
}

function assertWellFormed(extents: readonly Extent[], size: number): void {
  let end = -1;
  for (const e of extents) {
    assert.ok(e.length > 0 && e.start > end && e.start + e.length <= size, `extent ${JSON.stringify(e)} is empty, out of order, touching the previous one or past the end`);
    end = e.start + e.length;
  }
}

function assertCovered(extents: readonly Extent[], writes: Array<[number, Buffer]>): void {
  for (const [at, bytes] of writes) {
    for (let b = at; b < at + bytes.length; b++) {
      assert.ok(extents.some((e) => e.start <= b && b < e.start + e.length), `written byte ${b} lies in no extent`);
    }
  }
}

/** A stand-in for qemu-img: a shell script with `body`, in a folder of its own (for PATH). */
async function fakeQemuImg(body: string): Promise<{ dir: string; command: string; ran: () => Promise<boolean> }> {
  const dir = temp.make('fake');
  const marker = path.join(dir, 'ran');
  const command = path.join(dir, 'qemu-img');
  await fs.writeFile(command, `#!/bin/sh\ntouch '${marker}'\n${body}\n`, { mode: 0o755 });
  return { dir, command, ran: () => fs.access(marker).then(() => true, () => false) };
}

/** Runs `f` with `dir` first on PATH, or alone on it with `only`. */
async function withPath<T>(dir: string, f: () => Promise<T>, only = false): Promise<T> {
  const saved = process.env.PATH;
  process.env.PATH = only ? dir : `${dir}:${saved}`;
  try {
    return await f();
  } finally {
    process.env.PATH = saved;
  }
}

describe('isHole', () => {
  const extents: Extent[] = [{ start: 4096, length: 100 }, { start: 10_000, length: 1 }, { start: 1 << 20, length: 1 << 20 }];

  it('is true only for ranges that touch no extent, up to the byte', () => {
    assert.equal(isHole([], 0, 1 << 30), true);
    assert.equal(isHole(extents, 0, 4096), true); // ends where the first extent starts
    assert.equal(isHole(extents, 0, 4097), false);
    assert.equal(isHole(extents, 4196, 10_000 - 4196), true); // between the first two
    assert.equal(isHole(extents, 4195, 1), false); // the first extent's last byte
    assert.equal(isHole(extents, 9_999, 2), false);
    assert.equal(isHole(extents, 10_001, (1 << 20) - 10_001), true);
    assert.equal(isHole(extents, 2 << 20, 1 << 30), true); // past the last
    assert.equal(isHole(extents, 0, 1 << 30), false);
  });

  it('agrees with a byte-by-byte check on random extents and ranges', () => {
    const rng = new Rng(7);
    for (let round = 0; round < 200; round++) {
      const ex: Extent[] = [];
      for (let at = rng.int(50); at < 2000; at += 1 + rng.int(200)) {
        const length = 1 + rng.int(100);
        ex.push({ start: at, length });
        at += length;
      }
      const data = new Uint8Array(2400);
      for (const e of ex) data.fill(1, e.start, e.start + e.length);
      for (let q = 0; q < 20; q++) {
        const start = rng.int(2300);
        const length = 1 + rng.int(100);
        assert.equal(isHole(ex, start, length), data.subarray(start, start + length).every((b) => b === 0), `range ${start}+${length} in ${JSON.stringify(ex)}`);
      }
    }
  });
});

describe('parseQemuImgMap', () => {
  const entry = (start: number, length: number, zero: boolean): string =>
    `{ "start": ${start}, "length": ${length}, "depth": 0, "present": true, "zero": ${zero}, "data": ${!zero}, "offset": ${start}}`;
  const map = (...e: string[]): string => `[${e.join(',\n')}]\n`;

  it('reads data entries as extents, merged when adjacent, and zero entries as holes', () => {
    const text = map(entry(0, 12288, true), entry(12288, 4096, false), entry(16384, 8192, false), entry(24576, 1 << 20, true), entry(24576 + (1 << 20), 4096, false));
    assert.deepEqual(parseQemuImgMap(text, 28672 + (1 << 20)), [{ start: 12288, length: 12288 }, { start: 24576 + (1 << 20), length: 4096 }]);
  });

  it('cuts a map that runs to the next multiple of 512 at the end of the file', () => {
    // What qemu-img 7.2 prints for a 1,000,001-byte file with one byte written at 1,000,000.
    const text = map(entry(0, 999_424, true), entry(999_424, 577, false), entry(1_000_001, 447, true));
    assert.deepEqual(parseQemuImgMap(text, 1_000_001), [{ start: 999_424, length: 577 }]);
    assert.deepEqual(parseQemuImgMap(map(entry(0, 1_000_448, false)), 1_000_001), [{ start: 0, length: 1_000_001 }]);
  });

  it('takes an entry that is not zero as data, whatever its data flag says', () => {
    const text = `[{ "start": 0, "length": 4096, "depth": 0, "present": false, "zero": false, "data": false}]`;
    assert.deepEqual(parseQemuImgMap(text, 4096), [{ start: 0, length: 4096 }]);
  });

  it('refuses output it cannot vouch for', () => {
    const refused: Array<[string, string, number]> = [
      ['garbage', 'qemu-img: something went wrong', 8192],
      ['not an array', entry(0, 8192, true), 8192],
      ['cut short', map(entry(0, 4096, true), entry(4096, 4096, false)).slice(0, -10), 8192],
      ['a gap', map(entry(0, 4096, true), entry(8192, 4096, false)), 12288],
      ['an overlap', map(entry(0, 8192, true), entry(4096, 8192, false)), 12288],
      ['entries out of order, covering the file in total', map(entry(0, 4096, true), entry(8192, 4096, false), entry(4096, 4096, true)), 12288],
      ['not from 0', map(entry(4096, 4096, false)), 8192],
      ['short of the end', map(entry(0, 4096, false)), 8192],
      ['past the end by more than a sector', map(entry(0, 8192 + 512, true)), 8192],
      ['no zero flag', '[{ "start": 0, "length": 8192, "data": false }]', 8192],
      ['a string length', '[{ "start": 0, "length": "8192", "zero": true }]', 8192],
      ['a negative length', map(entry(0, 8192, true), entry(8192, -1, true)), 8191],
      ['a fractional start', map(entry(0, 4096.5, true), entry(4096.5, 4095.5, true)), 8192],
      ['an empty map of a file with bytes', '[]', 8192],
      ['a comma before the end', `[${entry(0, 8192, true)},]`, 8192],
      ['two commas', `[${entry(0, 4096, true)},,${entry(4096, 4096, true)}]`, 8192],
      ['no comma', `[${entry(0, 4096, true)} ${entry(4096, 4096, true)}]`, 8192],
      ['text after the end', `${map(entry(0, 8192, true))} x`, 8192],
      ['a second array', `${map(entry(0, 8192, true))}[]`, 8192],
      ['no end', `[${entry(0, 8192, true)}`, 8192],
      ['a nested object', '[{ "start": 0, "length": 8192, "zero": true, "x": { "y": 1 } }]', 8192],
      ['an entry far too long', `[{ "start": 0, "length": 8192, "zero": true, "pad": "${'x'.repeat(5000)}" }]`, 8192],
    ];
    for (const [what, text, size] of refused) assert.equal(parseQemuImgMap(text, size), null, what);
  });

  it('reads the same map however its text is split into pieces, whitespace anywhere between tokens', () => {
    const text = map(entry(0, 12288, true), entry(12288, 4096, false), entry(16384, 8192, false), entry(24576, 4096, true));
    const want = [{ start: 12288, length: 12288 }];
    for (let cut = 0; cut <= text.length; cut++) {
      const p = new QemuImgMapParser(28672);
      assert.ok(p.push(text.slice(0, cut)) && p.push(text.slice(cut)), `cut at ${cut}`);
      assert.deepEqual(p.end(), want, `cut at ${cut}`);
    }
    const bytewise = new QemuImgMapParser(28672);
    for (const c of text) assert.ok(bytewise.push(c));
    assert.deepEqual(bytewise.end(), want);
    assert.deepEqual(parseQemuImgMap(`\n [ \n${entry(0, 4096, false)}\n ,\n${entry(4096, 4096, true)} ] \n`, 8192), [{ start: 0, length: 4096 }]);
    assert.deepEqual(parseQemuImgMap('[]', 0), []);
  });
});

describe('FileVolumeSource.dataExtents', () => {
  it('covers every written byte of a sparse file, and little else', { skip: noQemuImg }, async () => {
    const dir = temp.make();
    const file = path.join(dir, 'sparse.img');
    const size = GiB + 777; // the last block is partial
    const rng = new Rng(3);
    const writes: Array<[number, Buffer]> = [
      [0, Buffer.from([1])],
      [4095, Buffer.from([2, 3])], // across a block boundary
      [123_457, Buffer.from(rng.fill(new Uint8Array(70_001)))], // unaligned start and end
      [512 * 1024 * 1024 - 3, Buffer.from(rng.fill(new Uint8Array(5)))],
      [GiB - 1, Buffer.from(rng.fill(new Uint8Array(10)))], // into the partial last block
      [size - 1, Buffer.from([9])],
    ];
    await sparseFile(file, size, writes);
    const source = await FileVolumeSource.open(file, { roots: [dir] });
    try {
      const extents = await source.dataExtents();
      assert.ok(extents, 'qemu-img gave a map');
      assertWellFormed(extents, size);
      assertCovered(extents, writes);
      const dataBytes = extents.reduce((a, e) => a + e.length, 0);
      assert.ok(dataBytes < 1024 * 1024, `${dataBytes} bytes counted as data for some 70 KiB written`);
      assert.equal(isHole(extents, 8 << 20, 8 << 20), true);
      assert.equal(isHole(extents, 0, 8 << 20), false);
    } finally {
      await source.close();
    }
  });

  it('maps the file it opened, even after another file takes its path', { skip: noQemuImg }, async () => {
    const dir = temp.make();
    const file = path.join(dir, 'vol.img');
    const other = path.join(dir, 'other.img');
    const size = 64 * 1024 * 1024;
    const mine: Array<[number, Buffer]> = [[40 << 20, Buffer.alloc(4096, 1)]];
    await sparseFile(file, size, mine);
    await sparseFile(other, size, [[8 << 20, Buffer.alloc(4096, 2)]]);
    const source = await FileVolumeSource.open(file, { roots: [dir] });
    try {
      await fs.rename(other, file);
      const extents = await source.dataExtents();
      assert.ok(extents);
      assertCovered(extents, mine);
      assert.equal(isHole(extents, 8 << 20, 4096), true, 'the file now at the path was mapped instead');
    } finally {
      await source.close();
    }
  });

  it('is null for a fully written file, without running qemu-img', async () => {
    const dir = temp.make();
    const file = path.join(dir, 'full.img');
    await fs.writeFile(file, Buffer.alloc(1024 * 1024 + 100, 5));
    const fake = await fakeQemuImg(`echo '[]'`);
    const source = await FileVolumeSource.open(file);
    try {
      assert.equal(await withPath(fake.dir, () => source.dataExtents()), null);
      assert.equal(await fake.ran(), false, 'qemu-img was run for a file without holes');
    } finally {
      await source.close();
    }
  });

  it('is null when qemu-img prints garbage or a map of another size', async () => {
    const dir = temp.make();
    const file = path.join(dir, 'sparse.img');
    await sparseFile(file, 16 * 1024 * 1024, [[1 << 20, Buffer.alloc(4096, 1)]]);
    const source = await FileVolumeSource.open(file);
    try {
      for (const body of [`echo 'Image: nonsense'`, `echo '[{ "start": 0, "length": 4096, "zero": false, "data": true }]'`, `echo 'qemu-img: failed' >&2; exit 1`]) {
        const fake = await fakeQemuImg(body);
        assert.equal(await withPath(fake.dir, () => source.dataExtents()), null, body);
        assert.equal(await fake.ran(), true, 'the stand-in was run');
      }
    } finally {
      await source.close();
    }
  });

  it('is null, with one warning, when qemu-img is missing', async () => {
    const dir = temp.make();
    const file = path.join(dir, 'sparse.img');
    await sparseFile(file, 16 * 1024 * 1024, [[1 << 20, Buffer.alloc(4096, 1)]]);
    const warnings: string[] = [];
    const onWarning = (w: Error & { code?: string }): void => {
      if (w.code === 'HAVEN_VOLUME_EXTENTS') warnings.push(w.message);
    };
    process.on('warning', onWarning);
    const source = await FileVolumeSource.open(file);
    try {
      const empty = temp.make('empty-path');
      assert.equal(await withPath(empty, () => source.dataExtents(), true), null);
      assert.equal(await withPath(empty, () => source.dataExtents(), true), null);
      await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
      assert.equal(warnings.length, 1, warnings.join('\n'));
      assert.match(warnings[0]!, /qemu-img was not found.*install qemu-utils/);
    } finally {
      process.off('warning', onWarning);
      await source.close();
    }
  });
});

describe('qemuImgDataExtents', () => {
  it('gives up (null) on a qemu-img that does not finish, and throws Cancelled when the backup is', async () => {
    const dir = temp.make();
    const file = path.join(dir, 'sparse.img');
    await sparseFile(file, 16 * 1024 * 1024, []);
    const fake = await fakeQemuImg('exec sleep 30');
    const fh = await fs.open(file, 'r');
    try {
      assert.equal(await qemuImgDataExtents(fh.fd, 16 * 1024 * 1024, { command: fake.command, timeoutMs: 200 }), null);
      const ac = new AbortController();
      const p = qemuImgDataExtents(fh.fd, 16 * 1024 * 1024, { command: fake.command, signal: ac.signal });
      setTimeout(() => ac.abort(new Error('stop')), 100);
      await assert.rejects(p, (err: unknown) => isAppError(err, ErrorCode.Cancelled));
    } finally {
      await fh.close();
    }
  });
});

describe('a sparse volume through a backup', () => {
  it('restores byte for byte, each chunk without data recorded as a hole', async () => {
    const dir = temp.make();
    const file = path.join(dir, 'vol.img');
    const chunk = 64 * 1024;
    const size = 40 * MiB + 100; // a partial last chunk
    const writes: Array<[number, Buffer]> = [
      [1000, Buffer.alloc(3000, 1)], // unaligned, inside the first chunk
      [9 * MiB - 7, Buffer.alloc(20, 2)], // across a chunk boundary in the second batch
      [33 * MiB + 5 * chunk, Buffer.alloc(3 * chunk, 3)], // whole chunks, after two batches of holes
      [size - 50, Buffer.alloc(50, 4)],
    ];
    await sparseFile(file, size, writes);
    const dataChunks = new Set<number>();
    for (const [at, bytes] of writes) for (let c = Math.floor(at / chunk); c * chunk < at + bytes.length; c++) dataChunks.add(c);
    const repo = await initRepo(path.join(dir, 'repo'), { encrypted: true, chunkSizeBytes: chunk });
    const { manifest, stats } = await backupFile(repo, file, 'vol', { pool });
    assert.equal(stats.holeChunks, Math.ceil(size / chunk) - dataChunks.size);
    const out = path.join(dir, 'restored.img');
    await restoreTo(repo, manifest.id, out, pool);
    assert.equal(await sha256File(out), await sha256File(file));
  });

  it('reads only the chunks that may hold data, and records the same volume digest as a backup that reads every byte', { skip: noQemuImg }, async () => {
    const dir = temp.make();
    const file = path.join(dir, 'vol.img');
    const chunk = 64 * 1024;
    const size = 256 * MiB;
    const rng = new Rng(1207);
    const writes: Array<[number, Buffer]> = [
      [3 * chunk + 17, rng.bytes(2 * chunk)], // three chunks, unaligned
      [100 * MiB, rng.bytes(chunk)], // one chunk, alone in its batch
      [size - 4096, rng.bytes(4096)], // the last chunk
    ];
    await sparseFile(file, size, writes);
    const repo = await initRepo(path.join(dir, 'repo'), { encrypted: true, chunkSizeBytes: chunk });
    /** The file, counting the bytes read; `map: false` hides its extents, so every byte is read. */
    const counted = async (map: boolean): Promise<{ source: VolumeSource; read: () => number }> => {
      const inner = await FileVolumeSource.open(file);
      let read = 0;
      const source: VolumeSource = {
        sizeBytes: inner.sizeBytes,
        read: async (into, length, position) => {
          const got = await inner.read(into, length, position);
          read += got;
          return got;
        },
        close: () => inner.close(),
      };
      if (map) source.dataExtents = (signal) => inner.dataExtents(signal);
      return { source, read: () => read };
    };
    const sparse = await counted(true);
    const a = await writeBackup(repo, sparse.source, { volume: { id: 'v', name: 'v' }, pool }).finally(() => sparse.source.close());
    const dense = await counted(false);
    const b = await writeBackup(repo, dense.source, { volume: { id: 'v', name: 'v' }, pool, full: true }).finally(() => dense.source.close());
    assert.equal(dense.read(), size);
    assert.ok(sparse.read() <= 5 * chunk, `read ${sparse.read()} bytes of a volume with 5 chunks of data`);
    assert.equal(a.manifest.stats.holeChunks, b.manifest.stats.holeChunks);
    assert.ok(a.manifest.volumeDigest && a.manifest.volumeDigest === b.manifest.volumeDigest);
    const out = path.join(dir, 'restored.img');
    await restoreTo(repo, a.manifest.id, out, pool);
    assert.equal(await sha256File(out), await sha256File(file));
  });
});
