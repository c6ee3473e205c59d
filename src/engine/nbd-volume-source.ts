/**
 * A volume read over NBD: the guest-visible disk of a qcow2 image (served by qemu-nbd) or of a
 * running QEMU guest (a point-in-time fleece exported by the guest's own QEMU, qemu/qemu-guest.ts).
 * Holes come from the `base:allocation` metadata context (ranges that read as zeros), changed
 * blocks from a `qemu:dirty-bitmap:NAME` context.
 */
import { NBD_STATE_DIRTY, NBD_STATE_ZERO, type NbdClient } from '../qemu/nbd-client.ts';
import type { ChangedBlocks } from './changed-blocks.ts';
import type { Extent } from './volume-extents.ts';
import type { VolumeSource } from './volume-source.ts';

export interface NbdVolumeSourceOptions {
  /** The dirty-bitmap context to read changes from, and the backup it counts from. */
  dirtyBitmap?: { context: string; sinceBackupId: string } | null;
  /** Runs after the connection is closed (stops the server, removes the fleece). */
  onClose?: () => Promise<void>;
}

/** Above this many extents a map is not worth its memory: the volume is read whole (holes, changes). */
const MAX_EXTENTS = 2_000_000;

export class NbdVolumeSource implements VolumeSource {
  readonly sizeBytes: number;
  private readonly client: NbdClient;
  private readonly opts: NbdVolumeSourceOptions;
  private closed = false;

  constructor(client: NbdClient, opts: NbdVolumeSourceOptions = {}) {
    this.client = client;
    this.sizeBytes = client.sizeBytes;
    this.opts = opts;
  }

  async read(into: Uint8Array, length: number, position: number): Promise<number> {
    const len = Math.max(0, Math.min(length, this.sizeBytes - position));
    if (len > 0) await this.client.read(into.subarray(0, len), position);
    return len;
  }

  /** Ranges that may hold data: everything but what the server says reads as zeros. */
  async dataExtents(): Promise<Extent[] | null> {
    if (!this.client.contexts.has('base:allocation')) return null;
    return await this.ranges('base:allocation', (f) => (f & NBD_STATE_ZERO) === 0);
  }

  async changedBlocks(): Promise<ChangedBlocks | null> {
    const bm = this.opts.dirtyBitmap;
    if (!bm || !this.client.contexts.has(bm.context)) return null;
    const extents = await this.ranges(bm.context, (f) => (f & NBD_STATE_DIRTY) !== 0);
    return extents === null ? null : { sinceBackupId: bm.sinceBackupId, extents };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.client.close();
    } finally {
      await this.opts.onClose?.();
    }
  }

  private async ranges(context: string, wanted: (flags: number) => boolean): Promise<Extent[] | null> {
    if (this.sizeBytes === 0) return [];
    const out: Extent[] = [];
    for (const e of await this.client.extents(context)) {
      if (!wanted(e.flags)) continue;
      const last = out[out.length - 1];
      if (last && last.start + last.length === e.offset) last.length += e.length;
      else out.push({ start: e.offset, length: e.length });
      if (out.length > MAX_EXTENTS) return null;
    }
    return out;
  }
}
