"""The operator's side of stage reuse when a new run is planned: key its stages, look their stored results
up in the cache repository, copy a stored final result to the output tags. The registry I/O beside the pure
`reuse`, which records the outcome in status."""

from __future__ import annotations

import logging

from stagefleet import stagekey
from stagefleet.controller import registry as reg
from stagefleet.controller import reuse
from stagefleet.controller.model import PlanView
from stagefleet.controller.podspec import BuildRef
from stagefleet.controller.registryclients import RegistryClients
from stagefleet.controller.source import Resolved
from stagefleet.controller.spec import ImageBuildSpec
from stagefleet.controller.writes import log_fields

log = logging.getLogger("stagefleet.operator")


def find(
    registry_clients: RegistryClients,
    build: BuildRef,
    spec: ImageBuildSpec,
    plan: PlanView,
    resolved: Resolved,
) -> reuse.Reuse | None:
    """Key the stages of a newly planned generation and find the results that exist (`reuse.lookup`);
    when the final group's does, write the output tags from it (`reuse.copy_image`). None when stage
    reuse is off (spec.cache.reuseStages, cache disabled) or the plan has no parsed stages."""
    cache_repo = spec.cache_repository(build.namespace)
    if not spec.cache.reuse_stages or cache_repo is None or plan.graph is None:
        return None
    client_for = registry_clients.for_build(build, spec)
    context = resolved.index  # an OCI source's, read from its layer
    if resolved.tree is not None:
        # (the workers' clone keeps .git in a context that is the repository's root: its commit counts)
        head = None if spec.source.context_dir else resolved.git_commit
        tree = stagekey.index_git_tree(resolved.tree, spec.source.context_dir, head=head)
        context = tree.without(resolved.ignore)  # (what the builder never copies keys nothing)
    try:
        platform = reuse.build_platform(spec.platform, spec.node_selector)
        found = reuse.lookup(plan.graph, plan, platform=platform, context=context,
                             cache_repo=cache_repo, client_for=client_for)
    except Exception:  # noqa: BLE001 (reuse saves time; it must never stop a build)
        log.exception(
            "stage reuse lookup of %s/%s failed; building every group", build.namespace, build.name
        )
        return None
    final = plan.final_group
    if final in found.found:
        where = reg.split_repository(spec.output.repository)
        try:
            if where is None:
                raise reg.RegistryError(f"{spec.output.repository} names no registry host")
            reuse.copy_image(
                client_for(where[0]), found.image[final], found.found[final], spec.output.refs
            )
        except reg.RegistryError as e:
            found.notes.append(f"output not copied from the stored result, building it: {e}")
            del found.found[final], found.image[final]
    if found.notes:
        log.info("%s/%s stage reuse: %s", build.namespace, build.name, "; ".join(found.notes[:5]),
                 extra=log_fields(build.namespace, build.name))
    return found
