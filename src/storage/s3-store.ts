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
 *   A server that refuses the header (OpenStack Swift's s3api: 501) is named in an error that offers
 *   the way out: `conditionalWrites: false` (HAVEN_S3_CONDITIONAL_WRITES=false), a create claim
 *   checked by listing (claimedPut below, where what it gives up is written).
 * - get: GetObject, with a Range for a part; a range starting at or past the end returns nothing.
 * - list: ListObjectsV2, paged; delete: DeleteObject (S3's delete is idempotent already).
 * Keys live under an optional prefix (`s3://bucket/prefix`), so one bucket can hold several
 * repositories.
 *
 * Credentials come from the AWS SDK's default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
 * AWS_PROFILE, instance roles, ...); they are never logged. Checksums are sent only where the API
 * requires them, since many S3-compatible servers do not accept the SDK's newer default trailers.
 */
import * as http from 'node:http';
import * as https from 'node:https';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { AppError, ErrorCode } from '../domain/errors.ts';
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
  /**
   * false: the server has no conditional writes (`If-None-Match: *`), so putIfAbsent uses a create
   * claim instead (claimedPut). Default true. Chosen explicitly, never by detection: the claim's
   * safety rests on the server's listings, which only the operator can vouch for.
   */
  conditionalWrites?: boolean | undefined;
  /** How long a create claim waits for the listing to show concurrent claims (default 1 s; tests shorten it). */
  claimSettleMs?: number | undefined;
  /** Pack uploads a backup keeps in flight (ObjectStore.writeConcurrency; HAVEN_S3_CONCURRENCY), default 3. */
  writeConcurrency?: number | undefined;
  /** Certificates (PEM) an https endpoint is trusted by, instead of the system's (tests; users add theirs with NODE_EXTRA_CA_CERTS). */
  ca?: string | Buffer | undefined;
}

/** HTTP requests this store sent, by kind (retries counted too: each is a request the server saw). */
export interface S3RequestCounts {
  getWhole: number;
  getRange: number;
  put: number;
  head: number;
  list: number;
  delete: number;
}

export const DEFAULT_S3_WRITE_CONCURRENCY = 3;
/**
 * Sockets the client keeps: enough for every job of a process (HAVEN_JOB_CONCURRENCY, 2 by default)
 * uploading at the highest HAVEN_S3_CONCURRENCY (16) or reading with a restore's parallel range
 * requests (8), plus lock refreshes; more requests wait for a socket.
 */
const MAX_SOCKETS = 64;

/**
 * A create claim's rules (claimedPut). A claim older than CLAIM_STALE_MS than one's own (both times
 * from the server's clock) is a crashed creator's and ignored; a creator that could not put its
 * object within half of that since its claim gives up, so it is never ignored while it can still write.
 */
const CLAIM_STALE_MS = 10 * 60_000;
const CLAIM_ATTEMPTS = 8;
/** A settle time doubled for a slow listing stops growing here. */
const CLAIM_SETTLE_MAX_MS = 30_000;

function isRepositoryKey(key: string): boolean {
  try {
    assertValidKey(key);
    return true;
  } catch {
    return false;
  }
}

/**
 * A response body as one Uint8Array: `into`'s start when the body fits there, else a fresh buffer.
 * With a known length the bytes go straight into that buffer as the socket delivers them: the SDK's
 * transformToByteArray keeps every piece and then concatenates, twice the body's size at its peak,
 * which for a restore's parallel pack reads (tens of MiB each) was most of its memory. A body longer
 * than announced is an error; a shorter one is returned as it is (the caller tells a short read from
 * a short object).
 */
async function readBody(body: { transformToByteArray(): Promise<Uint8Array> }, contentLength: number | undefined, into?: Uint8Array, onProgress?: (bytes: number) => void): Promise<Uint8Array> {
  const stream = body as unknown as AsyncIterable<Uint8Array>;
  if (contentLength === undefined || !Number.isSafeInteger(contentLength) || typeof stream[Symbol.asyncIterator] !== 'function') return body.transformToByteArray();
  const lent = into !== undefined && into.length >= contentLength;
  const out = lent ? into.subarray(0, contentLength) : new Uint8Array(contentLength);
  let at = 0;
  let told = 0;
  for await (const piece of stream) {
    if (at + piece.length > contentLength) throw new AppError(ErrorCode.StorageError, `the S3 server sent more than the ${contentLength} bytes it announced`);
    out.set(piece, at);
    at += piece.length;
    if (lent && onProgress && at - told >= PROGRESS_STEP) onProgress((told = at));
  }
  return at === contentLength ? out : out.subarray(0, at);
}

/** Bytes between two progress reports of a body read into a lent buffer. */
const PROGRESS_STEP = 1024 * 1024;

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
  private readonly conditionalWrites: boolean;
  private readonly claimSettleMs: number;
  readonly writeConcurrency: number;
  private readonly counts: S3RequestCounts = { getWhole: 0, getRange: 0, put: 0, head: 0, list: 0, delete: 0 };

  constructor(opts: S3StoreOptions) {
    const { bucket, prefix } = parseS3Url(opts.url);
    this.bucket = bucket;
    this.prefix = prefix;
    this.conditionalWrites = opts.conditionalWrites ?? true;
    this.claimSettleMs = opts.claimSettleMs ?? 1_000;
    this.writeConcurrency = opts.writeConcurrency ?? DEFAULT_S3_WRITE_CONCURRENCY;
    this.client = new S3Client({
      region: opts.region || process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || 'us-east-1',
      ...(opts.endpoint ? { endpoint: opts.endpoint } : { followRegionRedirects: true }),
      forcePathStyle: opts.forcePathStyle ?? opts.endpoint !== undefined,
      ...(opts.credentials ? { credentials: opts.credentials } : {}),
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 5, // the SDK retries throttling and network errors with backoff
      // A server that accepts a connection and then says nothing must not hang a backup forever
      // (its lock would keep being refreshed, so it would never even go stale): a socket idle for
      // two minutes fails the request (the SDK's requestTimeout only logs a warning).
      // Agents of our own: given only their options, the SDK's handler sends every request with
      // `Expect: 100-continue` (each PUT of 2 MB or more, so every pack) on a new agent without
      // keep-alive, so each pack upload paid a new TCP connection and TLS handshake, and lost `ca`.
      requestHandler: {
        connectionTimeout: 10_000,
        socketTimeout: 120_000,
        httpAgent: new http.Agent({ keepAlive: true, maxSockets: MAX_SOCKETS }),
        httpsAgent: new https.Agent({ keepAlive: true, maxSockets: MAX_SOCKETS, ...(opts.ca ? { ca: opts.ca } : {}) }),
      },
    });
    // Each HTTP request, counted where it goes on the wire (inside the SDK's retries).
    this.client.middlewareStack.add(
      (next) => async (args) => {
        const req = args.request as { method?: string; headers?: Record<string, string>; query?: Record<string, unknown> };
        const kind: keyof S3RequestCounts | undefined = req.method === 'GET' ? (req.query?.['list-type'] !== undefined ? 'list' : req.headers?.range !== undefined || req.headers?.Range !== undefined ? 'getRange' : 'getWhole') : req.method === 'PUT' ? 'put' : req.method === 'HEAD' ? 'head' : req.method === 'DELETE' ? 'delete' : undefined;
        if (kind) this.counts[kind]++;
        return next(args);
      },
      { step: 'deserialize', name: 'havenRequestCounts' },
    );
    // Over HTTPS a PUT's body is not hashed into its signature (UNSIGNED-PAYLOAD, as restic's S3
    // library does): TLS already protects it on the way, and every blob in it carries its own MAC or
    // checksum that restore and verify check. SHA-256 over every byte uploaded cost 0.35 s of the
    // main thread per GiB. Plain HTTP keeps the signed hash, the only protection there. The signer
    // takes a hash header already set as the payload's hash.
    this.client.middlewareStack.add(
      (next) => async (args) => {
        const req = args.request as { method?: string; protocol?: string; headers?: Record<string, string> };
        if (req.method === 'PUT' && req.protocol === 'https:' && req.headers && req.headers['x-amz-content-sha256'] === undefined) req.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
        return next(args);
      },
      { step: 'build', name: 'havenUnsignedPayloadOverTls' },
    );
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

  /** The requests sent so far, by kind (live counts; benchmarks print them, tests assert with them). */
  get stats(): Readonly<S3RequestCounts> {
    return this.counts;
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
    if (!this.conditionalWrites) return this.claimedPut(key, S3ObjectStore.bodyOf(body));
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
        if (status === 501 || (err as { name?: string } | null)?.name === 'NotImplemented') {
          throw new AppError(ErrorCode.StorageError, `the S3 server of ${this.location} does not support conditional writes (PUT with If-None-Match: *; it answered ${status ?? ''} ${(err as Error).message}), which Haven uses to create the repository's config exclusively. Set HAVEN_S3_CONDITIONAL_WRITES=false to create it with a create claim checked by listing instead (safe when the server's listings show a finished PUT within a second, as Swift's do; see the README)`, { cause: err });
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
      if ((await this.conditionalPut(Key, Body)) && (await this.conditionalPut(Key, Body))) throw new AppError(ErrorCode.StorageError, `the S3 server of ${this.location} ignores conditional writes (If-None-Match: *), which Haven needs to create a repository safely; use a server that supports them (AWS S3, MinIO, Ceph RGW, Cloudflare R2), or set HAVEN_S3_CONDITIONAL_WRITES=false to create it with a create claim checked by listing instead (see the README)`);
    } finally {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key })).catch(() => undefined);
    }
  }

  /**
   * putIfAbsent for a server without conditional writes: a create claim, then the put.
   *
   * 1. If the key exists, false. 2. Put a claim `create-claims/<key>/<random>`. 3. Wait the settle
   * time, list `create-claims/<key>/`. 4. Alone (only one's own claim listed): check the key is still
   * absent, put it, true. Not alone: the claim first in key order is kept and listed again after
   * another settle time; the others are deleted, and their creators start over after a random
   * while, from step 1: so once one creator has put the key the others say false (as with
   * conditional writes), and a repository's two first processes end up on the same config. A
   * creator deletes its claim when it is done, whatever the outcome.
   *
   * Why at most one creator puts: a creator puts only on a listing, taken at least the settle time
   * after its claim was written, that shows no other claim; its claim stays until after its put.
   * Of two creators, take the one whose (deciding) claim was written second: its listing came after
   * the other's claim had been there for the settle time, so it showed that claim, unless the other
   * had already deleted it, which it does only after its put: then the second's check in step 4 sees
   * the key. This holds if the server's listings show a finished PUT within the settle time and a
   * read after a finished write sees it: the assumption the repository's locks make already (a
   * backup or GC run writes its lock, then lists the others: engine/locks.ts), so a server on which
   * the claim is unsafe would break GC's protection of running backups too.
   *
   * What it gives up, against If-None-Match: it rests on those two properties of the server (true
   * of a single Swift cluster, whose object PUT updates the container listing before it answers,
   * except while a container server is down, and of strongly consistent stores); a create takes a
   * second or more and a few more requests; and a creator that crashed between claim and delete
   * leaves a claim that holds back other creators at that location for CLAIM_STALE_MS (the error
   * names it). Repository.init's read-back of the config's id stays as the last check. A listing
   * that does not show one's own claim yet says the settle time is too short: it is doubled (up to
   * CLAIM_SETTLE_MAX_MS).
   */
  private async claimedPut(key: string, body: Uint8Array): Promise<boolean> {
    const claims = `create-claims/${key}/`;
    let settleMs = this.claimSettleMs;
    let seen: string[] = [];
    for (let attempt = 0; attempt < CLAIM_ATTEMPTS; attempt++) {
      if (await this.head(key)) return false;
      const mine = `${claims}${randomBytes(8).toString('hex')}`;
      const claimedAt = performance.now();
      await this.put(mine, Buffer.from(JSON.stringify({ host: hostname(), pid: process.pid, at: new Date().toISOString() })));
      // A config put that failed or timed out may still be applied by the server later: its claim
      // then stays until it goes stale, so no other creator writes a config it could overwrite.
      let keepClaim = false;
      try {
        for (let look = 0; look < CLAIM_ATTEMPTS; look++) {
          await sleep(settleMs);
          const listed: ObjectInfo[] = [];
          for await (const o of this.list(claims)) listed.push(o);
          const own = listed.find((o) => o.key === mine);
          if (!own) {
            settleMs = Math.min(settleMs * 2, CLAIM_SETTLE_MAX_MS);
            break;
          }
          const others = listed.filter((o) => o.key !== mine && own.modifiedAtMs - o.modifiedAtMs < CLAIM_STALE_MS).map((o) => o.key);
          if (others.length === 0) {
            if (await this.head(key)) return false;
            const left = CLAIM_STALE_MS / 2 - (performance.now() - claimedAt);
            if (left <= 0) throw new AppError(ErrorCode.StorageError, `creating ${this.location}${key} took longer than its claim may live; nothing was written, try again`);
            try {
              await this.put(key, body, AbortSignal.timeout(Math.ceil(left)));
            } catch (err) {
              keepClaim = true;
              throw err;
            }
            return true;
          }
          seen = others;
          if (others.some((k) => k < mine)) break; // not first: give way
        }
      } finally {
        if (!keepClaim) await this.delete(mine).catch(() => undefined); // best effort: a claim left behind goes stale
      }
      await sleep(settleMs * (1 + Math.random()));
    }
    throw new AppError(ErrorCode.RepositoryLocked, `another process is creating ${this.location}${key} (create claims ${seen.map((k) => this.location + k).join(', ') || 'not listed in time'}); try again, or if no other process is creating it, delete those claims (they are ignored once ${CLAIM_STALE_MS / 60_000} minutes old)`);
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
      const into = options?.into;
      let bytes = await readBody(r.Body!, r.ContentLength, into, Range && !r.ContentRange ? undefined : options?.onProgress);
      // A server that ignored the Range sent the whole object: cut the range out here.
      if (Range && !r.ContentRange) bytes = bytes.subarray(Math.min(offset, bytes.length), length === undefined ? bytes.length : Math.min(bytes.length, offset + length));
      // The start of `into`, or a fresh buffer the caller owns whole (restore moves it to a worker thread).
      if (into && bytes.buffer === into.buffer && bytes.byteOffset === into.byteOffset) return bytes;
      return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer !== into?.buffer ? bytes : new Uint8Array(bytes);
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
