-- A volume's image format: raw (its bytes are the disk) or qcow2 (read and written through QEMU's
-- tools, as the guest sees it). A snapshot keeps its volume's format (it is a copy of the file).
ALTER TABLE volumes ADD COLUMN format TEXT NOT NULL DEFAULT 'raw';
ALTER TABLE snapshots ADD COLUMN format TEXT NOT NULL DEFAULT 'raw';
