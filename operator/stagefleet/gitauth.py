"""Git credentials as files, never as arguments: shared by the operator (pinning a revision) and the worker
(fetching the context).

* https: a credential helper given through ``GIT_CONFIG_*`` environment variables (git ≥ 2.31) that reads
  the username and password (or token) from files when git asks; the command line and the URL carry
  neither, and any helper of the system or user configuration is reset first.
* ssh: our key only (``IdentitiesOnly``), host keys from a known_hosts file with
  ``StrictHostKeyChecking=yes``; without one, every host key is refused, unless host-key checking was
  deliberately switched off (``spec.source.git.insecureIgnoreHostKey``), which accepts any key and remembers
  none (``/dev/null``), rather than trusting whichever key answered first.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

DEFAULT_USERNAME = "git"
SSH_CONNECT_TIMEOUT = 15  # seconds: a black-holed ssh host fails fast instead of holding the fetch

# user:password@ in a URL's authority (user@ alone, as in ssh://git@host, is no secret)
_PASSWORD_IN_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#@]*:[^/?#@]*@")
# Any user@ in an http(s) URL: a token is commonly given as the user name (https://TOKEN@github.com/...),
# and the Secret's username key covers every legitimate use.
_USER_IN_HTTP_URL = re.compile(r"^https?://[^/?#@]*@")


def is_ssh_url(url: str) -> bool:
    """ssh:// or scp-like user@host:path (what needs a key and known hosts)."""
    return url.startswith("ssh://") or ("://" not in url and "@" in url.split(":", 1)[0])


def is_http_url(url: str) -> bool:
    return url.startswith(("https://", "http://"))


def has_password(url: str) -> bool:
    """Whether ``url`` embeds a password (https://user:token@host/...)."""
    return bool(_PASSWORD_IN_URL.match(url))


def has_credentials(url: str) -> bool:
    """Whether ``url`` may carry a credential: a password (any scheme), or any user name in an http(s) URL
    (https://TOKEN@host/... is how a token is often given). ssh's user@ (ssh://git@host, git@host:path) is
    a login name, no secret."""
    return has_password(url) or bool(_USER_IN_HTTP_URL.match(url))


def ssh_command(key: Path | None, known_hosts: Path | None, *, insecure_ignore_host_key: bool = False) -> str:
    """GIT_SSH_COMMAND: batch mode, only ``key``, host keys from ``known_hosts`` strictly."""
    parts = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT}"]
    if key is not None:
        parts += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    if insecure_ignore_host_key:
        parts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
                  "LogLevel=ERROR"]
    else:
        parts += ["-o", f"UserKnownHostsFile={known_hosts or '/dev/null'}", "-o", "StrictHostKeyChecking=yes",
                  "-o", "GlobalKnownHostsFile=/dev/null"]
    return shlex.join(parts)


def credential_env(password_file: Path, username_file: Path | None) -> dict[str, str]:
    """Environment making git answer an https credential request from the two files (username default
    ``git``, which token-accepting servers ignore)."""
    user = f"echo {DEFAULT_USERNAME}" if username_file is None else f"cat {shlex.quote(str(username_file))}"
    helper = (
        '!f() { test "$1" = get || exit 0; '
        f'echo "username=$({user})"; echo "password=$(cat {shlex.quote(str(password_file))})"; }}; f'
    )
    return {
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "credential.helper",
        "GIT_CONFIG_VALUE_0": "",  # resets the helpers of other configuration files
        "GIT_CONFIG_KEY_1": "credential.helper",
        "GIT_CONFIG_VALUE_1": helper,
    }
