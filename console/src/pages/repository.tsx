/** The repository (cloud admin): size, dedup and compression, growth over time, last verify and GC. */
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import { api } from '../api.ts';
import { ErrorNote, PageHeader, Status, useResource } from '../components.tsx';
import { ago, bytes, duration, ratio, time } from '../format.ts';
import type { RepositoryInfo } from '../types.ts';

function GrowthChart({ points }: { points: RepositoryInfo['growth'] }) {
  const el = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const box = el.current;
    if (!box || points.length === 0) return;
    const xs = points.map((p) => Date.parse(p.at) / 1000);
    const ys = points.map((p) => p.bytes);
    const width = () => Math.max(280, box.clientWidth);
    const plot = new uPlot(
      {
        width: width(),
        height: 240,
        series: [{}, { label: 'Repository size', stroke: '#1e88e5', fill: 'rgba(30,136,229,0.12)', width: 2, value: (_u, v) => (v === null ? '–' : bytes(v)) }],
        axes: [{}, { values: (_u, vals) => vals.map((v) => bytes(v)), size: 80 }],
        // One sample (a new service) still gets a readable day around it.
        scales: { x: { time: true, range: (_u, min, max) => (min === max ? [min - 43_200, max + 43_200] : [min, max]) } },
        legend: { show: true },
      },
      [xs, ys],
      box,
    );
    const onResize = () => plot.setSize({ width: width(), height: 240 });
    addEventListener('resize', onResize);
    return () => (removeEventListener('resize', onResize), plot.destroy());
  }, [points]);
  if (points.length === 0) return <p class="empty">No size samples yet: the service records one every hour.</p>;
  return <div ref={el} class="chart" role="img" aria-label={`Repository size over time: ${points.length} samples, from ${bytes(points[0]!.bytes)} to ${bytes(points.at(-1)!.bytes)}`} />;
}

function Stat({ label, value, hint }: { label: string; value: string; hint?: string | undefined }) {
  return (
    <div class="stat">
      <small>{label}</small>
      <strong>{value}</strong>
      {hint && <small>{hint}</small>}
    </div>
  );
}

export function RepositoryPage() {
  const repo = useResource(() => api<{ repository: RepositoryInfo }>('GET', '/haven/v1/repository').then((r) => r.repository), []);
  const r = repo.data;
  return (
    <section>
      <PageHeader title="Repository">
        <button type="button" class="secondary outline" onClick={repo.reload} aria-busy={repo.loading}>
          Refresh
        </button>
      </PageHeader>
      <ErrorNote error={repo.error} />
      {r && (
        <>
          <p>
            <code>{r.location}</code> ({r.kind === 's3' ? 'S3 object store' : 'local folder'}, {r.encrypted ? 'encrypted with AES-256-GCM' : 'not encrypted'})
          </p>
          <div class="stats" data-testid="repository-stats">
            <Stat
              label="Stored"
              value={bytes(r.bytes)}
              hint={`${r.free_bytes !== null ? `${bytes(r.free_bytes)} free of ${bytes(r.filesystem_bytes)}; ` : ''}measured at most ${r.kind === 's3' ? '15 min' : 'a minute'} ago`}
            />
            <Stat label="Backups" value={String(r.backups)} hint={`${bytes(r.logical_bytes)} of disk images`} />
            <Stat label="Deduplication" value={ratio(r.dedup_ratio)} hint="disk bytes per unique chunk byte" />
            <Stat label="Compression" value={ratio(r.compression_ratio)} hint="unique bytes per stored byte" />
          </div>
          <h3>Growth</h3>
          <GrowthChart points={r.growth} />
          <div class="grid">
            <article>
              <header>Last verify</header>
              {r.last_verify ? (
                <p>
                  <Status value={r.last_verify.ok ? 'available' : 'error'} /> {time(r.last_verify.finished_at)} ({ago(r.last_verify.finished_at)}), {r.last_verify.scope === 'all' ? 'whole repository' : `${r.last_verify.backups} backups`}:{' '}
                  {r.last_verify.checked_chunks} chunks checked, {r.last_verify.damaged_chunks} damaged, {r.last_verify.missing_chunks} missing, in {duration(r.last_verify.duration_ms)}
                </p>
              ) : (
                <p class="empty">Never verified: run haven verify.</p>
              )}
            </article>
            <article>
              <header>Last garbage collection</header>
              {r.last_gc ? (
                <p>
                  {time(r.last_gc.finished_at)} ({ago(r.last_gc.finished_at)}): {bytes(r.last_gc.reclaimed_bytes)} reclaimed, {bytes(r.last_gc.dead_bytes)} dead bytes left, {bytes(r.last_gc.repository_bytes_after)} after, in{' '}
                  {duration(r.last_gc.duration_ms)}
                </p>
              ) : (
                <p class="empty">No garbage collection yet: the service runs one after backups are deleted.</p>
              )}
            </article>
          </div>
        </>
      )}
    </section>
  );
}
