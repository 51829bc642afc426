# tiled-stack: a thin door to scripts/. Every target prints what it does.
# Run `make` (or `make help`) for the list.

PYTHON ?= python3
VENV   := .venv/bin/python
RUN    := $(VENV) -m

.DEFAULT_GOAL := help
.PHONY: help venv env images up down clean status logs scale rollout reload-tls backup restore demo serve migrate bench bench-switches bench-single bench-monitoring test test-fast test-swarm lock images-bundle images-load swarm-up swarm-status swarm-scale swarm-rollout swarm-down service-account key keys revoke-key access rotate-secret-key retire-secret-key

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-17s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  Variables: N=<replicas> (scale), SERVICE=<name> (logs), FORCE=1 (clean), FROM= FROM_KEY= (migrate), QUICK=1 OUT= (bench), BACKUP= BACKUP_DIR= (restore/backup)"

venv: ## Create/refresh .venv from requirements/host.txt (the other targets do this)
	@$(PYTHON) -m scripts.ensure_venv

env: venv ## Create .env from .env.example with random secrets (never overwrites)
	@$(RUN) scripts.env_file

images: venv ## Build every image here (base from Debian's packages if no registry)
	@$(RUN) scripts.build_images

up: venv ## Start the stack (creates .env, builds images, waits until healthy)
	@$(RUN) scripts.up

down: venv ## Stop the stack; keeps all data
	@$(RUN) scripts.down

clean: venv ## Remove containers AND data volumes (asks first; FORCE=1 to skip)
	@$(RUN) scripts.clean

status: venv ## Each service's health and each replica as HAProxy sees it
	@$(RUN) scripts.status

logs: venv ## Follow logs (SERVICE=tiled|haproxy|postgres|redis|tiled-init|prometheus|…-exporter)
	@$(RUN) scripts.logs

scale: venv ## Change the replica count live: make scale N=4
	@$(RUN) scripts.scale $(N)

reload-tls: venv ## Serve a renewed TLS certificate (TILED_TLS_CERT) without dropping a connection
	@$(RUN) scripts.reload_tls

rollout: venv ## Replace every replica one at a time (new image/config), drained first: no failed request
	@$(RUN) scripts.rollout

service-account: venv ## A beamline's RunEngine identity and its key, printed once: make service-account NAME=…
	@$(RUN) scripts.keys service-account

key: venv ## An API key for a user: make key FOR=… [SCOPES="read:metadata read:data"] [EXPIRES=30d]
	@$(RUN) scripts.keys key

keys: venv ## List API keys: owner, scopes, expiry, last use [FOR=…]
	@$(RUN) scripts.keys keys

revoke-key: venv ## Revoke an API key on every replica: make revoke-key KEY=<first eight characters>
	@$(RUN) scripts.keys revoke

access: venv ## Apply tiled/access/tags.yml and the directory's groups to every replica now
	@$(RUN) scripts.keys access

rotate-secret-key: venv ## New token-signing key, nobody logged out (two rollouts); the old one still verifies
	@$(RUN) scripts.rotate_secret_key

retire-secret-key: venv ## Stop accepting the key before the last rotation (one rollout)
	@$(RUN) scripts.rotate_secret_key retire

images-bundle: venv ## Every image the stack runs, in one file with a checksum manifest (OUT=): ship it to Swarm nodes
	@$(RUN) scripts.images_bundle save

images-load: venv ## Load and verify a bundle into this engine (or DOCKER_HOST's): make images-load BUNDLE=…
	@$(RUN) scripts.images_bundle load

swarm-up: venv ## Docker Swarm (on a manager): deploy or update the stack, rolling; waits (README "Several hosts")
	@$(RUN) scripts.swarm up

swarm-status: venv ## Swarm: each service's tasks per node, and each replica as HAProxy sees it
	@$(RUN) scripts.swarm status

swarm-scale: venv ## Swarm: change the replica count live: make swarm-scale N=6
	@$(RUN) scripts.swarm scale $(N)

swarm-rollout: venv ## Swarm: replace every replica one at a time, new one first
	@$(RUN) scripts.swarm rollout

swarm-down: venv ## Swarm: remove the stack's services; volumes, arrays and secrets stay
	@$(RUN) scripts.swarm down

backup: venv ## Back up catalog, storage, arrays and config into backups/<project>-<time>/ (BACKUP_DIR=)
	@$(RUN) scripts.backup

restore: venv ## Restore a backup into an empty stack: make restore BACKUP=backups/… (FORCE=1 to replace data)
	@$(RUN) scripts.restore

serve: venv ## One Tiled process here, foreground (PORT= API_KEY= TEMP=1 DATA_DIR= READABLE= STREAMING=1)
	@$(RUN) scripts.serve

migrate: venv ## Copy Bluesky runs from a single-process Tiled into the stack (FROM= FROM_KEY=)
	@$(RUN) scripts.migrate

demo: venv ## Write a Bluesky scan + image count through TiledWriter and print the runs
	@$(RUN) scripts.acquire

bench: venv ## Benchmark the running stack vs one Tiled (QUICK=1 OUT=dir; durations: README)
	@$(RUN) benchmarks.stack

bench-switches: venv ## What each CPU fix is worth: an image without each, interleaved (ROUNDS=3 SECONDS=5)
	@$(RUN) benchmarks.patches

bench-single: venv ## What the DuckDB pool fix costs `make serve` on table reads (ROUNDS=3 SECONDS=3)
	@$(RUN) benchmarks.single

bench-monitoring: venv ## What monitoring costs (TILED_MONITORING=on): CPU, memory, scrape size (SECONDS=180)
	@$(RUN) benchmarks.monitoring

test: venv ## Run the whole test suite: fast tier, local processes, then Docker (a stack of its own)
	@$(VENV) -m pytest

test-swarm: venv ## The multi-node tier: a Swarm of three engines in containers here (≈ 8 min; CI runs it)
	@$(VENV) -m pytest -m swarm

test-fast: venv ## Only the fast tier: Python alone, no Docker, no Tiled process (≈ 2 min)
	@$(VENV) -m pytest -m "not live and not local"

lock: venv ## Pin what the .in files add (other pins kept; UPGRADE=1 re-resolves all)
	@$(RUN) scripts.lock
