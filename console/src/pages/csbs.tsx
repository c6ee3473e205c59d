/** CSBS: servers (made of volumes), their backups (checkpoint items), policies, restores. */
import { useState } from 'preact/hooks';
import { api, CSBS_PROVIDER } from '../api.ts';
import { ConfirmModal, ErrorNote, errorText, Field, Modal, PageHeader, Status, Table, useAction, useResource, val } from '../components.tsx';
import { shortId, time } from '../format.ts';
import type { CheckpointItem, CsbsPolicy, Server } from '../types.ts';
import { backupName, listVolumes } from './volumes.tsx';

const BUSY = new Set(['protecting', 'restoring', 'deleting', 'creating']);

const listServers = () => api<{ servers: Server[] }>('GET', '/v2.1/{p}/servers/detail').then((r) => r.servers);

function ServerForm({ onDone }: { onDone: () => void }) {
  const volumes = useResource(listVolumes, []);
  const [name, setName] = useState('');
  const [system, setSystem] = useState('');
  const [data, setData] = useState<string[]>([]);
  const [busy, run] = useAction();
  return (
    <form
      onSubmit={async (e) => {
        e.preventDefault();
        const block_device_mapping_v2 = [
          { source_type: 'volume', uuid: system, boot_index: 0 },
          ...data.filter((d) => d !== system).map((d) => ({ source_type: 'volume', uuid: d, boot_index: -1 })),
        ];
        if (await run(() => api('POST', '/v2.1/{p}/servers', { body: { server: { name, block_device_mapping_v2 } } }), `Server ${name} created`)) onDone();
      }}
    >
      <ErrorNote error={volumes.error} />
      <Field label="Name">
        <input name="name" required value={name} onInput={(e) => setName(val(e))} />
      </Field>
      <Field label="System disk">
        <select required value={system} onChange={(e) => setSystem(val(e))}>
          <option value="">choose a volume</option>
          {(volumes.data ?? []).map((v) => (
            <option value={v.id}>{v.name ?? shortId(v.id)}</option>
          ))}
        </select>
      </Field>
      <fieldset>
        <legend>Data disks</legend>
        {(volumes.data ?? [])
          .filter((v) => v.id !== system)
          .map((v) => (
            <label>
              <input type="checkbox" checked={data.includes(v.id)} onChange={(e) => setData(e.currentTarget.checked ? [...data, v.id] : data.filter((x) => x !== v.id))} />
              {v.name ?? shortId(v.id)}
            </label>
          ))}
      </fieldset>
      <button type="submit" aria-busy={busy} disabled={busy || !system}>
        Create server
      </button>
    </form>
  );
}

function RestoreItem({ item, onDone }: { item: CheckpointItem; onDone: () => void }) {
  const [busy, run] = useAction();
  const disks = item.extend_info.volume_backups ?? [];
  return (
    <>
      <p>Every disk of {item.extend_info.resource_name ?? 'the server'} is overwritten with its backup:</p>
      <ul>
        {disks.map((d) => (
          <li>
            {d.source_volume_name || shortId(d.source_volume_id)} ← backup {shortId(d.id)}
          </li>
        ))}
      </ul>
      <button
        type="button"
        class="contrast"
        aria-busy={busy}
        disabled={busy}
        onClick={async () => {
          const restore = {
            provider_id: CSBS_PROVIDER,
            checkpoint_id: item.checkpoint_id,
            parameters: { checkpoint_item_id: item.id, power_on: true, targets: { server_id: item.resource_id, volumes: disks.map((d) => ({ backup_id: d.id, volume_id: d.source_volume_id })) } },
          };
          if (await run(() => api('POST', '/v1/{p}/restores', { body: { restore } }), 'Restore started')) onDone();
        }}
      >
        Restore the server
      </button>
    </>
  );
}

interface CsbsDraft {
  name: string;
  servers: string[];
  pattern: string;
  maxBackups: string;
  timezone: string;
  enabled: boolean;
}

/** CSBS patterns end their lines with CRLF; the form shows them with plain line ends. */
const toForm = (pattern: string) => pattern.replace(/\r\n/g, '\n').trim();
const toApi = (text: string) => `${text.trim().replace(/\r?\n/g, '\r\n')}\r\n`;
const NEW_PATTERN = 'BEGIN:VCALENDAR\nBEGIN:VEVENT\nRRULE:FREQ=DAILY;BYHOUR=2;BYMINUTE=0\nEND:VEVENT\nEND:VCALENDAR';

/**
 * Create a server policy, or edit one. An edit sends only what the form changed: the stored
 * retention rules (day/week/month rules, `permanent`) and the pattern as written (its DTSTART;TZID
 * included) stay as they are unless the user changed them.
 */
function CsbsPolicyForm({ policy, servers, onDone }: { policy?: CsbsPolicy | undefined; servers: Server[]; onDone: () => void }) {
  const op = policy?.scheduled_operations[0];
  const [initial] = useState<CsbsDraft>(() => ({
    name: policy?.name ?? '',
    servers: policy?.resources.map((r) => r.id) ?? [],
    pattern: op ? toForm(op.trigger.properties.pattern) : NEW_PATTERN,
    maxBackups: op ? (op.operation_definition.max_backups !== undefined ? String(op.operation_definition.max_backups) : '') : '7',
    timezone: op?.operation_definition.timezone ?? '',
    enabled: op?.enabled ?? true,
  }));
  const [d, setD] = useState<CsbsDraft>(initial);
  const set = (p: Partial<CsbsDraft>) => setD((x) => ({ ...x, ...p }));
  const [busy, run] = useAction();
  const [preview, setPreview] = useState<{ runs?: string[]; error?: string }>({});
  const resourcesOf = (ids: string[]) => ids.map((id) => ({ id, type: 'OS::Nova::Server', name: servers.find((s) => s.id === id)?.name ?? id }));
  const body = () => {
    if (!policy || !op) {
      const operation_definition = { ...(d.maxBackups ? { max_backups: Number(d.maxBackups) } : {}), ...(d.timezone.trim() ? { timezone: d.timezone.trim() } : {}) };
      return { policy: { name: d.name, provider_id: CSBS_PROVIDER, parameters: { common: {} }, resources: resourcesOf(d.servers), scheduled_operations: [{ enabled: d.enabled, operation_type: 'backup', operation_definition, trigger: { properties: { pattern: toApi(d.pattern) } } }] } };
    }
    const definition: Record<string, unknown> = {};
    if (d.maxBackups !== initial.maxBackups && d.maxBackups) definition.max_backups = Number(d.maxBackups);
    if (d.timezone !== initial.timezone && d.timezone.trim()) definition.timezone = d.timezone.trim();
    const operation = {
      id: op.id,
      ...(d.enabled !== initial.enabled ? { enabled: d.enabled } : {}),
      ...(Object.keys(definition).length ? { operation_definition: definition } : {}),
      ...(d.pattern !== initial.pattern ? { trigger: { properties: { pattern: toApi(d.pattern) } } } : {}),
    };
    return {
      policy: {
        ...(d.name !== initial.name ? { name: d.name } : {}),
        ...(d.servers.join() !== initial.servers.join() ? { resources: resourcesOf(d.servers) } : {}),
        ...(Object.keys(operation).length > 1 ? { scheduled_operations: [operation] } : {}),
      },
    };
  };
  return (
    <form
      onSubmit={async (e) => {
        e.preventDefault();
        const ok = await run(
          () => (policy ? api('PUT', `/v1/{p}/policies/${encodeURIComponent(policy.id)}`, { body: body() }) : api('POST', '/v1/{p}/policies', { body: body() })),
          policy ? 'Policy saved' : 'Policy created',
        );
        if (ok) onDone();
      }}
    >
      <Field label="Name">
        <input name="name" required value={d.name} onInput={(e) => set({ name: val(e) })} />
      </Field>
      <fieldset>
        <legend>Servers</legend>
        {servers.map((s) => (
          <label>
            <input type="checkbox" checked={d.servers.includes(s.id)} onChange={(e) => set({ servers: e.currentTarget.checked ? [...d.servers, s.id] : d.servers.filter((x) => x !== s.id) })} />
            {s.name}
          </label>
        ))}
      </fieldset>
      <Field label="Schedule (iCalendar RRULE; times in UTC unless DTSTART names a TZID)" hint="e.g. RRULE:FREQ=WEEKLY;BYDAY=MO,TH;BYHOUR=2;BYMINUTE=0">
        <textarea
          name="pattern"
          rows={5}
          required
          value={d.pattern}
          onInput={(e) => set({ pattern: val(e) })}
          onBlur={() =>
            api<{ runs: string[] }>('POST', '/haven/v1/schedule/preview', { body: { pattern: toApi(d.pattern), count: 5 } }).then(
              (r) => setPreview({ runs: r.runs }),
              (err: unknown) => setPreview({ error: errorText(err) }),
            )
          }
        />
      </Field>
      {(preview.runs || preview.error) && (
        <aside class="preview" aria-live="polite">
          <strong>Next runs (UTC)</strong>
          {preview.error && <p class="error-note">{preview.error}</p>}
          <ol>{preview.runs?.map((r) => <li>{r.slice(0, 16).replace('T', ' ')}</li>)}</ol>
        </aside>
      )}
      <div class="grid">
        <Field label="Keep the newest (empty: as set)">
          <input type="number" min={1} value={d.maxBackups} onInput={(e) => set({ maxBackups: val(e) })} />
        </Field>
        <Field label="Retention time zone" hint="UTC+HH:mm (for day/week/month rules)">
          <input value={d.timezone} onInput={(e) => set({ timezone: val(e) })} />
        </Field>
      </div>
      <label>
        <input type="checkbox" role="switch" checked={d.enabled} onChange={(e) => set({ enabled: e.currentTarget.checked })} />
        Enabled
      </label>
      <button type="submit" aria-busy={busy} disabled={busy}>
        {policy ? 'Save policy' : 'Create policy'}
      </button>
    </form>
  );
}

export function CsbsPage() {
  const servers = useResource(listServers, []);
  const items = useResource(() => api<{ checkpoint_items: CheckpointItem[] }>('GET', '/v1/{p}/checkpoint_items', { query: { limit: 200 } }).then((r) => r.checkpoint_items), [], {
    pollMs: 2000,
    poll: (is) => is.some((i) => BUSY.has(i.status)),
  });
  const policies = useResource(() => api<{ policies: CsbsPolicy[] }>('GET', '/v1/{p}/policies').then((r) => r.policies), []);
  const [dialog, setDialog] = useState<{ kind: 'server' | 'restore' | 'delete' | 'policy'; item?: CheckpointItem; policy?: CsbsPolicy } | null>(null);
  const [busy, run] = useAction();
  const close = () => setDialog(null);
  const done = () => (setDialog(null), items.reload(), policies.reload(), servers.reload());
  const item = dialog?.item;
  return (
    <section>
      <PageHeader title="Servers (CSBS)">
        <button type="button" onClick={() => setDialog({ kind: 'server' })}>
          Create server
        </button>
      </PageHeader>
      <ErrorNote error={servers.error} />
      <Table
        label="Servers"
        rows={servers.data}
        rowKey={(s) => s.id}
        empty="No servers: a server groups volumes that are backed up together."
        columns={[
          { title: 'Name', cell: (s) => <span title={s.id}>{s.name}</span> },
          { title: 'Status', cell: (s) => <Status value={s.status} /> },
          { title: 'Disks', cell: (s) => s['os-extended-volumes:volumes_attached']?.length ?? 0 },
          {
            title: 'Actions',
            cell: (s) => (
              <div class="row-actions">
                <button
                  type="button"
                  class="small"
                  disabled={busy}
                  onClick={() =>
                    void run(() => api('POST', `/v1/{p}/providers/${CSBS_PROVIDER}/resources/${encodeURIComponent(s.id)}/action`, { body: { protect: { backup_name: backupName(s.name) } } }), `Backing up ${s.name}`).then(items.reload)
                  }
                >
                  Back up now
                </button>
              </div>
            ),
          },
        ]}
      />
      <h3>Server backups</h3>
      <ErrorNote error={items.error} />
      <Table
        label="Server backups"
        rows={items.data}
        rowKey={(i) => i.id}
        empty="No server backups yet."
        columns={[
          { title: 'Name', cell: (i) => <span title={i.id}>{i.name}</span> },
          { title: 'Server', cell: (i) => i.extend_info.resource_name ?? shortId(i.resource_id) },
          { title: 'Status', cell: (i) => <span title={i.extend_info.fail_reason ?? undefined}><Status value={i.status} /></span> },
          { title: 'Disks', wide: true, cell: (i) => i.extend_info.volume_backups?.length ?? 0 },
          { title: 'Created', cell: (i) => time(i.created_at) },
          {
            title: 'Actions',
            cell: (i) => (
              <div class="row-actions">
                <button type="button" class="small" disabled={i.status !== 'available'} onClick={() => setDialog({ kind: 'restore', item: i })}>
                  Restore
                </button>
                <button type="button" class="small secondary outline" onClick={() => setDialog({ kind: 'delete', item: i })}>
                  Delete
                </button>
              </div>
            ),
          },
        ]}
      />
      <div class="page-header">
        <h3>Policies</h3>
        <button type="button" class="secondary" onClick={() => setDialog({ kind: 'policy' })}>
          Create policy
        </button>
      </div>
      <ErrorNote error={policies.error} />
      <Table
        label="Server policies"
        rows={policies.data}
        rowKey={(p) => p.id}
        empty="No server policies."
        columns={[
          { title: 'Name', cell: (p) => p.name },
          { title: 'Enabled', cell: (p) => <Status value={String(p.scheduled_operations[0]?.enabled ?? false)} /> },
          { title: 'Schedule', wide: true, cell: (p) => <code>{p.scheduled_operations[0]?.trigger.properties.pattern.match(/RRULE:[^\r\n]*/)?.[0] ?? '–'}</code> },
          { title: 'Servers', cell: (p) => p.resources.map((r) => r.name).join(', ') || '–' },
          {
            title: 'Actions',
            cell: (p) => (
              <div class="row-actions">
                <button
                  type="button"
                  class="small"
                  disabled={busy}
                  onClick={() => void run(() => api('POST', `/v1/{p}/providers/${CSBS_PROVIDER}/checkpoints`, { body: { checkpoint: { plan_id: p.id, parameters: {} } } }), `Policy ${p.name} is running`).then(items.reload)}
                >
                  Run now
                </button>
                <button type="button" class="small secondary" onClick={() => setDialog({ kind: 'policy', policy: p })}>
                  Edit
                </button>
                <button type="button" class="small secondary outline" disabled={busy} onClick={() => void run(() => api('DELETE', `/v1/{p}/policies/${encodeURIComponent(p.id)}`), 'Policy deleted').then(policies.reload)}>
                  Delete
                </button>
              </div>
            ),
          },
        ]}
      />
      <Modal title="Create a server" open={dialog?.kind === 'server'} onClose={close}>
        <ServerForm onDone={done} />
      </Modal>
      <Modal title={`Restore ${item?.name ?? ''}`} open={dialog?.kind === 'restore'} onClose={close}>
        {item && <RestoreItem item={item} onDone={done} />}
      </Modal>
      <Modal title={dialog?.policy ? `Edit ${dialog.policy.name}` : 'Create a server policy'} open={dialog?.kind === 'policy'} onClose={close}>
        {dialog?.kind === 'policy' && <CsbsPolicyForm policy={dialog.policy} servers={servers.data ?? []} onDone={done} />}
      </Modal>
      <ConfirmModal
        title={`Delete ${item?.name ?? ''}?`}
        open={dialog?.kind === 'delete'}
        onClose={close}
        confirm="Delete backup"
        done="Backup is being deleted"
        action={() => api('DELETE', `/v1/{p}/providers/${CSBS_PROVIDER}/checkpoints/${encodeURIComponent(item!.checkpoint_id)}`, { query: { checkpoint_items: item!.id } })}
        onDone={done}
      >
        <p>Deletes this server's backup and its disk backups (other servers' backups of the same run stay).</p>
      </ConfirmModal>
    </section>
  );
}
