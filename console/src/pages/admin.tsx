/** Cloud admin: the agents on the hosts that hold disks, and each project's quotas. */
import { useState } from 'preact/hooks';
import { api } from '../api.ts';
import { ErrorNote, Field, notify, PageHeader, Status, Table, useAction, useResource, val } from '../components.tsx';
import { ago } from '../format.ts';
import type { Agent } from '../types.ts';

type QuotaValue = number | { in_use: number; limit: number; reserved: number };

/** The limits an admin sets (os-quota-sets PUT); the others follow from them or from the service's settings. */
const SETTABLE = new Set(['volumes', 'gigabytes']);

function Quotas() {
  const projects = useResource(() => api<{ projects: { id: string; name: string }[] }>('GET', '/v3/projects').then((r) => r.projects.sort((a, b) => a.name.localeCompare(b.name))), []);
  const [target, setTarget] = useState('');
  const chosen = target || projects.data?.[0]?.id || '';
  const quota = useResource(
    () => (chosen ? api<{ quota_set: Record<string, QuotaValue | string> }>('GET', `/v3/{p}/os-quota-sets/${encodeURIComponent(chosen)}`, { query: { usage: true } }).then((r) => r.quota_set) : Promise.resolve(undefined)),
    [chosen],
  );
  const [edits, setEdits] = useState<Record<string, string>>({});
  const [busy, run] = useAction();
  const rows = Object.entries(quota.data ?? {}).filter((e): e is [string, QuotaValue] => e[0] !== 'id' && typeof e[1] !== 'string');
  return (
    <>
      <ErrorNote error={projects.error ?? quota.error} />
      <Field label="Project">
        <select value={chosen} onChange={(e) => (setTarget(val(e)), setEdits({}))}>
          {(projects.data ?? []).map((p) => (
            <option value={p.id}>{p.name}</option>
          ))}
        </select>
      </Field>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          const bad = Object.entries(edits).find(([, v]) => !/^-?\d+$/.test(v.trim()) || Number(v) < -1);
          if (bad) return void notify(`${bad[0]}: a whole number, -1 for no limit`, 'error');
          const quota_set = Object.fromEntries(Object.entries(edits).map(([k, v]) => [k, Number(v)]));
          if (await run(() => api('PUT', `/v3/{p}/os-quota-sets/${encodeURIComponent(chosen)}`, { body: { quota_set } }), 'Quotas saved')) (setEdits({}), quota.reload());
        }}
      >
        <Table
          label="Quotas"
          rows={quota.data ? rows : undefined}
          rowKey={(r) => r[0]}
          empty="No quotas."
          columns={[
            { title: 'Resource', cell: ([k]) => k },
            { title: 'In use', cell: ([, v]) => (typeof v === 'number' ? '–' : v.in_use) },
            {
              title: 'Limit (-1: none)',
              cell: ([k, v]) => {
                const limit = String(typeof v === 'number' ? v : v.limit);
                if (!SETTABLE.has(k)) return limit;
                return <input aria-label={`Limit of ${k}`} type="number" min={-1} required value={edits[k] ?? limit} onInput={(e) => setEdits({ ...edits, [k]: val(e) })} />;
              },
            },
          ]}
        />
        <button type="submit" disabled={busy || !Object.keys(edits).length} aria-busy={busy}>
          Save quotas
        </button>
      </form>
    </>
  );
}

export function AdminPage() {
  const agents = useResource(() => api<{ agents: Agent[] }>('GET', '/haven/v1/agents').then((r) => r.agents), [], { pollMs: 5000, poll: () => true });
  const [busy, run] = useAction();
  return (
    <section>
      <PageHeader title="Agents" />
      <ErrorNote error={agents.error} />
      <Table
        label="Agents"
        rows={agents.data}
        rowKey={(a) => a.host}
        empty="No agents registered."
        columns={[
          { title: 'Host', cell: (a) => (a.embedded ? `${a.host} (this process)` : a.host) },
          { title: 'State', cell: (a) => <Status value={a.draining ? 'draining' : a.online ? 'online' : 'offline'} /> },
          { title: 'Heartbeat', cell: (a) => ago(a.last_heartbeat) },
          { title: 'Volumes', cell: (a) => a.volumes },
          { title: 'Running', cell: (a) => a.running_jobs.length },
          { title: 'Version', wide: true, cell: (a) => a.version },
          { title: 'Roots', wide: true, cell: (a) => a.volume_roots.join(', ') || '–' },
          {
            title: 'Actions',
            cell: (a) =>
              a.embedded ? null : (
                <button
                  type="button"
                  class="small secondary"
                  disabled={busy}
                  onClick={() => void run(() => api('POST', `/haven/v1/agents/${encodeURIComponent(a.host)}/${a.draining ? 'undrain' : 'drain'}`), a.draining ? `${a.host} takes work again` : `${a.host} is draining`).then(agents.reload)}
                >
                  {a.draining ? 'Undrain' : 'Drain'}
                </button>
              ),
          },
        ]}
      />
      <PageHeader title="Quotas" />
      <Quotas />
    </section>
  );
}
