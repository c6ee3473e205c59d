/**
 * A restore whose bytes do not match the backup's recorded SHA-256 fails with RestoreMismatch
 * (restore-reader.ts's final check), even when every chunk decoded cleanly: a forged chunk in an
 * unencrypted repository (its CRC recomputed), or a manifest recording another volume digest.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { AppError, ErrorCode } from '../../src/domain/errors.ts';
import { restoreBackup } from '../../src/engine/restore-reader.ts';
import { verifyRepository } from '../../src/engine/verifier.ts';
import { forgeFirstChunk } from '../helpers/forge.ts';
import { backupFile, engineTestContext, initRepo, reopenRepo } from '../helpers/repo.ts';
import { cliErrorMessage, listPacks, MiB, runCli, writeRandomFile } from '../helpers/volumes.ts';

const { temp, pool } = engineTestContext('haven-mismatch-');

const isMismatch = (err: unknown): boolean => err instanceof AppError && err.code === ErrorCode.RestoreMismatch;

describe('restore final check (RestoreMismatch)', () => {
  it('a forged chunk that decodes cleanly makes the restore fail, not succeed with wrong bytes', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: false });
    await writeRandomFile(path.join(dir, 'v.img'), 2 * MiB, 501);
    const m = (await backupFile(repo, path.join(dir, 'v.img'), 'v', { pool })).manifest;
    const [pack] = await listPacks(repoDir);
    await forgeFirstChunk(path.join(repoDir, pack!));
    const fresh = await reopenRepo(repoDir, false);
    await assert.rejects(restoreBackup(fresh, m, path.join(dir, 'out.img'), { pool }), isMismatch);
    const cli = await runCli(['restore', '--repo', repoDir, '--backup', m.id, '--target', path.join(dir, 'cli.img')]);
    assert.notEqual(cli.code, 0);
    assert.match(cliErrorMessage(cli), /does not match its SHA-256/);
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
    const other = { ...m, volumeSha256: m.volumeSha256.replace(/^./, (c) => (c === '0' ? '1' : '0')) };
    await repo.writeManifest(other);
    await assert.rejects(restoreBackup(repo, await repo.readManifest(m.id), path.join(dir, 'out.img'), { pool }), isMismatch);
  });
});
