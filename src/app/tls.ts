/**
 * The service's TLS material: HAVEN_TLS_CERT and HAVEN_TLS_KEY (PEM), read at start and again on
 * SIGHUP. Both are checked together before use (readable, parseable, the key matching the
 * certificate), so a bad pair fails the start with a clear message, and a bad pair at a reload
 * leaves the running certificate in place.
 */
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { errnoText } from '../domain/errno.ts';

export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
  /** For messages: the certificate's subject and expiry. */
  describe: string;
}

function readPem(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new AppError(ErrorCode.InvalidArgument, `${what} ${file} cannot be read: ${errnoText(err)}`, { cause: err });
  }
}

/** Reads and checks the certificate and key files; throws AppError(InvalidArgument) saying what is wrong. */
export function loadTlsFiles(certFile: string, keyFile: string): TlsFiles {
  const cert = readPem(certFile, 'HAVEN_TLS_CERT');
  const key = readPem(keyFile, 'HAVEN_TLS_KEY');
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new AppError(ErrorCode.InvalidArgument, `HAVEN_TLS_CERT ${certFile} holds no PEM certificate: ${(err as Error).message}`, { cause: err });
  }
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    const msg = (err as Error).message;
    const why = /key values mismatch/i.test(msg) ? `the key in ${keyFile} does not belong to the certificate in ${certFile}` : `HAVEN_TLS_KEY ${keyFile} is not a usable PEM private key for ${certFile} (${msg})`;
    throw new AppError(ErrorCode.InvalidArgument, why, { cause: err });
  }
  return { cert, key, describe: `${x509.subject.replace(/\n/g, ', ')}, valid until ${new Date(x509.validTo).toISOString()}` };
}
