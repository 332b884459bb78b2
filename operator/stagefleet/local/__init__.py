"""Local mode: run a build plan as local `stagefleet-worker` processes, one per group, with the same
plan, worker and build-state core (`stagefleet.buildstate`) as the operator, minus Kubernetes. This face
hands on the names of its parts: `shapes`, `refs`, `workerargs`, `masking`, `events`, `summary`,
`progress` and `runner`; `context` and `reuse` (stage reuse before any worker starts) are imported by
name."""

from __future__ import annotations

from stagefleet.local.events import (
    BUILD_FINISHED,
    BUILD_STARTED,
    GROUP_FINISHED,
    GROUP_RETRYING,
    GROUP_REUSED,
    GROUP_STARTED,
    LOG,
    NOTE,
    Event,
    StageTracker,
    format_plain,
    looks_like_result,
    parse_result,
    short_digest,
)
from stagefleet.local.masking import Masker
from stagefleet.local.progress import JsonProgress, PlainProgress, Progress, RichProgress
from stagefleet.local.refs import (
    default_tag,
    insecure_hosts,
    is_loopback,
    new_build_id,
    parse_kv,
    parse_secret,
    ref_host,
    repository_of,
    stage_repo,
)
from stagefleet.local.runner import STOP_GRACE_SECONDS, BuildResult, consumed_check, run_plan
from stagefleet.local.shapes import GroupLike, PlanLike, needed_groups, unschedulable
from stagefleet.local.summary import (
    GroupOutcome,
    StageRow,
    Summary,
    format_summary,
    format_table,
    summarize,
    summary_footer,
    summary_table,
)
from stagefleet.local.workerargs import BuildSettings, Stored, key_args, result_tag, worker_argv

__all__ = [
    "GroupLike", "PlanLike", "needed_groups", "unschedulable", "default_tag", "insecure_hosts",
    "is_loopback", "new_build_id", "parse_kv", "parse_secret", "ref_host", "repository_of", "stage_repo",
    "BuildSettings", "Stored", "key_args", "result_tag", "worker_argv", "Masker", "BUILD_FINISHED",
    "BUILD_STARTED", "Event", "GROUP_FINISHED", "GROUP_RETRYING", "GROUP_REUSED", "GROUP_STARTED", "LOG",
    "NOTE", "StageTracker", "format_plain", "looks_like_result", "parse_result", "short_digest",
    "GroupOutcome", "StageRow", "Summary", "format_summary", "format_table", "summarize", "summary_footer",
    "summary_table", "JsonProgress", "PlainProgress", "Progress", "RichProgress", "BuildResult",
    "STOP_GRACE_SECONDS", "consumed_check", "run_plan",
]
