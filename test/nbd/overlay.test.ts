/**
 * CowOverlay (src/nbd/overlay.ts) over an in-memory base: unaligned writes merged with the base's
 * bytes, zeros in a temporary overlay that take no disk for whole blocks it does not hold yet,
 * flushes of a kept overlay that never answer before the map on disk names the blocks written
 * before them (checked by reopening a copy of FILE and FILE.map taken the moment a flush resolves),
 * and kept overlays that cannot be trusted (data file gone, map of another backup) refused.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { AppError, ErrorCode } from '../../src/domain/errors.ts';
import type { ImageExtent, ImagePiece, ImageRead } from '../../src/engine/backup-image.ts';
import { CowOverlay, OVERLAY_BLOCK, type OverlayBase } from '../../src/nbd/overlay.ts';
import { KiB, MiB, Rng, TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-overlay-');
after(() => temp.cleanup());

/** The base's "chunk": holes are whole chunks of zeros, as in a backup. */
const CHUNK = 64 * KiB;
/** Not a multiple of the overlay's block: the last block is partial. */
const SIZE = 4 * MiB + 1000;

/** Data in most chunks, holes in some (every fifth chunk, and the whole second MiB). */
function makeBase(seed: number): Buffer {
  const b = Buffer.alloc(SIZE);
  new Rng(seed).fill(b);
  for (let c = 0; c * CHUNK < SIZE; c++) if (c % 5 === 2) b.fill(0, c * CHUNK, Math.min(SIZE, (c + 1) * CHUNK));
  b.fill(0, MiB, 2 * MiB);
  return b;
}

const isZero = (b: Uint8Array): boolean => b.every((x) => x === 0);

/** A read-only base over a buffer that counts its unreleased reads and must never change. */
class MemBase implements OverlayBase {
  readonly sizeBytes: number;
  readonly bytes: Buffer;
  private readonly pristine: Buffer;
  outstanding = 0;

  constructor(bytes: Buffer) {
    this.bytes = bytes;
    this.pristine = Buffer.from(bytes);
    this.sizeBytes = bytes.length;
  }

  async read(offset: number, length: number): Promise<ImageRead> {
    assert.ok(offset >= 0 && offset + length <= this.sizeBytes, `base read ${offset}+${length} out of range`);
    const pieces: ImagePiece[] = [];
    for (const e of await this.extents(offset, length)) pieces.push(e.hole ? { offset: e.offset, length: e.length } : { offset: e.offset, length: e.length, data: this.bytes.subarray(e.offset, e.offset + e.length) });
    this.outstanding++;
    let done = false;
    return {
      pieces,
      release: () => {
        if (!done) this.outstanding--;
        done = true;
      },
    };
  }

  async extents(offset: number, length: number): Promise<ImageExtent[]> {
    const out: ImageExtent[] = [];
    const end = offset + length;
    for (let c = Math.floor(offset / CHUNK); c * CHUNK < end; c++) {
      const s = Math.max(offset, c * CHUNK);
      const e = Math.min(end, (c + 1) * CHUNK, this.sizeBytes);
      const hole = isZero(this.bytes.subarray(c * CHUNK, Math.min(this.sizeBytes, (c + 1) * CHUNK)));
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += e - s;
      else out.push({ offset: s, length: e - s, hole });
    }
    return out;
  }

  assertUnchanged(): void {
    assert.ok(this.bytes.equals(this.pristine), 'the base was written');
    assert.equal(this.outstanding, 0, 'every base read was released');
  }
}

async function readAllOf(o: CowOverlay, offset = 0, length = o.sizeBytes): Promise<Buffer> {
  const r = await o.read(offset, length);
  const out = Buffer.alloc(length);
  try {
    for (const p of r.pieces) if (p.data) out.set(p.data, p.offset - offset);
  } finally {
    r.release();
  }
  return out;
}

function assertSame(got: Buffer, expected: Buffer, what: string): void {
  if (got.equals(expected)) return;
  let at = 0;
  while (at < got.length && got[at] === expected[at]) at++;
  assert.fail(`${what}: first difference at ${at} (block ${Math.floor(at / OVERLAY_BLOCK)})`);
}

/** The overlay file of a temporary overlay, through this process's open descriptors (it is unlinked). */
async function tempOverlayFd(dir: string): Promise<string> {
  const found: string[] = [];
  for (const fd of await fs.readdir('/proc/self/fd')) {
    const link = await fs.readlink(`/proc/self/fd/${fd}`).catch(() => '');
    if (link.startsWith(path.join(dir, 'haven-overlay-'))) found.push(`/proc/self/fd/${fd}`);
  }
  assert.equal(found.length, 1, `one overlay file open in ${dir}: ${found.join(', ')}`);
  return found[0]!;
}

async function allocatedBytes(fdPath: string): Promise<number> {
  return (await fs.stat(fdPath)).blocks * 512;
}

describe('CowOverlay: a temporary overlay', () => {
  it('merges unaligned writes with the base (edges, one block, the partial last block, holes) and never writes the base', async () => {
    const base = new MemBase(makeBase(1));
    const dir = temp.make('merge');
    const o = await CowOverlay.open(base, { baseId: 'b1', dir });
    try {
      const model = Buffer.from(base.bytes);
      const rng = new Rng(7);
      const writes: [number, number][] = [
        [100, 10], // inside block 0
        [OVERLAY_BLOCK - 3, 7], // across a block boundary
        [3 * OVERLAY_BLOCK + 1, 2 * OVERLAY_BLOCK], // partial, whole, partial
        [MiB + 5000, 300], // into a hole of the base
        [2 * CHUNK + 17, 1], // a hole chunk (every fifth), one byte
        [SIZE - 1, 1], // the very last byte (partial last block)
        [SIZE - 5000, 4500], // into the last, partial block
        [8 * OVERLAY_BLOCK, OVERLAY_BLOCK], // one whole block
      ];
      for (let i = 0; i < 40; i++) {
        const len = 1 + rng.int(3 * OVERLAY_BLOCK);
        writes.push([rng.int(SIZE - len), len]);
      }
      for (const [off, len] of writes) {
        const data = new Rng(off ^ len).bytes(len);
        await o.write(off, data);
        data.copy(model, off);
      }
      assertSame(await readAllOf(o), model, 'the overlay after unaligned writes');
      // Reads that start and end anywhere agree too.
      for (let i = 0; i < 50; i++) {
        const len = 1 + rng.int(3 * OVERLAY_BLOCK);
        const off = rng.int(SIZE - len);
        assertSame(await readAllOf(o, off, len), model.subarray(off, off + len), `read ${off}+${len}`);
      }
      // Blocks written are data; the base's holes stay holes elsewhere.
      const held = new Set<number>();
      for (const [off, len] of writes) for (let k = Math.floor(off / OVERLAY_BLOCK); k * OVERLAY_BLOCK < off + len; k++) held.add(k);
      const expected: ImageExtent[] = [];
      for (let at = 0; at < SIZE; at += OVERLAY_BLOCK) {
        const len = Math.min(OVERLAY_BLOCK, SIZE - at);
        const hole = !held.has(at / OVERLAY_BLOCK) && isZero(base.bytes.subarray(Math.floor(at / CHUNK) * CHUNK, Math.min(SIZE, (Math.floor(at / CHUNK) + 1) * CHUNK)));
        const last = expected[expected.length - 1];
        if (last && last.hole === hole) last.length += len;
        else expected.push({ offset: at, length: len, hole });
      }
      assert.deepEqual(await o.extents(0, SIZE), expected);
      assert.ok(held.has((MiB + 5000) / OVERLAY_BLOCK | 0) && expected.some((e) => e.hole), 'holes and written holes are both there');
      base.assertUnchanged();
    } finally {
      await o.close();
    }
    assert.deepEqual(await fs.readdir(dir), [], 'the temporary file is gone');
  });

  it('writeZeroes of whole blocks it does not hold allocates nothing yet reads zeros; partial and held blocks are written', async () => {
    const base = new MemBase(makeBase(2));
    const dir = temp.make('zeros');
    const o = await CowOverlay.open(base, { baseId: 'b2', dir });
    try {
      const fd = await tempOverlayFd(dir);
      const before = await allocatedBytes(fd);
      assert.equal(before, 0, 'a fresh temporary overlay is all hole');
      // 1 MiB of whole blocks over the base's data.
      await o.writeZeroes(0, MiB);
      await o.flush();
      assert.ok(isZero(await readAllOf(o, 0, MiB)), 'zeroed blocks read as zeros');
      assert.equal(await allocatedBytes(fd), 0, 'whole blocks not held are only marked');
      assert.deepEqual(await o.extents(0, MiB), [{ offset: 0, length: MiB, hole: false }], 'held by the overlay');
      // Unaligned: the partial edge blocks are merged and written, the whole ones between only marked.
      const off = 2 * MiB + 100;
      const len = 10 * OVERLAY_BLOCK;
      await o.writeZeroes(off, len);
      await o.flush();
      const expected = Buffer.from(base.bytes.subarray(2 * MiB, 2 * MiB + 12 * OVERLAY_BLOCK));
      expected.fill(0, 100, 100 + len);
      assertSame(await readAllOf(o, 2 * MiB, 12 * OVERLAY_BLOCK), expected, 'unaligned zeros over data');
      const edges = await allocatedBytes(fd);
      assert.ok(edges > 0 && edges <= 4 * OVERLAY_BLOCK, `only the two edge blocks take disk: ${edges} bytes allocated`);
      // A block the overlay holds (written) is really zeroed, not only marked.
      const held = 3 * MiB;
      await o.write(held, Buffer.alloc(2 * OVERLAY_BLOCK, 0xee));
      await o.writeZeroes(held, 2 * OVERLAY_BLOCK);
      assert.ok(isZero(await readAllOf(o, held, 2 * OVERLAY_BLOCK)), 'zeros over written blocks');
      // The partial last block.
      await o.writeZeroes(SIZE - 1000, 1000);
      assert.ok(isZero(await readAllOf(o, SIZE - 1000, 1000)));
      assert.ok(!isZero(await readAllOf(o, SIZE - 1100, 100)) || isZero(base.bytes.subarray(SIZE - 1100, SIZE - 1000)));
      base.assertUnchanged();
    } finally {
      await o.close();
    }
  });

  it('writeZeroes after a write not yet finished wins, as the later request (whole blocks not yet held)', async () => {
    const base = new MemBase(makeBase(3));
    const o = await CowOverlay.open(base, { baseId: 'b3', dir: temp.make('order') });
    try {
      const at = 5 * OVERLAY_BLOCK;
      const w = o.write(at, Buffer.alloc(OVERLAY_BLOCK, 0xab)); // queued, not awaited
      const z = o.writeZeroes(at, OVERLAY_BLOCK);
      await Promise.all([w, z]);
      assert.ok(isZero(await readAllOf(o, at, OVERLAY_BLOCK)), 'the block reads as the zeros written after the data');
    } finally {
      await o.close();
    }
  });
});

const MAGIC = 'HAVEN-OVERLAY-1\n';

describe('CowOverlay: a kept overlay', () => {
  it('a flush never resolves before FILE.map on disk names the blocks written before it (concurrent writers)', async () => {
    const base = new MemBase(makeBase(4));
    const dir = temp.make('flush');
    const file = path.join(dir, 'o.img');
    const o = await CowOverlay.open(base, { baseId: 'b4', file });
    const snaps = temp.make('snaps');
    const taken: { block: number; copy: string; pattern: number }[] = [];
    let n = 0;
    try {
      // Rounds of concurrent "connections": each writes its own block (some unaligned), then flushes;
      // the moment its flush resolves, FILE and FILE.map are copied (what a crash would leave).
      for (let round = 0; round < 25; round++) {
        await Promise.all(Array.from({ length: 4 }, async (_, i) => {
          const block = 1 + round * 8 + i * 2;
          const pattern = 1 + ((round * 4 + i) % 250);
          const unaligned = i % 2 === 1;
          await o.write(block * OVERLAY_BLOCK + (unaligned ? 10 : 0), Buffer.alloc(unaligned ? OVERLAY_BLOCK - 20 : OVERLAY_BLOCK, pattern));
          await o.flush();
          const copy = path.join(snaps, `c${n++}.img`);
          // Synchronous: nothing else runs between the flush's answer and the copy.
          copyFileSync(`${file}.map`, `${copy}.map`);
          copyFileSync(file, copy);
          taken.push({ block, copy, pattern });
        }));
      }
    } finally {
      await o.close();
    }
    let missing = 0;
    for (const t of taken) {
      const again = await CowOverlay.open(base, { baseId: 'b4', file: t.copy });
      try {
        const got = await readAllOf(again, t.block * OVERLAY_BLOCK + 10, OVERLAY_BLOCK - 20);
        if (!got.every((x) => x === t.pattern)) missing++;
      } finally {
        await again.close();
      }
    }
    assert.equal(missing, 0, `${missing} of ${taken.length} flushes answered before their block was in FILE.map`);
    // And after a clean close every block is there.
    const last = await CowOverlay.open(base, { baseId: 'b4', file });
    try {
      assert.equal(last.writtenBlocks(), taken.length);
      for (const t of taken) assert.ok((await readAllOf(last, t.block * OVERLAY_BLOCK + 10, OVERLAY_BLOCK - 20)).every((x) => x === t.pattern));
    } finally {
      await last.close();
    }
    base.assertUnchanged();
  });

  it('a kept overlay reopened carries on with its writes; writeZeroes there writes the zeros', async () => {
    const base = new MemBase(makeBase(5));
    const file = path.join(temp.make('reopen'), 'o.img');
    const o = await CowOverlay.open(base, { baseId: 'b5', file });
    await o.write(7, Buffer.alloc(9000, 0x42));
    await o.writeZeroes(MiB - 100, 3 * OVERLAY_BLOCK);
    await o.close();
    const map = readFileSync(`${file}.map`);
    assert.equal(map.subarray(0, MAGIC.length).toString(), MAGIC);
    const again = await CowOverlay.open(base, { baseId: 'b5', file });
    try {
      const expected = Buffer.from(base.bytes);
      expected.fill(0x42, 7, 9007);
      expected.fill(0, MiB - 100, MiB - 100 + 3 * OVERLAY_BLOCK);
      assertSame(await readAllOf(again), expected, 'the reopened overlay');
    } finally {
      await again.close();
    }
  });

  it('refuses a kept overlay whose FILE is gone while FILE.map remains, and keeps the map', async () => {
    const base = new MemBase(makeBase(6));
    const file = path.join(temp.make('lost'), 'o.img');
    const o = await CowOverlay.open(base, { baseId: 'b6', file });
    await o.write(0, Buffer.alloc(4096, 1));
    await o.close();
    const map = readFileSync(`${file}.map`);
    await fs.rm(file);
    await assert.rejects(CowOverlay.open(base, { baseId: 'b6', file }), (err: unknown) => {
      assert.ok(err instanceof AppError, String(err));
      assert.equal(err.code, ErrorCode.InvalidArgument);
      assert.match(err.message, /missing/);
      assert.match(err.message, /map/);
      assert.ok(err.message.includes(file), err.message);
      return true;
    });
    assert.ok(!existsSync(file), 'no empty overlay was made in its place');
    assert.ok(readFileSync(`${file}.map`).equals(map), 'the map is untouched');
  });

  it('refuses a kept overlay made over another backup, and a file that is not an overlay', async () => {
    const base = new MemBase(makeBase(7));
    const dir = temp.make('other');
    const file = path.join(dir, 'o.img');
    const o = await CowOverlay.open(base, { baseId: 'backup-one', file });
    await o.write(0, Buffer.alloc(4096, 1));
    await o.close();
    const map = readFileSync(`${file}.map`);
    await assert.rejects(CowOverlay.open(base, { baseId: 'backup-two', file }), (err: unknown) => {
      assert.ok(err instanceof AppError, String(err));
      assert.equal(err.code, ErrorCode.InvalidArgument);
      assert.match(err.message, /backup-one/);
      assert.match(err.message, /backup-two/);
      return true;
    });
    assert.ok(readFileSync(`${file}.map`).equals(map), 'the map is untouched');
    // A non-empty file without a map is not taken for an overlay.
    const plain = path.join(dir, 'plain.img');
    await fs.writeFile(plain, Buffer.alloc(8192, 3));
    await assert.rejects(CowOverlay.open(base, { baseId: 'backup-one', file: plain }), /not an overlay/);
    assert.ok(!existsSync(`${plain}.map`));
    // A map that is not an overlay map.
    await fs.writeFile(`${plain}.map`, 'hello\n');
    await assert.rejects(CowOverlay.open(base, { baseId: 'backup-one', file: plain }), /not an overlay map/);
  });
});
