/**
 * Repository keys. An encrypted repository has a random 64-byte master key: the first half is the
 * AES-256-GCM key of every blob, the second half the HMAC-SHA-256 key that names chunks (so chunk
 * digests reveal nothing about the content). The master key is stored wrapped (AES-256-GCM) by a key
 * derived from the passphrase with scrypt; a wrong passphrase fails the GCM tag and nothing is touched.
 * The same master key may be wrapped by several passwords (repository.ts: the config's key and
 * `keys/<id>` objects), as restic does.
 */
import { createCipheriv, createDecipheriv, randomBytes, scrypt as scryptCb, type ScryptOptions } from 'node:crypto';
import { AppError, ErrorCode } from '../domain/errors.ts';

export interface RepositoryKeys {
  encKey: Uint8Array;
  macKey: Uint8Array;
}

export interface KdfParams {
  name: 'scrypt';
  N: number;
  r: number;
  p: number;
  salt: string;
}

export interface WrappedKey {
  cipher: 'aes-256-gcm';
  kdf: KdfParams;
  /** base64 of nonce (12) | ciphertext (64) | tag (16) */
  wrappedKey: string;
}

/** scrypt N=2^15, r=8: ~100 ms and 32 MiB per unlock, OWASP's recommended floor. */
export const DEFAULT_KDF: { N: number; r: number; p: number } = { N: 1 << 15, r: 8, p: 1 };

function deriveKey(passphrase: string, kdf: KdfParams): Promise<Buffer> {
  const opts: ScryptOptions = { N: kdf.N, r: kdf.r, p: kdf.p, maxmem: 256 * kdf.N * kdf.r + 1024 * 1024 };
  return new Promise((resolve, reject) =>
    scryptCb(passphrase.normalize('NFC'), Buffer.from(kdf.salt, 'base64'), 32, opts, (err, key) => (err ? reject(err) : resolve(key))),
  );
}

export async function createWrappedKey(passphrase: string, kdfOverride?: Partial<typeof DEFAULT_KDF>): Promise<{ wrapped: WrappedKey; keys: RepositoryKeys }> {
  const master = randomBytes(64);
  return { wrapped: await wrapMaster(passphrase, master, kdfOverride), keys: splitMaster(master) };
}

/** The master key wrapped by a key derived from `passphrase` (a fresh salt and nonce each time). */
export async function wrapMaster(passphrase: string, master: Uint8Array, kdfOverride?: Partial<typeof DEFAULT_KDF>): Promise<WrappedKey> {
  if (passphrase.length === 0) throw new AppError(ErrorCode.InvalidArgument, 'the password must not be empty');
  const kdf: KdfParams = { name: 'scrypt', ...DEFAULT_KDF, ...kdfOverride, salt: randomBytes(32).toString('base64') };
  const kek = await deriveKey(passphrase, kdf);
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', kek, nonce);
  const ct = Buffer.concat([c.update(master), c.final()]);
  return { cipher: 'aes-256-gcm', kdf, wrappedKey: Buffer.concat([nonce, ct, c.getAuthTag()]).toString('base64') };
}

export async function unwrapKey(passphrase: string, wrapped: WrappedKey): Promise<RepositoryKeys> {
  return splitMaster(await unwrapMaster(passphrase, wrapped));
}

/** The master key, or WrongPassword. */
export async function unwrapMaster(passphrase: string, wrapped: WrappedKey): Promise<Buffer> {
  const kek = await deriveKey(passphrase, wrapped.kdf);
  const raw = Buffer.from(wrapped.wrappedKey, 'base64');
  if (raw.length !== 12 + 64 + 16) throw new AppError(ErrorCode.RepositoryCorrupt, 'repository config holds a malformed key');
  const d = createDecipheriv('aes-256-gcm', kek, raw.subarray(0, 12));
  d.setAuthTag(raw.subarray(raw.length - 16));
  try {
    return Buffer.concat([d.update(raw.subarray(12, raw.length - 16)), d.final()]);
  } catch {
    throw new AppError(ErrorCode.WrongPassword, 'wrong password: the repository key could not be unlocked');
  }
}

function splitMaster(master: Buffer): RepositoryKeys {
  return { encKey: master.subarray(0, 32), macKey: master.subarray(32, 64) };
}
