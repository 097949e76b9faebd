"""A throwaway Postfix instance for the interop tests: its own folders, no DNS, always stopped.

It has its own configuration, queue and data directories in a temporary
directory (the daemons run as the postfix user, so the folders are
world-readable), logs to a file there (no syslog on these machines), and
chroots nothing.  Starting Postfix needs root; ``.ci/run`` installs it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.test_interop import TIMEOUT, need

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {home}/queue
data_directory = {home}/data
maillog_file = {home}/maillog
maillog_file_prefixes = {home}
mydestination =
alias_maps =
alias_database =
inet_protocols = ipv4
smtp_dns_support_level = disabled
"""

#: The services every instance runs; a test adds the listener or delivery agent it needs.
_MASTER_CF = """\
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
proxymap  unix  - - n -  - proxymap
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def shared_temp_dir() -> pathlib.Path:
    """A temporary folder the postfix user can reach (pytest's tmp_path is the test user's alone)."""
    home = pathlib.Path(tempfile.mkdtemp(prefix="smtpwire-postfix-"))
    home.chmod(0o755)
    return home


@contextlib.contextmanager
def throwaway_postfix(main_cf: str, master_cf: str) -> Iterator[pathlib.Path]:
    """A running instance with ``main_cf`` and ``master_cf`` added to the basics; yields its home."""
    if os.geteuid() != 0:
        pytest.skip("starting a Postfix instance needs root")
    home = shared_temp_dir()
    for folder in ("etc", "queue", "data"):
        (home / folder).mkdir(mode=0o755)
    shutil.chown(home / "data", pwd.getpwnam("postfix").pw_uid)
    (home / "etc" / "main.cf").write_text(_MAIN_CF.format(home=home) + main_cf)
    (home / "etc" / "master.cf").write_text(_MASTER_CF + master_cf)
    try:
        postfix(home, "start")
        yield home
    finally:
        _stop(home)
        shutil.rmtree(home, ignore_errors=True)


def postfix(home: pathlib.Path, command: str) -> None:
    result = subprocess.run(
        [need("postfix"), "-c", str(home / "etc"), command], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, f"postfix {command}: {result.stdout}{result.stderr}{maillog(home)}"


def sendmail(home: pathlib.Path, sender: str, recipients: list[str], message: bytes) -> None:
    """Submit ``message`` through the instance's sendmail (postdrop into its own queue)."""
    command = [need("sendmail"), "-C", str(home / "etc"), "-f", sender, *recipients]
    subprocess.run(command, input=message, check=True, timeout=TIMEOUT)


def maillog(home: pathlib.Path) -> str:
    log = home / "maillog"
    return log.read_text(errors="replace") if log.exists() else ""


def _stop(home: pathlib.Path) -> None:
    """``postfix stop`` signals the master; wait (bounded) for it to go, and kill it only if it stays."""
    with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
        postfix(home, "stop")
    pid_file = home / "queue" / "pid" / "master.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().strip())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
