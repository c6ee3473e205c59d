/**
 * The metrics an operator alerts on (api/metrics.ts, deploy/prometheus/haven-rules.yml), read from a
 * real service after real work: a backup, a policy, a job that fails, a GC and a verify that finds
 * a flipped byte. Each figure is compared with the catalog's or the repository's own.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService } from '../helpers/service.ts';
import { listPacks, MiB, overwrite, randomBytesSeeded, TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-alert-metrics-');
after(() => temp.cleanup());

/** The value of one sample (name and exact label set), or undefined when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).sort().join(',');
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = (m[2] ?? '').split(',').filter(Boolean).sort().join(',');
    if (got === want) return Number(m[3]);
  }
  return undefined;
}

describe('alerting metrics', () => {
  it('show the last good backup per volume and policy, failures by reason, queue wait, agents, free space, verify and GC', async () => {
    const svc = await startService(temp);
    try {
      const who = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      const pid = who.projectId;
      const scrape = async (): Promise<string> => {
        const r = await svc.req({ method: 'GET', url: '/metrics', token: who.token });
        assert.equal(r.statusCode, 200, r.body);
        return r.body;
      };

      let text = await scrape();
      // One prefix, not two (haven_process_process_cpu_user_seconds_total before).
      assert.ok(sample(text, 'haven_process_cpu_user_seconds_total') !== undefined, 'haven_process_cpu_user_seconds_total');
      assert.doesNotMatch(text, /haven_process_process_/);
      // Nothing backed up, no policy, no verify yet: no such samples; no GC yet: its time is 0.
      assert.doesNotMatch(text, /^haven_volume_last_backup_success_timestamp_seconds\{/m);
      assert.doesNotMatch(text, /^haven_verify_damaged_chunks\{/m);
      assert.equal(sample(text, 'haven_gc_last_run_timestamp_seconds'), 0);
      // The embedded agent and the data folder's free space.
      const host = svc.app.config.hostName;
      const beat = sample(text, 'haven_agent_last_heartbeat_timestamp_seconds', { host });
      assert.ok(beat !== undefined && Math.abs(beat - Date.now() / 1000) < 120, `agent heartbeat ${beat}`);
      const st = await fs.statfs(path.join(svc.dataDir, 'repository'));
      const free = sample(text, 'haven_repository_free_bytes')!;
      assert.ok(Math.abs(free - Number(st.bavail) * Number(st.bsize)) < 256 * MiB, `free ${free}`);
      assert.equal(sample(text, 'haven_repository_filesystem_bytes'), Number(st.blocks) * Number(st.bsize));

      // A backup that succeeds: its volume's timestamp is the backup's own.
      const vol = await svc.createVolume(who, 'metrics-vol', 1);
      await overwrite(await svc.volumePath(vol.id), 0, randomBytesSeeded(2 * MiB, 77));
      const policy = await svc.req({ method: 'POST', url: `/v2/${pid}/backuppolicy`, token: who.token, payload: { backup_policy_name: 'nightly', scheduled_policy: { start_time: '02:00', frequency: 1, rentention_num: 7, remain_first_backup_of_curMonth: 'N', status: 'ON' } } });
      assert.equal(policy.statusCode, 200, policy.body);
      const policyId = (policy.json() as { backup_policy_id: string }).backup_policy_id;
      text = await scrape();
      assert.equal(sample(text, 'haven_policy_created_timestamp_seconds', { project_id: pid, policy_id: policyId }), undefined, 'a policy without volumes is not watched');
      const assoc = await svc.req({ method: 'POST', url: `/v2/${pid}/backuppolicyresources`, token: who.token, payload: { backup_policy_id: policyId, resources: [{ resource_id: vol.id, resource_type: 'volume' }] } });
      assert.equal(assoc.statusCode, 200, assoc.body);
      text = await scrape();
      const made = (await svc.app.catalog.policies.getPolicyById(policyId))!;
      assert.equal(sample(text, 'haven_policy_created_timestamp_seconds', { project_id: pid, policy_id: policyId }), made.createdAt / 1000);
      assert.equal(sample(text, 'haven_policy_last_backup_success_timestamp_seconds', { project_id: pid, policy_id: policyId }), undefined, 'no policy backup yet');

      const exec = await svc.req({ method: 'POST', url: `/v2/${pid}/backuppolicy/${policyId}/action`, token: who.token, headers: { 'content-type': 'application/json' }, payload: '' });
      assert.equal(exec.statusCode, 204, exec.body);
      let task: Record<string, string> | undefined;
      for (let i = 0; i < 2400 && task?.status !== 'EXECUTE_SUCCESS'; i++) {
        const t = await svc.req({ method: 'GET', url: `/v2/${pid}/backuppolicy/${policyId}/backuptasks`, token: who.token });
        task = (t.json() as { tasks: Record<string, string>[] }).tasks[0];
        assert.notEqual(task?.status, 'EXECUTE_FAIL', JSON.stringify(task));
        if (task?.status !== 'EXECUTE_SUCCESS') await new Promise((r) => setTimeout(r, 25));
      }
      const job = await svc.waitJob(who.token, pid, task!.vbs_job_id!);
      assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
      const backup = (await svc.app.catalog.backups.getBackupById((job.entities as Record<string, string>).backup_id!))!;
      text = await scrape();
      assert.equal(sample(text, 'haven_volume_last_backup_success_timestamp_seconds', { project_id: pid, volume_id: vol.id, policy_id: policyId }), backup.createdAt / 1000);
      assert.equal(sample(text, 'haven_policy_last_backup_success_timestamp_seconds', { project_id: pid, policy_id: policyId }), backup.createdAt / 1000);
      assert.ok((sample(text, 'haven_job_queue_wait_seconds_count', { type: 'bksCreateBackup' }) ?? 0) >= 1, 'queue wait observed');

      // A backup that fails (its volume's file is gone): counted by its reason; the last good
      // backup's time stays.
      const gone = await svc.createVolume(who, 'metrics-gone', 1);
      await fs.rm(await svc.volumePath(gone.id));
      const b = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token: who.token, payload: { backup: { volume_id: gone.id, name: 'doomed' } } });
      assert.equal(b.statusCode, 200, b.body);
      const failed = await svc.waitJob(who.token, pid, (b.json() as { job_id: string }).job_id);
      assert.equal(failed.status, 'FAIL', JSON.stringify(failed));
      const code = (await svc.app.catalog.jobs.getJobById((b.json() as { job_id: string }).job_id))!.errorCode!;
      assert.ok(code, 'the failed job has an error code');
      text = await scrape();
      assert.equal(sample(text, 'haven_jobs_failed_total', { type: 'bksCreateBackup', reason: code }), 1);
      assert.doesNotMatch(text, new RegExp(`haven_volume_last_backup_success_timestamp_seconds\\{[^}]*volume_id="${gone.id}"`));

      // GC and a verify that finds a flipped byte, as the repository recorded them.
      const gc = await svc.app.engine.collectGarbage();
      await svc.app.engine.gcIdle();
      const repo = path.join(svc.dataDir, 'repository');
      const [pack] = await listPacks(repo);
      const file = path.join(repo, pack!);
      const body = await fs.readFile(file);
      body[300]! ^= 0x01;
      await fs.writeFile(file, body);
      const report = await svc.app.engine.verify([backup.id]);
      assert.equal(report.ok, false);
      text = await scrape();
      assert.equal(sample(text, 'haven_gc_dead_bytes'), gc.deadBytes);
      assert.equal(sample(text, 'haven_gc_reclaimed_bytes'), gc.reclaimedBytes);
      const gcAt = sample(text, 'haven_gc_last_run_timestamp_seconds')!;
      assert.ok(Math.abs(gcAt - Date.now() / 1000) < 120, `gc at ${gcAt}`);
      assert.equal(sample(text, 'haven_verify_damaged_chunks', { scope: 'backups' }), report.damagedChunks + report.missingChunks);
      assert.ok(report.damagedChunks + report.missingChunks >= 1);
      assert.ok(sample(text, 'haven_verify_last_run_timestamp_seconds', { scope: 'backups' })! >= gcAt);
    } finally {
      await svc.close();
    }
  });
});
