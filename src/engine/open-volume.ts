/**
 * Opens what a backup reads: a raw image or block device directly (FileVolumeSource), any other
 * image format (qcow2) through qemu-nbd, as the guest sees it (NbdVolumeSource).
 */
import { constants as fsc } from 'node:fs';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { VOLUME_FORMATS, type VolumeFormat } from '../domain/model.ts';
import { imageInfo, QemuNbdServer } from '../qemu/qemu-tools.ts';
import { NbdVolumeSource } from './nbd-volume-source.ts';
import { openVolumeFile, type VolumeFileGuard } from './volume-file.ts';
import { FileVolumeSource, type VolumeSource } from './volume-source.ts';

export { VOLUME_FORMATS, type VolumeFormat };

export interface OpenedVolume {
  source: VolumeSource;
  format: VolumeFormat;
}

/**
 * Opens `path` read-only. Without `format` the image's format is probed with qemu-img (block
 * devices and files qemu-img cannot read are raw). Probing trusts the file's first bytes: a guest
 * that writes a qcow2 header into its raw disk could make it read as qcow2 with a backing file of
 * the guest's choosing, so callers that know the format (the service, from the volume's type) pass it.
 */
export async function openVolumeSource(path: string, opts: { format?: VolumeFormat; signal?: AbortSignal; guard?: VolumeFileGuard } = {}): Promise<OpenedVolume> {
  if (opts.guard) return openGuarded(path, opts.format ?? 'raw', opts.guard, opts.signal);
  let format = opts.format;
  if (format === undefined) {
    const raw = await FileVolumeSource.open(path); // also the clear error for a missing or unreadable path
    let probed: string;
    try {
      probed = (await imageInfo(path, opts.signal ? { signal: opts.signal } : {})).format;
    } catch (err) {
      if ((err as AppError).code === ErrorCode.Cancelled) {
        await raw.close();
        throw err;
      }
      probed = 'raw'; // qemu-img missing or refusing: read the bytes as they are
    }
    if (probed === 'raw') return { source: raw, format: 'raw' };
    await raw.close();
    if (!VOLUME_FORMATS.includes(probed as VolumeFormat)) throw new AppError(ErrorCode.VolumeUnreadable, `volume ${path} is a ${probed} image; Haven reads raw and qcow2 volumes`);
    format = probed as VolumeFormat;
  }
  if (format === 'raw') return { source: await FileVolumeSource.open(path), format };
  const server = await QemuNbdServer.start(path, { format, readOnly: true, connections: 2, ...(opts.signal ? { signal: opts.signal } : {}) });
  try {
    const client = await server.connect({ metaContexts: ['base:allocation'], ...(opts.signal ? { signal: opts.signal } : {}) });
    return { source: new NbdVolumeSource(client, { onClose: () => server.close() }), format };
  } catch (err) {
    await server.close();
    throw err;
  }
}

/**
 * A service volume: the path must be the very file Haven adopted or created (volume-file.ts); a
 * qcow2 image is served by qemu-nbd from that checked descriptor, without a backing file.
 */
async function openGuarded(path: string, format: VolumeFormat, guard: VolumeFileGuard, signal: AbortSignal | undefined): Promise<OpenedVolume> {
  if (format === 'raw') return { source: await FileVolumeSource.open(path, guard), format };
  const { fh } = await openVolumeFile(path, fsc.O_RDONLY, guard);
  let server: QemuNbdServer | null = null;
  try {
    server = await QemuNbdServer.start(path, { format, readOnly: true, connections: 2, fd: fh.fd, ...(signal ? { signal } : {}) });
    const client = await server.connect({ metaContexts: ['base:allocation'], ...(signal ? { signal } : {}) });
    const s = server;
    return { source: new NbdVolumeSource(client, { onClose: () => s.close() }), format };
  } catch (err) {
    await server?.close();
    throw err;
  } finally {
    await fh.close(); // qemu-nbd holds its own copy of the descriptor
  }
}
