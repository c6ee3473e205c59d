/** Jobs with live progress: what Haven is doing now and what it did. */
import { useRef, useState } from 'preact/hooks';
import { api, currentSession } from '../api.ts';
import { ErrorNote, PageHeader, Progress, Status, Table, useResource } from '../components.tsx';
import { duration, parseTime, shortId, time } from '../format.ts';
import { useRoute } from '../router.ts';
import type { Job } from '../types.ts';

const KIND: Record<string, string> = {
  bksCreateBackup: 'Back up a volume',
  bksDeleteBackup: 'Delete a backup',
  bksRestoreBackup: 'Restore a volume',
  csbsProtect: 'Back up a server',
  csbsDelete: 'Delete a server backup',
  csbsRestore: 'Restore a server',
};

function took(j: Job): number | null {
  const b = parseTime(j.begin_time);
  if (b === null) return null;
  return (parseTime(j.end_time) ?? Date.now()) - b;
}

export function JobsPage() {
  const route = useRoute();
  const highlight = route.query.get('highlight');
  const admin = currentSession()?.admin ?? false;
  const [all, setAll] = useState(false);
  const [status, setStatus] = useState('');
  // A job just started shows up within moments; past that, a highlight that is not listed (another
  // project's, filtered out, older than the page) no longer keeps the page polling.
  const opened = useRef(Date.now());
  const jobs = useResource(() => api<{ jobs: Job[] }>('GET', '/haven/v1/jobs', { query: { limit: 100, status, ...(all ? { all_tenants: true } : {}) } }).then((r) => r.jobs), [all, status], {
    pollMs: 1500,
    poll: (js) => js.some((j) => j.status === 'INIT' || j.status === 'RUNNING') || (!!highlight && !js.some((j) => j.id === highlight) && Date.now() - opened.current < 30_000),
  });
  return (
    <section>
      <PageHeader title="Jobs">
        <select aria-label="Status" value={status} onChange={(e) => setStatus(e.currentTarget.value)}>
          <option value="">every status</option>
          <option value="RUNNING">running</option>
          <option value="INIT">queued</option>
          <option value="SUCCESS">succeeded</option>
          <option value="FAIL">failed</option>
        </select>
        {admin && (
          <label>
            <input type="checkbox" role="switch" checked={all} onChange={(e) => setAll(e.currentTarget.checked)} />
            All projects
          </label>
        )}
        <button type="button" class="secondary outline" onClick={jobs.reload} aria-busy={jobs.loading}>
          Refresh
        </button>
      </PageHeader>
      <ErrorNote error={jobs.error} />
      <Table
        label="Jobs"
        rows={jobs.data}
        rowKey={(j) => j.id}
        empty="No jobs yet: backups, restores and deletions show here while they run."
        columns={[
          {
            title: 'Job',
            cell: (j) => (
              <span class={j.id === highlight ? 'highlight' : undefined} title={j.id} data-job-id={j.id}>
                {KIND[j.job_type] ?? j.job_type}
              </span>
            ),
          },
          { title: 'Status', cell: (j) => <span data-job-status={j.id}><Status value={j.status} /></span> },
          { title: 'Progress', cell: (j) => (j.status === 'SUCCESS' ? <Progress done={1} total={1} /> : <Progress done={j.progress.done} total={j.progress.total} />) },
          {
            title: 'On',
            wide: true,
            cell: (j) =>
              Object.entries(j.entities)
                .filter(([k]) => k.endsWith('_id') || k.endsWith('_name'))
                .slice(0, 3)
                .map(([k, v]) => `${k.replace(/^bks_/, '')}: ${k.endsWith('_id') ? shortId(v) : v}`)
                .join(' · '),
          },
          { title: 'Started', cell: (j) => time(j.begin_time ?? j.created_at) },
          { title: 'Took', wide: true, cell: (j) => duration(took(j)) },
          { title: 'Reason', wide: true, cell: (j) => (j.fail_reason ? <span class="error-note">{j.fail_reason}</span> : '') },
          ...(all ? [{ title: 'Project', wide: true, cell: (j: Job) => shortId(j.project_id) }] : []),
        ]}
      />
    </section>
  );
}
