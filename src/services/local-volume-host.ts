/**
 * The volume host of this process: its volume roots, its data folder's volumes and snapshots, its
 * QEMU guests, and the engine writing to the shared repository. The embedded `haven serve` uses it
 * directly; `haven agent` runs it for the work the control plane queues for its host.
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { AppError, ErrorCode } from '../domain/errors.ts';
import type { VolumeFormat } from '../domain/model.ts';
import { blockDeviceSize } from '../engine/volume-source.ts';
import { fileIdOf, isUnder } from '../engine/volume-file.ts';
import { createQcow2, growQcow2, imageInfo } from '../qemu/qemu-tools.ts';
import { guestNodeInfo } from '../qemu/qemu-guest.ts';
import type { BackupEngine, GuestPoint } from './backup-engine.ts';
import type { BackupResult } from '../engine/backup-writer.ts';
import { checkFileSystemAllows } from './volume-limits.ts';
import type { LiveExports } from './live-exports.ts';
import type { VolumeFiles } from './volume-files.ts';
import type { BackupOrder, BackupSummary, ServerProtectOrder, VolumeFileRef, VolumeHost, WorkControl } from './volume-host.ts';

const run = promisify(execFile);

/**
 * An id the control plane sent that becomes part of a file name here: ids are Haven's own (UUIDs,
 * hex), so anything else (a "/", a "..") is refused rather than joined into a path.
 */
function safeId(id: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/.test(id)) throw new AppError(ErrorCode.InvalidArgument, `refused: ${JSON.stringify(id)} is not an id`);
  return id;
}

/** What is wrong with a QMP socket path: not absolute (or with ".."), no socket there, or nothing. */
async function qmpSocketProblem(socket: string): Promise<'path' | 'missing' | null> {
  if (!path.isAbsolute(socket) || socket.split('/').includes('..')) return 'path';
  const st = await fs.stat(socket).catch(() => null);
  return st?.isSocket() ? null : 'missing';
}

/** What the catalog records of a backup the engine wrote. */
function summaryOf(r: BackupResult): BackupSummary {
  return {
    sizeBytes: r.manifest.sizeBytes, storedBytes: r.stats.storedBytes, newBytes: r.stats.newBytes, objectsWritten: r.stats.objectsWritten, parentId: r.manifest.parentId,
    createdAt: Date.parse(r.manifest.createdAt), volumeDigest: r.manifest.volumeDigest, readBytes: r.readBytes, changedBlockTracking: r.changedBlockTracking,
  };
}
const GiB = 1024 ** 3;
/** What the freeze and thaw hooks are told (services/server-backup-service.ts hookEnv). */
const HOOK_VARIABLES = ['HAVEN_SERVER_ID', 'HAVEN_SERVER_NAME', 'HAVEN_VOLUME_PATHS'] as const;
/** The freeze and thaw hooks get this long each. */
const HOOK_TIMEOUT_MS = 120_000;

export interface LocalVolumeHostOptions {
  host: string | null;
  files: VolumeFiles;
  engine: BackupEngine;
  dataDir: string;
  freezeCommand: string;
  thawCommand: string;
  /** This host's live restores (null: refused). */
  live?: LiveExports | null;
}

export class LocalVolumeHost implements VolumeHost {
  readonly host: string | null;
  private readonly files: VolumeFiles;
  private readonly engine: BackupEngine;
  private readonly opts: LocalVolumeHostOptions;

  constructor(opts: LocalVolumeHostOptions) {
    this.host = opts.host;
    this.files = opts.files;
    this.engine = opts.engine;
    this.opts = opts;
  }

  get volumeRoots(): readonly string[] {
    return this.files.volumeRoots;
  }

  async createVolumeFile(o: { volumeId: string; format: VolumeFormat; sizeGb: number; fromSnapshot: { path: string; format: VolumeFormat } | null }): Promise<{ path: string; fileId: string }> {
    const dir = this.files.volumesDir;
    await fs.mkdir(dir, { recursive: true });
    await checkFileSystemAllows(dir, o.sizeGb);
    const file = path.join(dir, `${safeId(o.volumeId)}.${o.format === 'qcow2' ? 'qcow2' : 'img'}`);
    const snap = o.fromSnapshot;
    // The name is claimed first (O_EXCL): an existing file of that name is never replaced, and
    // only a file made here is removed when something fails.
    await (await fs.open(file, 'wx', 0o600)).close();
    try {
      if (snap) await this.files.copyOut(snap.path, this.files.snapshotGuard(), file);
      if (o.format === 'qcow2') {
        if (snap) await growQcow2(file, o.sizeGb * GiB);
        else await createQcow2(file, o.sizeGb * GiB); // qemu-img create replaces the empty file claimed above
        return { path: file, fileId: fileIdOf(await fs.stat(file, { bigint: true })) };
      }
      const fh = await fs.open(file, 'r+');
      try {
        await fh.truncate(o.sizeGb * GiB);
        return { path: file, fileId: fileIdOf(await fh.stat({ bigint: true })) };
      } finally {
        await fh.close();
      }
    } catch (err) {
      // No file without its row (a failed truncate once left a 0-byte image behind).
      await fs.rm(file, { force: true });
      throw err;
    }
  }

  /**
   * Only paths inside one of the host's volume roots; symlinks, `..` escapes, files with more than
   * one hard link and anything in Haven's own data are refused (checked on the opened file,
   * VolumeFiles). A qcow2 image is sized by its virtual size and must stand alone: a backing file or
   * an external data file named in an image could be any file of the host.
   */
  async inspectAdoption(o: { path: string; format?: VolumeFormat | undefined; qmp?: { socket: string; node: string } | undefined }): Promise<{ path: string; format: VolumeFormat; sizeBytes: number; fileId: string }> {
    const requested = o.path;
    if (!path.isAbsolute(requested)) throw new AppError(ErrorCode.VolumePathRefused, `ref.source-name must be an absolute path, got ${requested}`);
    if (requested.split('/').includes('..')) throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} contains ".."`);
    const normal = path.normalize(requested);
    const roots = this.files.volumeRoots;
    const root = roots.find((r) => normal !== r && isUnder(normal, r));
    const where = this.host ? ` of host ${this.host}` : '';
    if (!root) throw new AppError(ErrorCode.VolumePathRefused, roots.length ? `path ${requested} is not under a volume root${where} (HAVEN_VOLUME_ROOTS: ${roots.join(':')})` : `no volume roots are configured${where} (HAVEN_VOLUME_ROOTS), so no path can be adopted`);
    // The disk of a running guest: its format and size are what its QEMU says of the node.
    const guest = o.qmp ? await this.guestNode(o.qmp, normal) : null;
    if (guest && o.format !== undefined && o.format !== guest.format) throw new AppError(ErrorCode.VolumePathRefused, `node ${o.qmp!.node} is a ${guest.format} image, not ${o.format}`);
    const format: VolumeFormat = guest?.format ?? o.format ?? 'raw';
    const opened = await this.files.openForAdoption(normal);
    try {
      const st = opened.stat;
      let sizeBytes: number;
      if (format === 'qcow2') {
        if (!st.isFile()) throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} is not a file, so not a qcow2 image`);
        const info = await imageInfo(normal, { fd: opened.fh.fd }).catch((err: unknown) => {
          throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} cannot be read as an image: ${(err as Error).message}`, { cause: err });
        });
        if (info.format !== 'qcow2') throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} is a ${info.format} image, not qcow2 (adopt it with volume_type raw)`);
        if (info.backingFilename !== null) throw new AppError(ErrorCode.VolumePathRefused, `qcow2 image ${requested} has a backing file (${info.backingFilename}); Haven adopts stand-alone images only (qemu-img convert -O qcow2 makes one)`);
        if (info.dataFile !== null) throw new AppError(ErrorCode.VolumePathRefused, `qcow2 image ${requested} keeps its data in another file (${info.dataFile}); Haven adopts stand-alone images only`);
        sizeBytes = info.virtualSize;
      } else {
        sizeBytes = st.isFile() ? Number(st.size) : await blockDeviceSize(Number(st.rdev));
      }
      return { path: normal, format, sizeBytes, fileId: opened.fileId };
    } finally {
      await opened.fh.close();
    }
  }

  /**
   * The block node of a running guest that an adoption names: QEMU must have it, on the very image
   * adopted (its file, by real path), as raw or qcow2.
   */
  private async guestNode(qmp: { socket: string; node: string }, sourceName: string): Promise<{ format: VolumeFormat; sizeBytes: number }> {
    const bad = await qmpSocketProblem(qmp.socket);
    if (bad === 'path') throw new AppError(ErrorCode.VolumePathRefused, `ref.qmp_socket must be an absolute path without "..", got ${qmp.socket}`);
    if (bad === 'missing') throw new AppError(ErrorCode.VolumePathRefused, `ref.qmp_socket ${qmp.socket} is not a socket`);
    // QEMU's answer (or its silence) is a reason to refuse the adoption, said in QEMU's words.
    const n = await guestNodeInfo(qmp.socket, qmp.node).catch((err: unknown) => {
      throw new AppError(ErrorCode.VolumePathRefused, (err as Error).message, { cause: err });
    });
    if (n.drv !== 'qcow2' && n.drv !== 'raw') throw new AppError(ErrorCode.VolumePathRefused, `node ${qmp.node} is a ${n.drv} node; adopt the guest's qcow2 or raw format node`);
    const real = await fs.realpath(n.file).catch(() => n.file);
    const adopted = await fs.realpath(sourceName).catch(() => sourceName);
    if (real !== adopted) throw new AppError(ErrorCode.VolumePathRefused, `node ${qmp.node} is the image ${n.file}, not ${sourceName}`);
    return { format: n.drv, sizeBytes: n.sizeBytes };
  }

  async removeVolumeFile(o: { id: string; path: string; fileId: string | null }): Promise<void> {
    await this.files.removeCreated(o);
  }

  /** A snapshot's file is named after its id: `snapshots/<id>.img` (or `.qcow2`). */
  private snapshotFile(snapshotId: string, format: VolumeFormat): string {
    return path.join(this.files.snapshotsDir, `${safeId(snapshotId)}.${format === 'qcow2' ? 'qcow2' : 'img'}`);
  }

  async snapshotVolume(o: { volume: VolumeFileRef; snapshotId: string }): Promise<{ path: string }> {
    const file = this.snapshotFile(o.snapshotId, o.volume.format);
    await fs.mkdir(this.files.snapshotsDir, { recursive: true });
    await (await fs.open(file, 'wx', 0o600)).close(); // claimed: never replaces a file
    try {
      await this.files.copyOut(o.volume.path, this.files.guardOf(o.volume), file);
    } catch (err) {
      await fs.rm(file, { force: true });
      throw err;
    }
    return { path: file };
  }

  /** Removes a snapshot's file: by the path recorded (only in the snapshots folder), and by its id. */
  async removeSnapshotFile(o: { snapshotId?: string; path?: string }): Promise<void> {
    if (o.path) {
      if (!isUnder(path.normalize(o.path), this.files.snapshotsDir)) throw new AppError(ErrorCode.VolumePathRefused, `${o.path} is not a snapshot file of this host`);
      await fs.rm(o.path, { force: true });
    }
    if (o.snapshotId) for (const f of ['raw', 'qcow2'] as const) await fs.rm(this.snapshotFile(o.snapshotId, f), { force: true });
  }

  private serverCopyDir(itemId: string): string {
    return path.join(this.files.snapshotsDir, `csbs-${safeId(itemId)}`);
  }

  /**
   * A running guest's disk may be read only if its image is under this host's volume roots and its
   * QMP socket is an absolute path to a socket: checked before QEMU is asked anything (the engine
   * then checks that the node is that very image).
   */
  private async checkGuest(v: VolumeFileRef): Promise<void> {
    const qmp = v.qmp!;
    const bad = await qmpSocketProblem(qmp.socket);
    if (bad === 'path') throw new AppError(ErrorCode.VolumePathRefused, `QMP socket ${qmp.socket} is not an absolute path without ".."`);
    if (bad === 'missing') throw new AppError(ErrorCode.VolumeUnreadable, `QMP socket ${qmp.socket} is not there (is the guest running?)`);
    const real = await fs.realpath(v.path).catch(() => null);
    const roots = this.files.guardOf(v).roots;
    if (!real || !roots.some((r) => isUnder(real, r))) throw new AppError(ErrorCode.VolumePathRefused, `the image ${v.path} of the running guest is not under this host's volume roots (${roots.join(':') || 'none'})`);
  }

  async backup(o: BackupOrder, ctl: WorkControl): Promise<BackupSummary> {
    const s = o.source;
    if (s.kind === 'volume' && s.volume.qmp) await this.checkGuest(s.volume);
    const src = s.kind === 'volume' ? { path: s.volume.path, guard: this.files.guardOf(s.volume), format: s.volume.format, qmp: s.volume.qmp }
      : s.kind === 'snapshot' ? { path: s.path, guard: this.files.snapshotGuard(), format: s.format, qmp: null }
      : { path: path.join(this.serverCopyDir(s.itemId), `${safeId(s.volumeId)}.img`), guard: this.files.snapshotGuard(), format: s.format, qmp: null };
    const r = await this.engine.backup(src.path, {
      guard: src.guard, format: src.format, qmp: src.qmp, backupId: o.backupId, volume: o.volume, previousId: o.previousId, full: o.full, checkReused: o.checkReused, signal: ctl.signal,
      onProgress: (p) => ctl.onProgress(p.doneBytes, p.totalBytes),
    });
    return summaryOf(r);
  }

  async restore(o: { backupId: string; target: VolumeFileRef }, ctl: WorkControl): Promise<void> {
    // The volume's own file, checked on open (never through a link or a swapped file); a file
    // larger than the backup keeps the volume's size.
    await this.engine.restore(o.backupId, o.target.path, { guard: this.files.guardOf(o.target), format: o.target.format, targetSizeBytes: o.target.sizeBytes, signal: ctl.signal, onProgress: (p) => ctl.onProgress(p.doneBytes, p.totalBytes) });
  }

  private lives(): LiveExports {
    if (!this.opts.live) throw new AppError(ErrorCode.ExportUnavailable, 'This host serves no live restores.');
    return this.opts.live;
  }

  openLive(o: { backupId: string; target: VolumeFileRef; exportName: string }): Promise<{ uri: string; sizeBytes: number }> {
    if (o.target.format !== 'raw' || o.target.qmp) throw new AppError(ErrorCode.VolumeInvalidState, `volume ${o.target.id} is not a raw volume: a live restore needs a file or block device`, { details: { targetUntouched: true } });
    return this.lives().open({ backupId: o.backupId, path: o.target.path, guard: this.files.guardOf(o.target), sizeBytes: o.target.sizeBytes, exportName: o.exportName });
  }

  liveCopy(o: { exportName: string }, ctl: WorkControl): Promise<{ writtenBytes: number }> {
    return this.lives().copy(o.exportName, ctl.signal, (done, total) => ctl.onProgress(done, total));
  }

  async endLive(o: { exportName: string }): Promise<void> {
    await this.opts.live?.end(o.exportName);
  }

  /**
   * A server backup: one moment for all its disks, between the freeze and thaw hooks (thaw runs
   * whenever freeze was tried, even if it failed half way). At that moment a file volume is
   * copied (a reflink when the file system can) and a running guest's disk is held at its point in
   * time through QMP (a fleece overlay: no copy). After the thaw each disk is written as its
   * backup; a guest's point in time is ended as soon as its backup is written, or failed.
   */
  async protectServer(o: ServerProtectOrder, ctl: WorkControl): Promise<BackupSummary[]> {
    const dir = this.serverCopyDir(o.itemId);
    await fs.mkdir(dir, { recursive: true });
    const points = new Map<number, GuestPoint>();
    try {
      try {
        await this.hook(this.opts.freezeCommand, o.hookEnv);
        for (const [i, d] of o.disks.entries()) {
          if (ctl.signal.aborted) throw ctl.signal.reason;
          if (d.volume.qmp) await this.checkGuest(d.volume);
          if (d.volume.qmp) points.set(i, await this.engine.takeGuestPoint(d.volume.path, d.volume.qmp, { backupId: d.backup.backupId, previousId: d.backup.previousId, full: d.backup.full, signal: ctl.signal }));
          else await this.files.copyOut(d.volume.path, this.files.guardOf(d.volume), path.join(dir, `${safeId(d.volume.id)}.img`));
        }
      } finally {
        await this.hook(this.opts.thawCommand, o.hookEnv);
      }
      const total = o.disks.reduce((n, d) => n + d.volume.sizeBytes, 0);
      let before = 0;
      const out: BackupSummary[] = [];
      for (const [i, d] of o.disks.entries()) {
        const ctlOne: WorkControl = { signal: ctl.signal, onProgress: (done) => ctl.onProgress(before + done, total) };
        const point = points.get(i);
        out.push(point
          ? summaryOf(await this.engine.writeGuestPoint(point, { ...d.backup, signal: ctl.signal, onProgress: (p) => ctlOne.onProgress(p.doneBytes, p.totalBytes) }))
          : await this.backup({ ...d.backup, source: { kind: 'serverCopy', itemId: o.itemId, volumeId: d.volume.id, format: d.volume.format } }, ctlOne));
        before += d.volume.sizeBytes;
      }
      return out;
    } finally {
      for (const p of points.values()) await p.end(false).catch(() => undefined); // those not written: their bitmaps fold back
      await fs.rm(dir, { recursive: true, force: true }); // the copies were only the backups' source
    }
  }

  async thawServer(o: { hookEnv: Record<string, string> }): Promise<void> {
    await this.hook(this.opts.thawCommand, o.hookEnv);
  }

  async removeServerCopies(o: { itemId: string }): Promise<void> {
    await fs.rm(this.serverCopyDir(o.itemId), { recursive: true, force: true });
  }

  private async hook(command: string, env: Record<string, string>): Promise<void> {
    if (!command) return;
    // Only the hooks' own variables come from the request (never PATH, LD_PRELOAD & co.).
    const given: Record<string, string> = {};
    for (const k of HOOK_VARIABLES) {
      const v = env[k];
      if (v === undefined) continue;
      if (typeof v !== 'string' || v.includes('\0')) throw new AppError(ErrorCode.HookFailed, `hook variable ${k} is not text`);
      given[k] = v;
    }
    try {
      const { NODE_COMPILE_CACHE: _ownCache, ...inherited } = process.env; // Haven's own, not the hook's
      await run('sh', ['-c', command], { env: { ...inherited, ...given }, timeout: HOOK_TIMEOUT_MS });
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new AppError(ErrorCode.HookFailed, `hook "${command}" failed: ${(e.stderr || e.message).trim().split('\n').slice(-1)[0]}`, { cause: err });
    }
  }
}
