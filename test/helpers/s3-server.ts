/**
 * A real S3-compatible HTTP server for tests, in a process of its own (s3-server-main.ts: s3rver
 * with conditional PUT), on a free loopback port, storing into a temp folder, with one bucket. The
 * AWS SDK talks to it over HTTP exactly as it talks to AWS or MinIO.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { S3ObjectStore, type S3StoreOptions } from '../../src/storage/s3-store.ts';
import type { TempDirs } from './volumes.ts';

export const S3_BUCKET = 'haven-test';
/** s3rver's fixed test keys. */
export const S3_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

/** An S3 server for tests: s3rver here (startS3), or OpenStack Swift's s3api (swift.ts's startSwift). */
export interface TestS3 {
  endpoint: string;
  /** The bucket the server was started with; store(prefix) and env point into it. */
  bucket: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  /** Keys in one page of the server's listing (a test of paging puts more than that). */
  listPageKeys: number;
  /** A store on a prefix of its own in the test bucket, set up as Haven must be for this server (`opts` overrides). */
  store(prefix: string, opts?: Partial<S3StoreOptions>): S3ObjectStore;
  /** What a Haven process needs in its environment to reach this server. */
  env: Record<string, string>;
  close(): Promise<void>;
}

/** `conditionalWrites: false` runs s3rver as it is, ignoring If-None-Match on PUT. */
export async function startS3(temp: TempDirs, opts: { conditionalWrites?: boolean } = {}): Promise<TestS3> {
  const main = new URL('./s3-server-main.ts', import.meta.url).pathname;
  // Its output is piped, not inherited: a server outliving a crashed test run must not hold CI's terminal.
  const child = spawn(process.execPath, ['--openssl-legacy-provider', main, temp.make('s3'), S3_BUCKET, ...(opts.conditionalWrites === false ? ['plain'] : [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const killOnExit = (): void => void child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const lines = createInterface({ input: child.stdout! });
  const first = await Promise.race([
    once(lines, 'line').then(([l]) => String(l)),
    once(child, 'exit').then(([code]) => {
      throw new Error(`the S3 test server exited with ${String(code)} before listening: ${stderr}`);
    }),
  ]);
  const endpoint = `http://127.0.0.1:${(JSON.parse(first) as { port: number }).port}`;
  const stores: S3ObjectStore[] = [];
  return {
    endpoint,
    bucket: S3_BUCKET,
    credentials: S3_CREDENTIALS,
    listPageKeys: 1000,
    env: { HAVEN_S3_ENDPOINT: endpoint, AWS_ACCESS_KEY_ID: S3_CREDENTIALS.accessKeyId, AWS_SECRET_ACCESS_KEY: S3_CREDENTIALS.secretAccessKey },
    store(prefix, opts) {
      const s = new S3ObjectStore({ url: `s3://${S3_BUCKET}/${prefix}`, endpoint, credentials: S3_CREDENTIALS, ...opts });
      stores.push(s);
      return s;
    },
    async close() {
      for (const s of stores) s.close();
      process.off('exit', killOnExit);
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await once(child, 'exit');
      }
    },
  };
}
