-- The identity ("device:inode") of a volume's file or device, recorded when Haven adopts or creates
-- it: every later open must find the same file (a path swapped for a link or another file is
-- refused). Volumes from before have none; their opens still refuse links and paths outside roots.
ALTER TABLE volumes ADD COLUMN file_id TEXT;
