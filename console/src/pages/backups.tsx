/** Backups: filter by volume, status and policy; restore, share with other projects, delete. */
import { useState } from 'preact/hooks';
import { api } from '../api.ts';
import { ConfirmModal, ErrorNote, Field, Modal, PageHeader, Status, Table, useAction, useResource, val } from '../components.tsx';
import { shortId, time } from '../format.ts';
import { navigate, useRoute } from '../router.ts';
import type { Backup, VbsPolicy } from '../types.ts';
import { listVolumes, RestoreForm } from './volumes.tsx';

const STATUSES = ['creating', 'available', 'restoring', 'deleting', 'error', 'error_restoring'];
const BUSY = new Set(['creating', 'restoring', 'deleting']);

/** The text a VBS backup keeps in `description` ({"DESC": …, "INC": …}), or the native one. */
function descriptionOf(b: Backup): string {
  if (!b.description) return '';
  try {
    const d = JSON.parse(b.description) as { DESC?: string };
    if (typeof d === 'object' && d && 'DESC' in d) return d.DESC ?? '';
  } catch {
    // a native backup's own text
  }
  return b.description;
}

function ShareForm({ backup, onDone }: { backup: Backup; onDone: () => void }) {
  const [ids, setIds] = useState('');
  const [busy, run] = useAction();
  const sharings = useResource(() => api<{ shared: { id: string; to_project_id: string; created_at: string | null }[] }>('GET', '/v2/{p}/os-vendor-backup-sharing/detail', { query: { backup_id: backup.id } }), [backup.id]);
  return (
    <>
      <ErrorNote error={sharings.error} />
      {sharings.data && sharings.data.shared.length > 0 && (
        <>
          <p>Shared with:</p>
          <ul>
            {sharings.data.shared.map((s) => (
              <li>
                <code>{s.to_project_id}</code>{' '}
                <button
                  type="button"
                  class="small secondary outline"
                  onClick={() => void run(() => api('DELETE', `/v2/{p}/os-vendor-backup-sharing/${encodeURIComponent(s.id)}`), 'Sharing cancelled').then(sharings.reload)}
                >
                  Stop sharing
                </button>
              </li>
            ))}
          </ul>
        </>
      )}
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          const to = ids.split(/[\s,]+/).filter(Boolean);
          if (await run(() => api('POST', '/v2/{p}/os-vendor-backup-sharing', { body: { shared: { backup_id: backup.id, to_project_ids: to } } }), `Shared with ${to.length} project(s)`)) onDone();
        }}
      >
        <Field label="Project ids to share with" hint="Separated by commas or spaces; they can then restore this backup">
          <input name="to_project_ids" required value={ids} onInput={(e) => setIds(val(e))} />
        </Field>
        <button type="submit" aria-busy={busy} disabled={busy}>
          Share
        </button>
      </form>
    </>
  );
}

export function BackupsPage() {
  const route = useRoute();
  const volumeId = route.query.get('volume_id') ?? '';
  const status = route.query.get('status') ?? '';
  const policyId = route.query.get('policy_id') ?? '';
  const setFilter = (k: string, v: string) => navigate('/backups', { volume_id: volumeId, status, policy_id: policyId, [k]: v });
  const volumes = useResource(listVolumes, []);
  const policies = useResource(() => api<{ backup_policies: VbsPolicy[] }>('GET', '/v2/{p}/backuppolicy'), []);
  const backups = useResource(
    () => api<{ backups: Backup[] }>('GET', '/v3/{p}/backups/detail', { query: { volume_id: volumeId, status, policy_id: policyId, limit: 1000 } }).then((r) => r.backups),
    [volumeId, status, policyId],
    { pollMs: 2000, poll: (bs) => bs.some((b) => BUSY.has(b.status)) },
  );
  const volName = new Map((volumes.data ?? []).map((v) => [v.id, v.name ?? shortId(v.id)]));
  const [dialog, setDialog] = useState<{ kind: 'restore' | 'share' | 'delete'; backup: Backup } | null>(null);
  const close = () => setDialog(null);
  const done = () => (setDialog(null), backups.reload());
  const b = dialog?.backup;
  return (
    <section>
      <PageHeader title="Backups">
        <button type="button" class="secondary outline" onClick={backups.reload} aria-busy={backups.loading}>
          Refresh
        </button>
      </PageHeader>
      <div class="filters grid" role="search" aria-label="Filter backups">
        <Field label="Volume">
          <select value={volumeId} onChange={(e) => setFilter('volume_id', val(e))}>
            <option value="">all volumes</option>
            {(volumes.data ?? []).map((v) => (
              <option value={v.id}>{v.name ?? shortId(v.id)}</option>
            ))}
          </select>
        </Field>
        <Field label="Status">
          <select value={status} onChange={(e) => setFilter('status', val(e))}>
            <option value="">any status</option>
            {STATUSES.map((s) => (
              <option value={s}>{s}</option>
            ))}
          </select>
        </Field>
        <Field label="Policy">
          <select value={policyId} onChange={(e) => setFilter('policy_id', val(e))}>
            <option value="">any (manual too)</option>
            {(policies.data?.backup_policies ?? []).map((p) => (
              <option value={p.backup_policy_id}>{p.backup_policy_name}</option>
            ))}
          </select>
        </Field>
      </div>
      <ErrorNote error={backups.error} />
      <Table
        label="Backups"
        rows={backups.data}
        rowKey={(r) => r.id}
        empty="No backups match."
        columns={[
          { title: 'Name', cell: (r) => <span title={`${r.id}\n${descriptionOf(r)}`}>{r.name ?? shortId(r.id)}</span> },
          { title: 'Volume', cell: (r) => volName.get(r.volume_id) ?? shortId(r.volume_id) },
          { title: 'Status', cell: (r) => <span title={r.fail_reason ?? undefined}><Status value={r.status} /></span> },
          { title: 'Kind', wide: true, cell: (r) => (r.is_incremental ? 'incremental' : 'full') },
          { title: 'Size', wide: true, cell: (r) => `${r.size} GB` },
          { title: 'Created', cell: (r) => time(r.created_at) },
          {
            title: 'Actions',
            cell: (r) => (
              <div class="row-actions" role="group" aria-label={`Actions for ${r.name ?? r.id}`}>
                <button type="button" class="small" disabled={r.status !== 'available'} onClick={() => setDialog({ kind: 'restore', backup: r })}>
                  Restore
                </button>
                <button type="button" class="small secondary" disabled={r.status !== 'available'} onClick={() => setDialog({ kind: 'share', backup: r })}>
                  Share
                </button>
                <button type="button" class="small secondary outline" onClick={() => setDialog({ kind: 'delete', backup: r })}>
                  Delete
                </button>
              </div>
            ),
          },
        ]}
      />
      <Modal title={`Restore ${b?.name ?? ''}`} open={dialog?.kind === 'restore'} onClose={close}>
        {b && <RestoreForm backupId={b.id} defaultTarget={b.volume_id} onDone={done} />}
      </Modal>
      <Modal title={`Share ${b?.name ?? ''}`} open={dialog?.kind === 'share'} onClose={close}>
        {b && <ShareForm backup={b} onDone={done} />}
      </Modal>
      <ConfirmModal
        title={`Delete ${b?.name ?? ''}?`}
        open={dialog?.kind === 'delete'}
        onClose={close}
        confirm="Delete backup"
        done={`Backup ${b?.name ?? b?.id ?? ''} is being deleted`}
        action={() => api('DELETE', `/v3/{p}/backups/${encodeURIComponent(b!.id)}`)}
        onDone={done}
      >
        <p>Other backups of the volume stay whole: every backup restores on its own.</p>
      </ConfirmModal>
    </section>
  );
}
