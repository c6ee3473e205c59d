/** `s3://bucket[/prefix]` repository URLs. Apart from s3-store.ts, so checking a URL does not load the AWS SDK. */
import { assertValidKey } from './object-store.ts';

export function isS3Url(s: string): boolean {
  return s.startsWith('s3://');
}

/** Parses `s3://bucket[/prefix]`; throws a plain Error saying what is wrong. */
export function parseS3Url(url: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(url);
  if (!m) throw new Error(`not an S3 repository URL: ${JSON.stringify(url)} (expected s3://bucket or s3://bucket/prefix, bucket in lower case)`);
  const prefix = (m[2] ?? '').replace(/\/+$/, '');
  if (prefix) assertValidKey(prefix);
  return { bucket: m[1]!, prefix: prefix ? `${prefix}/` : '' };
}
