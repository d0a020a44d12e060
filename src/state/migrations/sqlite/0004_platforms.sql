-- regferry state, version 4: what a task pushes when a platform filter
-- narrows its index. NULL: the destination tag gets the source digest.

ALTER TABLE tasks ADD COLUMN dest_digest TEXT;   -- the digest the destination tag resolves to once copied
ALTER TABLE tasks ADD COLUMN platforms   TEXT;   -- e.g. "linux/amd64,linux/arm64 (rewrite)"
