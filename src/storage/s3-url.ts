/**
 * Repository locations: a folder, or an `s3://bucket[/prefix]` URL. Apart from s3-store.ts, so
 * checking a location does not load the AWS SDK.
 */
import * as path from 'node:path';
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

/** A location as users write it, made canonical: a folder made absolute, an S3 URL checked. Throws a plain Error saying what is wrong. */
export function resolveLocation(location: string): string {
  if (!isS3Url(location)) return path.resolve(location);
  parseS3Url(location);
  return location;
}

/**
 * A repository location as shown to people (the console, GET /haven/v1/repository): a folder as it
 * is, an S3 URL rebuilt from its bucket and prefix alone, so nothing else a URL might carry (a user
 * and password, a query) is ever shown. Credentials never live in the location anyway: they come
 * from the environment (AWS_ACCESS_KEY_ID, …), and the endpoint is a setting of its own.
 */
export function describeLocation(location: string): { kind: 'local' | 's3'; location: string } {
  if (!isS3Url(location)) return { kind: 'local', location };
  const { bucket, prefix } = parseS3Url(location);
  return { kind: 's3', location: `s3://${bucket}${prefix ? `/${prefix.replace(/\/$/, '')}` : ''}` };
}
