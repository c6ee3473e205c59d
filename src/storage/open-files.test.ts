import assert from 'node:assert/strict';
import { mkdtempSync, promises as fs, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { LocalObjectStore } from './local-store.ts';
import { ObjectNotFoundError } from './object-store.ts';
import { OpenFiles } from './open-files.ts';

const dir = mkdtempSync(path.join(tmpdir(), 'haven-open-files-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
}

async function readAll(fh: fs.FileHandle, n: number): Promise<string> {
  const b = Buffer.alloc(n);
  const { bytesRead } = await fh.read(b, 0, n, 0);
  return b.subarray(0, bytesRead).toString();
}

/** Whether a FileHandle has been closed (its fd reads -1 then). */
const closed = (fh: fs.FileHandle): boolean => fh.fd === -1;

describe('OpenFiles', () => {
  it('hands out one handle per file while it stays open, and reads through it', async () => {
    const files = new OpenFiles();
    const p = file('a', 'alpha');
    const one = await files.acquire(p);
    const two = await files.acquire(p);
    assert.equal(one.fh, two.fh);
    assert.equal(await readAll(one.fh, 16), 'alpha');
    one.release();
    two.release();
    const three = await files.acquire(p);
    assert.equal(three.fh, one.fh, 'kept open between uses');
    three.release();
    assert.equal(files.size, 1);
    files.closeAll();
    await new Promise((r) => setImmediate(r));
    assert.ok(closed(one.fh));
  });

  it('keeps at most `max` handles, closing the least recently used one not in use, never one in use', async () => {
    const files = new OpenFiles({ max: 2 });
    const [a, b, c] = ['m1', 'm2', 'm3'].map((n) => file(n, n));
    const held = await files.acquire(a!);
    const fb = await files.acquire(b!);
    fb.release();
    const fc = await files.acquire(c!); // b is the only one free: it goes
    await new Promise((r) => setImmediate(r));
    assert.equal(files.size, 2);
    assert.ok(closed(fb.fh), 'the free one was closed');
    assert.ok(!closed(held.fh), 'the one in use stays open');
    assert.equal(await readAll(held.fh, 8), 'm1');
    // Over the bound while every handle is in use: allowed, and brought back down as they are released.
    const fb2 = await files.acquire(b!);
    assert.equal(files.size, 3);
    held.release();
    fc.release();
    fb2.release();
    assert.equal(files.size, 2);
    await new Promise((r) => setImmediate(r));
    assert.ok(closed(held.fh), 'the least recently used one went once free');
    const again = await files.acquire(b!);
    assert.equal(again.fh, fb2.fh);
    again.release();
    files.closeAll();
  });

  it('forget() closes a handle once its last read ends, and the next acquire opens the file anew', async () => {
    const files = new OpenFiles();
    const p = file('f', 'old');
    const use = await files.acquire(p);
    files.forget(p);
    await new Promise((r) => setImmediate(r));
    assert.ok(!closed(use.fh), 'still in use');
    assert.equal(await readAll(use.fh, 8), 'old');
    use.release();
    await new Promise((r) => setTimeout(r, 10));
    assert.ok(closed(use.fh));
    writeFileSync(p + '.new', 'new');
    await fs.rename(p + '.new', p);
    const fresh = await files.acquire(p);
    assert.equal(await readAll(fresh.fh, 8), 'new');
    fresh.release();
    files.closeAll();
  });

  it('closes handles left idle', async () => {
    const files = new OpenFiles({ idleMs: 50 });
    const use = await files.acquire(file('i', 'idle'));
    use.release();
    use.release(); // a second release changes nothing
    for (let i = 0; i < 100 && files.size > 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(files.size, 0);
    await new Promise((r) => setImmediate(r));
    assert.ok(closed(use.fh));
  });

  it('a file that cannot be opened is an error and nothing is kept', async () => {
    const files = new OpenFiles();
    await assert.rejects(files.acquire(path.join(dir, 'absent')), { code: 'ENOENT' });
    await assert.rejects(files.acquire(path.join(dir, 'absent')), { code: 'ENOENT' });
    assert.equal(files.size, 0);
  });
});

describe('LocalObjectStore reads of immutable objects', () => {
  it('keeps the object open between ranged reads; delete and put let go of it', async () => {
    const store = new LocalObjectStore(path.join(dir, 'store'));
    await store.put('packs/ab/p1', Buffer.from('0123456789'));
    assert.equal(Buffer.from(await store.get('packs/ab/p1', { offset: 2, length: 3, immutable: true })).toString(), '234');
    assert.equal(Buffer.from(await store.get('packs/ab/p1', { offset: 7, length: 3, immutable: true })).toString(), '789');
    assert.equal(store.openFiles.size, 1);
    // Reads without the hint open and close the file each time.
    assert.equal(Buffer.from(await store.get('packs/ab/p1', { offset: 0, length: 2 })).toString(), '01');
    assert.equal(store.openFiles.size, 1);
    await store.delete('packs/ab/p1');
    assert.equal(store.openFiles.size, 0);
    await assert.rejects(store.get('packs/ab/p1', { offset: 0, length: 1, immutable: true }), ObjectNotFoundError);
    // An object put again under the same key (not done to packs, but allowed) is read anew.
    await store.put('packs/ab/p2', Buffer.from('first'));
    assert.equal(Buffer.from(await store.get('packs/ab/p2', { immutable: true })).toString(), 'first');
    await store.put('packs/ab/p2', Buffer.from('second'));
    assert.equal(Buffer.from(await store.get('packs/ab/p2', { immutable: true })).toString(), 'second');
    store.close();
    assert.equal(store.openFiles.size, 0);
  });
});
