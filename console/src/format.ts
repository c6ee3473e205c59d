/** How the console writes sizes, times and ids: the same units as the CLI (binary, human). */

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < UNITS.length - 1) (v /= 1024), u++;
  return `${u === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${UNITS[u]}`;
}

export function ratio(r: number | null | undefined): string {
  return r === null || r === undefined ? '–' : `${r.toFixed(2)}×`;
}

/** API times come with and without a zone (Cinder's have none and mean UTC). */
export function parseTime(s: string | null | undefined): number | null {
  if (!s) return null;
  const iso = /[zZ]|[+-]\d\d:?\d\d$/.test(s) ? s : `${s}Z`;
  const ms = Date.parse(iso.replace(' ', 'T'));
  return Number.isNaN(ms) ? null : ms;
}

export function time(s: string | number | null | undefined): string {
  const ms = typeof s === 'number' ? s : parseTime(s);
  if (ms === null) return '–';
  return new Date(ms).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

export function ago(s: string | number | null | undefined): string {
  const ms = typeof s === 'number' ? s : parseTime(s);
  if (ms === null) return '–';
  const d = (Date.now() - ms) / 1000;
  if (d < 60) return 'just now';
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  if (d < 86400) return `${Math.round(d / 3600)} h ago`;
  return `${Math.round(d / 86400)} d ago`;
}

export function shortId(id: string | null | undefined): string {
  return id ? id.slice(0, 8) : '–';
}

export function duration(ms: number | null): string {
  if (ms === null) return '–';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}
