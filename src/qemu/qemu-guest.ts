/**
 * The disk of a running QEMU guest, read at one point in time without stopping the guest, through
 * its QMP socket (the operator names the socket and the block node), with changed-block tracking.
 *
 * Point in time ("image fleecing"): a temporary qcow2 overlay whose backing is the guest's node, and
 * a `blockdev-backup sync=none` job from the node into it: from the moment the job starts, every
 * guest write first copies the old data into the overlay, so the overlay, exported over NBD, reads
 * as the disk was at that moment. In the same QMP transaction Haven adds its dirty bitmap for the
 * next backup (`haven-<this backup's id>`, persistent in the qcow2 image) and stops the previous
 * one (`haven-<parent id>`), which then holds exactly the blocks changed between the two points in
 * time: exported with the overlay, it is read as the NBD context `qemu:dirty-bitmap:haven-<parent>`.
 *
 * After the backup: on success the parent's bitmap is removed (the new one carries on); on failure
 * the new one is merged back into the parent's, which records again, so the next attempt still sees
 * every change since the last backup that exists. A Haven killed in between leaves both bitmaps; the
 * next backup merges them the same way (and removes the fleece nodes, jobs and exports it left).
 * Changed-block tracking is used only when the parent's bitmap is there, recording and consistent
 * (a guest that crashed leaves a persistent bitmap inconsistent); otherwise the disk is read whole.
 */
import { createHash, randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { processAlive } from '../engine/locks.ts';
import { NbdVolumeSource } from '../engine/nbd-volume-source.ts';
import { NbdClient } from './nbd-client.ts';
import { QmpClient, QmpError } from './qmp-client.ts';
import { createQcow2 } from './qemu-tools.ts';

/** The prefix of everything Haven adds to a guest's QEMU: bitmaps, nodes, jobs, exports. */
const PREFIX = 'haven-';

export interface GuestDiskOptions {
  qmpSocket: string;
  node: string;
  /** The id the backup being taken will have: its bitmap is named after it. */
  backupId: string;
  /** The volume's last backup, given the guest's image file: changed-block tracking counts from it. */
  previous: (imageFile: string) => Promise<{ id: string } | null> | { id: string } | null;
  /**
   * The Unix socket of an NBD server the guest's QEMU already runs (QEMU has one per process, and
   * QMP cannot say where it listens). Without it Haven starts the server on a private socket.
   */
  nbdSocket?: string;
  signal?: AbortSignal;
}

interface NodeInfo {
  'node-name': string;
  drv: string;
  file: string;
  image?: { 'virtual-size': number };
  /** A bitmap without a name is QEMU's own (e.g. a running backup job's). */
  'dirty-bitmaps'?: Array<{ name?: string; recording: boolean; persistent: boolean; inconsistent?: boolean; busy: boolean; granularity: number }>;
}

/**
 * The bitmap granularity for a disk of `sizeBytes`: 4 KiB (a guest's block, so 1 % of blocks
 * rewritten at random dirties 1 % of the disk, where QEMU's 64 KiB default would dirty ~15 %), made
 * coarser only to keep the bitmap within 8 MiB (disks over 256 GiB). docs/design.md "Changed-block tracking".
 */
export function bitmapGranularity(sizeBytes: number): number {
  const maxBits = 64 * 1024 * 1024;
  let g = 4096;
  while (sizeBytes / g > maxBits) g *= 2;
  return g;
}

export interface GuestDisk {
  source: NbdVolumeSource;
  /** The guest's disk image file, as QEMU names it (a stable identity for the volume). */
  imageFile: string;
  sizeBytes: number;
  /** Whether the source reads only the blocks changed since `previous`. */
  changedBlockTracking: boolean;
  /** Why changed-block tracking is not used, when it is not. */
  fullReadReason: string | null;
  /** Ends the point in time and settles the bitmaps; `ok`: the backup was written. */
  finish(ok: boolean): Promise<void>;
}

/** The block node `node` of the guest behind `qmpSocket`, as QEMU describes it. */
async function findNode(q: QmpClient, node: string): Promise<NodeInfo> {
  const nodes = await q.execute<NodeInfo[]>('query-named-block-nodes', { flat: true });
  const n = nodes.find((x) => x['node-name'] === node);
  if (!n) throw new AppError(ErrorCode.VolumeUnreadable, `QEMU has no block node ${JSON.stringify(node)} (its nodes: ${nodes.map((x) => x['node-name']).filter((x) => !x.startsWith(PREFIX)).join(', ')})`);
  return n;
}

/** What a guest's QEMU says of one of its block nodes: driver, image file and virtual size (for adoption). */
export async function guestNodeInfo(qmpSocket: string, node: string): Promise<{ drv: string; file: string; sizeBytes: number }> {
  const q = await QmpClient.connect(qmpSocket);
  try {
    const n = await findNode(q, node);
    return { drv: n.drv, file: n.file, sizeBytes: Number(n.image?.['virtual-size'] ?? 0) };
  } finally {
    await q.close();
  }
}

/**
 * Removes what an interrupted backup of this node left in the guest's QEMU: exports, jobs, fleece
 * nodes named with the node's tag. Another node's (a backup of another disk of the guest, perhaps
 * running now) are not touched.
 */
async function cleanUpLeftovers(q: QmpClient, tag: string): Promise<void> {
  const mine = (kind: string) => (name: string | undefined): boolean => typeof name === 'string' && name.startsWith(`${PREFIX}${kind}-${tag}-`);
  const exports = await q.execute<Array<{ id: string }>>('query-block-exports');
  for (const e of exports.filter((x) => mine('e')(x.id))) await deleteExport(q, e.id).catch(() => undefined);
  const jobs = await q.execute<Array<{ device: string }>>('query-block-jobs');
  for (const j of jobs.filter((x) => mine('j')(x.device))) await cancelJob(q, j.device).catch(() => undefined);
  const nodes = await q.execute<NodeInfo[]>('query-named-block-nodes', { flat: true });
  for (const n of nodes.filter((x) => mine('f')(x['node-name']))) await q.execute('blockdev-del', { 'node-name': n['node-name'] }).catch(() => undefined);
}

/**
 * One backup of a guest's disk at a time on this host: a lock file (in the temporary folder, with
 * the holder's pid) per QMP socket and node. A lock whose process is gone is taken over: its
 * leftovers are then this backup's to clean up.
 */
async function lockDisk(key: string, what: string): Promise<{ path: string; release: () => Promise<void> }> {
  const lockPath = path.join(os.tmpdir(), `haven-qmp-${key}.lock`);
  for (let attempt = 0; ; attempt++) {
    try {
      const fh = await fs.open(lockPath, 'wx', 0o600);
      await fh.writeFile(String(process.pid));
      await fh.close();
      return { path: lockPath, release: () => fs.rm(lockPath, { force: true }) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw new AppError(ErrorCode.VolumeUnreadable, `cannot lock ${what} for a backup (${lockPath}): ${(err as Error).message}`, { cause: err });
    }
    const pid = Number((await fs.readFile(lockPath, 'utf8').catch(() => '')).trim());
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid)) {
      throw new AppError(ErrorCode.BackupInProgress, `another Haven backup of ${what} is running (pid ${pid}); one at a time`);
    }
    await fs.rm(lockPath, { force: true }); // its holder is gone
  }
}

async function deleteExport(q: QmpClient, id: string): Promise<void> {
  const gone = q.waitEvent('BLOCK_EXPORT_DELETED', (e) => e.data?.id === id, 30_000);
  gone.catch(() => undefined);
  await q.execute('block-export-del', { id });
  await gone;
}

async function cancelJob(q: QmpClient, id: string): Promise<void> {
  const done = q.waitEvent('JOB_STATUS_CHANGE', (e) => e.data?.id === id && (e.data?.status === 'null' || e.data?.status === 'concluded'), 30_000);
  done.catch(() => undefined);
  try {
    await q.execute('block-job-cancel', { device: id, force: true });
  } catch (err) {
    if (err instanceof QmpError && err.qmpClass === 'DeviceNotActive') return;
    throw err;
  }
  await done;
  await q.execute('job-dismiss', { id }).catch(() => undefined); // auto-dismissed by default
}

export async function openGuestDisk(opts: GuestDiskOptions): Promise<GuestDisk> {
  // Names of what this backup adds: `haven-<kind>-<node's tag>-<random>`, within QEMU's 31
  // characters for node names; the tag scopes the cleanup of leftovers to this node.
  const tag = createHash('sha256').update(opts.node).digest('hex').slice(0, 8);
  const short = randomUUID().slice(0, 8);
  const fleece = `${PREFIX}f-${tag}-${short}`;
  const job = `${PREFIX}j-${tag}-${short}`;
  const exportId = `${PREFIX}e-${tag}-${short}`;
  const socketReal = await fs.realpath(opts.qmpSocket).catch(() => opts.qmpSocket);
  const key = createHash('sha256').update(`${socketReal}\0${opts.node}`).digest('hex').slice(0, 16);
  const lock = await lockDisk(key, `node ${opts.node} of the guest at ${opts.qmpSocket}`);
  let q: QmpClient;
  try {
    q = await QmpClient.connect(opts.qmpSocket);
  } catch (err) {
    await lock.release();
    throw err;
  }
  const newBitmap = `${PREFIX}${opts.backupId}`;
  let previous: { id: string } | null = null;
  let parentBitmap: string | null = null;
  let dir: string | null = null;
  let startedServer = false;
  let fleeceAdded = false;
  let jobStarted = false;
  let exported = false;
  let client: NbdClient | null = null;
  let cbt = false;
  let finished = false;

  const teardown = async (): Promise<void> => {
    await client?.close().catch(() => undefined);
    if (exported) await deleteExport(q, exportId).catch(() => undefined);
    if (jobStarted) await cancelJob(q, job).catch(() => undefined);
    if (fleeceAdded) await q.execute('blockdev-del', { 'node-name': fleece }).catch(() => undefined);
    // The server goes only if Haven started it and nothing else is exported on it now.
    if (startedServer) {
      const left = await q.execute<Array<{ id: string }>>('query-block-exports').catch(() => [{ id: '?' }]);
      if (!left.length) await q.execute('nbd-server-stop').catch(() => undefined);
    }
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  };

  try {
    await cleanUpLeftovers(q, tag);
    let node = await findNode(q, opts.node);
    previous = await opts.previous(node.file);
    parentBitmap = previous ? `${PREFIX}${previous.id}` : null;
    const sizeBytes = node.image?.['virtual-size'];
    if (typeof sizeBytes !== 'number') throw new AppError(ErrorCode.VolumeUnreadable, `QEMU does not say the size of block node ${opts.node}`);
    const persistent = node.drv === 'qcow2';

    // Bitmaps: after an interrupted backup, fold its new bitmap back into the parent's; drop the rest.
    const ours = (node['dirty-bitmaps'] ?? []).filter((b): b is typeof b & { name: string } => typeof b.name === 'string' && b.name.startsWith(PREFIX));
    const parent = parentBitmap ? ours.find((b) => b.name === parentBitmap) : undefined;
    // An inconsistent bitmap (QEMU stopped without saving it) can be neither enabled nor merged:
    // it is reported below and removed, and the disk read whole.
    if (parent && !parent.recording && !parent.inconsistent) {
      const others = ours.filter((b) => b.name !== parentBitmap && b.recording).map((b) => b.name);
      if (others.length) await q.execute('block-dirty-bitmap-merge', { node: opts.node, target: parentBitmap, bitmaps: others });
      await q.execute('block-dirty-bitmap-enable', { node: opts.node, name: parentBitmap });
    }
    for (const b of ours) if (b.name !== parentBitmap) await q.execute('block-dirty-bitmap-remove', { node: opts.node, name: b.name });
    node = await findNode(q, opts.node);
    const p = (node['dirty-bitmaps'] ?? []).find((b) => b.name === parentBitmap);
    let fullReadReason: string | null = null;
    if (!previous) fullReadReason = 'no previous backup';
    else if (!p) fullReadReason = `the guest has no dirty bitmap ${parentBitmap} (the first backup through QMP, QEMU restarted without persisting it, or the previous backup was not taken through QMP)`;
    else if (p.inconsistent) fullReadReason = `dirty bitmap ${parentBitmap} is inconsistent (QEMU stopped without saving it)`;
    else if (!p.recording) fullReadReason = `dirty bitmap ${parentBitmap} is not recording`;
    cbt = fullReadReason === null;
    if (p && !cbt) await q.execute('block-dirty-bitmap-remove', { node: opts.node, name: parentBitmap });

    // The fleece overlay, in a private folder (QEMU opens it: it must be able to reach the folder).
    // Its folder is named after the lock, so a killed backup's overlay is removed by the next one.
    dir = path.join(os.tmpdir(), `haven-fleece-${key}`);
    await fs.rm(dir, { recursive: true, force: true });
    await fs.mkdir(dir, { mode: 0o700 });
    const overlay = path.join(dir, 'fleece.qcow2');
    await createQcow2(overlay, sizeBytes, opts.signal ? { signal: opts.signal } : {});
    await q.execute('blockdev-add', { driver: 'qcow2', 'node-name': fleece, file: { driver: 'file', filename: overlay }, backing: opts.node, 'discard': 'unmap' });
    fleeceAdded = true;

    // The point in time: the copy-before-write job, the new bitmap, and the parent's stopped, at once.
    const actions: Array<{ type: string; data: Record<string, unknown> }> = [
      { type: 'blockdev-backup', data: { device: opts.node, target: fleece, sync: 'none', 'job-id': job, 'auto-dismiss': true } },
      { type: 'block-dirty-bitmap-add', data: { node: opts.node, name: newBitmap, persistent, granularity: bitmapGranularity(sizeBytes) } },
    ];
    if (cbt) actions.push({ type: 'block-dirty-bitmap-disable', data: { node: opts.node, name: parentBitmap } });
    await q.execute('transaction', { actions });
    jobStarted = true;

    // Export the overlay (with the parent's bitmap) on the guest's NBD server, or one of Haven's own.
    let socketPath: string | null = opts.nbdSocket ?? null;
    if (!opts.nbdSocket) {
      try {
        socketPath = path.join(dir, 'nbd.sock');
        await q.execute('nbd-server-start', { addr: { type: 'unix', data: { path: socketPath } } });
        startedServer = true;
      } catch (err) {
        if (!(err instanceof QmpError) || !/already running/i.test(err.message)) throw err;
        socketPath = null; // found below, once our export is on it
      }
    }
    await q.execute('block-export-add', { type: 'nbd', id: exportId, 'node-name': fleece, name: exportId, writable: false, ...(cbt ? { bitmaps: [{ node: opts.node, name: parentBitmap }] } : {}) });
    exported = true;
    socketPath ??= await findGuestNbdSocket(opts.qmpSocket, exportId, opts.signal);
    if (!socketPath) throw new AppError(ErrorCode.VolumeUnreadable, `the QEMU behind ${opts.qmpSocket} already runs an NBD server, and QMP cannot say where it listens: name its Unix socket with --nbd-socket`);
    const contexts = ['base:allocation', ...(cbt ? [`qemu:dirty-bitmap:${parentBitmap}`] : [])];
    client = await NbdClient.connect({ socketPath, exportName: exportId, metaContexts: contexts, ...(opts.signal ? { signal: opts.signal } : {}) });
    if (cbt && !client.contexts.has(`qemu:dirty-bitmap:${parentBitmap}`)) {
      cbt = false;
      fullReadReason = 'the NBD export does not offer the dirty bitmap';
    }
    const source = new NbdVolumeSource(client, cbt ? { dirtyBitmap: { context: `qemu:dirty-bitmap:${parentBitmap}`, sinceBackupId: previous!.id } } : {});

    const finish = async (ok: boolean): Promise<void> => {
      if (finished) return;
      finished = true;
      try {
        await teardown();
        if (ok) {
          if (cbt) await q.execute('block-dirty-bitmap-remove', { node: opts.node, name: parentBitmap });
        } else if (cbt) {
          await q.execute('block-dirty-bitmap-merge', { node: opts.node, target: parentBitmap, bitmaps: [newBitmap] });
          await q.execute('block-dirty-bitmap-enable', { node: opts.node, name: parentBitmap });
          await q.execute('block-dirty-bitmap-remove', { node: opts.node, name: newBitmap });
        } else {
          await q.execute('block-dirty-bitmap-remove', { node: opts.node, name: newBitmap });
        }
      } finally {
        await q.close();
        await lock.release();
      }
    };
    return { source, imageFile: node.file, sizeBytes, changedBlockTracking: cbt, fullReadReason, finish };
  } catch (err) {
    await teardown();
    if (jobStarted) {
      // The transaction ran: undo its bitmap changes as a failed backup would.
      if (cbt) {
        await q.execute('block-dirty-bitmap-merge', { node: opts.node, target: parentBitmap, bitmaps: [newBitmap] }).catch(() => undefined);
        await q.execute('block-dirty-bitmap-enable', { node: opts.node, name: parentBitmap }).catch(() => undefined);
      }
      await q.execute('block-dirty-bitmap-remove', { node: opts.node, name: newBitmap }).catch(() => undefined);
    }
    await q.close();
    await lock.release();
    throw err;
  }
}

/**
 * Where the guest's own NBD server listens, when QMP cannot say: among the Unix sockets the QEMU
 * process listens on (found through /proc: the process that owns the QMP socket), the one that
 * serves `exportName` (an export of ours, tried with an NBD handshake). Null when that cannot be
 * done: QEMU run by another user (its /proc entries are closed to Haven), a TCP-only server.
 */
async function findGuestNbdSocket(qmpSocket: string, exportName: string, signal: AbortSignal | undefined): Promise<string | null> {
  let table: string;
  try {
    table = await fs.readFile('/proc/net/unix', 'utf8');
  } catch {
    return null;
  }
  // Num RefCount Protocol Flags Type St Inode [Path]; a listening socket has flag __SO_ACCEPTCON (0x10000).
  const listening = new Map<string, string>(); // inode -> path
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8 || !(parseInt(f[3]!, 16) & 0x10000)) continue;
    listening.set(f[6]!, f.slice(7).join(' '));
  }
  const qmpReal = await fs.realpath(qmpSocket).catch(() => qmpSocket);
  const qmpInodes = new Set([...listening].filter(([, p]) => p === qmpReal || p === qmpSocket).map(([i]) => i));
  if (!qmpInodes.size) return null;
  for (const pid of await fs.readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue;
    const fds = await fs.readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    const inodes: string[] = [];
    for (const fd of fds) {
      const m = /^socket:\[(\d+)\]$/.exec(await fs.readlink(`/proc/${pid}/fd/${fd}`).catch(() => ''));
      if (m) inodes.push(m[1]!);
    }
    if (!inodes.some((i) => qmpInodes.has(i))) continue;
    for (const i of inodes) {
      const p = listening.get(i);
      if (!p || qmpInodes.has(i) || p.startsWith('@')) continue;
      try {
        if (signal?.aborted) throw new AppError(ErrorCode.Cancelled, 'cancelled', { cause: signal.reason });
        const c = await NbdClient.connect({ socketPath: p, exportName, timeoutMs: 2000, ...(signal ? { signal } : {}) });
        await c.close();
        return p;
      } catch (err) {
        if ((err as AppError).code === ErrorCode.Cancelled) throw err;
        // not an NBD server, or not the one with our export
      }
    }
    return null;
  }
  return null;
}
