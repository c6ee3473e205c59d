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
 *   of two concurrent inits one fails. A server that ignores the header would let both win.
 * - get: GetObject, with a Range for a part; a range starting at or past the end returns nothing.
 * - list: ListObjectsV2, paged; delete: DeleteObject (S3's delete is idempotent already).
 * Keys live under an optional prefix (`s3://bucket/prefix`), so one bucket can hold several
 * repositories.
 *
 * Credentials come from the AWS SDK's default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
 * AWS_PROFILE, instance roles, ...); they are never logged. Checksums are sent only where the API
 * requires them, since many S3-compatible servers do not accept the SDK's newer default trailers.
 */
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client, S3ServiceException } from '@aws-sdk/client-s3';
import { parseS3Url } from './s3-url.ts';
import { assertValidKey, bodyParts, type Body, ObjectNotFoundError, type GetOptions, type ObjectInfo, type ObjectStore } from './object-store.ts';

export interface S3StoreOptions {
  /** `s3://bucket` or `s3://bucket/prefix`. */
  url: string;
  /** The server's URL for S3-compatible stores (e.g. http://127.0.0.1:9000); AWS when absent. */
  endpoint?: string | undefined;
  /** Region (default us-east-1, which most S3-compatible servers accept). */
  region?: string | undefined;
  /** Path-style addressing (http://host/bucket/key), which most S3-compatible servers need; default: true when an endpoint is given. */
  forcePathStyle?: boolean | undefined;
  /** Explicit credentials (tests); otherwise the SDK's default chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string } | undefined;
}

function statusOf(err: unknown): number | undefined {
  return err instanceof S3ServiceException ? err.$metadata.httpStatusCode : (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
}

function isNotFound(err: unknown): boolean {
  const name = (err as { name?: string } | null)?.name;
  return statusOf(err) === 404 || name === 'NoSuchKey' || name === 'NotFound';
}

export class S3ObjectStore implements ObjectStore {
  readonly bucket: string;
  readonly prefix: string;
  private readonly client: S3Client;

  constructor(opts: S3StoreOptions) {
    const { bucket, prefix } = parseS3Url(opts.url);
    this.bucket = bucket;
    this.prefix = prefix;
    this.client = new S3Client({
      region: opts.region ?? 'us-east-1',
      ...(opts.endpoint ? { endpoint: opts.endpoint } : {}),
      forcePathStyle: opts.forcePathStyle ?? opts.endpoint !== undefined,
      ...(opts.credentials ? { credentials: opts.credentials } : {}),
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 5, // the SDK retries throttling and network errors with backoff
    });
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
    const Key = this.objectKey(key);
    try {
      await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: S3ObjectStore.bodyOf(body), IfNoneMatch: '*' }));
      return true;
    } catch (err) {
      // 412: the key exists; 409: a concurrent conditional write to it is in progress (it wins or fails, we lost).
      if (statusOf(err) === 412 || statusOf(err) === 409) return false;
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
      const bytes = await r.Body!.transformToByteArray();
      // A fresh buffer the caller owns whole (restore moves it to a worker thread).
      return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : new Uint8Array(bytes);
    } catch (err) {
      if (isNotFound(err)) throw new ObjectNotFoundError(key, { cause: err });
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
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    let ContinuationToken: string | undefined;
    do {
      const r = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.prefix + prefix, ...(ContinuationToken ? { ContinuationToken } : {}) }));
      for (const o of r.Contents ?? []) {
        if (!o.Key) continue;
        yield { key: o.Key.slice(this.prefix.length), sizeBytes: Number(o.Size ?? 0), modifiedAtMs: o.LastModified?.getTime() ?? 0 };
      }
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
