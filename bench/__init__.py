"""`make bench`: throughput of both roles and both front ends (python -m bench)."""
