/** A self-signed certificate for 127.0.0.1, for servers on loopback that speak HTTPS (Swift in tests and benchmarks). */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

export interface Tls {
  /** PEM files: clients trust `certFile` (restic --cacert, NODE_EXTRA_CA_CERTS, S3StoreOptions.ca). */
  certFile: string;
  keyFile: string;
}

/** Made with openssl; Go clients need the IP in subjectAltName. */
export function makeLoopbackCert(dir: string): Tls {
  const certFile = path.join(dir, 'loopback-cert.pem');
  const keyFile = path.join(dir, 'loopback-key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', keyFile, '-out', certFile], { stdio: 'ignore' });
  return { certFile, keyFile };
}
