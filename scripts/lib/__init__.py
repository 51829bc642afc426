"""Libraries the operator commands in scripts/ share (no make target runs these)."""
