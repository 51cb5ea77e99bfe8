"""The PostgreSQL schema of the state database, as numbered migrations.

Each migration runs once, in order, in the transaction that records its number in
``schema_version``; a database whose highest number is above this batchmon's is
refused (a newer batchmon wrote it).  The tables are SQLite's, version for version
(an acknowledgement's ``taken_at`` is ISO text there too), with the claims kept in
the outbox rows (``claimed_by``, ``claimed_until``) so that more than one process
can share the outbox.  A migration is never edited once released: a change is a
new one appended here.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "MIGRATION_LOCK", "SCHEMA_VERSION"]

#: ``pg_advisory_xact_lock`` key held while migrating: two processes starting at once
#: migrate one after the other (``b"batchmon"`` as a big-endian integer).
MIGRATION_LOCK = int.from_bytes(b"batchmon", "big") & 0x7FFF_FFFF_FFFF_FFFF

MIGRATIONS: tuple[str, ...] = (
    # 1: task memories, watches, the outbox with its claims, the history.
    """
    CREATE TABLE tasks (
        task_id bigint PRIMARY KEY,
        memory text NOT NULL
    );
    CREATE TABLE watches (
        task_id bigint PRIMARY KEY,
        added double precision NOT NULL
    );
    CREATE TABLE outbox (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        sink text NOT NULL,
        event_id text NOT NULL,
        task_id bigint,
        type text NOT NULL,
        event text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt double precision NOT NULL DEFAULT 0,
        created double precision NOT NULL,
        last_error text,
        claimed_by text,
        claimed_until double precision,
        UNIQUE (sink, event_id)
    );
    -- A sink's deliveries in order, and a task's head (its oldest to a sink).
    CREATE INDEX outbox_by_sink ON outbox (sink, seq);
    CREATE INDEX outbox_by_task ON outbox (sink, (coalesce(task_id, 0)), seq);
    CREATE TABLE history (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id text NOT NULL UNIQUE,
        task_id bigint,
        event text NOT NULL
    );
    CREATE INDEX history_by_task ON history (task_id, seq);
    """,
    # 2: acknowledgements, one per task, for the condition it was given for (issue 14).
    """
    CREATE TABLE acks (
        task_id bigint PRIMARY KEY,
        condition text NOT NULL,
        taken_by text NOT NULL,
        comment text,
        taken_at text NOT NULL
    );
    """,
    # 3: silences, one JSON row each, kept until they end (issue 15).
    """
    CREATE TABLE silences (
        id text PRIMARY KEY,
        ends double precision NOT NULL,
        silence text NOT NULL
    );
    """,
    # 4: what escalation sinks were told of, one row per sink and task (issue 14); when
    # capped sinks posted, kept for an hour.
    """
    CREATE TABLE escalations (
        sink text NOT NULL,
        task_id bigint NOT NULL,
        condition text NOT NULL,
        due double precision NOT NULL,
        PRIMARY KEY (sink, task_id)
    );
    CREATE TABLE posts (
        sink text NOT NULL,
        at double precision NOT NULL
    );
    CREATE INDEX posts_by_sink ON posts (sink, at);
    """,
    # 5: the maintenance under way and what it held back, one row at most.
    """
    CREATE TABLE maintenance (
        id integer PRIMARY KEY,
        hold text NOT NULL
    );
    """,
    # 6: tenants (issue 16).  Every row belongs to one, and every key and index leads
    # with it (task ids and event ids are unique within a tenant only), so one tenant's
    # queries stay index scans; the rows from before belong to 'default'.  The
    # maintenance hold is one row per tenant.  A constant default adds the column
    # without rewriting the table.
    """
    ALTER TABLE tasks ADD COLUMN tenant text NOT NULL DEFAULT 'default';
    ALTER TABLE tasks DROP CONSTRAINT tasks_pkey;
    ALTER TABLE tasks ADD PRIMARY KEY (tenant, task_id);

    ALTER TABLE watches ADD COLUMN tenant text NOT NULL DEFAULT 'default';
    ALTER TABLE watches DROP CONSTRAINT watches_pkey;
    ALTER TABLE watches ADD PRIMARY KEY (tenant, task_id);

    ALTER TABLE outbox ADD COLUMN tenant text NOT NULL DEFAULT 'default';
    ALTER TABLE outbox DROP CONSTRAINT outbox_sink_event_id_key;
    ALTER TABLE outbox ADD UNIQUE (tenant, sink, event_id);
    DROP INDEX outbox_by_sink;
    DROP INDEX outbox_by_task;
    CREATE INDEX outbox_by_sink ON outbox (tenant, sink, seq);
    CREATE INDEX outbox_by_task ON outbox (tenant, sink, (coalesce(task_id, 0)), seq);

    ALTER TABLE history ADD COLUMN tenant text NOT NULL DEFAULT 'default';
    ALTER TABLE history DROP CONSTRAINT history_event_id_key;
    ALTER TABLE history ADD UNIQUE (tenant, event_id);
    DROP INDEX history_by_task;
    CREATE INDEX history_by_task ON history (tenant, task_id, seq);

    ALTER TABLE acks ADD COLUMN tenant text NOT NULL DEFAULT 'default';
    ALTER TABLE acks DROP CONSTRAINT acks_pkey;
    ALTER TABLE acks ADD PRIMARY KEY (tenant, task_id);

    ALTER TABLE silences ADD COLUMN tenant text NOT NULL DEFAULT 'default';
    ALTER TABLE silences DROP CONSTRAINT silences_pkey;
    ALTER TABLE silences ADD PRIMARY KEY (tenant, id);

    ALTER TABLE escalations ADD COLUMN tenant text NOT NULL DEFAULT 'default';
    ALTER TABLE escalations DROP CONSTRAINT escalations_pkey;
    ALTER TABLE escalations ADD PRIMARY KEY (tenant, sink, task_id);

    ALTER TABLE posts ADD COLUMN tenant text NOT NULL DEFAULT 'default';
    DROP INDEX posts_by_sink;
    CREATE INDEX posts_by_sink ON posts (tenant, sink, at);

    DELETE FROM maintenance WHERE id <> 1;
    ALTER TABLE maintenance ADD COLUMN tenant text NOT NULL DEFAULT 'default';
    ALTER TABLE maintenance DROP COLUMN id;
    ALTER TABLE maintenance ADD PRIMARY KEY (tenant);
    """,
    # 7: replicas (a heartbeat each) and the leases they split tenants by (issue 16), on the
    # database's clock; batchmon_fence(), run first by a fenced commit, fails it (SQLSTATE
    # L0001) unless the lease is held with that epoch, and holds the row till it ends.
    """
    CREATE TABLE replicas (
        id text PRIMARY KEY,
        host text NOT NULL,
        pid integer NOT NULL,
        started timestamptz NOT NULL,
        seen timestamptz NOT NULL
    );
    CREATE TABLE leases (
        name text PRIMARY KEY,
        holder text NOT NULL,
        epoch bigint NOT NULL,
        expires timestamptz NOT NULL
    );
    CREATE FUNCTION batchmon_fence(lease text, by_holder text, at_epoch bigint)
    RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM FROM leases WHERE name = lease AND holder = by_holder AND epoch = at_epoch
            AND expires > now() FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'lease % is no longer held by % at epoch %', lease, by_holder,
                at_epoch USING ERRCODE = 'L0001';
        END IF;
    END
    $$;
    """,
)

#: The version a database has once every migration ran.
SCHEMA_VERSION = len(MIGRATIONS)
