/**
 * Servers (a Nova-compatible subset, so Haven runs without an OpenStack cloud): a server is a name
 * plus the volumes attached to it; the volume with boot index 0 is its system disk. CSBS backs up a
 * server as all of its volumes at one moment.
 */
export type ServerStatus = 'ACTIVE' | 'ERROR';

export interface Server {
  id: string;
  projectId: string;
  name: string;
  status: ServerStatus;
  metadata: Record<string, string>;
  availabilityZone: string;
  createdAt: number;
  updatedAt: number;
}

export interface ServerVolume {
  volumeId: string;
  serverId: string;
  /** /dev/vda, /dev/vdb, ... */
  device: string;
  /** 0 for the system disk, null for data disks. */
  bootIndex: number | null;
  attachedAt: number;
}

/** The device name of the n-th disk: vda, vdb, ... vdz, vdaa, ... */
export function deviceName(n: number): string {
  let s = '';
  let i = n;
  do {
    s = String.fromCharCode(97 + (i % 26)) + s;
    i = Math.floor(i / 26) - 1;
  } while (i >= 0);
  return `/dev/vd${s}`;
}

/**
 * Why a server name cannot be used, or null. A name reaches the operator's freeze/thaw hooks
 * (HAVEN_SERVER_NAME): one that starts with '-' reads as an option to the command it is passed to,
 * and control characters (newlines, escapes) break scripts and logs. Quoting in the hook is still
 * the operator's part; these are refused outright.
 */
export function unsafeServerName(name: string): string | null {
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(name)) return 'must not contain control characters';
  if (name.startsWith('-')) return "must not start with '-'";
  return null;
}
