-- The disk of a running QEMU guest: the guest's QMP socket and the block node of this volume, named
-- by the cloud admin when adopting. Backups of such a volume take their point in time through QMP
-- and read only the blocks changed since the last one (qemu/qemu-guest.ts).
ALTER TABLE volumes ADD COLUMN qmp_socket TEXT;
ALTER TABLE volumes ADD COLUMN qmp_node TEXT;
