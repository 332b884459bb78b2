"""The build-state core: which plan groups start, retry, fail or finish, from their phases alone.

Pure and shared by both shells: the operator (`controller.status.decide`, which observes pods and writes
status) and local mode (`local.run_plan`, which runs worker processes). Each shell only observes and acts;
what a phase means and what comes next is decided here once, so the two cannot drift apart.
"""
