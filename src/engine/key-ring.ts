/**
 * Several passwords for one encrypted repository, as restic's `key` commands give: the master key
 * (keys.ts) wrapped once per password. The first is the config's own (`config.encryption`, id
 * `config`: every Haven version reads it); each added one is an object `keys/<id>` holding
 * `{ id, createdAt, host, wrapped }`. Opening tries the config's key, then each added one
 * (repository.ts). The password that opened the repository is the one `passwd` changes and
 * `remove` refuses to remove; the config's key is never removed, only given a new password.
 *
 * Each change is one atomic put (or delete) of one object, written only after the new wrapping was
 * checked to unlock the same master key: a crash leaves either the old or the new password working.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { isDeepStrictEqual } from 'node:util';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { ObjectNotFoundError, type ObjectStore } from '../storage/object-store.ts';
import { unwrapMaster, wrapMaster, type WrappedKey } from './keys.ts';
import type { Repository } from './repository.ts';

export const CONFIG_KEY_ID = 'config';
const KEY_ID_RE = /^[0-9a-f]{16}$/;
const keyObject = (id: string): string => `keys/${id}`;

export interface StoredKey {
  id: string;
  /** ISO time it was added. */
  createdAt: string;
  /** The host it was added on (for the operator's list; no secret). */
  host: string;
  wrapped: WrappedKey;
}

export interface KeyInfo {
  id: string;
  createdAt: string | null;
  host: string | null;
  /** The key that opened this repository (the password given). */
  current: boolean;
}

function parseStoredKey(raw: Uint8Array, id: string): StoredKey {
  let k: StoredKey;
  try {
    k = JSON.parse(Buffer.from(raw).toString('utf8')) as StoredKey;
  } catch (err) {
    throw new AppError(ErrorCode.RepositoryCorrupt, `key ${id} is not valid JSON`, { cause: err });
  }
  if (k?.id !== id || typeof k.wrapped?.wrappedKey !== 'string' || k.wrapped.kdf?.name !== 'scrypt') throw new AppError(ErrorCode.RepositoryCorrupt, `key ${id} is malformed`);
  return k;
}

/** The added keys (keys/<id>), in id order. */
export async function storedKeys(store: ObjectStore): Promise<StoredKey[]> {
  const out: StoredKey[] = [];
  for await (const o of store.list('keys/')) {
    const id = o.key.slice('keys/'.length);
    if (!KEY_ID_RE.test(id)) continue; // not Haven's
    try {
      out.push(parseStoredKey(await store.get(o.key), id));
    } catch (err) {
      if (err instanceof ObjectNotFoundError) continue; // removed since the listing
      throw err;
    }
  }
  return out.sort((a, b) => (a.id < b.id ? -1 : 1));
}

function encrypted(repo: Repository): { master: Buffer; keyId: string } {
  if (!repo.keys || !repo.keyId) throw new AppError(ErrorCode.InvalidArgument, 'the repository is not encrypted: it has no passwords');
  return { master: Buffer.concat([repo.keys.encKey, repo.keys.macKey]), keyId: repo.keyId };
}

/** Wraps the master key for `password`, and checks the wrapping opens the same master key. */
async function wrapChecked(password: string, master: Buffer): Promise<WrappedKey> {
  const wrapped = await wrapMaster(password, master);
  if (!(await unwrapMaster(password, wrapped)).equals(master)) throw new AppError(ErrorCode.Internal, 'a new key did not unlock the repository\'s master key');
  return wrapped;
}

export async function listKeys(repo: Repository): Promise<KeyInfo[]> {
  const { keyId } = encrypted(repo);
  const added = await storedKeys(repo.store);
  return [
    { id: CONFIG_KEY_ID, createdAt: repo.config.createdAt ?? null, host: null, current: keyId === CONFIG_KEY_ID },
    ...added.map((k) => ({ id: k.id, createdAt: k.createdAt, host: k.host, current: k.id === keyId })),
  ];
}

/** Adds a password; returns the new key's id. */
export async function addKey(repo: Repository, password: string, now = new Date()): Promise<string> {
  const { master } = encrypted(repo);
  const id = randomBytes(8).toString('hex');
  const key: StoredKey = { id, createdAt: now.toISOString(), host: hostname(), wrapped: await wrapChecked(password, master) };
  if (!(await repo.store.putIfAbsent(keyObject(id), Buffer.from(`${JSON.stringify(key, null, 2)}\n`)))) throw new AppError(ErrorCode.Internal, `key id ${id} is taken`);
  return id;
}

/** Removes an added key; never the one in use, never the config's. */
export async function removeKey(repo: Repository, id: string): Promise<void> {
  const { keyId } = encrypted(repo);
  if (id === CONFIG_KEY_ID) throw new AppError(ErrorCode.InvalidArgument, 'the config\'s key cannot be removed (give it a new password with haven key passwd instead)');
  if (!KEY_ID_RE.test(id)) throw new AppError(ErrorCode.InvalidArgument, `no key ${JSON.stringify(id)} (key ids are 16 hex digits, see haven key list)`);
  if (id === keyId) throw new AppError(ErrorCode.InvalidArgument, `key ${id} is the one this password opened: open the repository with another password to remove it`);
  if (!(await repo.store.head(keyObject(id)))) throw new AppError(ErrorCode.InvalidArgument, `no key ${id} in this repository (see haven key list)`);
  await repo.store.delete(keyObject(id));
}

/** Gives the key in use (the password given) a new password. */
export async function changePassword(repo: Repository, newPassword: string): Promise<string> {
  const { master, keyId } = encrypted(repo);
  const wrapped = await wrapChecked(newPassword, master);
  if (keyId !== CONFIG_KEY_ID) {
    const old = parseStoredKey(await repo.store.get(keyObject(keyId)), keyId);
    await repo.store.put(keyObject(keyId), Buffer.from(`${JSON.stringify({ ...old, wrapped }, null, 2)}\n`));
    return keyId;
  }
  // The config's key: the config read now is rewritten with only its key changed.
  const raw = Buffer.from(await repo.store.get('config')).toString('utf8');
  const stored = JSON.parse(raw) as Record<string, unknown>;
  if (stored.id !== repo.config.id || !isDeepStrictEqual(stored.encryption, repo.config.encryption)) {
    throw new AppError(ErrorCode.RepositoryCorrupt, 'the repository config changed since it was opened (another haven key passwd?): try again');
  }
  await repo.store.put('config', Buffer.from(`${JSON.stringify({ ...stored, encryption: wrapped }, null, 2)}\n`));
  return CONFIG_KEY_ID;
}
