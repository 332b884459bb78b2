"""The phases of a plan group, as status shows them on each of its stages and local mode reports them."""

from __future__ import annotations

WAITING = "Waiting"      # not started yet (or started again after a restart)
PENDING = "Pending"      # its worker was started and has not begun building (a pod not yet running)
RUNNING = "Running"
RETRYING = "Retrying"    # an attempt failed; the next one is due at its retry time
SUCCEEDED = "Succeeded"
FAILED = "Failed"
CANCELLED = "Cancelled"

ACTIVE = (PENDING, RUNNING)
DONE = (SUCCEEDED, FAILED, CANCELLED)
