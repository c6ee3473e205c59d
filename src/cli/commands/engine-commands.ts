/** init, backup, restore, digest, list, verify, delete, gc: the engine's command-line contract. */
import { randomUUID } from 'node:crypto';
import { promises as fs, realpathSync, type Stats } from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { AppError, ErrorCode } from '../../domain/errors.ts';
import { writeBackup, type Progress } from '../../engine/backup-writer.ts';
import { digestVolume } from '../../engine/digest-volume.ts';
import { collectGarbage, deleteBackup } from '../../engine/garbage-collector.ts';
import { BACKUP_ID_RE, type BackupManifest } from '../../engine/manifest.ts';
import { DEFAULT_CHUNK_SIZE, Repository } from '../../engine/repository.ts';
import { restoreBackup } from '../../engine/restore-reader.ts';
import { repairFromVolumes } from '../../engine/repair.ts';
import { verifyRepository, type VerifyReport } from '../../engine/verifier.ts';
import { FileVolumeSource, type VolumeSource } from '../../engine/volume-source.ts';
import { openVolumeSource, VOLUME_FORMATS, type VolumeFormat } from '../../engine/open-volume.ts';
import { openGuestDisk } from '../../qemu/qemu-guest.ts';
import { ChunkWorkerPool, DEFAULT_WORKER_NICE } from '../../engine/worker-pool.ts';
import { formatBytes, formatRate, parseSize, progressReporter, type ProgressReporter } from '../output.ts';
import { openRepository, openStore, readPassword, repoLocation, type RepoOptions } from '../repo-access.ts';
import { errnoText } from '../../domain/errno.ts';

export function out(json: boolean | undefined, obj: unknown, text: string): void {
  process.stdout.write(json ? `${JSON.stringify(obj)}\n` : `${text}\n`);
}

/** Ctrl-C cancels the running operation cleanly (the engine sees an aborted signal). */
export function cancelOnSigint(): { signal: AbortSignal; dispose: () => void } {
  const ac = new AbortController();
  const onSig = (): void => ac.abort(new AppError(ErrorCode.Cancelled, 'interrupted'));
  process.once('SIGINT', onSig);
  process.once('SIGTERM', onSig);
  return { signal: ac.signal, dispose: () => { process.off('SIGINT', onSig); process.off('SIGTERM', onSig); } };
}

export function poolFromEnv(): ChunkWorkerPool {
  const t = Number(process.env.HAVEN_THREADS ?? '');
  const niceEnv = process.env.HAVEN_WORKER_NICE;
  let nice = DEFAULT_WORKER_NICE;
  if (niceEnv !== undefined && niceEnv !== '') {
    nice = Number(niceEnv);
    if (!Number.isInteger(nice) || nice < 0 || nice > 19) throw new AppError(ErrorCode.InvalidArgument, `HAVEN_WORKER_NICE must be an integer from 0 to 19, not ${JSON.stringify(niceEnv)}`);
  }
  return new ChunkWorkerPool(Number.isInteger(t) && t > 0 ? t : undefined, { nice });
}

/**
 * Runs `fn` with a worker pool started first, so its threads boot while the repository key is
 * derived (scrypt), and closed whatever happens (live threads would keep the process alive).
 */
async function withPool<T>(fn: (pool: ChunkWorkerPool) => Promise<T>): Promise<T> {
  const pool = poolFromEnv();
  try {
    return await fn(pool);
  } finally {
    await pool.close();
  }
}

export function checkBackupId(id: string): string {
  if (!BACKUP_ID_RE.test(id)) throw new AppError(ErrorCode.BackupNotFound, `backup ${id} not found (backup ids are UUIDs, see haven list)`);
  return id;
}

function latestOfVolume(manifests: BackupManifest[], volumeId: string): BackupManifest | null {
  let best: BackupManifest | null = null;
  for (const m of manifests) if (m.volume.id === volumeId && (!best || m.createdAt > best.createdAt)) best = m;
  return best;
}

/** A manifest's proof for listings: the volume digest, and for backups from before it the SHA-256 (volumeDigest null). */
function manifestProof(m: BackupManifest): { volumeDigest: string | null; volumeSha256?: string } {
  return m.formatVersion === 2 ? { volumeDigest: m.volumeDigest } : { volumeDigest: null, volumeSha256: m.volumeSha256 };
}

function parseFormat(v: string | undefined): VolumeFormat | undefined {
  if (v === undefined) return undefined;
  if (!VOLUME_FORMATS.includes(v as VolumeFormat)) throw new AppError(ErrorCode.InvalidArgument, `--format must be one of ${VOLUME_FORMATS.join(', ')}, not ${JSON.stringify(v)}`);
  return v as VolumeFormat;
}

function parseChunkSize(v: string): number {
  const n = parseSize(v, { units: 'km', bareUnit: '' });
  if (n === null) throw new AppError(ErrorCode.InvalidArgument, `invalid chunk size ${JSON.stringify(v)} (e.g. 64KiB)`);
  return n;
}

/**
 * A restore never overwrites data by surprise: a target that exists and holds data (a file that is
 * not empty, any block device) needs --force. A folder or a missing parent is left to the restore,
 * which says what is wrong with it.
 */
async function refuseOverwrite(target: string): Promise<void> {
  let st: Stats;
  try {
    st = await fs.stat(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (st.isBlockDevice()) throw new AppError(ErrorCode.InvalidArgument, `${target} is a block device: give --force to overwrite what it holds`);
  if (st.isFile() && st.size > 0) throw new AppError(ErrorCode.InvalidArgument, `${target} exists and is not empty (${formatBytes(st.size)}): give --force to overwrite it`);
}

/** A command on a repository: every one takes --repo, --password-file and --json. */
export function repoCommand(program: Command, name: string, description: string, passwordHelp = 'repository password file (default: HAVEN_REPO_PASSWORD_FILE)'): Command {
  return program
    .command(name)
    .description(description)
    .option('--repo <dir|url>', 'repository folder, or s3://bucket/prefix (S3 server: HAVEN_S3_ENDPOINT); default: HAVEN_REPOSITORY')
    .option('--password-file <file>', passwordHelp)
    .option('--json', 'print the result as JSON');
}

export function registerEngineCommands(program: Command): void {
  repoCommand(program, 'init', 'create a repository (encrypted when a password file is given)', 'file holding the repository password (default: HAVEN_REPO_PASSWORD_FILE)')
    .option('--chunk-size <size>', 'chunk size, a multiple of 4KiB', `${DEFAULT_CHUNK_SIZE / 1024}KiB`)
    .action(async (o: RepoOptions & { chunkSize: string; json?: boolean }) => {
      const location = repoLocation(o);
      const repo = await Repository.init(await openStore(o), { password: readPassword(o), chunkSizeBytes: parseChunkSize(o.chunkSize) }).catch((err: unknown) => {
        if (err instanceof AppError) throw new AppError(err.code, `cannot create a repository at ${location}: ${err.message}`, { cause: err });
        throw err;
      });
      const c = repo.config;
      out(o.json, { id: c.id, repo: location, encrypted: c.encryption !== null, chunkSizeBytes: c.chunkSizeBytes },
        `created ${c.encryption ? 'encrypted' : 'unencrypted'} repository ${c.id} at ${location} (chunk size ${formatBytes(c.chunkSizeBytes)})`);
    });

  repoCommand(program, 'backup', 'back up a volume (raw or qcow2 image file, block device, or the disk of a running QEMU guest); incremental against its last backup')
    .option('--volume <path>', 'image file (raw or qcow2, backed up as the guest sees it) or block device to back up')
    .option('--format <raw|qcow2>', 'the image\'s format (default: probed by qemu-img; say raw for a disk whose guest could have written a qcow2 header into it)')
    .option('--qmp <socket>', 'back up the disk of a running QEMU guest at one point in time, through its QMP socket (with --node)')
    .option('--node <name>', 'the guest\'s block node to back up (with --qmp; Haven keeps a persistent dirty bitmap on it and reads only changed blocks next time)')
    .option('--nbd-socket <path>', 'with --qmp: the Unix socket of the NBD server the guest\'s QEMU already runs, when Haven cannot find it')
    .option('--name <name>', 'volume name recorded in the backup (default: the name of its last backup, else the file name)')
    .option('--volume-id <id>', 'volume identity for incrementals (default: the volume\'s real path; with --qmp, the guest\'s image file)')
    .option('--full', 'record a full backup (no parent): stored chunks are deduplicated against only once read and checked intact, the rest is stored again')
    .action(async (o: RepoOptions & { volume?: string; format?: string; qmp?: string; node?: string; nbdSocket?: string; name?: string; volumeId?: string; full?: boolean; json?: boolean }) => {
      const format = parseFormat(o.format);
      if ((o.volume === undefined) === (o.qmp === undefined)) throw new AppError(ErrorCode.InvalidArgument, 'name what to back up: --volume PATH, or --qmp SOCKET with --node NAME');
      if (o.qmp !== undefined && o.node === undefined) throw new AppError(ErrorCode.InvalidArgument, '--qmp needs --node (the guest\'s block node, see query-named-block-nodes)');
      if (o.qmp === undefined && (o.node !== undefined || o.nbdSocket !== undefined)) throw new AppError(ErrorCode.InvalidArgument, '--node and --nbd-socket go with --qmp');
      if (o.qmp !== undefined && o.format !== undefined) throw new AppError(ErrorCode.InvalidArgument, '--format goes with --volume (a running guest\'s disk is read as the guest sees it)');
      await withPool(async (pool) => {
        const repo = await openRepository(o);
        const manifests = (await repo.listBackups()).manifests;
        const { signal, dispose } = cancelOnSigint();
        const backupId = randomUUID();
        let source: VolumeSource;
        let volume: { id: string; name: string; path: string };
        let previous: BackupManifest | null = null;
        let finish: (ok: boolean) => Promise<void> = async () => undefined;
        let fullReadReason: string | null = null;
        try {
          if (o.qmp !== undefined) {
            let latest: BackupManifest | null = null;
            const disk = await openGuestDisk({
              qmpSocket: o.qmp, node: o.node!, backupId, ...(o.nbdSocket ? { nbdSocket: o.nbdSocket } : {}), signal,
              previous: (imageFile) => {
                const id = o.volumeId ?? imageFile;
                latest = latestOfVolume(manifests, id);
                volume = { id, name: o.name ?? latest?.volume.name ?? path.basename(imageFile), path: imageFile };
                previous = o.full ? null : latest;
                return previous;
              },
            });
            source = disk.source;
            finish = disk.finish;
            fullReadReason = disk.changedBlockTracking ? null : disk.fullReadReason;
          } else {
            let real: string;
            try {
              real = realpathSync(o.volume!);
            } catch (err) {
              throw new AppError(ErrorCode.VolumeUnreadable, `cannot open volume ${o.volume}: ${errnoText(err)}`, { cause: err });
            }
            const volumeId = o.volumeId ?? real;
            const latest = latestOfVolume(manifests, volumeId);
            // Without --name a volume keeps the name its last backup recorded.
            volume = { id: volumeId, name: o.name ?? latest?.volume.name ?? path.basename(real), path: real };
            previous = o.full ? null : latest;
            source = (await openVolumeSource(real, { ...(format ? { format } : {}), signal })).source;
          }
        } catch (err) {
          dispose();
          throw err;
        }
        const progress = progressReporter('backup ', !o.json);
        let ok = false;
        try {
          const { manifest, stats, checkedChunks, damagedChunks, readBytes, changedBlockTracking, changedBlockTrackingDistrusted } = await writeBackup(repo, source, { volume: volume!, previous, backupId, full: o.full ?? false, checkReused: o.full ?? false, pool, signal, onProgress: progress.onProgress });
          ok = true;
          progress.stop();
          if (changedBlockTrackingDistrusted) fullReadReason = changedBlockTrackingDistrusted;
          if (!o.json && fullReadReason && previous) process.stderr.write(`haven: read the whole disk: ${fullReadReason}\n`);
          out(o.json, {
            id: manifest.id, volumeId: volume!.id, volumeName: volume!.name, kind: manifest.kind, parentId: manifest.parentId,
            sizeBytes: manifest.sizeBytes, newBytes: stats.newBytes, storedBytes: stats.storedBytes, zeroBytes: stats.zeroBytes,
            dedupBytes: stats.dedupBytes, newChunks: stats.newChunks, reusedChunks: stats.reusedChunks, holeChunks: stats.holeChunks,
            objectsWritten: stats.objectsWritten, durationMs: stats.durationMs, volumeDigest: manifest.volumeDigest,
            readBytes, changedBlockTracking,
            ...(o.qmp !== undefined && !changedBlockTracking && fullReadReason ? { fullReadReason } : {}),
            ...(o.full ? { checkedChunks, damagedChunks } : {}),
          },
          `backup ${manifest.id} (${manifest.kind}) of ${volume!.name}: ${formatBytes(manifest.sizeBytes)}, ${formatBytes(readBytes)} read${changedBlockTracking ? ' (changed blocks only)' : ''}, ${formatBytes(stats.newBytes)} new, ${formatBytes(stats.storedBytes)} stored, in ${(stats.durationMs / 1000).toFixed(1)} s (${formatRate(manifest.sizeBytes, stats.durationMs)})`);
        } finally {
          progress.stop();
          dispose();
          await source.close().catch(() => undefined);
          await finish(ok);
        }
      });
    });

  repoCommand(program, 'restore', 'restore a backup to a file or block device, verified against its volume digest (older backups: their SHA-256)')
    .requiredOption('--backup <id>', 'backup id')
    .requiredOption('--target <path>', 'file (created, sparse) or block device; one that holds data needs --force')
    .option('--format <raw|qcow2>', 'raw (default) writes the bytes into the target; qcow2 creates a qcow2 image there (replaced only once the restore is proved)', 'raw')
    .option('--fsync', 'flush a file target to disk before reporting success (always done for block devices)')
    .option('--force', 'overwrite a target that holds data (a non-empty file, a block device)')
    .action(async (o: RepoOptions & { backup: string; target: string; format: string; fsync?: boolean; force?: boolean; json?: boolean }) => {
      const format = parseFormat(o.format) ?? 'raw';
      if (!o.force) await refuseOverwrite(o.target);
      await withPool(async (pool) => {
        const repo = await openRepository(o);
        const manifest = await repo.readManifest(checkBackupId(o.backup));
        const progress = progressReporter('restore', !o.json);
        const { signal, dispose } = cancelOnSigint();
        try {
          const r = await restoreBackup(repo, manifest, o.target, { pool, signal, fsync: o.fsync ?? false, format, onProgress: progress.onProgress });
          progress.stop();
          // What was proved: every chunk against its digest and the digests against the volume
          // digest, or (older backups) every byte against the whole-volume SHA-256.
          const proof = 'volumeDigest' in r ? { volumeDigest: r.volumeDigest } : { volumeSha256: r.volumeSha256 };
          out(o.json, { id: r.backupId, target: path.resolve(o.target), format, sizeBytes: r.sizeBytes, writtenBytes: r.writtenBytes, ...proof, verified: r.verified, durationMs: r.durationMs },
            `restored backup ${r.backupId} to ${o.target}: ${formatBytes(r.sizeBytes)}, ${'volumeDigest' in proof ? 'volume digest' : 'SHA-256'} verified, in ${(r.durationMs / 1000).toFixed(1)} s (${formatRate(r.sizeBytes, r.durationMs)})`);
        } finally {
          progress.stop();
          dispose();
        }
      });
    });

  repoCommand(program, 'digest', 'print the volume digest of an image file or block device as a backup into the repository would record it (compare a disk with a backup without restoring)')
    .argument('<path>', 'image file or block device')
    .action(async (file: string, o: RepoOptions & { json?: boolean }) => {
      await withPool(async (pool) => {
        const repo = await openRepository(o);
        const source = await FileVolumeSource.open(file);
        const { signal, dispose } = cancelOnSigint();
        try {
          const volumeDigest = await digestVolume(repo, source, { pool, signal });
          out(o.json, { path: path.resolve(file), sizeBytes: source.sizeBytes, volumeDigest }, `${volumeDigest}  ${file}`);
        } finally {
          dispose();
          await source.close();
        }
      });
    });

  repoCommand(program, 'list', 'list the backups in a repository')
    .action(async (o: RepoOptions & { json?: boolean }) => {
      const repo = await openRepository(o);
      const { manifests, damaged } = await repo.listBackups();
      if (o.json) {
        out(true, manifests.map((m) => ({ id: m.id, volumeId: m.volume.id, volumeName: m.volume.name, kind: m.kind, parentId: m.parentId, sizeBytes: m.sizeBytes, createdAt: m.createdAt, completedAt: m.completedAt, ...manifestProof(m), newBytes: m.stats.newBytes, storedBytes: m.stats.storedBytes })), '');
      } else {
        const rows = manifests.map((m) => [m.id, m.createdAt.replace('T', ' ').slice(0, 19), m.kind, formatBytes(m.sizeBytes), formatBytes(m.stats.newBytes), m.volume.name]);
        const head = ['ID', 'CREATED (UTC)', 'KIND', 'SIZE', 'NEW', 'VOLUME'];
        const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
        const line = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
        process.stdout.write(`${[line(head), ...rows.map(line)].join('\n')}\n${manifests.length} backup(s)\n`);
      }
      for (const d of damaged) process.stderr.write(`haven: warning: backup ${d.id} has an unreadable manifest: ${d.error}\n`);
    });

  repoCommand(program, 'verify', 'check manifests, indexes and every referenced chunk; exit 1 when anything is damaged')
    .option('--backup <id>', 'verify only this backup')
    .option('--repair', 'store quarantined chunks again from the volumes given with --from, then verify again')
    .option('--from <path>', 'a volume (image file or block device) that may still hold damaged chunks (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .action(async (o: RepoOptions & { backup?: string; repair?: boolean; from: string[]; json?: boolean }) => {
      if (o.repair && o.from.length === 0) throw new AppError(ErrorCode.InvalidArgument, 'verify --repair needs at least one --from <volume> holding the damaged data');
      if (!o.repair && o.from.length > 0) throw new AppError(ErrorCode.InvalidArgument, '--from is used with --repair');
      await withPool(async (pool) => {
        const repo = await openRepository(o);
        const { signal, dispose } = cancelOnSigint();
        const backupId = o.backup === undefined ? undefined : checkBackupId(o.backup);
        const verify = async (label: string): Promise<VerifyReport> => {
          const progress = progressReporter(label, !o.json);
          try {
            return await verifyRepository(repo, { backupId, pool, signal, onProgress: progress.onProgress });
          } finally {
            progress.stop();
          }
        };
        try {
          let r = await verify('verify ');
          const lines: string[] = [];
          let repair: Awaited<ReturnType<typeof repairFromVolumes>> | undefined;
          if (o.repair) {
            // The first verify quarantined every damaged copy; read the volumes for those chunks.
            const sources: FileVolumeSource[] = [];
            try {
              for (const f of o.from) sources.push(await FileVolumeSource.open(f));
              repair = await repairFromVolumes(repo, sources, { pool, signal });
            } finally {
              for (const s of sources) await s.close();
            }
            lines.push(...damageLines(r), `repair: ${repair.restoredChunks} of ${repair.wantedChunks} quarantined chunk(s) stored again (${formatBytes(repair.restoredBytes)}) from ${o.from.length} volume(s)${repair.stillWanted.length ? `; ${repair.stillWanted.length} not found in them` : ''}`);
            r = await verify('verify ');
          }
          lines.push(...damageLines(r));
          out(o.json, repair ? { ...r, repair } : r, lines.join('\n'));
          if (!r.ok) process.exitCode = 1;
        } finally {
          dispose();
        }
      });
    });

  repoCommand(program, 'delete', 'delete a backup (its space is reclaimed by gc)')
    .requiredOption('--backup <id>', 'backup id')
    .action(async (o: RepoOptions & { backup: string; json?: boolean }) => {
      const repo = await openRepository(o);
      await deleteBackup(repo, checkBackupId(o.backup));
      out(o.json, { id: o.backup, deleted: true }, `deleted backup ${o.backup} (run haven gc to reclaim its space)`);
    });

  repoCommand(program, 'gc', 'reclaim the space of chunks no backup references')
    .action(async (o: RepoOptions & { json?: boolean }) => {
      const repo = await openRepository(o);
      // One bar per phase: marking what every backup uses, then sweeping the packs.
      const bars = new Map<string, ProgressReporter>();
      const onProgress = (phase: 'mark' | 'sweep', p: Progress): void => {
        let bar = bars.get(phase);
        if (!bar) {
          for (const earlier of bars.values()) earlier.stop();
          bars.set(phase, (bar = progressReporter(`gc ${phase.padEnd(5)}`, !o.json)));
        }
        bar.onProgress(p);
      };
      const r = await collectGarbage(repo, { onProgress }).finally(() => {
        for (const bar of bars.values()) bar.stop();
      });
      out(o.json, r, [
        r.deferred ? `gc deferred: ${r.deferredReason}` : '',
        `gc: ${r.backups} backup(s), ${r.referencedChunks} chunks in use, ${r.deletedChunks} removed, ${r.pendingChunks} pending; ${r.deletedPacks} packs deleted, ${r.rewrittenPacks} rewritten; reclaimed ${formatBytes(r.reclaimedBytes)} (${formatBytes(r.repositoryBytesBefore)} -> ${formatBytes(r.repositoryBytesAfter)}); ${formatBytes(r.deadBytes)} dead left in packs`,
      ].filter(Boolean).join('\n'));
    });
}

/** verify's text: damaged backups, damaged chunks with the backups they affect, the summary line. */
function damageLines(r: VerifyReport): string[] {
  const bad = r.backups.filter((b) => !b.ok);
  return [
    ...bad.map((b) => `DAMAGED backup ${b.id} (${b.volumeName}): ${b.problems.join('; ')}`),
    ...r.chunks.map((c) => `${c.problem.toUpperCase()} chunk ${c.digest} (pack ${c.packId}), quarantined; used by backup(s) ${c.backups.join(', ') || '(none verified here)'}`),
    `${r.ok ? 'OK' : 'DAMAGED'}: ${r.backups.length} backup(s) checked, ${bad.length} damaged; ${r.checkedChunks} chunks (${formatBytes(r.checkedBytes)}) in ${r.checkedPacks} packs read, ${r.damagedChunks} damaged, ${r.missingChunks} missing` +
      (r.quarantined || r.released ? `; ${r.quarantined} newly quarantined, ${r.released} released (found intact)` : ''),
  ];
}
