"""The ledger's schema: one ``MetaData`` that the Alembic migrations must reproduce exactly.

``tests/ledger/test_ledger_migrations.py`` upgrades an empty database and compares it
with ``metadata`` (``alembic.autogenerate.compare_metadata``): change a table here and
add a migration in ``migrations/versions/`` in the same commit.

Times are float epoch seconds; JSON values are stored as text (``json.dumps``) so
SQLite and PostgreSQL hold exactly the same bytes.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

#: Alembic's version table.  Not ``alembic_version``: a PostgreSQL database may be shared
#: with another application that uses Alembic, and its revision must not look like ours.
VERSION_TABLE = "flora_batch_version"

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: One row per job: a spreadsheet row pushed through one technique.
jobs = Table(
    "jobs",
    metadata,
    Column("key", String, primary_key=True),
    Column("idempotency_key", String, nullable=False, unique=True),
    Column("batch", String, nullable=False),
    Column("technique", String, nullable=False),
    Column("row_index", Integer, nullable=False),
    Column("row_id", String),
    Column("occurrence", Integer, nullable=False, server_default=text("0")),
    Column("source", String, nullable=False, server_default=text("''")),
    Column("inputs", Text, nullable=False),  # JSON list of {id, type, value}
    Column("row", Text, nullable=False),  # JSON object of the row's cells
    Column("output_name", String, nullable=False),
    Column("state", String, nullable=False),
    Column("run_id", String),
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    Column("quoted_cost", Float),
    Column("charged_cost", Float),  # the current attempt's bill, once known
    # Bills of earlier attempts (retry_failed moves charged_cost here), so money spent
    # on a failed attempt still counts after a retry.
    Column("charged_before", Float, nullable=False, server_default=text("0")),
    Column("error_code", String),
    Column("error_message", Text),
    Column("error_category", String),
    Column("request_ids", Text, nullable=False, server_default=text("'[]'")),  # JSON list
    Column("submitted_at", Float),  # first create sent with the current idempotency key
    Column("updated_at", Float, nullable=False),
    Column("completed_at", Float),
    Column("worker_id", String),  # the `flora-batch worker` holding the job (cluster.py)
    Column("lease_until", Float),  # its lease: anyone may claim the job after this
    Index(None, "batch", "state"),
    Index(None, "run_id"),
    Index(None, "worker_id"),
)

#: The files a completed run produced, and where they were saved.
outputs = Table(
    "outputs",
    metadata,
    Column("job_key", String, ForeignKey("jobs.key"), primary_key=True),
    Column("output_id", String, primary_key=True),
    Column("type", String, nullable=False),
    Column("url", Text, nullable=False),  # for ``text`` outputs: the text itself
    Column("path", Text),
    Column("size", BigInteger),
    Column("sha256", String),
    Column("content_type", String),
    Column("saved_at", Float),
)

#: Every run id the ledger ever saw, with the job it belongs to (its current run, or one
#: of an earlier attempt): a run belongs to one job at most, and reconciliation never
#: adopts a run listed here (``Ledger.known_runs``).
runs = Table(
    "runs",
    metadata,
    Column("run_id", String, primary_key=True),
    Column("job_key", String, nullable=False),
    Column("idempotency_key", String),
    Column("technique", String),
    Column("seen_at", Float, nullable=False),
    Index(None, "job_key"),
)

#: Append-only log of every change, for reports and for audits of what was paid.
events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("job_key", String, nullable=True),
    Column("at", Float, nullable=False),
    Column("from_state", String),
    Column("to_state", String),
    Column("detail", Text, nullable=False, server_default=text("'{}'")),  # JSON object
    Index(None, "job_key"),
)

#: Batch-level settings, e.g. the manifest a batch was planned from.
meta = Table(
    "meta",
    metadata,
    Column("name", String, primary_key=True),
    Column("value", Text),
)

#: One row per distinct input file (or web image) made a FLORA asset; ``uploads.py``.
#: ``sha256`` is the SHA-256 (hex) of the file's bytes, or ``url:<normalized url>`` for a
#: web image FLORA fetches itself (``sources.py``).  Shared by every batch of the ledger.
uploads = Table(
    "uploads",
    metadata,
    Column("sha256", String, primary_key=True),
    Column("source", Text, nullable=False),  # the local path or URL it came from
    Column("file_name", String, nullable=False),  # its name in FLORA (with a hash tag)
    Column("size", BigInteger),
    Column("content_type", String),
    Column("workspace_id", String, nullable=False),
    Column("state", String, nullable=False),  # planned | uploading | ready | failed
    Column("idempotency_key", String, nullable=False, unique=True),
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    Column("via", String),  # direct | signed_url | url
    Column("step", String),  # signed uploads: reserved | transferred | completed
    Column("asset_id", String),
    Column("url", Text),
    Column("error", Text),
    Column("sent_at", Float),  # first create sent with the current idempotency key
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("ready_at", Float),
    Index(None, "state"),
)

#: What `flora-batch worker` needs to work a batch without its manifest (`flora-batch submit`).
batches = Table(
    "batches",
    metadata,
    Column("name", String, primary_key=True),
    Column("results", Text, nullable=False),  # an absolute folder or an s3:// URL
    Column("max_cost", Float),
    Column("concurrency", Integer, nullable=False),  # runs in flight at most, cluster-wide
    Column("submit_rate", Float, nullable=False),  # creates per second, cluster-wide (0: unpaced)
    Column("techniques", Text, nullable=False),  # JSON: {slug: technique schema}
    Column("manifest", Text),  # where it was submitted from, for people
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

#: Cluster-wide pacing of one batch, changed under a row lock (``ledger/leases.py``).
pacing = Table(
    "pacing",
    metadata,
    Column("batch", String, ForeignKey("batches.name"), primary_key=True),
    Column("in_flight_limit", Integer, nullable=False),  # halved on 429, grown back on success
    Column("max_limit", Integer, nullable=False),  # the batch's concurrency
    Column("streak", Integer, nullable=False, server_default=text("0")),
    Column("next_submit_at", Float, nullable=False, server_default=text("0")),
    Column("paused_until", Float, nullable=False, server_default=text("0")),
    Column("updated_at", Float, nullable=False),
)
