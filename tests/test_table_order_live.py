"""Live tier: rows of a table stored in PostgreSQL read back in the order they were appended
(patch 0018), in a new table and in one made before the patch, through every replica."""

import secrets

import numpy as np
import psycopg
import pyarrow as pa
import pytest

from conftest import storage_dsn

pytestmark = pytest.mark.live

SCHEMA = pa.schema([("seq", pa.int64()), ("value", pa.float64())])


def append_through_every_replica(node, batches: int = 80, rows: int = 5) -> None:
    """Appends one batch per request through HAProxy, so across the replicas' connections."""
    for b in range(batches):
        seq = np.arange(b * rows, (b + 1) * rows, dtype="int64")
        node.append_partition(0, pa.table({"seq": seq, "value": seq * 0.5}, schema=SCHEMA))


def row_id_column(dsn: str, table: str) -> str | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT column_default FROM information_schema.columns WHERE table_name = %s "
                           "AND column_name = '_row_id'", (table,)).fetchone()
    return row and (row[0] or "no default")


def test_a_new_table_reads_back_in_append_order(stack, values, tiled):
    table = f"new_{secrets.token_hex(6)}"
    node = tiled.create_appendable_table(SCHEMA, key=table, table_name=table)
    append_through_every_replica(node)
    assert "_row_id_counter" in (row_id_column(storage_dsn(stack, values), table) or "no column")
    assert tiled[table].read()["seq"].tolist() == list(range(400))
    assert tiled[table].read_partition(0)["seq"].tolist() == list(range(400))


def test_a_table_made_before_the_fix_gets_the_column_without_a_rewrite(stack, values, tiled):
    """As Tiled 0.2.20 made it: no _row_id, holding rows of an older dataset."""
    from tiled.adapters.sql import arrow_schema_to_create_table

    dsn = storage_dsn(stack, values)
    table = f"old_{secrets.token_hex(6)}"
    columns = SCHEMA.insert(0, pa.field("_partition_id", pa.int16())).insert(0, pa.field("_dataset_id", pa.int32()))
    with psycopg.connect(dsn) as conn:
        conn.execute(arrow_schema_to_create_table(columns, table, "postgresql"))
        conn.execute(f'INSERT INTO "{table}" VALUES (0, 0, -3, 0), (0, 0, -2, 0), (0, 0, -1, 0)')
    assert row_id_column(dsn, table) is None
    node = tiled.create_appendable_table(SCHEMA, key=table, table_name=table)
    assert "_row_id_counter" in (row_id_column(dsn, table) or "no column"), "the next dataset made in it did not add _row_id"
    append_through_every_replica(node)
    assert tiled[table].read()["seq"].tolist() == list(range(400))
    with psycopg.connect(dsn) as conn:
        old, new = conn.execute(f'SELECT count(*) FILTER (WHERE _dataset_id = 0 AND _row_id IS NULL), '
                                f'count(*) FILTER (WHERE _dataset_id <> 0 AND _row_id IS NOT NULL) '
                                f'FROM "{table}"').fetchone()
    assert (old, new) == (3, 400), "old rows must keep NULL (no rewrite), every new row a _row_id"
