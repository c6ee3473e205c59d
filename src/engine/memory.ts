/**
 * Prompt release of short-lived Buffers. The engine allocates megabytes per batch outside the V8
 * heap (zstd output, blobs, structured-clone copies between threads); V8 sees little heap pressure
 * and lets such garbage reach hundreds of MiB per thread before collecting. The engine calls
 * releaseGarbage() at natural points (after each worker task, after each pack is handed to the
 * store), which keeps peak RSS bounded whatever the volume size; a collection of these small heaps
 * costs a few milliseconds.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as (opts?: { type?: 'minor' | 'major'; execution?: 'sync' | 'async' }) => void;

/** Bytes of short-lived allocation after which a full collection runs. */
const MAJOR_EVERY_BYTES = 64 * 1024 * 1024;
let sinceMajor = 0;

/** Tells the collector that about `bytes` of short-lived Buffers just became garbage. */
export function releaseGarbage(bytes: number): void {
  sinceMajor += bytes;
  if (sinceMajor >= MAJOR_EVERY_BYTES) {
    sinceMajor = 0;
    gc({ type: 'major' });
  } else {
    gc({ type: 'minor' });
  }
}

/** Bytes of young garbage after which releaseYoungGarbage() scavenges. */
const MINOR_EVERY_BYTES = 16 * 1024 * 1024;
let sinceMinor = 0;

/**
 * For garbage that died young (per-chunk buffers of a task): a scavenge, without the full
 * collection's cost, once about MINOR_EVERY_BYTES have died since the last one (without `bytes`:
 * now). Without it a worker's RSS grew by ~130 MiB during a 4 GiB backup; one after every decode
 * task cost more than the garbage did (an NBD export's 1,300 small decode tasks: 1,300 scavenges).
 */
export function releaseYoungGarbage(bytes = MINOR_EVERY_BYTES): void {
  sinceMinor += bytes;
  if (sinceMinor < MINOR_EVERY_BYTES) return;
  sinceMinor = 0;
  gc({ type: 'minor' });
}
