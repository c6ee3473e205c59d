/**
 * VBS request validation, one case per rule with the exact code of vbs.md §5 (B1, B3) and §11:
 * each rejected request answers in the VBS envelope and changes nothing (no backup row, no job,
 * volumes and backups in the state they were). The boundary values of each rule are accepted.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, sha256, sha256File, TempDirs } from '../helpers/volumes.ts';
import { assertVbsError, createVolume, jobCount, withRunnerPaused } from '../helpers/api.ts';

const UNKNOWN = '7d8e8e0a-0000-4000-8000-0000000000ff';

describe('VBS validation (B1, B3, J1)', () => {
  const temp = new TempDirs('haven-vbsval-');
  let svc: TestService;
  let token: string;
  let pid: string;
  let vol: { id: string; path: string };
  let backupId: string;
  let small: { id: string; file: string; sha: string };

  before(async () => {
    const root = temp.make('roots');
    svc = await startService(temp, { volumeRoots: [root] });
    ({ token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin'));
    vol = await createVolume(svc, token, pid, { name: 'disk' });
    await overwrite(vol.path, 0, randomBytesSeeded(2 * MiB, 51));
    const r = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token, payload: { backup: { volume_id: vol.id, name: 'base' } } });
    assert.equal(r.statusCode, 200, r.body);
    const job = await svc.waitJob(token, pid, (r.json() as { job_id: string }).job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    backupId = (job.entities as { backup_id: string }).backup_id;
    const file = path.join(root, 'small.img');
    const data = randomBytesSeeded(2 * MiB, 52);
    writeFileSync(file, data);
    small = { id: (await svc.adopt({ token, projectId: pid }, file, 'small')).id, file, sha: sha256(data) };
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  /** The state a rejected request must leave alone. */
  const state = async () => ({
    backups: await svc.app.catalog.backups.countBackups(pid, {}),
    creating: await svc.app.catalog.backups.countBackups(pid, { status: 'creating' }),
    jobs: await jobCount(svc),
    backup: (await svc.app.catalog.backups.getBackupById(backupId))!.status,
    volume: (await svc.app.catalog.volumes.getVolumeById(vol.id))!.status,
    small: (await svc.app.catalog.volumes.getVolumeById(small.id))!.status,
  });

  const b1 = (payload: unknown) => svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token, payload: payload as object });
  const valid = () => ({ volume_id: vol.id, name: 'ok_name-1' });

  /** Sends a B1 body and expects `code` (and `status`), with nothing changed. */
  const rejectB1 = async (backup: Record<string, unknown> | undefined, code: string, status = 400, raw?: unknown) => {
    const before = await state();
    const r: LightMyRequestResponse = await b1(raw ?? { backup });
    assertVbsError(r, status, code);
    assert.deepEqual(await state(), before, `state changed after ${JSON.stringify(backup)}`);
  };

  it('volume_id missing or empty: VolumeBackup.0010', async () => {
    await rejectB1({ name: 'x' }, 'VolumeBackup.0010');
    await rejectB1({ volume_id: '', name: 'x' }, 'VolumeBackup.0010');
  });

  it('volume_id malformed: VolumeBackup.0011', async () => {
    for (const id of ['not-a-uuid', vol.id.slice(0, 35), `${vol.id}0`, vol.id.replace(/-/g, ''), 42, null]) {
      await rejectB1({ volume_id: id, name: 'x' }, 'VolumeBackup.0011');
    }
  });

  it('volume unknown: VolumeBackup.0021 (404)', async () => {
    await rejectB1({ volume_id: UNKNOWN, name: 'x' }, 'VolumeBackup.0021', 404);
  });

  it('name missing or empty: VolumeBackup.0007', async () => {
    await rejectB1({ volume_id: vol.id }, 'VolumeBackup.0007');
    await rejectB1({ volume_id: vol.id, name: '' }, 'VolumeBackup.0007');
  });

  it('name longer than 64: VolumeBackup.0003', async () => {
    await rejectB1({ volume_id: vol.id, name: 'n'.repeat(65) }, 'VolumeBackup.0003');
  });

  it('name with characters other than letters, digits, _ and -: VolumeBackup.0004', async () => {
    for (const name of ['has space', 'dot.name', 'bang!', 'slash/x', 'ümlaut', 'tab\tx', 'semi;colon']) {
      await rejectB1({ volume_id: vol.id, name }, 'VolumeBackup.0004');
    }
  });

  it('name starting with "auto": VolumeBackup.0005', async () => {
    for (const name of ['auto', 'autobk_a61d', 'AUTO-1', 'Auto_x', 'automatic']) {
      await rejectB1({ volume_id: vol.id, name }, 'VolumeBackup.0005');
    }
  });

  it('description longer than 64 or with < or >: VolumeBackup.0006', async () => {
    for (const description of ['d'.repeat(65), 'a <b>', 'x<y', 'x>y', '']) {
      await rejectB1({ ...valid(), description }, 'VolumeBackup.0006');
    }
  });

  it('more than 10 tags: VolumeBackup.0050', async () => {
    const tags = Array.from({ length: 11 }, (_, i) => ({ key: `k${i}`, value: `v${i}` }));
    await rejectB1({ ...valid(), tags }, 'VolumeBackup.0050');
  });

  it('an invalid tag: VolumeBackup.0049', async () => {
    const bad: unknown[] = [
      { key: 'a=b', value: 'v' },
      { key: 'a*b', value: 'v' },
      { key: 'a<b', value: 'v' },
      { key: 'a>b', value: 'v' },
      { key: 'a\\b', value: 'v' },
      { key: 'a,b', value: 'v' },
      { key: 'a|b', value: 'v' },
      { key: 'a/b', value: 'v' },
      { key: 'ctl\u0001', value: 'v' },
      { key: '', value: 'v' },
      { key: 'k'.repeat(37), value: 'v' },
      { key: 'k', value: 'v'.repeat(44) },
      { key: 'k', value: 'a=b' },
      { key: 'k' },
      { value: 'v' },
      { key: 5, value: 'v' },
      'k=v',
    ];
    for (const tag of bad) await rejectB1({ ...valid(), tags: [{ key: 'fine', value: 'fine' }, tag] }, 'VolumeBackup.0049');
    await rejectB1({ ...valid(), tags: 'env=prod' }, 'VolumeBackup.0049');
  });

  it('no backup object at all: VolumeBackup.0002', async () => {
    await rejectB1(undefined, 'VolumeBackup.0002', 400, {});
    await rejectB1(undefined, 'VolumeBackup.0002', 400, { backup: 'x' });
  });

  it('the boundary values are accepted (64-char name and description, 10 tags of the longest sizes)', async () => {
    const tags = Array.from({ length: 10 }, (_, i) => ({ key: `${i}`.padEnd(36, 'k'), value: i === 0 ? '' : 'v'.repeat(43) }));
    const before = await state();
    const r = await b1({ backup: { volume_id: vol.id, name: `N${'a'.repeat(62)}_`, description: 'd'.repeat(64), tags, snapshot_id: null, extend_param: { FullBackup: 'true' } } });
    assert.equal(r.statusCode, 200, r.body);
    assert.deepEqual(Object.keys(r.json() as object), ['job_id']);
    const job = await svc.waitJob(token, pid, (r.json() as { job_id: string }).job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    const row = (await svc.app.catalog.backups.getBackupById((job.entities as { backup_id: string }).backup_id))!;
    assert.equal(row.name!.length, 64);
    assert.equal(row.fullBackup, true, 'FullBackup "true" forces a full backup');
    assert.deepEqual(row.tags, tags);
    assert.equal(await svc.app.catalog.backups.countBackups(pid, {}), before.backups + 1);
  });

  it('a second backup while one of the same volume is creating: VolumeBackup.0013; a restore onto it: VolumeBackup.0206', async () => {
    const before = await state();
    const jobId = await withRunnerPaused(svc, async () => {
      const first = await b1({ backup: { volume_id: vol.id, name: 'running' } });
      assert.equal(first.statusCode, 200, first.body);
      const during = await state();
      assert.equal(during.backups, before.backups + 1);
      assert.equal(during.creating, 1);
      assert.equal(during.jobs, before.jobs + 1);
      await rejectB1({ volume_id: vol.id, name: 'second' }, 'VolumeBackup.0013');
      const r = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${backupId}/restore`, token, payload: { restore: { volume_id: vol.id } } });
      assertVbsError(r, 400, 'VolumeBackup.0206');
      assert.deepEqual(await state(), during);
      // Another volume is not blocked.
      const other = await createVolume(svc, token, pid, { name: 'other' });
      const o = await b1({ backup: { volume_id: other.id, name: 'other' } });
      assert.equal(o.statusCode, 200, o.body);
      return (first.json() as { job_id: string }).job_id;
    });
    assert.equal((await svc.waitJob(token, pid, jobId)).status, 'SUCCESS');
    await svc.app.runner.idle();
  });

  describe('B3 restore', () => {
    const b3 = (id: string, payload: unknown) => svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${id}/restore`, token, payload: payload as object });
    const rejectB3 = async (id: string, payload: unknown, code: string, status = 400) => {
      const before = await state();
      assertVbsError(await b3(id, payload), status, code);
      assert.deepEqual(await state(), before);
    };

    it('bad volume id: VolumeBackup.0208', async () => {
      for (const volume_id of ['xyz', '', 7, vol.id.slice(1)]) await rejectB3(backupId, { restore: { volume_id } }, 'VolumeBackup.0208');
      await rejectB3(backupId, { restore: {} }, 'VolumeBackup.0208');
    });

    it('no restore object: VolumeBackup.0210', async () => {
      await rejectB3(backupId, {}, 'VolumeBackup.0210');
    });

    it('unknown volume: VolumeBackup.0207 (404)', async () => {
      await rejectB3(backupId, { restore: { volume_id: UNKNOWN } }, 'VolumeBackup.0207', 404);
    });

    it('unknown backup: VolumeBackup.0111 (404)', async () => {
      await rejectB3(UNKNOWN, { restore: { volume_id: vol.id } }, 'VolumeBackup.0111', 404);
      await rejectB3('not-even-a-uuid', { restore: { volume_id: vol.id } }, 'VolumeBackup.0111', 404);
    });

    it('volume smaller than the backup: VolumeBackup.0209, and the volume is untouched', async () => {
      await rejectB3(backupId, { restore: { volume_id: small.id } }, 'VolumeBackup.0209');
      assert.equal(await sha256File(small.file), small.sha);
    });
  });

  it('J1: an unknown job is 404 common.0011 (on /v1 and /v2)', async () => {
    for (const v of ['v1', 'v2']) {
      for (const id of ['4010b39b5281d3590152874bfa3b1604', 'nope']) {
        assertVbsError(await svc.req({ method: 'GET', url: `/${v}/${pid}/jobs/${id}`, token }), 404, 'common.0011');
      }
    }
  });

  it('B2: an unknown backup is 404 VolumeBackup.0110', async () => {
    const before = await state();
    assertVbsError(await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${UNKNOWN}`, token }), 404, 'VolumeBackup.0110');
    assertVbsError(await svc.req({ method: 'DELETE', url: `/v2/${pid}/cloudbackups/${UNKNOWN}`, token }), 404, 'VolumeBackup.0110');
    assert.deepEqual(await state(), before);
  });
});
