import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { describeLocation } from '../storage/s3-url.ts';
import { thinEvenly } from './repository-service.ts';

const series = (times: number[]) => times.map((t, i) => ({ takenAt: t, bytes: i }));

describe('thinEvenly', () => {
  it('keeps a short series whole', () => {
    assert.deepEqual(thinEvenly([], 5), []);
    assert.deepEqual(thinEvenly(series([1, 2, 3]), 3), series([1, 2, 3]));
  });

  it('keeps the newest sample of each of `max` equal intervals, the newest of all included', () => {
    // 0..99 in 10 intervals of 9.9: the newest of each is 9, 19, …, 89 and 99.
    const out = thinEvenly(series(Array.from({ length: 100 }, (_, i) => i)), 10);
    assert.deepEqual(out.map((s) => s.takenAt), [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]);
  });

  it('gives a burst one point, as any other interval', () => {
    const hourly = Array.from({ length: 48 }, (_, h) => h * 3600_000);
    const burst = Array.from({ length: 200 }, (_, i) => 10 * 3600_000 + 1 + i);
    const out = thinEvenly(series([...hourly, ...burst].sort((a, b) => a - b)), 24);
    assert.ok(out.length <= 24);
    assert.equal(out.filter((s) => s.takenAt > 10 * 3600_000 && s.takenAt < 11 * 3600_000).length, 0, 'the burst\'s interval keeps its newest: the 11:00 sample');
    assert.equal(out.at(-1)!.takenAt, 47 * 3600_000);
  });

  it('keeps one of many samples taken at one time', () => {
    assert.deepEqual(thinEvenly(series([5, 5, 5]), 2), [{ takenAt: 5, bytes: 2 }]);
  });
});

describe('describeLocation', () => {
  it('shows a folder as it is and an S3 URL as its bucket and prefix only', () => {
    assert.deepEqual(describeLocation('/srv/haven/repository'), { kind: 'local', location: '/srv/haven/repository' });
    assert.deepEqual(describeLocation('s3://backups'), { kind: 's3', location: 's3://backups' });
    assert.deepEqual(describeLocation('s3://backups/haven/prod/'), { kind: 's3', location: 's3://backups/haven/prod' });
  });
});

describe('RepositoryService.stop', () => {
  it('does not wait for a size listing that hangs (a large object store): the service stops on time', async () => {
    const { RepositoryService } = await import('./repository-service.ts');
    let listed = false;
    const catalog = { repositorySamples: { latestSampleAt: async () => null } } as unknown as ConstructorParameters<typeof RepositoryService>[0];
    const warnings: unknown[] = [];
    const svc = new RepositoryService(catalog, { now: () => Date.now() }, {
      kind: 's3', location: 's3://b/p', encrypted: false,
      bytes: async () => 0,
      measureBytes: () => ((listed = true), new Promise<number>(() => undefined)), // never answers
      space: async () => null,
      runReports: async () => ({ gc: null, verify: null }),
    }, { warn: (o: object) => warnings.push(o) });
    svc.start();
    await new Promise((r) => setTimeout(r, 20));
    assert.ok(listed, 'the start-up sample began listing');
    const t0 = performance.now();
    await svc.stop(100);
    const waited = performance.now() - t0;
    assert.ok(waited >= 90 && waited < 2_000, `stop() waited ${waited} ms`);
  });
});
