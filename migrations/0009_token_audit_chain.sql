-- Keystone's audit chain: a token obtained with the `token` method records the audit id of the
-- token it came from (parent_audit_id) and of the first token of its chain (audit_chain_id).
-- Revoking a token revokes every token derived from it, following parent_audit_id downwards.
-- The roles column stays (older builds read it) but is no longer trusted: roles are resolved
-- from role_assignments on every validation.
ALTER TABLE tokens ADD COLUMN parent_audit_id TEXT;
ALTER TABLE tokens ADD COLUMN audit_chain_id TEXT;
CREATE INDEX tokens_audit ON tokens (audit_id);
CREATE INDEX tokens_parent ON tokens (parent_audit_id);
