/**
 * Haven's own filter of the backup lists, `policy_id` (the console's "backups of a policy"): only the
 * backups that policy made, in the caller's project; a manual backup of the same volume is not one.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-policy-filter-');
after(() => temp.cleanup());

describe('GET backups/detail?policy_id=', () => {
  it("lists only the backups the policy made, and only in the caller's project", async () => {
    const svc = await startService(temp);
    try {
      const who = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      const pid = who.projectId;
      const vol = await svc.createVolume(who, 'filtered', 1);
      await overwrite(await svc.volumePath(vol.id), 0, randomBytesSeeded(MiB, 5));
      // A manual backup first...
      const manual = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token: who.token, payload: { backup: { volume_id: vol.id, name: 'manual1' } } });
      assert.equal(manual.statusCode, 200, manual.body);
      const mj = await svc.waitJob(who.token, pid, JSON.parse(manual.body).job_id);
      assert.equal(mj.status, 'SUCCESS', JSON.stringify(mj));
      // ... then one by a policy run now.
      const pol = await svc.req({ method: 'POST', url: `/v2/${pid}/backuppolicy`, token: who.token, payload: { backup_policy_name: 'pf', scheduled_policy: { start_time: '02:00', frequency: 1, rentention_num: 7, remain_first_backup_of_curMonth: 'N', status: 'ON' } } });
      assert.equal(pol.statusCode, 200, pol.body);
      const policyId = JSON.parse(pol.body).backup_policy_id as string;
      const assoc = await svc.req({ method: 'POST', url: `/v2/${pid}/backuppolicyresources`, token: who.token, payload: { backup_policy_id: policyId, resources: [{ resource_id: vol.id, resource_type: 'volume' }] } });
      assert.equal(assoc.statusCode, 200, assoc.body);
      const run = await svc.req({ method: 'POST', url: `/v2/${pid}/backuppolicy/${policyId}/action`, token: who.token });
      assert.equal(run.statusCode, 204, run.body);
      let byPolicy: { id: string; name: string; status: string }[] = [];
      for (let i = 0; i < 400; i++) {
        const r = await svc.req({ method: 'GET', url: `/v3/${pid}/backups/detail?policy_id=${policyId}`, token: who.token });
        assert.equal(r.statusCode, 200, r.body);
        byPolicy = JSON.parse(r.body).backups;
        if (byPolicy.length === 1 && byPolicy[0]!.status === 'available') break;
        await new Promise((res) => setTimeout(res, 50));
      }
      assert.equal(byPolicy.length, 1, JSON.stringify(byPolicy));
      assert.match(byPolicy[0]!.name, /^autobk_/);
      const all = await svc.req({ method: 'GET', url: `/v3/${pid}/backups/detail`, token: who.token });
      assert.equal(JSON.parse(all.body).backups.length, 2, 'without the filter: the manual backup too');
      const none = await svc.req({ method: 'GET', url: `/v2/${pid}/backups/detail?policy_id=no-such-policy`, token: who.token });
      assert.equal(none.statusCode, 200, none.body);
      assert.deepEqual(JSON.parse(none.body).backups, []);
      // Another project asking for this policy's backups sees none.
      const other = await svc.tenant('filter-other');
      const theirs = await svc.req({ method: 'GET', url: `/v3/${other.projectId}/backups/detail?policy_id=${policyId}`, token: other.token });
      assert.equal(theirs.statusCode, 200, theirs.body);
      assert.deepEqual(JSON.parse(theirs.body).backups, []);
    } finally {
      await svc.close();
    }
  });
});
