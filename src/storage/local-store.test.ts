import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { constants as fsc, mkdtempSync, openSync, closeSync, readdirSync, readFileSync, rmSync, writeFileSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { alignedMemory } from './aligned-memory.ts';
import { LocalObjectStore } from './local-store.ts';
import { collectKeys } from './object-store.ts';
import { describeObjectStore } from './store-conformance.ts';

const dirs: string[] = [];
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
function tempDir(): string {
  const d = mkdtempSync(path.join(tmpdir(), 'haven-store-'));
  dirs.push(d);
  return d;
}

describeObjectStore('local', () => new LocalObjectStore(tempDir()));

describe('LocalObjectStore specifics', () => {
  it('hides and sweeps temp files left by a crashed writer', async () => {
    const root = tempDir();
    const s = new LocalObjectStore(root);
    await s.put('packs/ab/x', new Uint8Array([1]));
    const stale = path.join(root, 'packs', 'ab', '.tmp-deadbeef');
    writeFileSync(stale, 'partial');
    utimesSync(stale, new Date(0), new Date(0));
    assert.deepEqual((await collectKeys(s, 'packs/')).map((i) => i.key), ['packs/ab/x']);
    assert.equal(await s.sweepTempFiles(60_000), 1);
    assert.deepEqual(readdirSync(path.join(root, 'packs', 'ab')), ['x']);
  });

  it('writes allocBuffer() parts with direct I/O where the file system allows it, byte for byte', async () => {
    const root = tempDir();
    const s = new LocalObjectStore(root);
    // Whether this file system takes O_DIRECT at all, checked independently of the store.
    let fsDirect = false;
    try {
      closeSync(openSync(path.join(root, 'probe'), fsc.O_RDWR | fsc.O_CREAT | fsc.O_DIRECT));
      fsDirect = Boolean(fsc.O_DIRECT);
    } catch {
      fsDirect = false;
    }
    rmSync(path.join(root, 'probe'), { force: true });

    const buf = await s.allocBuffer(3 * 1024 * 1024 + 777);
    assert.equal(buf.length, 3 * 1024 * 1024 + 777);
    assert.ok(buf.every((b) => b === 0), 'a fresh buffer is zeroed');
    buf.set(randomBytes(buf.length));
    const header = randomBytes(1001);
    const plain = randomBytes(5000); // an ordinary buffer after an aligned one: written buffered
    // Body 1: aligned bulk first. Body 2: the aligned part at an unaligned file offset (all buffered).
    await s.put('packs/aa/one', [buf.subarray(0, 2 * 1024 * 1024 + 5), header, plain]);
    const afterOne = s.directBytesWritten;
    await s.put('packs/aa/two', [header, buf]);
    const want1 = Buffer.concat([buf.subarray(0, 2 * 1024 * 1024 + 5), header, plain]);
    const want2 = Buffer.concat([header, buf]);
    assert.ok(readFileSync(path.join(root, 'packs', 'aa', 'one')).equals(want1));
    assert.ok(Buffer.from(await s.get('packs/aa/two')).equals(want2));
    if (fsDirect) {
      assert.equal(afterOne, 2 * 1024 * 1024, 'the aligned bulk of body 1 went direct');
      assert.equal(s.directBytesWritten, afterOne, 'nothing of body 2 could');
    } else {
      assert.equal(s.directBytesWritten, 0);
    }
    // No scratch or temp file is left behind, and list() shows exactly the two objects.
    assert.deepEqual(readdirSync(root).filter((n) => n.startsWith('.tmp-')), []);
    assert.deepEqual((await collectKeys(s, '')).map((i) => i.key).sort(), ['packs/aa/one', 'packs/aa/two']);
  });

  it('takes pack buffers back with releaseBuffer(): the next one of that size is the same memory, zeroed', async (t) => {
    const s = new LocalObjectStore(tempDir());
    const first = await s.allocBuffer(2 * 1024 * 1024);
    if (!alignedMemory.owns(first.buffer)) return t.skip('this file system takes no direct I/O: ordinary buffers');
    first.fill(0xcd);
    s.releaseBuffer(first);
    assert.equal(alignedMemory.owns(first.buffer), false);
    const second = await s.allocBuffer(2 * 1024 * 1024);
    assert.equal(second.buffer, first.buffer);
    assert.ok(second.every((b) => b === 0));
    s.releaseBuffer(new Uint8Array(10)); // an ordinary buffer: nothing to give back
    s.releaseBuffer(second);
  });
});
