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
}

#: The user's own mistakes: retrying cannot help.
USER_ERRORS = frozenset({DOCKERFILE, SECRET, BUILD_STEP})
#: Worth a retry (10 may be either a typo in the URL or a flaky git server; the operator retries once).
RETRYABLE = frozenset({UNEXPECTED, CONTEXT, PUSH, PULL})
