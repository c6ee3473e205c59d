/**
 * The S3 part: Haven and restic's s3 backend against one real S3 implementation (OpenStack Swift
 * with s3api on loopback, test/helpers/swift.ts), which serves HTTPS itself and counts their requests
 * in its access log (request-log.ts says why), on the same volume: a full backup, an incremental after scattered changes,
 * then a restore of each, checked by SHA-256. Haven's "packs touched" by a backup (the distinct packs
 * its chunks live in) is read from the repository itself, directly from Swift so it is not counted.
 */
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describeCounts, makeLoopbackCert, RequestLog, type RequestCounts } from './request-log.ts';
import { log, oneLine, settle, type RssRecord } from './local-suite.ts';
import { Repository } from '../../src/engine/repository.ts';
import { S3ObjectStore } from '../../src/storage/s3-store.ts';
import { startSwift, swiftMissing, type SwiftS3 } from '../../test/helpers/swift.ts';
import { TempDirs } from '../../test/helpers/volumes.ts';
import { BENCH_PASSWORD, havenTool, resticTool, type RunResult, type Tool } from './peers.ts';
import { modifyVolume, sha256File } from './volume-gen.ts';

export interface S3Step {
  ms: number;
  /** CPU time of the tool, and of the S3 server (Swift's processes) while the tool ran. */
  cpuMs: number;
  serverCpuMs: number;
  /** The tool's peak RSS (KiB). */
  rssKiB: number;
  requests: RequestCounts;
  ok?: boolean;
}

export interface S3Row {
  full?: S3Step;
  incr?: S3Step;
  restoreFull?: S3Step;
  restoreIncr?: S3Step;
  repoBytes?: number;
  /** Haven only: distinct packs holding the chunks of the full and of the incremental backup. */
  packsFull?: number;
  packsIncr?: number;
  /** The first step this tool failed; it took no part in the steps after. */
  error?: string;
}

export interface S3Result {
  size: number;
  rows: Map<string, S3Row>;
  /** Why the part did not run, when it did not. */
  skipped?: string;
  error?: string;
}

async function bucketBytes(client: S3Client, bucket: string, prefix: string): Promise<number> {
  let bytes = 0;
  let token: string | undefined;
  do {
    const r = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    for (const o of r.Contents ?? []) bytes += o.Size ?? 0;
    token = r.IsTruncated ? r.NextContinuationToken : undefined;
  } while (token);
  return bytes;
}

/** Distinct packs holding a backup's chunks, from its index segments and the repository's chunk map. */
async function packsTouched(url: string, swift: SwiftS3, ca: Buffer, backupId: string): Promise<number> {
  const store = new S3ObjectStore({ url, endpoint: swift.endpoint, region: 'us-east-1', credentials: swift.credentials, ca });
  try {
    const repo = await Repository.open(store, { password: BENCH_PASSWORD });
    const { map } = await repo.loadChunkMap();
    const manifest = await repo.readManifest(backupId);
    const packs = new Set<number>();
    for (const ref of manifest.indexSegments) {
      const digests = await repo.readIndexSegment(ref, `backup ${backupId}`);
      // Holes (all-zero chunks) are in no pack, so the map does not know them.
      for (let off = 0; off < digests.length; off += 32) {
        const loc = map.get(digests, off);
        if (loc) packs.add(loc.packNo);
      }
    }
    return packs.size;
  } finally {
    store.close();
  }
}

export async function runS3(work: string, volume: string, size: number, node: string, cli: string, rss: RssRecord[], wanted: string[]): Promise<S3Result> {
  const rows = new Map<string, S3Row>();
  const why = swiftMissing();
  if (why) return { size, rows, skipped: why };
  await fs.mkdir(work, { recursive: true });
  const temp = new TempDirs('haven-bench-');
  let swift: SwiftS3;
  const tls = makeLoopbackCert(work);
  const ca = readFileSync(tls.certFile);
  try {
    swift = await startSwift(temp, { tls });
  } catch (err) {
    temp.cleanup();
    throw err;
  }
  const client = new S3Client({ region: 'us-east-1', endpoint: swift.endpoint, forcePathStyle: true, credentials: swift.credentials, requestHandler: { httpsAgent: { ca } } });
  try {
    const requestLog = new RequestLog(swift.proxyLog);
    const creds = { AWS_ACCESS_KEY_ID: swift.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: swift.credentials.secretAccessKey, AWS_DEFAULT_REGION: 'us-east-1' };
    const havenUrl = `s3://${swift.bucket}/haven`;
    const tools: Tool[] = [
      havenTool(work, node, cli, {
        repo: havenUrl,
        env: { ...creds, HAVEN_S3_ENDPOINT: swift.endpoint, HAVEN_S3_REGION: 'us-east-1', HAVEN_S3_CONDITIONAL_WRITES: 'false', NODE_EXTRA_CA_CERTS: tls.certFile },
      }),
    ];
    if (wanted.includes('restic')) tools.push(resticTool(path.join(work, 'restic-s3'), { repo: `s3:${swift.endpoint}/${swift.bucket}/restic`, env: creds, args: ['--cacert', tls.certFile] }));
    await fs.mkdir(path.join(work, 'restic-s3'), { recursive: true });
    const ids = new Map<string, { full: string; incr: string }>();
    for (const tool of tools) {
      rows.set(tool.name, {});
      ids.set(tool.name, { full: '', incr: '' });
    }
    // A tool that fails a step is reported and left out of the steps after; the others go on.
    const each = async (name: string, fn: (tool: Tool, row: S3Row) => Promise<void>): Promise<void> => {
      for (const tool of tools) {
        const row = rows.get(tool.name)!;
        if (row.error) continue;
        try {
          await fn(tool, row);
        } catch (err) {
          row.error = `${name}: ${oneLine((err as Error).message)}`;
          log(`[S3] ${name} ${tool.name} FAILED: ${row.error}`);
        }
      }
    };
    const measure = async (tool: Tool, step: string, fn: () => Promise<RunResult>): Promise<S3Step> => {
      await requestLog.reset();
      const cpu0 = swift.cpuMs();
      const r = await fn();
      const serverCpuMs = swift.cpuMs() - cpu0;
      rss.push({ tool: tool.name, step: `S3 ${step}`, rssKiB: r.rssKiB });
      return { ms: r.ms, cpuMs: r.cpuMs, serverCpuMs, rssKiB: r.rssKiB, requests: await requestLog.counts() };
    };
    const mbs = (ms: number): string => `${(size / 1e6 / (ms / 1000)).toFixed(0)} MB/s`;
    const cpu = (st: S3Step): string => `CPU ${(st.cpuMs / 1000).toFixed(2)} s + server ${(st.serverCpuMs / 1000).toFixed(2)} s, peak RSS ${(st.rssKiB / 1024).toFixed(0)} MiB`;
    await each('init', async (tool) => void (await tool.init()));
    await each('full backup', async (tool, row) => {
      settle(volume);
      row.full = await measure(tool, 'full backup', async () => {
        const r = await tool.backup(volume);
        ids.get(tool.name)!.full = r.id;
        return r;
      });
      log(`[S3] full backup ${tool.name.padEnd(7)} ${(row.full.ms / 1000).toFixed(2)} s (${mbs(row.full.ms)}), ${describeCounts(row.full.requests)}, ${cpu(row.full)}`);
    });
    const fullSha = await sha256File(volume);
    await modifyVolume(volume, size, 4096, 4);
    const incrSha = await sha256File(volume);
    await each('incremental backup', async (tool, row) => {
      settle(volume);
      row.incr = await measure(tool, 'incremental backup', async () => {
        const r = await tool.backup(volume);
        ids.get(tool.name)!.incr = r.id;
        return r;
      });
      log(`[S3] incremental ${tool.name.padEnd(7)} ${(row.incr.ms / 1000).toFixed(2)} s, ${describeCounts(row.incr.requests)}, ${cpu(row.incr)}`);
    });
    for (const [which, sha] of [['full', fullSha], ['incr', incrSha]] as const) {
      const name = `restore of the ${which === 'full' ? 'full' : 'incremental'} backup`;
      await each(name, async (tool, row) => {
        settle();
        const dir = path.join(work, `restore-s3-${tool.name}`);
        await fs.mkdir(dir, { recursive: true });
        let file = '';
        const s = await measure(tool, name, async () => {
          const r = await tool.restore(ids.get(tool.name)![which], volume, dir);
          file = r.file;
          return r;
        });
        s.ok = (await sha256File(file)) === sha;
        await fs.rm(dir, { recursive: true, force: true });
        if (which === 'full') row.restoreFull = s;
        else row.restoreIncr = s;
        const packs = [...s.requests.gotPaths.keys()].filter((p) => p.includes('/packs/')).length;
        log(`[S3] restore ${which === 'full' ? 'full' : 'incr'} ${tool.name.padEnd(7)} ${(s.ms / 1000).toFixed(2)} s (${mbs(s.ms)}), sha256 ${s.ok ? 'ok' : 'MISMATCH'}, ${describeCounts(s.requests)}, ${cpu(s)}${tool.name === 'Haven' ? `, distinct packs fetched ${packs}` : ''}`);
      });
    }
    const haven = rows.get('Haven')!;
    const havenIds = ids.get('Haven')!;
    try {
      if (havenIds.full) haven.packsFull = await packsTouched(havenUrl, swift, ca, havenIds.full);
      if (havenIds.incr) haven.packsIncr = await packsTouched(havenUrl, swift, ca, havenIds.incr);
    } catch (err) {
      log(`[S3] counting the packs touched failed: ${oneLine((err as Error).message)}`);
    }
    log(`[S3] Haven packs touched: full backup ${haven.packsFull ?? '-'}, incremental ${haven.packsIncr ?? '-'}`);
    for (const [name, row] of rows) if (!row.error) row.repoBytes = await bucketBytes(client, swift.bucket, `${name === 'Haven' ? 'haven' : 'restic'}/`);
    return { size, rows };
  } catch (err) {
    return { size, rows, error: (err as Error).message.slice(0, 2000) };
  } finally {
    client.destroy();
    await swift.close();
    temp.cleanup();
  }
}
