/** Identifier formats, as the OTC references give them. */
import { randomBytes, randomUUID } from 'node:crypto';

/** Projects, users and jobs: 32 hex characters (Keystone and VBS job ids). */
export const newHexId = (): string => randomBytes(16).toString('hex');
/** Volumes, snapshots, backups, policies, sharings: UUIDs. */
export const newUuid = (): string => randomUUID();

export const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
export const isUuid = (s: string): boolean => UUID_RE.test(s);
