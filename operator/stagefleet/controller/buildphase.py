"""The ImageBuild's phases and the reasons its conditions give, for every module that writes or reads
status (a group's phases are the build-state core's, `buildstate.phases`)."""

from __future__ import annotations

# Phases of the ImageBuild.
PENDING, PLANNING, BUILDING = "Pending", "Planning", "Building"
SUCCEEDED, FAILED, CANCELLED = "Succeeded", "Failed", "Cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

# A worker pod (or the ConfigMap its Dockerfile comes in) that the API server refused to create: the group
# waits, the build is Stalled with this reason, and the create is tried again after a growing delay.
REJECTED = "PodRejected"
SUSPENDED = "Suspended"  # spec.suspend: the reason of the build's conditions and its event

# Ready groups wait for a slot of the farm's cap (`workerqueue`, --max-worker-pods): Reconciling, never
# Stalled; status.queue and the groups' messages say how many groups start first.
QUEUED = "Queued"

# A refusal by the namespace's ResourceQuota (the API's "exceeded quota: NAME, requested: …"): the farm is
# full, nothing is wrong. The group waits and is tried again within a few seconds (a finishing pod frees
# the quota); the build keeps Reconciling with this reason, never Stalled.
QUOTA = "WaitingForQuota"
