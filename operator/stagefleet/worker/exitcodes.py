"""Worker exit codes: the operator tells user errors (no retry) from infrastructure failures by them."""

from __future__ import annotations

OK = 0
UNEXPECTED = 1
USAGE = 2
CONTEXT = 10
DOCKERFILE = 11
SECRET = 12
BUILD_STEP = 13
PUSH = 14
PULL = 15
#: The pod's securityContext keeps rootless buildah from making its user namespace: the same pod spec
#: fails the same way on every node, so a retry only repeats it.
SECURITY_CONTEXT = 16

#: The "kind" of a failure in the result JSON, by exit code.
KIND = {
    UNEXPECTED: "internal",
    USAGE: "usage",
    CONTEXT: "context",
    DOCKERFILE: "dockerfile",
    SECRET: "secret",
    BUILD_STEP: "build-step",
    PUSH: "push",
    PULL: "pull",
    SECURITY_CONTEXT: "security-context",
}

#: The user's own mistakes: retrying cannot help.
USER_ERRORS = frozenset({DOCKERFILE, SECRET, BUILD_STEP})
#: The worker's pod spec, not the build, is wrong: retrying cannot help either (the admin changes the chart).
CONFIGURATION_ERRORS = frozenset({SECURITY_CONTEXT})
#: Worth a retry (10 may be either a typo in the URL or a flaky git server; the operator retries once).
RETRYABLE = frozenset({UNEXPECTED, CONTEXT, PUSH, PULL})
