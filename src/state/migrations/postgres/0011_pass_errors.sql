-- regferry state on PostgreSQL, version 11: the last refusal or pass-level
-- error of each policy destination. Mirrors migrations/sqlite/0011_pass_errors.sql.

CREATE TABLE pass_errors (
    policy         TEXT    NOT NULL,
    destination    TEXT    NOT NULL,
    error          TEXT    NOT NULL,
    at             BIGINT  NOT NULL,
    PRIMARY KEY (policy, destination)
);
