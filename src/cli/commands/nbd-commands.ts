/**
 * `haven nbd`: serves backups as NBD exports (export name = backup id) until interrupted. Read-only
 * by default; `--writable` gives each connection a copy-on-write overlay, discarded when it ends,
 * unless `--overlay FILE` keeps one. The repository is only read: a read lock holds GC's sweep off
 * (docs/design.md G6) while the server runs.
 */
import type { Command } from 'commander';
import { AppError, ErrorCode } from '../../domain/errors.ts';
import { ImageSource } from '../../engine/backup-image.ts';
import { RepositoryLock } from '../../engine/locks.ts';
import { RepositoryExports } from '../../nbd/backup-exports.ts';
import { nbdUri, parseListen } from '../../domain/listen.ts';
import { NbdServer } from '../../nbd/nbd-server.ts';
import { formatBytes, parseSize } from '../output.ts';
import { openRepository, type RepoOptions } from '../repo-access.ts';
import { checkBackupId, poolFromEnv, repoCommand } from './engine-commands.ts';

export const DEFAULT_NBD_LISTEN = '127.0.0.1:10809';

function parseCacheSize(v: string): number {
  const n = parseSize(v, { units: 'kmg', bareUnit: 'm' });
  if (n === null) throw new AppError(ErrorCode.InvalidArgument, `--cache must be a size such as 128MiB, not ${JSON.stringify(v)}`);
  return n;
}

export function registerNbdCommands(program: Command): void {
  repoCommand(program, 'nbd', 'serve backups as NBD disks (export name = backup id) until interrupted: read them with qemu-img, nbdcopy or nbdinfo, boot a VM from them')
    .option('--listen <address>', 'HOST:PORT or unix:PATH to listen on', DEFAULT_NBD_LISTEN)
    .option('--backup <id...>', 'serve only these backups (default: every backup in the repository)')
    .option('--writable', 'accept writes, each connection into its own copy-on-write overlay (the backup is never changed); discarded when the connection ends')
    .option('--overlay <file>', 'with --writable and one --backup: keep the overlay in this file (and FILE.map), shared by all connections; an existing one is carried on')
    .option('--overlay-dir <dir>', 'where temporary overlays go (default: the system temporary folder)')
    .option('--cache <size>', 'decoded chunks kept in memory', '128MiB')
    .action(async (o: RepoOptions & { listen: string; backup?: string[]; writable?: boolean; overlay?: string; overlayDir?: string; cache: string; json?: boolean }) => {
      const listen = parseListen(o.listen);
      const cacheBytes = parseCacheSize(o.cache);
      const ids = o.backup?.map(checkBackupId);
      if (o.overlay && !o.writable) throw new AppError(ErrorCode.InvalidArgument, '--overlay needs --writable');
      if (o.overlay && ids?.length !== 1) throw new AppError(ErrorCode.InvalidArgument, '--overlay needs exactly one --backup');
      // A signal from here on stops the server cleanly (lock released, a kept overlay's map saved),
      // also one sent as soon as the ready line is read, or during the start; once is enough.
      const stopped = new Promise<void>((resolve) => {
        process.on('SIGINT', () => resolve());
        process.on('SIGTERM', () => resolve());
      });
      const pool = poolFromEnv(); // its threads start while the key is derived
      let lock: RepositoryLock | null = null;
      let server: NbdServer | null = null;
      let closeExports: (() => Promise<void>) | null = null;
      try {
        const repo = await openRepository(o);
        const src = new ImageSource(repo, pool, { cacheBytes });
        const exports = new RepositoryExports(src, { ...(ids ? { backupIds: ids } : {}), writable: o.writable === true, ...(o.overlay ? { overlayFile: o.overlay } : {}), ...(o.overlayDir ? { overlayDir: o.overlayDir } : {}) });
        lock = await RepositoryLock.acquire(repo.store, 'read');
        const mapLoading = src.chunkMap(); // in the background: the first read needs it
        mapLoading.catch(() => undefined);
        const images = ids ? await Promise.all(ids.map((id) => exports.image(id))) : [];
        closeExports = () => exports.close();
        await exports.openKept();
        server = new NbdServer(exports, {
          onError: (err, remote) => process.stderr.write(`haven nbd: ${remote}: ${(err as Error).message}\n`),
        });
        const at = await server.listen(listen);
        const where = 'path' in at ? `unix:${at.path}` : `${at.host.includes(':') ? `[${at.host}]` : at.host}:${at.port}`;
        const mode = o.writable ? (o.overlay ? `writable, overlay ${o.overlay}` : 'writable, an overlay per connection') : 'read-only';
        if (o.json) {
          process.stdout.write(`${JSON.stringify({ listen: where, writable: o.writable === true, exports: images.map((i) => ({ name: i.manifest.id, uri: nbdUri(at, i.manifest.id), sizeBytes: i.sizeBytes, volumeName: i.manifest.volume.name })) })}\n`);
        } else {
          process.stdout.write(`haven nbd: listening on ${where} (${mode})\n`);
          for (const i of images) process.stdout.write(`  ${nbdUri(at, i.manifest.id)}  ${formatBytes(i.sizeBytes)}  ${i.manifest.volume.name}\n`);
          // The placeholder as the README writes it, not percent-encoded as a real name would be.
          if (!ids) process.stdout.write(`  every backup of the repository, by id: ${nbdUri(at, 'BACKUP_ID').replace('BACKUP_ID', '<backup id>')}\n`);
        }
        await stopped;
      } finally {
        await server?.close();
        await closeExports?.();
        await lock?.release();
        await pool.close();
      }
    });
}
