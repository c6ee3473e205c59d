/**
 * S3ObjectStore: the repository in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, ...),
 * for processes on several hosts sharing one repository. The engine is the same code above it as
 * above the local directory (ObjectStore, store-conformance.ts).
 *
 * How the contract maps onto S3:
 * - put: one PutObject. S3 makes an object visible whole or not at all, and durable once it
 *   answered, so there are no temp names and nothing to clean up after a crash (packs are tens of
 *   MiB, far below the 5 GiB limit of a single PUT).
 * - putIfAbsent: PutObject with `If-None-Match: *` (conditional writes: AWS S3 since 2024, MinIO,
 *   Ceph RGW, Cloudflare R2); 412 means the key existed. The repository's config is created this way, so
 *   of two concurrent inits one fails. A server that ignores the header would let both win (and the
 *   loser's backups be encrypted under a key no config holds), so before its first conditional
 *   write the store checks on a probe key that the server refuses a second one, and stops if not.
 * - get: GetObject, with a Range for a part; a range starting at or past the end returns nothing.
 * - list: ListObjectsV2, paged; delete: DeleteObject (S3's delete is idempotent already).
 * Keys live under an optional prefix (`s3://bucket/prefix`), so one bucket can hold several
 * repositories.
 *
 * Credentials come from the AWS SDK's default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
 * AWS_PROFILE, instance roles, ...); they are never logged. Checksums are sent only where the API
 * requires them, since many S3-compatible servers do not accept the SDK's newer default trailers.
 */
import { randomBytes } from 'node:crypto';
import { DeleteObjectCommand, GetObjectCommand, HeadBucketCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { parseS3Url } from './s3-url.ts';
import { assertValidKey, bodyParts, type Body, ObjectNotFoundError, type GetOptions, type ObjectInfo, type ObjectStore } from './object-store.ts';

export interface S3StoreOptions {
  /** `s3://bucket` or `s3://bucket/prefix`. */
  url: string;
  /** The server's URL for S3-compatible stores (e.g. http://127.0.0.1:9000); AWS when absent. */
  endpoint?: string | undefined;
  /** Region (default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1, which S3-compatible servers accept). */
  region?: string | undefined;
  /** Path-style addressing (http://host/bucket/key), which most S3-compatible servers need; default: true when an endpoint is given. */
  forcePathStyle?: boolean | undefined;
  /** Explicit credentials (tests); otherwise the SDK's default chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string } | undefined;
}

function isRepositoryKey(key: string): boolean {
  try {
    assertValidKey(key);
    return true;
  } catch {
    return false;
  }
}

function statusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
}

/** The object is absent. (NoSuchBucket never gets here: the client's middleware makes it a setup error.) */
function isNotFound(err: unknown): boolean {
  const name = (err as { name?: string } | null)?.name;
  return statusOf(err) === 404 || name === 'NoSuchKey' || name === 'NotFound';
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class S3ObjectStore implements ObjectStore {
  readonly bucket: string;
  readonly prefix: string;
  private readonly client: S3Client;
  /** Set once the bucket is known to exist (a bare HEAD 404 cannot tell a missing bucket from a missing key). */
  private bucketChecked = false;
  private conditionalChecked: Promise<void> | null = null;

  constructor(opts: S3StoreOptions) {
    const { bucket, prefix } = parseS3Url(opts.url);
    this.bucket = bucket;
    this.prefix = prefix;
    this.client = new S3Client({
      region: opts.region || process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || 'us-east-1',
      ...(opts.endpoint ? { endpoint: opts.endpoint } : { followRegionRedirects: true }),
      forcePathStyle: opts.forcePathStyle ?? opts.endpoint !== undefined,
      ...(opts.credentials ? { credentials: opts.credentials } : {}),
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 5, // the SDK retries throttling and network errors with backoff
      // A server that accepts a connection and then says nothing must not hang a backup forever
      // (its lock would keep being refreshed, so it would never even go stale).
      requestHandler: { connectionTimeout: 10_000, requestTimeout: 120_000 },
    });
    // Every operation: a missing bucket is a setup error that names the bucket (SDK middleware,
    // so each call site need not know).
    this.client.middlewareStack.add(
      (next) => async (args) => {
        try {
          return await next(args);
        } catch (err) {
          if ((err as { name?: string } | null)?.name === 'NoSuchBucket') throw new Error(`the S3 bucket ${this.bucket} does not exist`, { cause: err });
          throw err;
        }
      },
      { step: 'initialize', name: 'havenNoSuchBucket' },
    );
  }

  /** Where this store keeps its objects, for messages (no credentials in it). */
  get location(): string {
    return `s3://${this.bucket}/${this.prefix}`;
  }

  private objectKey(key: string): string {
    assertValidKey(key);
    return this.prefix + key;
  }

  private static bodyOf(body: Body): Uint8Array {
    const parts = bodyParts(body);
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  async put(key: string, body: Body, signal?: AbortSignal): Promise<void> {
    const Key = this.objectKey(key);
    await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: S3ObjectStore.bodyOf(body) }), signal ? { abortSignal: signal } : {});
  }

  async putIfAbsent(key: string, body: Body): Promise<boolean> {
    await (this.conditionalChecked ??= this.checkConditionalWrites().catch((err: unknown) => {
      this.conditionalChecked = null;
      throw err;
    }));
    return this.conditionalPut(this.objectKey(key), S3ObjectStore.bodyOf(body));
  }

  private async conditionalPut(Key: string, Body: Uint8Array): Promise<boolean> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body, IfNoneMatch: '*' }));
        return true;
      } catch (err) {
        const status = statusOf(err);
        // The key exists. (Should the answer to our own write be lost and the SDK retry it, this
        // says false too: a repository init then reports "already exists" for the one it made,
        // which is there and usable; never the reverse.)
        if (status === 412) return false;
        // 409: a concurrent conditional write of the key is in flight; it may still fail, so try again.
        if (status === 409 && attempt < 5) {
          await sleep(100 * 2 ** attempt);
          continue;
        }
        throw err;
      }
    }
  }

  /** Refuses a server that ignores If-None-Match on PUT, which would let two creators both win. */
  private async checkConditionalWrites(): Promise<void> {
    const Key = this.objectKey(`probes/conditional-write-${randomBytes(8).toString('hex')}`);
    const Body = new Uint8Array(0);
    try {
      // The first create of a fresh key must win, the second must lose.
      if ((await this.conditionalPut(Key, Body)) && (await this.conditionalPut(Key, Body))) throw new Error(`the S3 server of ${this.location} ignores conditional writes (If-None-Match: *), which Haven needs to create a repository safely; use a server that supports them (AWS S3, MinIO, Ceph RGW, Cloudflare R2)`);
    } finally {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key })).catch(() => undefined);
    }
  }

  /** Throws a clear error when the bucket itself is missing; checked once, after a 404. */
  private async assertBucket(): Promise<void> {
    if (this.bucketChecked) return;
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
      this.bucketChecked = true;
    } catch (err) {
      if (statusOf(err) === 404) throw new Error(`the S3 bucket ${this.bucket} does not exist`, { cause: err });
      throw err;
    }
  }

  async get(key: string, options?: GetOptions): Promise<Uint8Array> {
    const Key = this.objectKey(key);
    const offset = options?.offset ?? 0;
    const length = options?.length;
    if (length === 0) {
      if (!(await this.head(key))) throw new ObjectNotFoundError(key);
      return new Uint8Array(0);
    }
    const Range = offset > 0 || length !== undefined ? `bytes=${offset}-${length !== undefined ? offset + length - 1 : ''}` : undefined;
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key, ...(Range ? { Range } : {}) }), options?.signal ? { abortSignal: options.signal } : {});
      let bytes = await r.Body!.transformToByteArray();
      // A server that ignored the Range sent the whole object: cut the range out here.
      if (Range && !r.ContentRange) bytes = bytes.subarray(Math.min(offset, bytes.length), length === undefined ? bytes.length : Math.min(bytes.length, offset + length));
      // A fresh buffer the caller owns whole (restore moves it to a worker thread).
      return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : new Uint8Array(bytes);
    } catch (err) {
      if (isNotFound(err)) {
        await this.assertBucket();
        throw new ObjectNotFoundError(key, { cause: err });
      }
      if (statusOf(err) === 416) {
        // The range starts at or past the end: nothing there, if the object exists at all.
        if (!(await this.head(key))) throw new ObjectNotFoundError(key, { cause: err });
        return new Uint8Array(0);
      }
      throw err;
    }
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const Key = this.objectKey(key);
    try {
      const r = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }));
      return { key, sizeBytes: Number(r.ContentLength ?? 0), modifiedAtMs: r.LastModified?.getTime() ?? 0 };
    } catch (err) {
      if (isNotFound(err)) {
        await this.assertBucket();
        return null;
      }
      throw err;
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    let ContinuationToken: string | undefined;
    do {
      const r = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.prefix + prefix, ...(ContinuationToken ? { ContinuationToken } : {}) }));
      for (const o of r.Contents ?? []) {
        if (!o.Key?.startsWith(this.prefix)) continue;
        const key = o.Key.slice(this.prefix.length);
        // Not Haven's: e.g. a "folder" marker (`packs/`) a web console made. Never handed to GC.
        if (!isRepositoryKey(key)) continue;
        yield { key, sizeBytes: Number(o.Size ?? 0), modifiedAtMs: o.LastModified?.getTime() ?? 0 };
      }
      if (r.IsTruncated && !r.NextContinuationToken) throw new Error(`the S3 server cut the listing of ${this.location}${prefix} short without a continuation token`);
      ContinuationToken = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (ContinuationToken);
  }

  async delete(key: string): Promise<void> {
    const Key = this.objectKey(key);
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key }));
  }

  close(): void {
    this.client.destroy();
  }
}
