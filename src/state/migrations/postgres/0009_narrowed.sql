-- regferry state, version 9: what narrowing an index to some platforms
-- (platform_filter: rewrite) produced, so that a pass over an unchanged
-- source index whose destination tag holds that digest is decided by HEADs
-- alone (no pull of the index). A pair is a fact about bytes: it holds
-- forever, for any job with the same selection.

CREATE TABLE narrowed_indexes (
    selection      TEXT    NOT NULL,          -- the filter's scope word, e.g. platforms=linux/amd64:rewrite
    source_digest  TEXT    NOT NULL,          -- the source index
    dest_digest    TEXT    NOT NULL,          -- the index narrowing produced
    recorded_at    BIGINT  NOT NULL,
    PRIMARY KEY (selection, source_digest)
);
