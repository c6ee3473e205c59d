import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
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
});
