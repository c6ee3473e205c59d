/** Volumes: create, adopt (cloud admin), back up now, restore, delete. */
import { useState } from 'preact/hooks';
import { api, currentSession } from '../api.ts';
import { ConfirmModal, ErrorNote, Field, Modal, PageHeader, Status, Table, useAction, useResource, val } from '../components.tsx';
import { bytes, shortId, time } from '../format.ts';
import { href } from '../router.ts';
import type { Backup, Volume } from '../types.ts';

const BUSY = new Set(['creating', 'backing-up', 'restoring-backup', 'deleting', 'downloading', 'attaching', 'detaching', 'extending']);

export async function listVolumes(): Promise<Volume[]> {
  const r = await api<{ volumes: Volume[] }>('GET', '/v3/{p}/volumes/detail', { query: { limit: 1000 } });
  return r.volumes;
}

/** A backup name the API accepts (letters, digits, _ and -; not starting with "auto"). */
export function backupName(volumeName: string | null): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').slice(0, 13).replace('T', '_');
  const base = (volumeName ?? 'volume').replace(/[^A-Za-z0-9_-]/g, '_').replace(/^auto/i, 'v_auto').slice(0, 48);
  return `${base || 'volume'}_${stamp}`;
}

function CreateForm({ onDone }: { onDone: () => void }) {
  const [name, setName] = useState('');
  const [size, setSize] = useState('1');
  const [type, setType] = useState('haven');
  const [busy, run] = useAction();
  return (
    <form
      onSubmit={async (e) => {
        e.preventDefault();
        const volume = { name, size: Number(size), ...(type === 'qcow2' ? { volume_type: 'qcow2' } : {}) };
        if (await run(() => api('POST', '/v3/{p}/volumes', { body: { volume } }), `Volume ${name} is being created`)) onDone();
      }}
    >
      <Field label="Name">
        <input name="name" required maxLength={255} value={name} onInput={(e) => setName(val(e))} />
      </Field>
      <div class="grid">
        <Field label="Size (GB)">
          <input name="size" type="number" min={1} required value={size} onInput={(e) => setSize(val(e))} />
        </Field>
        <Field label="Format">
          <select name="volume_type" value={type} onChange={(e) => setType(val(e))}>
            <option value="haven">raw file</option>
            <option value="qcow2">qcow2 image</option>
          </select>
        </Field>
      </div>
      <button type="submit" aria-busy={busy} disabled={busy}>
        Create volume
      </button>
    </form>
  );
}

function AdoptForm({ onDone }: { onDone: () => void }) {
  const [path, setPath] = useState('');
  const [name, setName] = useState('');
  const [type, setType] = useState('haven');
  const [busy, run] = useAction();
  return (
    <form
      onSubmit={async (e) => {
        e.preventDefault();
        const volume = { ref: { 'source-name': path }, name: name || null, ...(type === 'qcow2' ? { volume_type: 'qcow2' } : {}) };
        if (await run(() => api('POST', '/v3/{p}/os-volume-manage', { body: { volume } }), `Adopting ${path}`)) onDone();
      }}
    >
      <Field label="Path of the disk on its host" hint="A raw file, block device or qcow2 image under one of HAVEN_VOLUME_ROOTS">
        <input name="source-name" required value={path} onInput={(e) => setPath(val(e))} placeholder="/var/lib/libvirt/images/web1.img" />
      </Field>
      <div class="grid">
        <Field label="Name">
          <input name="name" value={name} onInput={(e) => setName(val(e))} />
        </Field>
        <Field label="Format">
          <select value={type} onChange={(e) => setType(val(e))}>
            <option value="haven">raw file or block device</option>
            <option value="qcow2">qcow2 image</option>
          </select>
        </Field>
      </div>
      <button type="submit" aria-busy={busy} disabled={busy}>
        Adopt disk
      </button>
    </form>
  );
}

function BackupForm({ volume, onDone }: { volume: Volume; onDone: () => void }) {
  const [name, setName] = useState(backupName(volume.name));
  const [full, setFull] = useState(false);
  const [busy, run] = useAction();
  return (
    <form
      onSubmit={async (e) => {
        e.preventDefault();
        let job = '';
        const ok = await run(async () => {
          const r = await api<{ job_id: string }>('POST', '/v2/{p}/cloudbackups', { body: { backup: { volume_id: volume.id, name, extend_param: { FullBackup: full ? 'true' : 'false' } } } });
          job = r.job_id;
        });
        if (ok) onDone();
        if (job) location.hash = href('/jobs', { highlight: job });
      }}
    >
      <Field label="Backup name" hint="Letters, digits, _ and -; not starting with auto">
        <input name="backup_name" required pattern="[A-Za-z0-9_\-]{1,64}" value={name} onInput={(e) => setName(val(e))} />
      </Field>
      <label>
        <input type="checkbox" role="switch" checked={full} onChange={(e) => setFull(e.currentTarget.checked)} />
        Full backup (otherwise incremental: only changed blocks are read)
      </label>
      <button type="submit" aria-busy={busy} disabled={busy}>
        Start backup
      </button>
    </form>
  );
}

/** Restore one of the project's backups onto this volume (it must be at least the backup's size). */
export function RestoreForm({ volumeId, backupId, defaultTarget, onDone }: { volumeId?: string | undefined; backupId?: string | undefined; defaultTarget?: string | undefined; onDone: () => void }) {
  const backups = useResource(() => api<{ backups: Backup[] }>('GET', '/v3/{p}/backups/detail', { query: { status: 'available', limit: 1000, ...(volumeId && !backupId ? { volume_id: volumeId } : {}) } }), [volumeId]);
  const volumes = useResource(listVolumes, []);
  const [backup, setBackup] = useState(backupId ?? '');
  // The target is overwritten: it starts as the volume the backup came from, never just the first one listed.
  const [target, setTarget] = useState(volumeId ?? defaultTarget ?? '');
  const [busy, run] = useAction();
  const chosen = backup || backups.data?.backups[0]?.id || '';
  const into = target;
  return (
    <form
      onSubmit={async (e) => {
        e.preventDefault();
        let job = '';
        const ok = await run(async () => {
          const r = await api<{ job_id: string }>('POST', `/v2/{p}/cloudbackups/${encodeURIComponent(chosen)}/restore`, { body: { restore: { volume_id: into } } });
          job = r.job_id;
        });
        if (ok) onDone();
        if (job) location.hash = href('/jobs', { highlight: job });
      }}
    >
      <ErrorNote error={backups.error ?? volumes.error} />
      <Field label="Backup">
        <select name="backup" value={chosen} onChange={(e) => setBackup(val(e))} disabled={!!backupId}>
          {(backups.data?.backups ?? []).map((b) => (
            <option value={b.id}>
              {b.name ?? shortId(b.id)} · {time(b.created_at)} · {b.size} GB
            </option>
          ))}
        </select>
      </Field>
      <Field label="Restore onto volume" hint="Everything on it is overwritten with the backup's bytes">
        <select name="target" value={into} onChange={(e) => setTarget(val(e))} disabled={!!volumeId} required>
          <option value="">choose the volume to overwrite</option>
          {(volumes.data ?? []).map((v) => (
            <option value={v.id}>
              {v.name ?? shortId(v.id)} · {v.size} GB · {v.status}
            </option>
          ))}
        </select>
      </Field>
      <button type="submit" class="contrast" aria-busy={busy} disabled={busy || !chosen || !into}>
        Restore (overwrite the volume)
      </button>
    </form>
  );
}

export function VolumesPage() {
  const admin = currentSession()?.admin ?? false;
  const vols = useResource(listVolumes, [], { pollMs: 2000, poll: (vs) => vs.some((v) => BUSY.has(v.status)) });
  const [dialog, setDialog] = useState<{ kind: 'create' | 'adopt' | 'backup' | 'restore' | 'delete'; volume?: Volume } | null>(null);
  const close = () => setDialog(null);
  const done = () => (setDialog(null), vols.reload());
  const v = dialog?.volume;
  return (
    <section>
      <PageHeader title="Volumes">
        <button type="button" onClick={() => setDialog({ kind: 'create' })}>
          Create volume
        </button>
        {admin && (
          <button type="button" class="secondary" onClick={() => setDialog({ kind: 'adopt' })}>
            Adopt a disk
          </button>
        )}
        <button type="button" class="secondary outline" onClick={vols.reload} aria-busy={vols.loading}>
          Refresh
        </button>
      </PageHeader>
      <ErrorNote error={vols.error} />
      <Table
        label="Volumes"
        rows={vols.data}
        rowKey={(r) => r.id}
        empty="No volumes yet: create one, or adopt an existing disk."
        columns={[
          { title: 'Name', cell: (r) => <span title={r.id}>{r.name ?? shortId(r.id)}</span> },
          { title: 'Size', cell: (r) => bytes(r.size * 1024 ** 3) },
          { title: 'Status', cell: (r) => <Status value={r.status} /> },
          { title: 'Format', wide: true, cell: (r) => (r.volume_type === 'qcow2' ? 'qcow2' : 'raw') },
          { title: 'Created', wide: true, cell: (r) => time(r.created_at) },
          {
            title: 'Actions',
            cell: (r) => (
              <div class="row-actions" role="group" aria-label={`Actions for ${r.name ?? r.id}`}>
                <button type="button" class="small" onClick={() => setDialog({ kind: 'backup', volume: r })}>
                  Back up now
                </button>
                <button type="button" class="small secondary" onClick={() => setDialog({ kind: 'restore', volume: r })}>
                  Restore
                </button>
                <a class="small" href={href('/backups', { volume_id: r.id })}>
                  Backups
                </a>
                <button type="button" class="small secondary outline" onClick={() => setDialog({ kind: 'delete', volume: r })}>
                  Delete
                </button>
              </div>
            ),
          },
        ]}
      />
      <Modal title="Create a volume" open={dialog?.kind === 'create'} onClose={close}>
        <CreateForm onDone={done} />
      </Modal>
      <Modal title="Adopt an existing disk" open={dialog?.kind === 'adopt'} onClose={close}>
        <AdoptForm onDone={done} />
      </Modal>
      <Modal title={`Back up ${v?.name ?? ''}`} open={dialog?.kind === 'backup'} onClose={close}>
        {v && <BackupForm volume={v} onDone={done} />}
      </Modal>
      <Modal title={`Restore ${v?.name ?? ''}`} open={dialog?.kind === 'restore'} onClose={close}>
        {v && <RestoreForm volumeId={v.id} onDone={done} />}
      </Modal>
      <ConfirmModal
        title={`Delete ${v?.name ?? ''}?`}
        open={dialog?.kind === 'delete'}
        onClose={close}
        confirm="Delete volume"
        done={`Volume ${v?.name ?? v?.id ?? ''} is being deleted`}
        action={() => api('DELETE', `/v3/{p}/volumes/${encodeURIComponent(v!.id)}`)}
        onDone={done}
      >
        <p>The volume's file is deleted. Its backups stay until you delete them.</p>
      </ConfirmModal>
    </section>
  );
}
