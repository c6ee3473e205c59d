/**
 * BlockBitmap: one bit per block of a disk, and the runs of set and clear blocks over a byte range.
 * What an overlay holds (nbd/overlay.ts) and what a live restore has settled or the user has written
 * (live-restore.ts).
 */
export interface BlockRun {
  offset: number;
  length: number;
  /** The run's blocks are set. */
  own: boolean;
}

export class BlockBitmap {
  readonly bits: Uint8Array;
  readonly blockBytes: number;
  private setCount = 0;

  constructor(blocks: number, blockBytes: number, bits?: Uint8Array) {
    this.bits = new Uint8Array(Math.ceil(blocks / 8));
    this.blockBytes = blockBytes;
    if (bits) {
      this.bits.set(bits);
      for (const byte of this.bits) for (let v = byte; v; v &= v - 1) this.setCount++;
    }
  }

  has(i: number): boolean {
    return (this.bits[i >> 3]! & (1 << (i & 7))) !== 0;
  }

  /** Sets blocks [a, b). */
  set(a: number, b = a + 1): void {
    for (let i = a; i < b; i++) {
      if (this.has(i)) continue;
      this.bits[i >> 3]! |= 1 << (i & 7);
      this.setCount++;
    }
  }

  /** Blocks set. */
  get count(): number {
    return this.setCount;
  }

  /** Runs of set and clear blocks over the bytes [offset, end). */
  runs(offset: number, end: number): BlockRun[] {
    const out: BlockRun[] = [];
    const n = this.blockBytes;
    let i = Math.floor(offset / n);
    while (i * n < end) {
      const own = this.has(i);
      const from = Math.max(offset, i * n);
      while (i * n < end && this.has(i) === own) i++;
      out.push({ offset: from, length: Math.min(end, i * n) - from, own });
    }
    return out;
  }
}
