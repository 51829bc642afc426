"""Healthy when the discovery document is served and names a signing key set."""

import json
import sys
import urllib.request

URL = "http://127.0.0.1:9400/.well-known/openid-configuration"

try:
    with urllib.request.urlopen(URL, timeout=4) as response:
        document = json.load(response)
except (OSError, ValueError) as err:
    sys.exit(f"{URL}: {err}")
if document.get("issuer") != "http://127.0.0.1:9400" or not document.get("jwks_uri"):
    sys.exit(f"{URL}: unexpected discovery document {document}")

