"""`make status`: every container's state and health, then each replica as HAProxy sees it."""

from scripts.lib import haproxy_stats, monitoring, wait
from scripts.lib.compose import Stack
from scripts.lib.say import Failure, note, run_main, step


def main() -> None:
    stack = Stack()
    step(f"project {stack.project}")
    states = wait.service_states(stack)
    if not states:
        raise Failure(f"project {stack.project} has no containers", "start it with `make up`")
    for service in sorted(states):
        for name, state in sorted(states[service]):
            note(f"{service:<11} {name:<32} {state}")
    step("replicas as HAProxy sees them (backend tiled_http)")
    servers = haproxy_stats.servers(stack.stats_url)
    for s in servers:
        note(f"{s['name']:<11} {s['addr']:<16} {s['status']:<6} {s['sessions']} open requests")
    up = sum(s["status"] == "UP" for s in servers)
    note(f"{up} UP of {len(servers)} discovered; .env asks for TILED_REPLICAS={stack.replicas}")
    if stack.monitoring:
        step(f"from Prometheus ({stack.prometheus_url})")
        try:
            note(monitoring.health_line(stack))
        except Failure as failure:
            note(f"{failure.what} → {failure.next_step}")


if __name__ == "__main__":
    run_main(main)
