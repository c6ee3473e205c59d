/** The timestamp formats of the OTC references (vbs.md §1.3): each API family has its own. */
const iso = (ms: number): string => new Date(ms).toISOString(); // 2016-01-28T16:14:09.466Z

/** Backups, sharings, volumes: `2019-03-27T12:36:17.596602` (µs, no zone; gophercloud breaks on a Z). */
export const microsNoZone = (ms: number | null): string | null => (ms === null ? null : `${iso(ms).slice(0, 23)}000`);
/** Policy tasks: `2016-12-03T06:24:34.467` (ms, no zone). */
export const millisNoZone = (ms: number | null): string | null => (ms === null ? null : iso(ms).slice(0, 23));
/** Jobs: `2016-01-28T16:14:09.466Z`. */
export const millisZ = (ms: number | null): string | null => (ms === null ? null : iso(ms));
/** Keystone tokens: `2026-11-26T13:38:04.000000Z`. */
export const keystoneTime = (ms: number): string => `${iso(ms).slice(0, 23)}000Z`;
