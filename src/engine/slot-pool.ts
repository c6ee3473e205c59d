/**
 * The batch slots of a backup or restore pipeline: a fixed set of buffers that bounds memory
 * whatever the volume size. A batch takes a slot before it starts and gives it back when done;
 * after a failure no slot is handed out any more (failed batches never give theirs back, so
 * waiting for one could last forever).
 */
export class SlotPool<T> {
  private readonly free: T[];
  private readonly waiters: ((s: T | null) => void)[] = [];
  private failed = false;

  constructor(slots: T[]) {
    this.free = slots;
  }

  /** Slots for `threads` workers: two each keep them busy; the cap bounds memory on many-core hosts. */
  static count(threads: number): number {
    return Math.min(threads * 2 + 2, 16);
  }

  /** A free slot, once there is one; null after fail(). */
  take(): Promise<T | null> {
    if (this.failed) return Promise.resolve(null);
    const s = this.free.pop();
    return s !== undefined ? Promise.resolve(s) : new Promise((r) => this.waiters.push(r));
  }

  give(s: T): void {
    const w = this.waiters.shift();
    if (w) w(s);
    else this.free.push(s);
  }

  /** Ends the handing out: whoever waits gets null, and so does every later take(). */
  fail(): void {
    this.failed = true;
    for (const w of this.waiters.splice(0)) w(null);
  }
}
