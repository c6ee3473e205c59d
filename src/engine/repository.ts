/**
 * A Haven repository on an ObjectStore: its config and keys, blob encoding, the chunk map, manifests
 * and index segments. Higher-level operations (backup, restore, verify, GC) live in their own
 * modules and take an open Repository.
 *
 * Key layout (docs/design.md "Repository format"):
 *   config                      plain JSON: format version, chunk size, wrapped key
 *   packs/<ab>/<pack id>        chunks, packed (pack-format.ts)
 *   chunkmaps/<time>-<rand>     which chunks each pack holds (pack-format.ts)
 *   indexes/<backup>/<segment>  ordered chunk digests of one backup, all-zero digest = hole
 *   manifests/<backup>          the backup's manifest, written last
 *   locks/<id>                  running backups and GC runs (locks.ts)
 *   gc/condemned                chunks a GC run has condemned but not yet removed
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import { AppError, ErrorCode, isAppError } from '../domain/errors.ts';
import { ObjectNotFoundError, type ObjectStore } from '../storage/object-store.ts';
import { BlobDecodeError, decodeBlob, encodeBlob, type BlobKeys } from './blob-codec.ts';
import { CHUNK_DIGEST_ALGS, DIGEST_BYTES, type ChunkDigest, type ChunkDigestAlg } from './chunk-digest.ts';
import { ChunkMap } from './chunk-map.ts';
import { createWrappedKey, unwrapKey, type RepositoryKeys, type WrappedKey } from './keys.ts';
import { CONFIG_KEY_ID, storedKeys } from './key-ring.ts';
import { manifestKey, type BackupManifest, type IndexSegmentRef } from './manifest.ts';
import { entryCount, parseChunkMapFile, readEntry, serializeChunkMapFile, type PackEntries } from './pack-format.ts';

/**
 * 64 KiB chunks. Measured (docs/design.md "Chunk size"): with 1% of 4 KiB blocks changed at random,
 * 64 KiB chunks re-store ~15% of a volume, 4 MiB chunks ~100%; 32 KiB would halve that again but
 * doubles the chunk map and per-chunk overhead. Packs keep the object count low.
 */
export const DEFAULT_CHUNK_SIZE = 64 * 1024;
export const DEFAULT_PACK_TARGET = 32 * 1024 * 1024;
export const INDEX_SEGMENT_CHUNKS = 1 << 20;

/**
 * Repository format versions. 1: SHA-256 or HMAC-SHA-256 chunk names. 2: keyed BLAKE3 chunk names
 * (`chunkDigest: "blake3-keyed"`). A build that knows only version 1 would open a version-2
 * repository and name its chunks with HMAC: dedup between the two namings would silently stop and
 * each build's verify would call the other's chunks damaged. So such builds must refuse it, and
 * the version says what a reader needs to understand, not when the repository was made.
 * 3: backups may have format-2 manifests, proved by a volume digest (volume-digest.ts) instead of
 * a whole-volume SHA-256; a build that knows only versions 1 and 2 cannot restore them, so it must
 * refuse the repository on open rather than fail on such a manifest later. A repository is created
 * at 1 or 2 (the lowest that reads it) and raised to 3 by its first backup (`raiseToVolumeDigest`).
 */
export const REPOSITORY_VERSION = 3;

export interface RepositoryConfig {
  format: 'haven-repository';
  version: 1 | 2 | 3;
  id: string;
  chunkSizeBytes: number;
  packTargetBytes: number;
  createdAt: string;
  encryption: WrappedKey | null;
  /**
   * How chunks are named (chunk-digest.ts). Absent in repositories from before it was recorded:
   * then `sha256` when unencrypted, `hmac-sha256` when encrypted.
   */
  chunkDigest?: ChunkDigestAlg;
}

export interface InitOptions {
  password?: string | undefined;
  chunkSizeBytes?: number;
  packTargetBytes?: number;
  /** The chunk digest of an encrypted repository (default blake3-keyed; hmac-sha256 is the older one). */
  keyedDigest?: 'blake3-keyed' | 'hmac-sha256';
  /** Lower scrypt cost, for tests only. */
  kdf?: { N: number; r: number; p: number };
}

/** Refuses a location holding objects but no repository config (a repository there is for putIfAbsent to report). */
async function refuseForeignData(store: ObjectStore): Promise<void> {
  let stray: string | null = null;
  for await (const o of store.list('')) {
    if (o.key === 'config') return;
    // A store's own bookkeeping of creating `config` (s3-store.ts, claimedPut) is not foreign data.
    if (o.key.startsWith('create-claims/')) continue;
    stray = o.key;
    break;
  }
  if (stray === null) return;
  if (await store.head('config')) return;
  throw new AppError(ErrorCode.InvalidArgument, `it is not empty (it holds ${stray}) and holds no Haven repository: give an empty or new folder (or S3 prefix)`);
}

export class Repository {
  readonly store: ObjectStore;
  readonly config: RepositoryConfig;
  readonly keys: RepositoryKeys | null;
  /** Which password opened it: `config` (the config's key) or an added key's id (key-ring.ts); null: not encrypted. */
  readonly keyId: string | null;
  /** How this repository names chunks, with the key for keyed digests. */
  readonly chunkDigest: ChunkDigest;

  private constructor(store: ObjectStore, config: RepositoryConfig, keys: RepositoryKeys | null, keyId: string | null = keys ? CONFIG_KEY_ID : null) {
    this.store = store;
    this.config = config;
    this.keys = keys;
    this.keyId = keyId;
    const alg = config.chunkDigest ?? (keys ? 'hmac-sha256' : 'sha256');
    if (!CHUNK_DIGEST_ALGS.includes(alg) || (alg === 'sha256') !== (keys === null)) {
      throw new AppError(ErrorCode.RepositoryCorrupt, `repository config names an unsupported chunk digest (${String(alg)}) for ${keys ? 'an encrypted' : 'an unencrypted'} repository`);
    }
    this.chunkDigest = { alg, key: keys?.macKey };
  }

  static async init(store: ObjectStore, opts: InitOptions = {}): Promise<Repository> {
    if (await store.head('config')) throw new AppError(ErrorCode.RepositoryExists, 'a repository already exists there');
    const chunkSizeBytes = opts.chunkSizeBytes ?? DEFAULT_CHUNK_SIZE;
    if (!Number.isInteger(chunkSizeBytes) || chunkSizeBytes < 4096 || chunkSizeBytes > 16 * 1024 * 1024 || chunkSizeBytes % 4096 !== 0) {
      throw new AppError(ErrorCode.InvalidArgument, 'chunk size must be a multiple of 4 KiB between 4 KiB and 16 MiB');
    }
    let encryption: WrappedKey | null = null;
    let keys: RepositoryKeys | null = null;
    if (opts.password !== undefined) {
      if (opts.password.length === 0) throw new AppError(ErrorCode.InvalidArgument, 'the password must not be empty');
      const w = await createWrappedKey(opts.password, opts.kdf);
      encryption = w.wrapped;
      keys = w.keys;
    }
    const chunkDigest: ChunkDigestAlg = keys ? (opts.keyedDigest ?? 'blake3-keyed') : 'sha256';
    const config: RepositoryConfig = {
      format: 'haven-repository',
      version: chunkDigest === 'blake3-keyed' ? 2 : 1, // the lowest that can read it (see REPOSITORY_VERSION)
      id: randomUUID(),
      chunkSizeBytes,
      packTargetBytes: opts.packTargetBytes ?? DEFAULT_PACK_TARGET,
      createdAt: new Date().toISOString(),
      encryption,
      chunkDigest,
    };
    // Never into a place that holds something else: a repository's objects would mix with it, and a
    // later GC would not know them apart.
    await refuseForeignData(store);
    // Exclusive create: of two concurrent inits exactly one wins, the other is refused.
    if (!(await store.putIfAbsent('config', Buffer.from(`${JSON.stringify(config, null, 2)}\n`)))) {
      throw new AppError(ErrorCode.RepositoryExists, 'a repository already exists there');
    }
    // Read back: what is there must be ours before anything is written under its keys (a store
    // whose exclusive create failed to exclude would otherwise go unnoticed).
    const stored = JSON.parse(Buffer.from(await store.get('config')).toString('utf8')) as { id?: unknown };
    if (stored.id !== config.id) throw new AppError(ErrorCode.RepositoryExists, 'another process created a repository there at the same moment');
    return new Repository(store, config, keys);
  }

  static async open(store: ObjectStore, opts: { password?: string | undefined } = {}): Promise<Repository> {
    let raw: Uint8Array;
    try {
      raw = await store.get('config');
    } catch (err) {
      if (err instanceof ObjectNotFoundError) throw new AppError(ErrorCode.RepositoryNotFound, 'no Haven repository there (run haven init first)');
      throw err;
    }
    let config: RepositoryConfig;
    try {
      config = JSON.parse(Buffer.from(raw).toString('utf8')) as RepositoryConfig;
    } catch (err) {
      throw new AppError(ErrorCode.RepositoryCorrupt, 'repository config is not valid JSON', { cause: err });
    }
    if (config.format !== 'haven-repository') throw new AppError(ErrorCode.RepositoryCorrupt, `not a Haven repository (format ${String(config.format)})`);
    if (typeof config.version === 'number' && Number.isInteger(config.version) && config.version > REPOSITORY_VERSION) {
      throw new AppError(ErrorCode.RepositoryCorrupt, `the repository has format version ${config.version}, newer than this Haven reads (up to ${REPOSITORY_VERSION}): upgrade Haven`);
    }
    if (config.version !== 1 && config.version !== 2 && config.version !== 3) throw new AppError(ErrorCode.RepositoryCorrupt, `unsupported repository format version ${String(config.version)}`);
    if (!config.encryption) return new Repository(store, config, null);
    if (opts.password === undefined) throw new AppError(ErrorCode.PasswordRequired, 'the repository is encrypted: give --password-file or HAVEN_REPO_PASSWORD_FILE');
    try {
      return new Repository(store, config, await unwrapKey(opts.password, config.encryption), CONFIG_KEY_ID);
    } catch (err) {
      if (!isAppError(err, ErrorCode.WrongPassword)) throw err;
      // Not the config's password: perhaps one added with haven key add (key-ring.ts).
      for (const k of await storedKeys(store)) {
        try {
          return new Repository(store, config, await unwrapKey(opts.password, k.wrapped), k.id);
        } catch (e) {
          if (!isAppError(e, ErrorCode.WrongPassword)) throw e;
        }
      }
      throw err;
    }
  }

  /**
   * Raises a version-1 or -2 repository to version 3, before the first backup that writes a
   * format-2 manifest (one with a volume digest). Older backups stay as they are and restore their
   * old way; nothing else changes. The config is rewritten with only the version's digit changed:
   * every other byte stays as it was (checked by parsing both). Two processes doing this at once
   * write the same bytes, so either order leaves the same config; a build that knows only versions
   * 1 and 2 refuses the repository from its next open ("newer than this Haven reads"). A process of
   * such a build that opened it before keeps writing format-1 manifests, which this build reads;
   * a format-2 manifest it meets it refuses as inconsistent, never restores wrongly.
   */
  async raiseToVolumeDigest(): Promise<void> {
    if (this.config.version >= 3) return;
    const raw = Buffer.from(await this.store.get('config')).toString('utf8');
    const stored = JSON.parse(raw) as RepositoryConfig;
    if (stored.id !== this.config.id) throw new AppError(ErrorCode.RepositoryCorrupt, `the repository config changed under this process (id ${String(stored.id)}, opened as ${this.config.id})`);
    if (stored.version !== 3) {
      const found = [...raw.matchAll(/"version"\s*:\s*([12])(?=\s*[,}])/g)];
      const upgraded = found.length === 1 ? raw.slice(0, found[0]!.index + found[0]![0].length - 1) + '3' + raw.slice(found[0]!.index + found[0]![0].length) : null;
      if (upgraded === null || !isDeepStrictEqual(JSON.parse(upgraded), { ...stored, version: 3 })) {
        throw new AppError(ErrorCode.RepositoryCorrupt, 'cannot raise the repository config to format version 3: its version field is not where it belongs (the config was edited by hand?)');
      }
      await this.store.put('config', Buffer.from(upgraded));
      // Read back: a backup with a format-2 manifest must never land in a repository of version 1 or 2.
      const again = JSON.parse(Buffer.from(await this.store.get('config')).toString('utf8')) as RepositoryConfig;
      if (again.id !== this.config.id || again.version !== 3) throw new AppError(ErrorCode.RepositoryCorrupt, `raising the repository config to format version 3 did not hold (it reads version ${String(again.version)})`);
    }
    this.config.version = 3;
  }

  get blobKeys(): BlobKeys {
    return { encKey: this.keys?.encKey };
  }

  encode(plain: Uint8Array, compress = true): Buffer {
    return encodeBlob(plain, this.blobKeys, compress);
  }

  decode(blob: Uint8Array, what: string): Buffer {
    try {
      return decodeBlob(blob, this.blobKeys);
    } catch (err) {
      if (err instanceof BlobDecodeError) throw new AppError(ErrorCode.RepositoryCorrupt, `${what} is damaged: ${err.message}`, { cause: err });
      throw err;
    }
  }

  async getDecoded(key: string, what: string): Promise<Buffer> {
    return this.decode(await this.store.get(key), what);
  }

  // ---- chunk map ----

  /**
   * Loads every chunk-map file into one ChunkMap (newer files win for a digest stored twice). Also
   * returns the files read and each pack's entries as listed (GC needs them per pack).
   */
  async loadChunkMap(): Promise<{ map: ChunkMap; files: string[]; packs: Map<string, PackEntries> }> {
    const files: string[] = [];
    for await (const o of this.store.list('chunkmaps/')) files.push(o.key);
    files.sort();
    const parsed = await this.readChunkMapFiles(files);
    let total = 0;
    for (const list of parsed) for (const p of list) total += entryCount(p);
    const map = new ChunkMap(total);
    const packs = new Map<string, PackEntries>();
    for (const list of parsed) {
      addPacksToMap(map, list);
      for (const p of list) packs.set(p.packId, p);
    }
    return { map, files, packs };
  }

  /** Reads and parses chunk-map files, skipping any removed meanwhile. */
  async readChunkMapFiles(files: string[]): Promise<PackEntries[][]> {
    const parsed: PackEntries[][] = [];
    for (const key of files) {
      let buf: Buffer;
      try {
        buf = await this.getDecoded(key, `chunk map ${key}`);
      } catch (err) {
        // A chunk-map file removed by a concurrent GC between list and get: its packs were rewritten
        // into a newer file that is already listed (GC writes the new file before deleting the old).
        if (err instanceof ObjectNotFoundError) continue;
        throw err;
      }
      parsed.push(parseChunkMapFile(buf));
    }
    return parsed;
  }

  async writeChunkMapFile(packs: PackEntries[]): Promise<{ key: string; storedBytes: number }> {
    const key = `chunkmaps/${Date.now().toString(16).padStart(12, '0')}-${randomBytes(8).toString('hex')}`;
    const blob = this.encode(serializeChunkMapFile(packs));
    await this.store.put(key, blob);
    return { key, storedBytes: blob.length };
  }

  // ---- manifests and index segments ----

  async writeManifest(m: BackupManifest): Promise<number> {
    const blob = this.encode(Buffer.from(JSON.stringify(m)));
    await this.store.put(manifestKey(m.id), blob);
    return blob.length;
  }

  async readManifest(backupId: string): Promise<BackupManifest> {
    let blob: Uint8Array;
    try {
      blob = await this.store.get(manifestKey(backupId));
    } catch (err) {
      if (err instanceof ObjectNotFoundError) throw new AppError(ErrorCode.BackupNotFound, `backup ${backupId} not found`, { cause: err });
      throw err;
    }
    const m = JSON.parse(this.decode(blob, `manifest of backup ${backupId}`).toString('utf8')) as BackupManifest;
    const proof = m.formatVersion === 1 ? m.volumeSha256 : m.formatVersion === 2 ? m.volumeDigest : undefined;
    if (typeof proof !== 'string' || !/^[0-9a-f]{64}$/.test(proof) || m.id !== backupId) throw new AppError(ErrorCode.RepositoryCorrupt, `manifest of backup ${backupId} is inconsistent`);
    return m;
  }

  async listBackupIds(): Promise<string[]> {
    const ids: string[] = [];
    for await (const o of this.store.list('manifests/')) ids.push(o.key.slice('manifests/'.length));
    return ids;
  }

  /** All manifests, oldest first. Unreadable manifests are reported, not hidden. */
  async listBackups(): Promise<{ manifests: BackupManifest[]; damaged: { id: string; error: string }[] }> {
    const manifests: BackupManifest[] = [];
    const damaged: { id: string; error: string }[] = [];
    for (const id of await this.listBackupIds()) {
      try {
        manifests.push(await this.readManifest(id));
      } catch (err) {
        if (err instanceof AppError && err.code === ErrorCode.BackupNotFound) continue; // deleted meanwhile
        damaged.push({ id, error: err instanceof Error ? err.message : String(err) });
      }
    }
    manifests.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
    return { manifests, damaged };
  }

  async writeIndexSegment(key: string, digests: Uint8Array): Promise<{ ref: IndexSegmentRef; storedBytes: number }> {
    const blob = this.encode(digests);
    await this.store.put(key, blob);
    return {
      ref: { key, chunks: digests.length / DIGEST_BYTES, sha256: createHash('sha256').update(digests).digest('hex') },
      storedBytes: blob.length,
    };
  }

  async readIndexSegment(ref: IndexSegmentRef, what: string): Promise<Buffer> {
    let blob: Uint8Array;
    try {
      blob = await this.store.get(ref.key);
    } catch (err) {
      if (err instanceof ObjectNotFoundError) throw new AppError(ErrorCode.RepositoryCorrupt, `index segment ${ref.key} of ${what} is missing`, { cause: err });
      throw err;
    }
    const d = this.decode(blob, `index segment ${ref.key} of ${what}`);
    if (d.length !== ref.chunks * DIGEST_BYTES || createHash('sha256').update(d).digest('hex') !== ref.sha256) {
      throw new AppError(ErrorCode.RepositoryCorrupt, `index segment ${ref.key} of ${what} does not match its checksum`);
    }
    return d;
  }
}

export function addPacksToMap(map: ChunkMap, packs: PackEntries[]): void {
  for (const p of packs) {
    const packNo = map.packNo(p.packId);
    const n = entryCount(p);
    for (let i = 0; i < n; i++) {
      const e = readEntry(p.entries, i);
      map.set(p.entries, e.digestOffset, { packNo, offset: e.offset, length: e.length, rawLength: e.rawLength });
    }
  }
}
