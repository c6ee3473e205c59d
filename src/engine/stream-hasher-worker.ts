/** The hashing thread of StreamHasher: one SHA-256 over everything it is sent, in order. */
import { createHash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';

const ZEROS = new Uint8Array(1 << 20);
let hash = createHash('sha256');

function zeros(n: number): void {
  for (let left = n; left > 0; left -= ZEROS.length) hash.update(ZEROS.subarray(0, Math.min(left, ZEROS.length)));
}

parentPort!.on('message', (m: { seq: number; sab: SharedArrayBuffer; pieces: number[]; finish?: boolean }) => {
  if (m.finish) {
    parentPort!.postMessage({ digest: hash.digest('hex') });
    hash = createHash('sha256');
    return;
  }
  for (let i = 0; i < m.pieces.length; i += 2) {
    const off = m.pieces[i]!;
    if (off < 0) zeros(m.pieces[i + 1]!);
    else hash.update(new Uint8Array(m.sab, off, m.pieces[i + 1]!));
  }
  parentPort!.postMessage({ ack: m.seq });
});
