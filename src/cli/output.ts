/** Human output for the CLI: sizes, rates, and a progress bar on a terminal (cli-progress). */
import { SingleBar } from 'cli-progress';
import type { Progress } from '../engine/backup-writer.ts';

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[u]}`;
}

/**
 * A size as users write it: a number with an optional unit (k, m, g, with or without "iB"/"B",
 * binary multiples); `units` names the ones taken, a bare number means `bareUnit`. Null when it is
 * not such a size.
 */
export function parseSize(v: string, opts: { units: string; bareUnit: '' | 'k' | 'm' | 'g' }): number | null {
  const m = new RegExp(`^(\\d+)\\s*([${opts.units}${opts.units.toUpperCase()}]i?[bB]?)?$`).exec(v.trim());
  if (!m) return null;
  const u = (m[2] ?? opts.bareUnit).toLowerCase()[0] ?? '';
  return Number(m[1]) * (u === 'k' ? 1024 : u === 'm' ? 1024 ** 2 : u === 'g' ? 1024 ** 3 : 1);
}

export function formatRate(bytes: number, ms: number): string {
  return ms > 0 ? `${formatBytes((bytes * 1000) / ms)}/s` : '-';
}

export interface ProgressReporter {
  onProgress: (p: Progress) => void;
  stop: () => void;
}

/** A progress bar with throughput on stderr when it is a terminal and --json is off; silent otherwise. */
export function progressReporter(label: string, enabled: boolean): ProgressReporter {
  if (!enabled || !process.stderr.isTTY) return { onProgress: () => undefined, stop: () => undefined };
  const started = performance.now();
  // {total} and {value} are cli-progress's own (raw numbers), so the formatted sizes are {done} and {size}.
  const bar = new SingleBar({
    stream: process.stderr,
    format: `${label} [{bar}] {percentage}% | {done} / {size} | {rate} | ETA {eta_formatted}`,
    barCompleteChar: '#',
    barIncompleteChar: '-',
    hideCursor: true,
    etaBuffer: 20,
    fps: 5,
  });
  let begun = false;
  let stopped = false;
  return {
    onProgress: (p) => {
      const payload = { done: formatBytes(p.doneBytes), size: formatBytes(p.totalBytes), rate: formatRate(p.doneBytes, performance.now() - started) };
      if (!begun) {
        bar.start(Math.max(1, p.totalBytes), p.doneBytes, payload);
        begun = true;
      } else bar.update(p.doneBytes, payload);
    },
    stop: () => {
      if (begun && !stopped) bar.stop();
      stopped = true;
    },
  };
}
