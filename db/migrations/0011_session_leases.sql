-- Several gateway nodes on one database: each WhatsApp Web session is run by exactly one node,
-- the holder of its lease. A node renews its leases while it is healthy; a lease that is not
-- renewed expires and another node takes the session over.
CREATE TABLE gateway_nodes (
    node_id         text PRIMARY KEY,
    hostname        text NOT NULL,
    pid             integer NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now(),
    -- A node that is shutting down takes no new sessions and hands its own over.
    stopping        boolean NOT NULL DEFAULT false
);

CREATE TABLE session_leases (
    session_id      bigint PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    node_id         text NOT NULL,
    acquired_at     timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX session_leases_node_idx ON session_leases (node_id);
