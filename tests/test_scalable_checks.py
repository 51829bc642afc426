"""Fast tier: a replica refuses a configuration that would split data between replicas.

Tiled's own --scalable check accepts SQLite, DuckDB and unshared file storage;
tiled/tiled_stack/replica.py must not.
"""

import sys

import pytest
from tiled.config import parse_configs

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tiled"))
from tiled_stack.replica import problems  # noqa: E402

GOOD = """
authentication: {{single_user_api_key: abc}}
catalog:
  uri: {catalog}
  writable_storage: {storage}
streaming_cache: {{uri: {cache}}}
"""
PG = "postgresql://u:p@postgres/tiled_catalog"
PG_STORAGE = "postgresql://u:p@postgres/tiled_storage"


def config(tmp_path, catalog=PG, storage=("/data/arrays", PG_STORAGE), cache="redis://:p@redis:6379"):
    path = tmp_path / "config.yml"
    path.write_text(GOOD.format(catalog=catalog, storage=list(storage), cache=cache))
    return parse_configs(path)


def test_the_shipped_design_passes(tmp_path):
    assert problems(config(tmp_path)) == []


def test_the_shipped_config_file_passes(monkeypatch):
    for var in ("CATALOG_DB_PASSWORD", "STORAGE_DB_PASSWORD", "REDIS_PASSWORD"):
        monkeypatch.setenv(var, "x")
    assert problems(parse_configs(ROOT / "tiled" / "config.yml")) == []


@pytest.mark.parametrize("kwargs, complaint", [
    ({"catalog": "sqlite:////data/catalog.db"}, "catalog uri must be postgresql"),
    ({"storage": ["/data/arrays", "duckdb:////data/x.duckdb"]}, "needs a postgresql"),
    ({"storage": ["/tmp/local", PG_STORAGE]}, "not on the shared volume"),
    ({"cache": "memory"}, "streaming_cache must be redis"),
])
def test_unscalable_configs_are_refused(tmp_path, kwargs, complaint):
    found = problems(config(tmp_path, **kwargs))
    assert any(complaint in p for p in found), found
