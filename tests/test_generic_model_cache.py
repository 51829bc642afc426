"""Fast tier: the generic-model fix (tiled/tiled_stack/generic_model_cache.py) keeps the
response model class Tiled parametrises per request, so it is built once.

Switched off, the probe shows the upstream behaviour the fix exists for: once a
request's response is gone, pydantic's weak cache lets the class go and the next
request builds a new one. If that assertion starts failing, pydantic or Tiled
fixed it: delete the module.
"""

from conftest import probe_tiled_stack

PROBE = r"""
import gc, json, sys, weakref
sys.path.insert(0, sys.argv[1])
from tiled_stack import generic_model_cache
status = generic_model_cache.install()
from tiled.server import schemas

def parametrise():  # what tiled/server/core.py construct_resource() does per container
    return schemas.Resource[schemas.NodeAttributes, schemas.ContainerLinks, schemas.ContainerMeta]

first = weakref.ref(parametrise())
gc.collect()
print(json.dumps({"status": status, "kept": first() is not None and first() is parametrise()}))
"""


def test_on_the_class_is_built_once():
    on = probe_tiled_stack(PROBE, {"PYDANTIC_GENERIC_CACHE": "on"})
    assert on["status"].startswith("generic model cache on") and on["kept"]


def test_off_upstream_frees_and_rebuilds_it():
    off = probe_tiled_stack(PROBE, {"PYDANTIC_GENERIC_CACHE": "off"})
    assert off["status"].startswith("generic model cache off (PYDANTIC_GENERIC_CACHE=off") and not off["kept"]
