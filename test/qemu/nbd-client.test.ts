/**
 * NbdClient against a real qemu-nbd: the handshake, reads that return exactly what qemu-io wrote
 * (unaligned, across holes, split into pipelined pieces, many at once), block status with metadata
 * contexts, errors that fail one request and leave the connection usable, writes on a writable
 * export, a server that dies mid-session, and QemuNbdServer's start and cleanup.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { constants as fsc, existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AppError, ErrorCode } from '../../src/domain/errors.ts';
import { NBD_STATE_DIRTY, NBD_STATE_HOLE, NBD_STATE_ZERO, NbdClient, NbdFlag, type NbdExtent } from '../../src/qemu/nbd-client.ts';
import { createQcow2, imageInfo, QemuNbdServer } from '../../src/qemu/qemu-tools.ts';
import { connectWithRetry, processExists, qemuImg, qemuImgCompare, qemuIo, qemuNbdProcesses, qemuToolsMissing, startOwnQemuNbd, within, type OwnQemuNbd } from '../helpers/qemu.ts';
import { KiB, MiB, Rng, TempDirs } from '../helpers/volumes.ts';

const skip = qemuToolsMissing();
const temp = new TempDirs('haven-nbd-test-');
after(() => temp.cleanup());

const SIZE = 64 * MiB;
const CLUSTER = 64 * KiB;

interface Written {
  offset: number;
  length: number;
  /** A byte pattern (qemu-io write -P), or the bytes of a file (write -s). */
  pattern?: number;
  bytes?: Buffer;
}

/** What qemu-io writes into the read-only fixture, every offset unaligned to 1 MiB (the last one touches the export's end). */
const BLOB = new Rng(0xb10b).bytes(6 * MiB + 333);
const WRITES: Written[] = [
  { offset: 12_345, length: 70_000, pattern: 0x5a },
  { offset: 3 * MiB + 4097, length: 200_000, pattern: 0xc3 },
  { offset: 10 * MiB + 123_457, length: BLOB.length, bytes: BLOB },
  { offset: 40 * MiB - 1, length: 2, pattern: 0x01 },
  { offset: SIZE - 1000, length: 1000, pattern: 0xee },
];
/** Written after the dirty bitmap bm1 was added: the one range bm1 marks. */
const AFTER_BITMAP: Written = { offset: 48 * MiB + 100, length: 5000, pattern: 0x77 };

function apply(model: Buffer, w: Written): void {
  if (w.bytes) w.bytes.copy(model, w.offset);
  else model.fill(w.pattern!, w.offset, w.offset + w.length);
}

/** Byte ranges rounded out to whole clusters, merged: where a qcow2 image has data after these writes. */
function clusterRanges(ws: Written[], cluster: number): Array<{ start: number; end: number }> {
  const rs = ws.map((w) => ({ start: Math.floor(w.offset / cluster) * cluster, end: Math.ceil((w.offset + w.length) / cluster) * cluster })).sort((a, b) => a.start - b.start);
  const out: Array<{ start: number; end: number }> = [];
  for (const r of rs) {
    const last = out[out.length - 1];
    if (last && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else out.push({ ...r });
  }
  return out;
}

/** Asserts extents tile [offset, offset + length) in order, without gaps or overlaps. */
function assertTiles(extents: NbdExtent[], offset: number, length: number): void {
  let at = offset;
  for (const e of extents) {
    assert.equal(e.offset, at, `extent ${JSON.stringify(e)} does not start where the previous one ended (${at})`);
    assert.ok(e.length > 0, `empty extent ${JSON.stringify(e)}`);
    at += e.length;
  }
  assert.equal(at, offset + length, 'extents do not end at the end of the range asked for');
}

/** The merged ranges of extents whose flags satisfy `wanted`. */
function rangesWhere(extents: NbdExtent[], wanted: (flags: number) => boolean): Array<{ start: number; end: number }> {
  const out: Array<{ start: number; end: number }> = [];
  for (const e of extents) {
    if (!wanted(e.flags)) continue;
    const last = out[out.length - 1];
    if (last && last.end === e.offset) last.end += e.length;
    else out.push({ start: e.offset, end: e.offset + e.length });
  }
  return out;
}

/** Reads [offset, offset + length) through `c` and asserts it equals the model's bytes. */
async function assertRead(c: NbdClient, model: Buffer, offset: number, length: number): Promise<void> {
  const buf = new Uint8Array(length);
  await c.read(buf, offset);
  const want = model.subarray(offset, offset + length);
  if (Buffer.compare(Buffer.from(buf.buffer, buf.byteOffset, buf.length), want) !== 0) {
    let i = 0;
    while (buf[i] === want[i]) i++;
    assert.fail(`read of ${length} bytes at ${offset}: byte ${offset + i} is ${buf[i]}, expected ${want[i]}`);
  }
}

async function rejectsWith(p: Promise<unknown>, code: string, message?: RegExp): Promise<AppError> {
  let caught: unknown;
  await p.then(
    () => assert.fail(`expected a rejection with ${code}`),
    (err: unknown) => (caught = err),
  );
  assert.ok(caught instanceof AppError, `expected an AppError, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  if (message) assert.match(caught.message, message);
  return caught;
}

function connectTo(server: OwnQemuNbd, metaContexts: string[] = []): Promise<NbdClient> {
  return connectWithRetry(() => NbdClient.connect({ socketPath: server.socketPath, exportName: server.exportName, metaContexts }));
}

/** Runs `f` with os.tmpdir() pointing into a folder of the test's own (QemuNbdServer makes its folder there). */
async function withTmpdir<T>(dir: string, f: () => Promise<T>): Promise<T> {
  const saved = process.env.TMPDIR;
  process.env.TMPDIR = dir;
  try {
    return await f();
  } finally {
    if (saved === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = saved;
  }
}

let dir: string;
let image: string;
let model: Buffer;

before(async () => {
  if (skip) return;
  dir = temp.make();
  image = path.join(dir, 'fixture.qcow2');
  const blobFile = path.join(dir, 'blob.bin');
  await fs.writeFile(blobFile, BLOB);
  await qemuImg(['create', '-q', '-f', 'qcow2', image, String(SIZE)]);
  await qemuIo(image, WRITES.map((w) => (w.bytes ? `write -q -s ${blobFile} ${w.offset} ${w.length}` : `write -q -P ${w.pattern} ${w.offset} ${w.length}`)));
  await qemuImg(['bitmap', '--add', image, 'bm1']);
  await qemuIo(image, [`write -q -P ${AFTER_BITMAP.pattern} ${AFTER_BITMAP.offset} ${AFTER_BITMAP.length}`]);
  // What qemu-io reads back is what the model says (the model is the reference of every test).
  await qemuIo(image, [...WRITES, AFTER_BITMAP].filter((w) => w.pattern !== undefined).map((w) => `read -q -P ${w.pattern} ${w.offset} ${w.length}`), { readOnly: true });
  model = Buffer.alloc(SIZE);
  for (const w of [...WRITES, AFTER_BITMAP]) apply(model, w);
});

describe('NbdClient on a read-only qemu-nbd export', { skip }, () => {
  let server: OwnQemuNbd;
  let c: NbdClient;

  before(async () => {
    server = await startOwnQemuNbd(image, dir, { readOnly: true, bitmap: 'bm1', name: 'ro' });
    c = await connectTo(server, ['base:allocation', 'qemu:dirty-bitmap:nope', 'qemu:dirty-bitmap:bm1']);
  });
  after(async () => {
    await c?.close();
    await server?.kill();
  });

  it('the handshake reports the image\'s virtual size, the read-only flag, structured replies and block sizes', async () => {
    assert.equal(c.sizeBytes, SIZE);
    assert.equal(c.sizeBytes, (await imageInfo(image)).virtualSize);
    assert.equal(c.readOnly, true);
    assert.ok(c.transmissionFlags & NbdFlag.HasFlags);
    assert.ok(c.transmissionFlags & NbdFlag.ReadOnly);
    assert.equal(c.structured, true);
    assert.ok(c.minBlockBytes >= 1 && c.minBlockBytes <= 4096, `min block ${c.minBlockBytes}`);
    assert.ok(c.maxRequestBytes > 0 && c.maxRequestBytes <= 32 * MiB, `max request ${c.maxRequestBytes}`);
    assert.ok(c.preferredBlockBytes >= c.minBlockBytes);
  });

  it('reads return exactly the bytes qemu-io wrote, at offsets unaligned to 1 MiB (and the zeros around them)', async () => {
    for (const w of [...WRITES, AFTER_BITMAP]) {
      const from = Math.max(0, w.offset - 1);
      const to = Math.min(SIZE, w.offset + w.length + 1);
      await assertRead(c, model, from, to - from);
      await assertRead(c, model, w.offset, w.length);
    }
    // One byte, and the export's last byte.
    await assertRead(c, model, 40 * MiB, 1);
    await assertRead(c, model, SIZE - 1, 1);
    // A zero-length read is no request at all.
    await c.read(new Uint8Array(0), SIZE);
  });

  it('a read spanning data and holes returns both, in place', async () => {
    const length = 3 * MiB + 4097 + 200_000 + 777;
    await assertRead(c, model, 5, length);
    const buf = new Uint8Array(length);
    await c.read(buf, 5);
    assert.ok(buf.includes(0) && buf.includes(0x5a) && buf.includes(0xc3), 'the range holds data and holes');
  });

  it('a read larger than 4 MiB is split into pipelined pieces, each landing where it belongs', async () => {
    // Random bytes: a piece placed at the wrong offset cannot match by chance.
    await assertRead(c, model, 10 * MiB - 500, BLOB.length + 123_457 + 1000);
    await assertRead(c, model, 10 * MiB + 123_457, BLOB.length);
    // The whole export in one call (64 pieces of 1 MiB, at most 4 MiB in flight).
    await assertRead(c, model, 0, SIZE);
  });

  it('several reads at once, large and small, each get their own bytes', async () => {
    const rng = new Rng(7);
    const reads: Array<[number, number]> = [
      [10 * MiB + 123_457, BLOB.length],
      [0, 5 * MiB + 3],
      [12_000, 80_000],
      [SIZE - 5 * MiB - 17, 5 * MiB + 17],
      [40 * MiB - 2, 4],
    ];
    for (let i = 0; i < 12; i++) {
      const length = 1 + rng.int(2 * MiB);
      reads.push([rng.int(SIZE - length), length]);
    }
    await Promise.all(reads.map(([offset, length]) => assertRead(c, model, offset, length)));
  });

  it('extents of base:allocation match what was written: data clusters without NBD_STATE_ZERO, holes with it', async () => {
    const info = await imageInfo(image);
    assert.equal(info.clusterSize, CLUSTER);
    const extents = await c.extents('base:allocation');
    assertTiles(extents, 0, SIZE);
    const expected = clusterRanges([...WRITES, AFTER_BITMAP], CLUSTER);
    assert.deepEqual(rangesWhere(extents, (f) => (f & NBD_STATE_ZERO) === 0), expected);
    for (const e of extents) {
      const isData = expected.some((r) => e.offset >= r.start && e.offset + e.length <= r.end);
      if (isData) assert.equal(e.flags & (NBD_STATE_ZERO | NBD_STATE_HOLE), 0, `data extent ${JSON.stringify(e)}`);
      else assert.equal(e.flags, NBD_STATE_ZERO | NBD_STATE_HOLE, `hole extent ${JSON.stringify(e)}`);
    }
    // A range that starts and ends inside data: clipped to exactly that range.
    const from = 10 * MiB + 200_001;
    const part = await c.extents('base:allocation', from, 3 * MiB + 3);
    assertTiles(part, from, 3 * MiB + 3);
    assert.deepEqual(part, [{ offset: from, length: 3 * MiB + 3, flags: 0 }]);
    // One that starts in a hole and ends in data.
    const mixed = await c.extents('base:allocation', 2 * MiB + 1, 1 * MiB + 5000);
    assertTiles(mixed, 2 * MiB + 1, 1 * MiB + 5000);
    assert.deepEqual(mixed.map((e) => e.flags & NBD_STATE_ZERO), [NBD_STATE_ZERO, 0]);
    assert.equal(mixed[1]!.offset, 3 * MiB); // the cluster of 3 MiB + 4097
  });

  it('a metadata context that does not exist is simply absent; a dirty bitmap marks what was written after it', async () => {
    assert.deepEqual([...c.contexts.keys()].sort(), ['base:allocation', 'qemu:dirty-bitmap:bm1']);
    assert.equal(c.contexts.has('qemu:dirty-bitmap:nope'), false);
    await rejectsWith(c.extents('qemu:dirty-bitmap:nope'), ErrorCode.VolumeUnreadable, /no metadata context qemu:dirty-bitmap:nope/);
    const dirty = await c.extents('qemu:dirty-bitmap:bm1');
    assertTiles(dirty, 0, SIZE);
    assert.deepEqual(rangesWhere(dirty, (f) => (f & NBD_STATE_DIRTY) !== 0), [{ start: 48 * MiB, end: 48 * MiB + CLUSTER }]);
    // Asked for nothing, a client has no contexts and no block status.
    const plain = await connectTo(server);
    try {
      assert.equal(plain.contexts.size, 0);
      await rejectsWith(plain.extents('base:allocation'), ErrorCode.VolumeUnreadable);
      await assertRead(plain, model, 12_345, 70_000);
    } finally {
      await plain.close();
    }
  });

  it('out-of-range requests and writes on a read-only export reject with AppError; the client still works afterwards', async () => {
    await rejectsWith(c.read(new Uint8Array(20), SIZE - 10), ErrorCode.InvalidArgument, /outside the export/);
    await rejectsWith(c.read(new Uint8Array(1), SIZE), ErrorCode.InvalidArgument);
    await rejectsWith(c.read(new Uint8Array(1), -1), ErrorCode.InvalidArgument);
    await rejectsWith(c.read(new Uint8Array(1), 0.5), ErrorCode.InvalidArgument);
    await rejectsWith(c.extents('base:allocation', SIZE - CLUSTER, 2 * CLUSTER), ErrorCode.InvalidArgument);
    await rejectsWith(c.write(new Uint8Array(4096), 0), ErrorCode.TargetUnwritable, /read-only/);
    await rejectsWith(c.write(new Uint8Array(4096), SIZE), ErrorCode.InvalidArgument);
    await rejectsWith(c.writeZeroes(0, 4096), ErrorCode.TargetUnwritable);
    // Nothing was sent for those: the connection is as it was.
    await assertRead(c, model, 10 * MiB + 123_457, BLOB.length);
    assert.equal((await c.extents('base:allocation')).length > 1, true);
    // Flush on a read-only export is harmless.
    await c.flush();
    await qemuIo(image, [`read -q -P ${WRITES[0]!.pattern} ${WRITES[0]!.offset} ${WRITES[0]!.length}`], { readOnly: true });
  });

  it('errors the server sends back fail only their own request; pipelined requests around them succeed', async () => {
    const c2 = await connectTo(server, ['base:allocation']);
    try {
      // Make the client believe the export is larger and writable, so the requests reach qemu-nbd.
      const view = c2 as unknown as { sizeBytes: number; transmissionFlags: number };
      view.sizeBytes = 2 * SIZE;
      view.transmissionFlags &= ~NbdFlag.ReadOnly;
      const good1 = assertRead(c2, model, 10 * MiB + 123_457, BLOB.length);
      const pastEnd = rejectsWith(c2.read(new Uint8Array(4096), SIZE + 4096), ErrorCode.VolumeUnreadable, /EINVAL/);
      const good2 = assertRead(c2, model, 3 * MiB, 2 * MiB);
      const write = rejectsWith(c2.write(Buffer.alloc(8192, 1), 1000), ErrorCode.TargetUnwritable, /NBD write of 8192 bytes at 1000 failed/);
      const good3 = assertRead(c2, model, 0, 100_000);
      await Promise.all([good1, pastEnd, good2, write, good3]);
      await assertRead(c2, model, 0, SIZE);
    } finally {
      await c2.close();
    }
    // The image is unchanged.
    await qemuIo(image, [`read -q -P 0x5a 12345 70000`], { readOnly: true });
  });

  it('connecting to a missing socket or an unknown export fails with an AppError', async () => {
    await rejectsWith(NbdClient.connect({ socketPath: path.join(dir, 'nothing.sock') }), ErrorCode.VolumeUnreadable, /cannot connect to the NBD server/);
    await rejectsWith(NbdClient.connect({ socketPath: server.socketPath, exportName: 'no-such-export' }), ErrorCode.VolumeUnreadable, /refused export "no-such-export"/);
    await assertRead(c, model, 0, 4096);
  });

  it('a server killed mid-session makes every pending request reject, none hangs; later requests reject at once', async () => {
    const victim = await startOwnQemuNbd(image, dir, { readOnly: true, name: 'victim' });
    const k = await connectTo(victim, ['base:allocation']);
    try {
      await assertRead(k, model, 0, MiB);
      // Stopped, it takes requests into the socket but answers none; then it dies.
      process.kill(victim.child.pid!, 'SIGSTOP');
      const pending = [k.read(new Uint8Array(8 * MiB), 0), k.read(new Uint8Array(100), 12_345), k.extents('base:allocation'), k.flush(), k.read(new Uint8Array(SIZE), 0)];
      const settled = Promise.allSettled(pending);
      await new Promise((r) => setTimeout(r, 100));
      process.kill(victim.child.pid!, 'SIGKILL');
      const results = await within(settled, 10_000, 'requests pending when qemu-nbd was killed');
      for (const r of results) {
        assert.equal(r.status, 'rejected');
        assert.ok(r.reason instanceof AppError, String(r.reason));
        assert.equal(r.reason.code, ErrorCode.VolumeUnreadable);
      }
      await within(rejectsWith(k.read(new Uint8Array(10), 0), ErrorCode.VolumeUnreadable), 2000, 'a read after the server died');
    } finally {
      await within(k.close(), 5000, 'close after the server died');
      await victim.kill();
    }
  });

  it(
    'close() mid-read: once read() has rejected, nothing more is written into the caller\'s buffer',
    async () => {
      const own = await startOwnQemuNbd(image, dir, { readOnly: true, name: 'closing' });
      try {
        const k = await connectTo(own);
        const buf = new Uint8Array(BLOB.length);
        let atReject: Buffer | null = null;
        const read = k.read(buf, 10 * MiB + 123_457).catch(() => (atReject = Buffer.from(buf)));
        const t0 = Date.now();
        while (buf[0] === 0 && buf[1] === 0 && Date.now() - t0 < 5000) await new Promise((r) => setImmediate(r));
        await k.close();
        await read;
        assert.ok(atReject, 'the read was cut short');
        let changed = 0;
        for (let i = 0; i < buf.length; i++) if (buf[i] !== atReject[i]) changed++;
        assert.equal(changed, 0, `${changed} bytes were written into the buffer after read() rejected`);
      } finally {
        await own.kill();
      }
    },
  );
});

describe('NbdClient on a writable export (QemuNbdServer, readOnly: false)', { skip }, () => {
  it('writes (unaligned, concurrent, larger than one request), write-zeroes and flush; a fresh connection and qemu-img compare see exactly them', async () => {
    const wdir = temp.make('rw');
    const img = path.join(wdir, 'target.qcow2');
    await createQcow2(img, SIZE);
    const want = Buffer.alloc(SIZE);
    const server = await QemuNbdServer.start(img, { format: 'qcow2', readOnly: false });
    const a = await server.connect({ metaContexts: ['base:allocation'] });
    let b: NbdClient | null = null;
    try {
      assert.equal(a.readOnly, false);
      assert.equal(a.sizeBytes, SIZE);
      assert.ok(a.transmissionFlags & NbdFlag.SendFlush);
      const rng = new Rng(42);
      const put = async (offset: number, bytes: Buffer, opts: { fua?: boolean } = {}): Promise<void> => {
        bytes.copy(want, offset);
        await a.write(bytes, offset, opts);
      };
      await put(777, rng.bytes(100_000));
      await put(5 * MiB + 4095, rng.bytes(3 * MiB + 1), { fua: true });
      // Larger than the largest request qemu-nbd takes: split.
      const big = rng.bytes(a.maxRequestBytes + 513);
      assert.ok(20 * MiB + 3 + big.length < SIZE);
      await put(20 * MiB + 3, big);
      // Many at once, each its own bytes.
      await Promise.all(Array.from({ length: 8 }, (_, k) => put(56 * MiB + k * 70_001, rng.bytes(4097 + k))));
      // The export's last byte.
      await put(SIZE - 1, Buffer.from([0x42]));
      // Zeroes: unaligned edges inside data, and whole clusters, which then read as zeros in block status.
      await a.writeZeroes(30 * MiB + 17, 2 * MiB + 5);
      want.fill(0, 30 * MiB + 17, 32 * MiB + 22);
      await a.writeZeroes(22 * MiB, MiB);
      want.fill(0, 22 * MiB, 23 * MiB);
      await a.flush();
      const zeroed = await a.extents('base:allocation', 22 * MiB, MiB);
      assert.ok(zeroed.every((e) => e.flags & NBD_STATE_ZERO), JSON.stringify(zeroed));
      const data = await a.extents('base:allocation', 20 * MiB + 3, MiB);
      assert.ok(data.every((e) => (e.flags & NBD_STATE_ZERO) === 0), JSON.stringify(data));
      // A second connection (the server is shared) reads back what the first wrote.
      b = await server.connect();
      await assertRead(b, want, 0, SIZE);
      await assertRead(a, want, 30 * MiB, 3 * MiB);
    } finally {
      await b?.close();
      await a.close();
      await server.close();
    }
    // On disk, as QEMU reads the image: identical to the model.
    const rawModel = path.join(wdir, 'model.raw');
    await fs.writeFile(rawModel, want);
    const cmp = await qemuImgCompare(['-f', 'raw', '-F', 'qcow2', rawModel, img]);
    assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
    await qemuIo(img, ['read -q -P 0x42 67108863 1', `read -q -P 0 ${22 * MiB} ${MiB}`], { readOnly: true });
    assert.equal((await imageInfo(img)).format, 'qcow2');
  });
});

describe('QemuNbdServer', { skip }, () => {
  it('a served image\'s client asks for contexts: one that does not exist (no --bitmap) is absent', async () => {
    const server = await QemuNbdServer.start(image, { format: 'qcow2', readOnly: true });
    try {
      const k = await server.connect({ metaContexts: ['qemu:dirty-bitmap:bm1', 'base:allocation', 'qemu:dirty-bitmap:nope'] });
      try {
        assert.deepEqual([...k.contexts.keys()], ['base:allocation']);
        assert.equal(k.readOnly, true);
        await assertRead(k, model, 10 * MiB, 2 * MiB);
      } finally {
        await k.close();
      }
    } finally {
      await server.close();
    }
  });

  it('close() leaves no qemu-nbd behind and removes its folder, with a client still connected or not', async () => {
    const tmp = temp.make('tmpdir');
    for (const keepClient of [false, true]) {
      const server = await withTmpdir(tmp, () => QemuNbdServer.start(image, { format: 'qcow2', readOnly: true }));
      const folder = path.dirname(server.socketPath);
      assert.equal(path.dirname(folder), tmp);
      const k = await server.connect({ metaContexts: ['base:allocation'] });
      await assertRead(k, model, 12_345, 70_000);
      const pids = qemuNbdProcesses(folder);
      assert.equal(pids.length, 1, `qemu-nbd processes serving ${folder}: ${pids.join(', ')}`);
      if (!keepClient) await k.close();
      await server.close();
      await server.close(); // twice is harmless
      assert.deepEqual(qemuNbdProcesses(folder), []);
      assert.equal(processExists(pids[0]!), false, `qemu-nbd ${pids[0]} still exists`);
      assert.equal(existsSync(folder), false, `${folder} is left`);
      if (keepClient) {
        // Its server gone, the client's requests fail instead of hanging.
        await within(rejectsWith(k.read(new Uint8Array(4096), 0), ErrorCode.VolumeUnreadable), 5000, 'a read after the server was closed');
        await k.close();
      }
    }
    assert.deepEqual(await fs.readdir(tmp), []);
  });

  it('start (or, at the latest, connect) on a file that is not qcow2, with format qcow2, rejects with an AppError and leaves nothing behind', async () => {
    const tmp = temp.make('tmpdir');
    const notQcow2 = path.join(dir, 'not-qcow2.img');
    await fs.writeFile(notQcow2, new Rng(3).bytes(MiB));
    for (let i = 0; i < 5; i++) {
      let failure: unknown;
      await withTmpdir(tmp, async () => {
        let server: QemuNbdServer;
        try {
          server = await QemuNbdServer.start(notQcow2, { format: 'qcow2', readOnly: true });
        } catch (err) {
          failure = err;
          return;
        }
        // qemu-nbd binds its socket before it opens the image, so start may take it as ready: connect must fail then.
        try {
          await (await server.connect()).close();
        } catch (err) {
          failure = err;
        } finally {
          await server.close();
        }
      });
      assert.ok(failure instanceof AppError, `attempt ${i}: expected an AppError, got ${String(failure)}`);
      assert.equal(failure.code, ErrorCode.VolumeUnreadable);
      // From start or from connect, always the image and qemu-nbd's reason.
      assert.equal(failure.message, `cannot serve ${notQcow2} over NBD: Failed to blk_new_open '${notQcow2}': Image is not in qcow2 format`);
      assert.deepEqual(qemuNbdProcesses(notQcow2), []);
      assert.deepEqual(await fs.readdir(tmp), [], 'the server\'s folder is removed');
    }
  });

  it(
    'when qemu-nbd fails to open the image after a client connected, connect() names the image and why',
    async () => {
      // A FIFO holds qemu-nbd in open() until a writer comes: its socket is there, the image not yet open.
      const fifo = path.join(temp.make('fifo'), 'slow.img');
      execFileSync('mkfifo', [fifo]);
      const server = await within(QemuNbdServer.start(fifo, { format: 'qcow2', readOnly: true }), 10_000, 'start on a FIFO');
      try {
        const connecting = server.connect().then(
          async (k) => {
            await k.close();
            return null;
          },
          (err: unknown) => err,
        );
        await new Promise((r) => setTimeout(r, 200)); // the connection waits in qemu-nbd's backlog
        // Let open() return: qemu-nbd reads an empty image, refuses it and exits.
        const deadline = Date.now() + 5000;
        for (;;) {
          try {
            await (await fs.open(fifo, fsc.O_WRONLY | fsc.O_NONBLOCK)).close();
            break;
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'ENXIO' || Date.now() > deadline) throw err;
            await new Promise((r) => setTimeout(r, 20));
          }
        }
        const err = await within(connecting, 10_000, 'connect while qemu-nbd fails');
        assert.ok(err instanceof AppError, `expected an AppError, got ${String(err)}`);
        assert.ok(err.message.includes(`cannot serve ${fifo} over NBD`), err.message);
      } finally {
        await server.close();
      }
      assert.deepEqual(qemuNbdProcesses(fifo), []);
    },
  );
});
