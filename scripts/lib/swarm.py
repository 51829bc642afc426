"""Docker Swarm: the stack file `docker stack deploy` reads, derived from compose.yaml.

compose.yaml, the overlays scripts/lib/compose.py derives (detector mounts, identity
network) and compose.swarm.yaml are rendered by Compose v2 (`config`); then, for Swarm:
  - every value of a secret of .env (scripts/env_file.py) leaves the environment and
    becomes a Docker secret, mounted at /run/secrets/<VARIABLE>, which the images read;
    its name carries a keyed hash of the value, so a changed value is a new secret and
    the services using it roll;
  - files bound from this checkout (tiled/access/) become Docker configs the same way, and
    HAProxy's certificate (TILED_TLS=on) a Docker secret;
  - images are named by ID, so that no node ever asks a registry (a tag makes Swarm try
    a pull first, even when the image is there);
  - mem_limit becomes deploy.resources.limits, shm_size a tmpfs on /dev/shm, published
    ports bind on the node (mode: host; Swarm cannot bind one address);
  - keys Swarm does not read (build, depends_on, restart, profiles) are dropped.
The result is Compose file format 3.9, written to .state/<project>/stack.yaml.
"""

import datetime
import hashlib
import hmac
import json
import os
import re
import subprocess
import urllib.parse
from pathlib import Path

import yaml

from scripts import env_file
from scripts.lib import compose
from scripts.lib.compose import ROOT, Stack, compose_command
from scripts.lib.docker_api import client
from scripts.lib.say import Failure, note
from scripts.lib.wait import until

OVERLAY = ROOT / "compose.swarm.yaml"
ACCESS = (ROOT / "tiled" / "access").resolve()  # bound into the replicas on one host; Docker configs on Swarm
LABEL = "org.tiled-stack.stack"
# Keys of a rendered service that mean nothing to Swarm, or that are turned into others below.
DROPPED = {"build", "depends_on", "restart", "profiles", "container_name", "mem_limit", "shm_size", "pull_policy"}
# Deploy stages: each waits for the one before, as depends_on does on one host.
STAGES = (("postgres", "redis"), ("tiled-init",), None)  # None: every service


def constraint_label(service: str) -> str:
    """The node label compose.swarm.yaml places a service by (`node.labels.<label> == true`)."""
    (constraint,) = yaml.safe_load(OVERLAY.read_text())["services"][service]["deploy"]["placement"]["constraints"]
    return re.fullmatch(r"node\.labels\.(\S+) == true", constraint).group(1)


def node_labels() -> dict[str, str]:
    return {"db": constraint_label("postgres"), "frontdoor": constraint_label("haproxy")}


def replica_uid() -> int:
    """The replicas' user (tiled/Dockerfile), who must own the shared array folder."""
    return int(re.search(r"--uid (\d+)", (ROOT / "tiled" / "Dockerfile").read_text()).group(1))


def render(stack: Stack) -> dict:
    """compose.yaml + overlays + compose.swarm.yaml, interpolated by Compose v2 (no profile: the
    monitoring and test identity-provider services stay single-host)."""
    files = [arg for f in [*stack.files(), OVERLAY] for arg in ("-f", str(f))]
    done = subprocess.run([*compose_command(), *files, "--project-directory", str(ROOT), "-p", stack.project,
                           "--env-file", str(stack.env_path), "config", "--format", "json"],
                          text=True, capture_output=True, cwd=ROOT, env={**os.environ, "COMPOSE_PROFILES": ""})
    if done.returncode:
        message = done.stderr.strip()[-600:]
        for value in secret_values(stack).values():  # an interpolation error quotes the value
            message = message.replace(value, "<secret>")
        raise Failure(f"Compose could not render the stack: {message}", f"fix the setting it names in {stack.env_path}")
    config = json.loads(done.stdout)
    config["services"] = {n: s for n, s in config["services"].items() if not s.get("profiles")}
    return config


def secret_values(stack: Stack) -> dict[str, str]:
    return {key: stack.values[key] for key in env_file.all_secrets() if stack.values.get(key)}


def check_tls(stack: Stack) -> None:
    """Secure by default, as `make up` is: HAProxy's port is on the front-door node's network."""
    if stack.tls == "off":
        raise Failure("on Swarm, HAProxy publishes TILED_PORT on the front-door node's network, and TLS is off: "
                      "API keys would cross it in clear text",
                      f"set TILED_TLS=on in {stack.env_path} (a certificate is made for you: list the names clients "
                      "use for the front-door node in TILED_TLS_NAMES; or set TILED_TLS_CERT), or TILED_TLS=external "
                      "if a proxy in front ends TLS")


def versioned_name(stack: Stack, kind: str, name: str, data: bytes) -> str:
    """<project>_<name>_<12 hex>, within Swarm's 64 characters: a keyed hash (HMAC, keyed by
    POSTGRES_PASSWORD), so that a secret's name tells nothing about a weak password."""
    key = (stack.values.get("POSTGRES_PASSWORD") or "").encode()
    digest = hmac.new(key, kind.encode() + b"\0" + name.encode() + b"\0" + data, hashlib.sha256).hexdigest()
    return f"{stack.project[:24]}_{name.lower()[:26]}_{digest[:12]}"


def memory(limit) -> str:
    return f"{int(limit) // 2**20}M"


def image_id(tag: str) -> str:
    import docker.errors

    try:
        return client().images.get(tag).id
    except docker.errors.ImageNotFound:
        raise Failure(f"image {tag} is not on this manager node",
                      "load the bundle here first: make images-load BUNDLE=… (README \"Several hosts\")") from None


def stack_file(stack: Stack, config: dict) -> tuple[dict, dict[str, bytes], dict[str, bytes]]:
    """The stack file, and the secrets and configs it names (name → content)."""
    by_value = {value: key for key, value in secret_values(stack).items()}
    secrets, configs, services, volumes = {}, {}, {}, set()
    for name, svc in config["services"].items():
        out = {k: v for k, v in svc.items() if k not in DROPPED and v not in (None, [], {})}
        out["image"] = image_id(svc["image"])
        deploy = out.setdefault("deploy", {})
        deploy.setdefault("labels", {})[f"{LABEL}.image"] = svc["image"]
        if "mem_limit" in svc:
            deploy.setdefault("resources", {}).setdefault("limits", {})["memory"] = memory(svc["mem_limit"])
        environment, refs = {}, []
        for var, value in (svc.get("environment") or {}).items():
            raw = (value or "").replace("$$", "$")  # Compose's config escapes every $
            if raw and raw in by_value:
                value = raw
                secret = versioned_name(stack, "secret", by_value[value], value.encode())
                secrets[secret] = value.encode()
                # One file per secret, named after its .env key: Docker's CLI orders two references
                # to one secret differently from one deploy to the next, and Swarm restarts the
                # service each time (REDISCLI_AUTH: Redis's healthcheck reads the file instead).
                if var == by_value[value] or not any(r["source"] == secret for r in refs):
                    refs[:] = [r for r in refs if r["source"] != secret]
                    refs.append({"source": secret, "target": by_value[value], "mode": 0o444})
            else:
                environment[var] = "" if value is None else value
        out["environment"] = environment
        mounts, config_refs = [], []
        for v in svc.get("volumes") or []:
            if v["type"] == "bind" and Path(v["source"]).resolve() == (stack.tls_dir / "served").resolve():  # TILED_TLS=on
                for f in sorted(p for p in Path(v["source"]).iterdir() if p.is_file()):
                    secret = versioned_name(stack, "secret", f"tls_{f.stem}", f.read_bytes())
                    secrets[secret] = f.read_bytes()
                    refs.append({"source": secret, "target": f.name, "mode": 0o400})
                continue
            if v["type"] == "bind" and Path(v["source"]).resolve() == ACCESS:
                folder = Path(v["source"])
                for f in sorted(p for p in folder.iterdir() if p.is_file()):
                    data = f.read_bytes()
                    cname = versioned_name(stack, "config", f"{folder.name}_{f.stem}", data)
                    configs[cname] = data
                    config_refs.append({"source": cname, "target": f"{v['target']}/{f.name}", "mode": 0o444})
                continue
            if v["type"] == "bind" and Path(v["source"]).resolve().is_relative_to(ROOT):
                raise Failure(f"{name}'s mount {v['source']} is inside this checkout, on the manager alone",
                              f"every shared path ({v['target']}) must be on the shared filesystem, outside the "
                              "checkout, at the same path on every node: fix TILED_ARRAYS_PATH or "
                              "TILED_READABLE_STORAGE in " + str(stack.env_path))
            mount = {k: v[k] for k in ("type", "source", "target", "read_only") if k in v}
            if v["type"] == "volume":
                volumes.add(v["source"])
            mounts.append(mount)
        if "shm_size" in svc:
            mounts.append({"type": "tmpfs", "target": "/dev/shm", "tmpfs": {"size": int(svc["shm_size"])}})
        out.pop("volumes", None)
        if mounts:
            out["volumes"] = mounts
        if refs:
            out["secrets"] = refs
        if config_refs:
            out["configs"] = config_refs
        if svc.get("ports"):
            out["ports"] = [{"target": p["target"], "published": int(p["published"]),
                             "protocol": p.get("protocol", "tcp"), "mode": "host"} for p in svc["ports"]]
        out["networks"] = sorted(svc.get("networks") or {})
        for key in ("healthcheck",):
            if key in out:
                out[key] = {k: v for k, v in out[key].items() if v is not None}
        services[name] = out
    networks = {name: {"driver": "overlay", **({"internal": True} if net.get("internal") else {})}
                for name, net in config.get("networks", {}).items()}
    document = {
        "version": "3.9",
        "services": services,
        "networks": networks,
        "volumes": {name: {} for name in sorted(volumes)},
        "secrets": {name: {"external": True} for name in sorted(secrets)},
        "configs": {name: {"external": True} for name in sorted(configs)},
    }
    return document, secrets, configs


def subset(document: dict, names) -> dict:
    """The stack file with only these services (and what they name)."""
    if names is None:
        return document
    services = {n: s for n, s in document["services"].items() if n in names}
    used = lambda key: {r["source"] for s in services.values() for r in s.get(key, [])}  # noqa: E731
    return {
        "version": document["version"],
        "services": services,
        "networks": {n: v for n, v in document["networks"].items() if any(n in s["networks"] for s in services.values())},
        "volumes": {n: v for n, v in document["volumes"].items()
                    if any(m.get("source") == n for s in services.values() for m in s.get("volumes", []))},
        "secrets": {n: v for n, v in document["secrets"].items() if n in used("secrets")},
        "configs": {n: v for n, v in document["configs"].items() if n in used("configs")},
    }


def strings_in(item):
    """Every string of a parsed document, keys and values."""
    if isinstance(item, dict):
        for key, value in item.items():
            yield from strings_in(key)
            yield from strings_in(value)
    elif isinstance(item, list):
        for value in item:
            yield from strings_in(value)
    elif isinstance(item, str):
        yield item


def write(stack: Stack, document: dict, name: str = "stack.yaml") -> Path:
    text = yaml.safe_dump(document, sort_keys=False, width=120)
    strings = list(strings_in(document))
    leaked = [key for key, value in secret_values(stack).items()
              if any(s in (value, value.replace("$", "$$")) or len(value) >= 12 and
                     (value in s or value.replace("$", "$$") in s) for s in strings)]
    if leaked:
        raise Failure(f"the stack file would hold the value of {', '.join(leaked)} in clear text (inside a longer "
                      "setting?); nothing was deployed", "set that value only in its own variable of .env")
    target = compose.STATE / stack.project / name  # (the fast tests move STATE)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("# Derived from compose.yaml + compose.swarm.yaml by scripts/lib/swarm.py; "
                      "do not edit (`make swarm-up` rewrites it).\n" + text)
    return target


# --- the cluster -----------------------------------------------------------------------------

def manager_info() -> dict:
    info = client().info()
    swarm = info.get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active":
        raise Failure(f"this Docker Engine ({info.get('Name')}) is not part of a Swarm",
                      "run this on a manager node (or set DOCKER_HOST to one); to make one: "
                      "`docker swarm init` (README \"Several hosts\")")
    if not swarm.get("ControlAvailable"):
        raise Failure(f"{info.get('Name')} is a Swarm worker, not a manager",
                      "run this on a manager node (`docker node ls` there lists the nodes)")
    return info


def nodes() -> list:
    return client().nodes.list()


def labelled(label: str) -> list:
    return [n for n in nodes() if n.attrs["Spec"].get("Labels", {}).get(label) == "true"]


def available(node) -> bool:
    """Up, and taking tasks (not drained or paused)."""
    return node.attrs["Status"]["State"] == "ready" and node.attrs["Spec"].get("Availability") == "active"


def check_labels() -> None:
    for role, label in node_labels().items():
        found = labelled(label)
        if not found:
            raise Failure(f"no node is labelled {label}=true (the {role} node)",
                          f"label one: docker node update --label-add {label}=true <node>  (`docker node ls`)")
        if not any(available(n) for n in found):
            names = ", ".join(n.attrs["Description"]["Hostname"] for n in found)
            raise Failure(f"every node labelled {label}=true ({names}) is down, drained or paused",
                          "bring it back (`docker node ls`; `docker node update --availability active <node>`)"
                          + (": PostgreSQL's and Redis's volumes are on it" if role == "db" else
                             ", or label another node"))
        if role == "db" and len(found) > 1:
            raise Failure(f"{len(found)} nodes are labelled {label}=true; PostgreSQL and Redis keep their volumes "
                          "on one node", f"keep the label on one: docker node update --label-rm {label} <node>")


def create_missing(kind: str, wanted: dict[str, bytes], project: str) -> int:
    collection = client().secrets if kind == "secret" else client().configs
    have = {o.name for o in collection.list(filters={"label": f"{LABEL}={project}"})}
    import docker.errors

    for name, data in wanted.items():
        if name not in have:
            try:
                collection.create(name=name, data=data, labels={LABEL: project})
            except docker.errors.APIError as err:
                raise Failure(f"the manager refused {kind} {name}: {err.explanation}",
                              "read the reason; `docker " + kind + " ls` lists what exists") from None
    return len(set(wanted) - have)


def in_use(kind: str) -> set[str]:
    """Secret or config names that any service's spec, or its previous one (a rollback's), names."""
    key, field = ("Secrets", "SecretName") if kind == "secret" else ("Configs", "ConfigName")
    return {ref[field] for s in client().services.list() for spec in (s.attrs["Spec"], s.attrs.get("PreviousSpec"))
            if spec for ref in (spec["TaskTemplate"].get("ContainerSpec") or {}).get(key) or []}


def prune(kind: str, keep: set[str], project: str) -> None:
    """Remove this stack's secrets or configs that no service names any more, in its spec or its
    previous spec (what a rollback would need)."""
    import docker.errors

    collection = client().secrets if kind == "secret" else client().configs
    keep = keep | in_use(kind)
    for o in collection.list(filters={"label": f"{LABEL}={project}"}):
        if o.name not in keep:
            try:
                o.remove()
            except docker.errors.APIError:
                pass


def deploy(stack: Stack, document: dict, prune_services: bool) -> None:
    path = write(stack, document, "stack.partial.yaml" if not prune_services else "stack.yaml")
    run_cli("stack", "deploy", "--resolve-image", "never", *(["--prune"] if prune_services else []),
            "-c", str(path), stack.project)


def services(project: str) -> dict:
    """This stack's services by short name (tiled, haproxy, …)."""
    found = client().services.list(filters={"label": f"com.docker.stack.namespace={project}"})
    return {s.name.removeprefix(f"{project}_"): s for s in found}


def leftovers(project: str) -> list[str]:
    """What `docker stack rm` has not removed yet: services and networks of the stack."""
    label = {"label": f"com.docker.stack.namespace={project}"}
    return ([f"service {s.name}" for s in client().services.list(filters=label)]
            + [f"network {n.name}" for n in client().networks.list(filters=label)])


def tasks(service, desired: str | None = "running") -> list[dict]:
    filters = {"desired-state": desired} if desired else {}
    return service.tasks(filters=filters)


def node_names() -> dict[str, str]:
    return {n.id: n.attrs["Description"]["Hostname"] for n in nodes()}


def problems(service) -> list[str]:
    """Why the service's newest tasks (one per replica slot or node) are not running, e.g. no
    such image on a node."""
    names = node_names()
    newest = {}
    for t in sorted(service.tasks(), key=lambda t: t["Version"]["Index"]):
        newest[t.get("Slot") or t.get("NodeID")] = t
    return [f"{names.get(t.get('NodeID'), '?')}: {t['Status']['State']}: {t['Status']['Err']}"
            for t in newest.values() if t["Status"].get("Err")]


def running_tasks(service) -> list[dict]:
    return [t for t in tasks(service) if t["Status"]["State"] == "running"]


def pending(project: str, names, since: float = 0) -> list[str]:
    """What keeps the named services from running their *current* spec (a rerun's update included):
    replicas, one per front-door node, or a job's task of this spec complete; with the newest
    task errors. An update that Swarm paused or rolled back after `since` (Unix time) is a Failure."""
    found = []
    for name, service in services(project).items():
        if names is not None and name not in names:
            continue
        spec = service.attrs["Spec"]
        wanted = fingerprint(spec["TaskTemplate"])
        current = [t for t in service.tasks() if fingerprint(t["Spec"]) == wanted]  # of this spec
        status = service.attrs.get("UpdateStatus") or {}
        update = status.get("State")
        is_job = spec["TaskTemplate"].get("RestartPolicy", {}).get("Condition") == "on-failure"
        if (update in ("paused", "rollback_paused", "rollback_completed") and not is_job
                and timestamp(status.get("CompletedAt") or status.get("StartedAt")) >= since):
            raise Failure(f"Swarm {update.replace('_', ' ')} the update of {name}: {status.get('Message', '')}",
                          f"`docker service ps --no-trunc {project}_{name}` says why a new task failed; fix it, "
                          "then rerun")
        if is_job:  # judged by its tasks of this spec alone
            newest = max(current, key=lambda t: t["Version"]["Index"], default=None)
            state = newest["Status"]["State"] if newest else "no task of this spec yet"
            attempts = spec["TaskTemplate"].get("RestartPolicy", {}).get("MaxAttempts") or 0
            if attempts and sum(t["Status"]["State"] in ("failed", "rejected") for t in current) > attempts:
                raise Failure(f"{name} failed {attempts + 1} times: {'; '.join(problems(service)) or state}",
                              f"`docker service logs {project}_{name}` says why; fix it, then rerun")
            if state != "complete":
                found.append(f"{name} {state}" + "".join(f" [{p}]" for p in problems(service)[:1]))
            continue
        if "Replicated" in spec["Mode"]:
            want = spec["Mode"]["Replicated"]["Replicas"]
        else:  # global: one per front-door node that takes tasks (a paused node keeps what it has)
            taking = {n.id for n in labelled(node_labels()["frontdoor"]) if available(n)}
            want = len(taking)
        every = service.tasks(filters={"desired-state": "running"})
        running = [t for t in current if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]
        if "Global" in spec["Mode"]:
            running = [t for t in running if t["NodeID"] in taking]
        old = [t for t in every if fingerprint(t["Spec"]) != wanted
               and ("Replicated" in spec["Mode"] or t["NodeID"] in taking)]
        stopping = [t for t in service.tasks() if t["DesiredState"] != "running" and t["Status"]["State"] == "running"]
        if len(running) != want or old or stopping or update in ("updating", "rollback_started"):
            errors = problems(service)[:1] if len(running) < want else []
            found.append(f"{name} {len(running)}/{want} running" + (f", {len(old)} of the old spec" if old else "")
                         + (f", {len(stopping)} stopping" if stopping else "")
                         + (f", update {update}" if update else "") + "".join(f" [{p}]" for p in errors))
    return found


def fingerprint(task_spec: dict) -> str:
    """A task's spec is a copy of its service's TaskTemplate at the time (a forced update's counter
    included), but for defaults the API leaves out of one or the other (e.g. the TaskTemplate's
    "Runtime": "container", ForceUpdate 0): equal for a task of the current spec once those are
    dropped, different for any change."""
    def meaningful(item):
        if isinstance(item, dict):
            kept = {k: meaningful(v) for k, v in item.items() if not (k == "Runtime" and v == "container")}
            return {k: v for k, v in kept.items() if v not in (None, 0, "", [], {})}
        if isinstance(item, list):
            return [meaningful(v) for v in item]
        return item

    return json.dumps(meaningful(task_spec), sort_keys=True)


def spec_fingerprints(project: str) -> dict[str, str]:
    return {name: fingerprint(s.attrs["Spec"]["TaskTemplate"]) for name, s in services(project).items()}


def manager_time() -> float:
    """Now, by the manager's clock (what Swarm stamps its update states with)."""
    return timestamp(client().info()["SystemTime"])


def timestamp(stamp: str) -> float:
    """Docker's RFC 3339 time (nanoseconds, Z or an offset) → Unix time; 0 if there is none."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", stamp or "")
    if not match:
        return 0.0
    moment = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    zone = match.group(3) or "Z"
    offset = 0 if zone == "Z" else (int(zone[1:3]) * 60 + int(zone[4:6])) * (1 if zone[0] == "+" else -1)
    return (moment.replace(tzinfo=datetime.timezone.utc).timestamp() - offset * 60
            + float(match.group(2) or 0))


def until_converged(project: str, names, since: float = 0, timeout: float = 300) -> None:
    until(lambda: pending(project, names, since), timeout, "the stack did not converge",
          "`docker service ps --no-trunc <project>_<service>` on the manager says why; a node without the "
          "images needs `make images-load BUNDLE=…` there")


def run_cli(*args: str) -> None:
    """The Docker CLI (stack deploy has no API of its own), on the engine DOCKER_HOST names."""
    done = subprocess.run(["docker", *args], text=True, capture_output=True)
    if done.returncode:
        raise Failure(f"`docker {' '.join(args)}` failed: {(done.stderr or done.stdout).strip()[-800:]}",
                      "read the error above; `make swarm-status` shows the stack")


def frontdoor_address(project: str) -> str:
    """The address of a node running HAProxy (its ports are published there)."""
    haproxy = services(project).get("haproxy")
    if haproxy:
        for t in running_tasks(haproxy):
            return client().nodes.get(t["NodeID"]).attrs["Status"]["Addr"]
    raise Failure(f"no HAProxy task of stack {project} is running", "`make swarm-status`; then `make swarm-up`")


def stats_url(stack: Stack) -> str:
    """HAProxy's stats page with its login (haproxy_stats sends it as Basic auth; print it redacted)."""
    password = urllib.parse.quote(stack.values.get("HAPROXY_STATS_PASSWORD", ""), safe="")
    return f"http://stats:{password}@{frontdoor_address(stack.project)}:{stack.stats_port}"


def url(stack: Stack) -> str:
    return f"{stack.scheme}://{frontdoor_address(stack.project)}:{stack.port}"


def say_converged(project: str) -> None:
    names = node_names()
    for name, service in sorted(services(project).items()):
        per_node = {}
        for t in running_tasks(service):
            per_node[names.get(t["NodeID"], "?")] = per_node.get(names.get(t["NodeID"], "?"), 0) + 1
        where = ", ".join(f"{n}×{c}" for n, c in sorted(per_node.items()))
        if not where:  # a one-shot job (tiled-init), or nothing running
            newest = max(service.tasks(), key=lambda t: t["Version"]["Index"], default=None)
            where = f"no task running (newest: {newest['Status']['State'] if newest else 'none'})"
        note(f"{name:<11} {where}")
