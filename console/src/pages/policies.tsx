/**
 * VBS policies: create and edit with a live preview of the next runs (the API's schedule preview,
 * the scheduler's own code), associate volumes, run now, task history, delete.
 */
import { useEffect, useState } from 'preact/hooks';
import { api } from '../api.ts';
import { ConfirmModal, ErrorNote, errorText, Field, Modal, PageHeader, Status, Table, useAction, useResource, val } from '../components.tsx';
import { shortId, time } from '../format.ts';
import { href } from '../router.ts';
import type { PolicyTask, VbsPolicy } from '../types.ts';
import { listVolumes } from './volumes.tsx';

const DAYS = ['MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT', 'SUN'];

interface Draft {
  name: string;
  startTime: string;
  timeZone: string;
  mode: 'week' | 'days';
  week: string[];
  frequency: string;
  retention: 'num' | 'day';
  retentionValue: string;
  keepFirstOfMonth: boolean;
  on: boolean;
}

function draftOf(p?: VbsPolicy): Draft {
  const s = p?.scheduled_policy;
  return {
    name: p?.backup_policy_name ?? '',
    startTime: s?.start_time ?? '02:00',
    timeZone: p?.time_zone ?? '',
    mode: s?.frequency ? 'days' : 'week',
    week: s?.week_frequency ?? (s?.frequency ? [] : ['MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT', 'SUN']),
    frequency: String(s?.frequency ?? 1),
    retention: s?.rentention_day !== undefined ? 'day' : 'num',
    retentionValue: String(s?.rentention_day ?? s?.rentention_num ?? 7),
    keepFirstOfMonth: s ? s.remain_first_backup_of_curMonth === 'Y' : false,
    on: s ? s.status === 'ON' : true,
  };
}

/** "UTC+02:00" → minutes east of UTC (for showing the runs in the policy's zone). */
function offsetMinutes(tz: string): number {
  const m = /^UTC([+-])(\d\d):(\d\d)$/.exec(tz.trim());
  return m ? (m[1] === '-' ? -1 : 1) * (Number(m[2]) * 60 + Number(m[3])) : 0;
}

function inZone(iso: string, tz: string): string {
  const off = offsetMinutes(tz);
  const d = new Date(Date.parse(iso) + off * 60_000);
  const day = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'][d.getUTCDay()];
  return `${day} ${d.toISOString().slice(0, 16).replace('T', ' ')} ${tz.trim() || 'UTC'}`;
}

function Preview({ d }: { d: Draft }) {
  const [runs, setRuns] = useState<string[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    const t = setTimeout(() => {
      const body = {
        start_time: d.startTime,
        ...(d.timeZone.trim() ? { time_zone: d.timeZone.trim() } : {}),
        ...(d.mode === 'week' ? { week_frequency: d.week } : { frequency: Number(d.frequency), created: new Date().toISOString() }),
        count: 5,
      };
      api<{ runs: string[] }>('POST', '/haven/v1/schedule/preview', { body }).then(
        (r) => (setRuns(r.runs), setError(null)),
        (e: unknown) => (setRuns(null), setError(errorText(e))),
      );
    }, 250);
    return () => clearTimeout(t);
  }, [d.startTime, d.timeZone, d.mode, d.week.join(), d.frequency]);
  return (
    <aside class="preview" aria-live="polite" aria-label="Next runs">
      <strong>Next runs</strong>
      {error && <p class="error-note">{error}</p>}
      {runs && (
        <ol data-testid="schedule-preview">
          {runs.map((r) => (
            <li>
              {inZone(r, d.timeZone)} <small>({r.slice(0, 16).replace('T', ' ')} UTC)</small>
            </li>
          ))}
        </ol>
      )}
    </aside>
  );
}

function PolicyForm({ policy, onDone }: { policy?: VbsPolicy | undefined; onDone: () => void }) {
  const [d, setD] = useState(() => draftOf(policy));
  const set = (patch: Partial<Draft>) => setD((x) => ({ ...x, ...patch }));
  const [busy, run] = useAction();
  return (
    <form
      onSubmit={async (e) => {
        e.preventDefault();
        const scheduled_policy = {
          start_time: d.startTime,
          ...(d.mode === 'week' ? { week_frequency: d.week } : { frequency: Number(d.frequency) }),
          ...(d.retention === 'num' ? { rentention_num: Number(d.retentionValue) } : { rentention_day: Number(d.retentionValue) }),
          remain_first_backup_of_curMonth: d.keepFirstOfMonth ? 'Y' : 'N',
          status: d.on ? 'ON' : 'OFF',
        };
        const body = { backup_policy_name: d.name, scheduled_policy, ...(d.timeZone.trim() ? { time_zone: d.timeZone.trim() } : {}) };
        const ok = await run(
          () => (policy ? api('PUT', `/v2/{p}/backuppolicy/${encodeURIComponent(policy.backup_policy_id)}`, { body }) : api('POST', '/v2/{p}/backuppolicy', { body })),
          policy ? `Policy ${d.name} saved` : `Policy ${d.name} created`,
        );
        if (ok) onDone();
      }}
    >
      <Field label="Name">
        <input name="backup_policy_name" required pattern="[A-Za-z0-9_.\-]{1,64}" value={d.name} onInput={(e) => set({ name: val(e) })} />
      </Field>
      <div class="grid">
        <Field label="Start times (UTC, whole hours)" hint='e.g. "22:00,02:00"'>
          <input name="start_time" required value={d.startTime} onInput={(e) => set({ startTime: val(e) })} />
        </Field>
        <Field label="Time zone" hint="UTC+HH:mm; the days are counted in it">
          <input name="time_zone" placeholder="UTC+00:00" value={d.timeZone} onInput={(e) => set({ timeZone: val(e) })} />
        </Field>
      </div>
      <fieldset>
        <legend>Days</legend>
        <label>
          <input type="radio" name="mode" checked={d.mode === 'week'} onChange={() => set({ mode: 'week' })} />
          On days of the week
        </label>
        <label>
          <input type="radio" name="mode" checked={d.mode === 'days'} onChange={() => set({ mode: 'days' })} />
          Every N days
        </label>
        {d.mode === 'week' ? (
          <div class="days" role="group" aria-label="Days of the week">
            {DAYS.map((day) => (
              <label>
                <input type="checkbox" checked={d.week.includes(day)} onChange={(e) => set({ week: e.currentTarget.checked ? [...d.week, day] : d.week.filter((x) => x !== day) })} />
                {day}
              </label>
            ))}
          </div>
        ) : (
          <Field label="Every how many days">
            <input name="frequency" type="number" min={1} max={30} value={d.frequency} onInput={(e) => set({ frequency: val(e) })} />
          </Field>
        )}
      </fieldset>
      <Preview d={d} />
      <div class="grid">
        <Field label="Keep">
          <select value={d.retention} onChange={(e) => set({ retention: val(e) as Draft['retention'] })}>
            <option value="num">the newest N backups</option>
            <option value="day">backups of the last N days</option>
          </select>
        </Field>
        <Field label="N">
          <input name="retention" type="number" min={2} required value={d.retentionValue} onInput={(e) => set({ retentionValue: val(e) })} />
        </Field>
      </div>
      <label>
        <input type="checkbox" checked={d.keepFirstOfMonth} onChange={(e) => set({ keepFirstOfMonth: e.currentTarget.checked })} />
        Also keep the first backup of the current month
      </label>
      <label>
        <input type="checkbox" role="switch" checked={d.on} onChange={(e) => set({ on: e.currentTarget.checked })} />
        Enabled
      </label>
      <button type="submit" aria-busy={busy} disabled={busy}>
        {policy ? 'Save policy' : 'Create policy'}
      </button>
    </form>
  );
}

function Associate({ policy, onDone }: { policy: VbsPolicy; onDone: () => void }) {
  const volumes = useResource(listVolumes, []);
  const [chosen, setChosen] = useState<string[]>([]);
  const [busy, run] = useAction();
  const act = async (remove: boolean) => {
    const resources = chosen.map((id) => ({ resource_id: id, resource_type: 'volume' }));
    let failed: { resource_id: string; message?: string }[] = [];
    const ok = await run(async () => {
      const r = remove
        ? await api<{ fail_resources?: { resource_id: string; message?: string }[] }>('POST', `/v2/{p}/backuppolicyresources/${encodeURIComponent(policy.backup_policy_id)}/deleted_resources`, { body: { resources } })
        : await api<{ fail_resources?: { resource_id: string; message?: string }[] }>('POST', '/v2/{p}/backuppolicyresources', { body: { backup_policy_id: policy.backup_policy_id, resources } });
      failed = r.fail_resources ?? [];
      if (failed.length) throw new Error(failed.map((f) => `${shortId(f.resource_id)}: ${f.message ?? 'refused'}`).join('; '));
    }, remove ? 'Volumes removed from the policy' : 'Volumes added to the policy');
    if (ok) onDone();
  };
  return (
    <>
      <ErrorNote error={volumes.error} />
      <fieldset>
        <legend>Volumes (a volume belongs to at most one policy: adding moves it)</legend>
        {(volumes.data ?? []).map((v) => (
          <label>
            <input type="checkbox" checked={chosen.includes(v.id)} onChange={(e) => setChosen(e.currentTarget.checked ? [...chosen, v.id] : chosen.filter((x) => x !== v.id))} />
            {v.name ?? shortId(v.id)} <small>{v.size} GB</small>
          </label>
        ))}
      </fieldset>
      <div class="row-actions">
        <button type="button" disabled={busy || !chosen.length} onClick={() => void act(false)}>
          Add to policy
        </button>
        <button type="button" class="secondary" disabled={busy || !chosen.length} onClick={() => void act(true)}>
          Remove from policy
        </button>
      </div>
    </>
  );
}

function Tasks({ policy }: { policy: VbsPolicy }) {
  const tasks = useResource(() => api<{ tasks: PolicyTask[] }>('GET', `/v2/{p}/backuppolicy/${encodeURIComponent(policy.backup_policy_id)}/backuptasks`, { query: { limit: 100 } }).then((r) => r.tasks), [policy.backup_policy_id], {
    pollMs: 2000,
    poll: (ts) => ts.some((t) => t.status === 'RUNNING' || t.status === 'WAITING'),
  });
  return (
    <>
      <ErrorNote error={tasks.error} />
      <Table
        label="Tasks"
        rows={tasks.data}
        rowKey={(t) => t.job_id}
        empty="The policy has not run yet."
        columns={[
          { title: 'Backup', cell: (t) => t.backup_name },
          { title: 'Volume', cell: (t) => shortId(t.resource_id) },
          { title: 'Status', cell: (t) => <Status value={t.status} /> },
          { title: 'Started', cell: (t) => time(t.created_at) },
          { title: 'Finished', wide: true, cell: (t) => time(t.finished_at) },
        ]}
      />
    </>
  );
}

export function PoliciesPage() {
  const policies = useResource(() => api<{ backup_policies: VbsPolicy[] }>('GET', '/v2/{p}/backuppolicy').then((r) => r.backup_policies), []);
  const [dialog, setDialog] = useState<{ kind: 'create' | 'edit' | 'associate' | 'tasks' | 'delete'; policy?: VbsPolicy } | null>(null);
  const [busy, run] = useAction();
  const close = () => setDialog(null);
  const done = () => (setDialog(null), policies.reload());
  const p = dialog?.policy;
  return (
    <section>
      <PageHeader title="Backup policies (VBS)">
        <button type="button" onClick={() => setDialog({ kind: 'create' })}>
          Create policy
        </button>
      </PageHeader>
      <ErrorNote error={policies.error} />
      <Table
        label="Policies"
        rows={policies.data}
        rowKey={(r) => r.backup_policy_id}
        empty="No policies yet."
        columns={[
          { title: 'Name', cell: (r) => r.backup_policy_name },
          { title: 'Status', cell: (r) => <Status value={r.scheduled_policy.status} /> },
          {
            title: 'Schedule',
            wide: true,
            cell: (r) => `${r.scheduled_policy.start_time} UTC, ${r.scheduled_policy.week_frequency?.join(' ') ?? `every ${r.scheduled_policy.frequency} d`}${r.time_zone ? ` (${r.time_zone})` : ''}`,
          },
          { title: 'Keeps', wide: true, cell: (r) => (r.scheduled_policy.rentention_num ? `${r.scheduled_policy.rentention_num} backups` : `${r.scheduled_policy.rentention_day} days`) },
          { title: 'Volumes', cell: (r) => r.policy_resource_count },
          {
            title: 'Actions',
            cell: (r) => (
              <div class="row-actions" role="group" aria-label={`Actions for ${r.backup_policy_name}`}>
                <button
                  type="button"
                  class="small"
                  onClick={() => void run(() => api('POST', `/v2/{p}/backuppolicy/${encodeURIComponent(r.backup_policy_id)}/action`), `Policy ${r.backup_policy_name} is running`)}
                  disabled={busy}
                >
                  Run now
                </button>
                <button type="button" class="small secondary" onClick={() => setDialog({ kind: 'edit', policy: r })}>
                  Edit
                </button>
                <button type="button" class="small secondary" onClick={() => setDialog({ kind: 'associate', policy: r })}>
                  Volumes
                </button>
                <button type="button" class="small secondary" onClick={() => setDialog({ kind: 'tasks', policy: r })}>
                  Tasks
                </button>
                <a class="small" href={href('/backups', { policy_id: r.backup_policy_id })}>
                  Backups
                </a>
                <button type="button" class="small secondary outline" onClick={() => setDialog({ kind: 'delete', policy: r })}>
                  Delete
                </button>
              </div>
            ),
          },
        ]}
      />
      <Modal title="Create a policy" open={dialog?.kind === 'create'} onClose={close}>
        <PolicyForm onDone={done} />
      </Modal>
      <Modal title={`Edit ${p?.backup_policy_name ?? ''}`} open={dialog?.kind === 'edit'} onClose={close}>
        {p && <PolicyForm policy={p} onDone={done} />}
      </Modal>
      <Modal title={`Volumes of ${p?.backup_policy_name ?? ''}`} open={dialog?.kind === 'associate'} onClose={close}>
        {p && <Associate policy={p} onDone={done} />}
      </Modal>
      <Modal title={`Tasks of ${p?.backup_policy_name ?? ''}`} open={dialog?.kind === 'tasks'} onClose={close}>
        {p && <Tasks policy={p} />}
      </Modal>
      <ConfirmModal
        title={`Delete ${p?.backup_policy_name ?? ''}?`}
        open={dialog?.kind === 'delete'}
        onClose={close}
        confirm="Delete policy"
        done="Policy deleted"
        action={() => api('DELETE', `/v2/{p}/backuppolicy/${encodeURIComponent(p!.backup_policy_id)}`)}
        onDone={done}
      >
        <p>The policy stops; the backups it made stay.</p>
      </ConfirmModal>
    </section>
  );
}
