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

export function releaseGarbage(): void {
  gc({ type: 'major' });
}
