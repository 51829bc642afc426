"""Run oidc-provider-mock on 0.0.0.0:9400 with the test facility's users (users.yaml).

Arguments are passed on to it (compose `command:`), e.g. `--require-nonce`, or
`--require-registration` so that only clients registered at /oauth2/clients are
accepted (by default any client_id and client_secret are).

The mock has no fixed issuer: each request gets the URL it reached the mock by
(its Host header, or X-Forwarded-Host/-Proto/-Port). Tiled, inside the backend
network, fetches http://oidc:9400/.well-known/openid-configuration and exchanges
codes there, so its issuer and the ID tokens' `iss` are http://oidc:9400 alike.
"""

import os
import sys

import yaml

PORT = 9400
USERS = "/etc/oidc/users.yaml"


def main() -> None:
    with open(USERS) as f:
        users = [user["sub"] for user in yaml.safe_load(f)]
    print(f"▶ starting oidc-provider-mock on 0.0.0.0:{PORT} with users {', '.join(users)} "
          f"(issuer: the URL a request reached it by)", flush=True)
    os.execvp("oidc-provider-mock", ["oidc-provider-mock", "--host", "0.0.0.0", "--port", str(PORT),
                                     "--user-claims-file", USERS, *sys.argv[1:]])


if __name__ == "__main__":
    main()
