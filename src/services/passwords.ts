/**
 * Password hashing with scrypt (node:crypto; memory-hard, no native addon needed). Stored as
 * `scrypt$N$r$p$salt$hash` so the cost can be raised later without breaking existing hashes.
 */
import { randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto';

const scrypt = (pw: string, salt: Buffer, len: number, opts: ScryptOptions): Promise<Buffer> =>
  new Promise((resolve, reject) => scryptCb(pw, salt, len, opts, (err, key) => (err ? reject(err) : resolve(key))));

const COST = { N: 1 << 15, r: 8, p: 1 };

export async function hashPassword(password: string, cost = COST): Promise<string> {
  const salt = randomBytes(16);
  const key = await scrypt(password, salt, 32, { ...cost, maxmem: 256 * cost.N * cost.r });
  return ['scrypt', cost.N, cost.r, cost.p, salt.toString('base64'), key.toString('base64')].join('$');
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const [alg, n, r, p, salt, hash] = stored.split('$');
  if (alg !== 'scrypt' || !salt || !hash) return false;
  const cost = { N: Number(n), r: Number(r), p: Number(p) };
  const want = Buffer.from(hash, 'base64');
  const got = await scrypt(password, Buffer.from(salt, 'base64'), want.length, { ...cost, maxmem: 256 * cost.N * cost.r });
  return timingSafeEqual(got, want);
}

/**
 * A cap on concurrent password hashing. scrypt at this cost takes ~32 MiB and tens of ms of a core
 * on libuv's thread pool; unbounded, a burst of logins takes every core (and the pool threads file
 * I/O needs) from the rest of the API. At most `concurrency` hashes run at once and at most
 * `maxWaiting` wait for a turn; beyond that `run` rejects at once with `onBusy()`'s error, so an
 * overloaded server answers "try again shortly" cheaply instead of queueing without bound.
 */
export class HashingGate {
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  private readonly concurrency: number;
  private readonly maxWaiting: number;
  private readonly onBusy: () => Error;

  constructor(opts: { concurrency: number; maxWaiting: number; onBusy: () => Error }) {
    this.concurrency = Math.max(1, opts.concurrency);
    this.maxWaiting = Math.max(0, opts.maxWaiting);
    this.onBusy = opts.onBusy;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.running >= this.concurrency) {
      if (this.waiting.length >= this.maxWaiting) throw this.onBusy();
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    } else {
      this.running++;
    }
    try {
      return await fn();
    } finally {
      // The slot passes straight to the next waiter (running stays counted), or is freed.
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    }
  }
}
