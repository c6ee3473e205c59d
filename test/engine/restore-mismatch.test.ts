/**
 * A restore proves its bytes (restore-reader.ts): a forged chunk in an unencrypted repository (its
 * CRC recomputed, so it decodes cleanly) fails the digest check in the workers with ChunkCorrupt
 * naming it, and is quarantined; a manifest recording another volume digest, or an index swapped
 * under a manifest, fails the final check with RestoreMismatch, even though every chunk matched
 * its digest. The last shows the check is not circular: the root is recomputed from the digests
 * the restore wrote, never taken from the manifest.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { AppError, ErrorCode } from '../../src/domain/errors.ts';
import { createHash } from 'node:crypto';
import { DEFAULT_CHUNK_SIZE } from '../../src/engine/repository.ts';
import { QUARANTINE_PREFIX } from '../../src/engine/quarantine.ts';
import { restoreBackup } from '../../src/engine/restore-reader.ts';
import { verifyRepository } from '../../src/engine/verifier.ts';
import { forgeFirstChunk } from '../helpers/forge.ts';
import { backupFile, engineTestContext, initRepo, reopenRepo } from '../helpers/repo.ts';
import { cliErrorMessage, listPacks, MiB, randomBytesSeeded, runCli, writeRandomFile, writeVolume } from '../helpers/volumes.ts';

const { temp, pool } = engineTestContext('haven-mismatch-');

const isMismatch = (err: unknown): boolean => err instanceof AppError && err.code === ErrorCode.RestoreMismatch;
const CHUNK = DEFAULT_CHUNK_SIZE;

describe('restore final check (RestoreMismatch)', () => {
  it('a flipped byte in a stored chunk that decodes cleanly fails the restore with ChunkCorrupt naming the chunk, which is quarantined', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: false });
    const data = randomBytesSeeded(2 * MiB, 501);
    await writeVolume(path.join(dir, 'v.img'), data);
    const m = (await backupFile(repo, path.join(dir, 'v.img'), 'v', { pool })).manifest;
    const forged = createHash('sha256').update(data.subarray(0, CHUNK)).digest('hex'); // the first chunk's name
    const [pack] = await listPacks(repoDir);
    await forgeFirstChunk(path.join(repoDir, pack!));
    const fresh = await reopenRepo(repoDir, false);
    await assert.rejects(restoreBackup(fresh, m, path.join(dir, 'out.img'), { pool }), (err: unknown) => err instanceof AppError && err.code === ErrorCode.ChunkCorrupt && err.message.includes(`chunk ${forged} of backup ${m.id} is damaged`));
    const quarantined: string[] = [];
    for await (const o of fresh.store.list(QUARANTINE_PREFIX)) quarantined.push(o.key);
    assert.equal(quarantined.length, 1);
    assert.ok(quarantined[0]!.includes(forged), `${quarantined[0]} names the forged chunk`);
    const cli = await runCli(['restore', '--repo', repoDir, '--backup', m.id, '--target', path.join(dir, 'cli.img')]);
    assert.notEqual(cli.code, 0);
    assert.match(cliErrorMessage(cli), new RegExp(`chunk ${forged} of backup ${m.id} is damaged`));
    // verify's digest check names the forged chunk.
    const r = await verifyRepository(fresh, { pool });
    assert.equal(r.ok, false);
    assert.equal(r.damagedChunks, 1);
  });

  it('a manifest recording another volume digest makes the restore fail (encrypted repository)', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: true });
    await writeRandomFile(path.join(dir, 'v.img'), 2 * MiB, 502);
    const m = (await backupFile(repo, path.join(dir, 'v.img'), 'v', { pool })).manifest;
    const other = { ...m, volumeDigest: m.volumeDigest.replace(/^./, (c) => (c === '0' ? '1' : '0')) };
    await repo.writeManifest(other);
    await assert.rejects(restoreBackup(repo, await repo.readManifest(m.id), path.join(dir, 'out.img'), { pool }), (err: unknown) => isMismatch(err) && /does not match its volume digest/.test((err as Error).message));
    // verify finds it from the index alone, without restoring.
    const r = await verifyRepository(repo, { pool });
    assert.equal(r.ok, false);
    assert.match(r.backups[0]!.problems.join('; '), /does not match the backup's volume digest/);
    assert.equal(r.damagedChunks, 0);
  });

  it('an index swapped under a manifest (every chunk sound and matching its digest) fails the final check: the root is recomputed, not trusted', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: false });
    await writeRandomFile(path.join(dir, 'a.img'), 2 * MiB, 503);
    await writeRandomFile(path.join(dir, 'b.img'), 2 * MiB, 504);
    const a = (await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool })).manifest;
    const b = (await backupFile(repo, path.join(dir, 'b.img'), 'b', { pool })).manifest;
    // A's manifest now lists B's index (with B's own segment checksums, so every read check passes).
    await repo.writeManifest({ ...a, indexSegments: b.indexSegments });
    const target = path.join(dir, 'out.img');
    await assert.rejects(restoreBackup(repo, await repo.readManifest(a.id), target, { pool }), isMismatch);
    // B's bytes were written, each checked against its digest: only the root tells them from A's.
    assert.equal(createHash('sha256').update(await readFile(target)).digest('hex'), createHash('sha256').update(await readFile(path.join(dir, 'b.img'))).digest('hex'));
  });
});
