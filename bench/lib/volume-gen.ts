/**
 * Deterministic benchmark volumes: a sparse raw image of 1 MiB regions, 40% zeros, 30% log-like text,
 * 30% random (AES-CTR keystream, so seeded and fast), and the two second versions of the issue:
 * 1% of 4 KiB blocks rewritten at random positions ("scattered"), or the same amount in 256 KiB runs
 * ("clustered"). Modifications are applied in place, so every tool backs up the same path.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';

const REGION = 1024 * 1024;
const BLOCK = 4096;

/** xorshift32: small, seeded, good enough to pick positions. */
export class Prng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s / 0x100000000;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

export function randomStream(seed: number): (n: number) => Buffer {
  const key = createHash('sha256').update(`haven-bench-${seed}`).digest().subarray(0, 16);
  const c = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  // Small requests (6 bytes per log line) come from a 64 KiB batch: one cipher call per line cost
  // half the text's generation time. CTR's keystream is one stream however it is cut, so the bytes
  // are the same as unbatched.
  const BATCH = 64 * 1024;
  let pool = Buffer.alloc(0);
  let at = 0;
  return (n) => {
    if (n >= BATCH) {
      const rest = pool.subarray(at);
      at = pool.length;
      return rest.length ? Buffer.concat([rest, c.update(Buffer.alloc(n - rest.length))]) : c.update(Buffer.alloc(n));
    }
    if (at + n > pool.length) {
      pool = Buffer.concat([pool.subarray(at), c.update(Buffer.alloc(BATCH))]);
      at = 0;
    }
    at += n;
    return pool.subarray(at - n, at);
  };
}

const LEVELS = ['INFO', 'INFO', 'INFO', 'DEBUG', 'WARN', 'ERROR'];
const PATHS = ['/api/v1/volumes', '/api/v1/backups', '/v3/auth/tokens', '/healthz', '/api/v1/jobs', '/metrics'];

function textRegion(prng: Prng, rnd: (n: number) => Buffer, t0: number): Buffer {
  const buf = Buffer.alloc(REGION);
  let o = 0;
  let t = t0;
  while (o < REGION) {
    t += prng.int(50);
    const id = rnd(6).toString('hex');
    const line = `${new Date(t).toISOString()} ${LEVELS[prng.int(LEVELS.length)]} haven[${1000 + prng.int(64)}]: req=${id} ${PATHS[prng.int(PATHS.length)]} status=${prng.next() < 0.9 ? 200 : 404} bytes=${prng.int(1 << 20)} ms=${prng.int(900)}\n`;
    o += buf.write(line, o);
  }
  return buf;
}

export interface GeneratedVolume {
  path: string;
  sizeBytes: number;
  sha256: string;
  zeroBytes: number;
  textBytes: number;
  randomBytes: number;
}

export async function generateVolume(path: string, sizeBytes: number, seed = 1): Promise<GeneratedVolume> {
  const prng = new Prng(seed);
  const rnd = randomStream(seed);
  const fh = await fs.open(path, 'w');
  const hash = createHash('sha256');
  const zero = Buffer.alloc(REGION);
  let zeroBytes = 0;
  let textBytes = 0;
  let randomBytes = 0;
  try {
    for (let pos = 0; pos < sizeBytes; pos += REGION) {
      const n = Math.min(REGION, sizeBytes - pos);
      const r = prng.next();
      let data: Buffer;
      if (r < 0.4) {
        zeroBytes += n;
        hash.update(zero.subarray(0, n)); // left as a hole: raw images are sparse
        continue;
      } else if (r < 0.7) {
        data = textRegion(prng, rnd, Date.UTC(2026, 0, 1) + pos);
        textBytes += n;
      } else {
        data = rnd(REGION);
        randomBytes += n;
      }
      hash.update(data.subarray(0, n));
      await fh.write(data, 0, n, pos);
    }
    await fh.truncate(sizeBytes);
  } finally {
    await fh.close();
  }
  return { path, sizeBytes, sha256: hash.digest('hex'), zeroBytes, textBytes, randomBytes };
}

/** Rewrites 1% of the 4 KiB blocks with random data, scattered or in runs of `runBytes`. */
export async function modifyVolume(path: string, sizeBytes: number, runBytes: number, seed: number): Promise<{ changedBytes: number }> {
  const prng = new Prng(seed);
  const rnd = randomStream(seed + 1000);
  const blocks = Math.floor(sizeBytes / BLOCK);
  const target = Math.round(blocks * 0.01);
  const perRun = Math.max(1, runBytes / BLOCK);
  const chosen = new Set<number>();
  const fh = await fs.open(path, 'r+');
  try {
    while (chosen.size < target) {
      const start = prng.int(blocks - perRun);
      for (let b = start; b < start + perRun && chosen.size < target; b++) {
        if (chosen.has(b)) continue;
        chosen.add(b);
        await fh.write(rnd(BLOCK), 0, BLOCK, b * BLOCK);
      }
    }
  } finally {
    await fh.close();
  }
  return { changedBytes: chosen.size * BLOCK };
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  const fh = await fs.open(path, 'r');
  const buf = Buffer.allocUnsafe(8 * REGION);
  try {
    for (let pos = 0; ; ) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}
