"""A Linux board over SSH: commands through ``ssh``, files through ``scp`` (OpenSSH clients).

Host keys are verified: ``StrictHostKeyChecking=yes`` unless the user asks to accept a new
board's key (``accept-new``, which still refuses a *changed* key). Authentication is by key only
(``BatchMode=yes``: no password prompt can hang a run). The command for the far side is built
with :func:`shlex.join`, so each argument is quoted for the remote shell; nothing the user typed
is joined into a local shell string.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from costmeter.devices.remote.transport import CommandResult, CommandRunner, RemoteFiles, run_command
from costmeter.errors import ConfigError, UnavailableError

SSH_FAILURE = 255  # ssh's own exit status for connection, host-key and authentication failures
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])$")


@dataclass(frozen=True)
class SshTarget:
    """``ssh://user@host[:port]`` split and checked. ``user`` None means ssh's default user."""

    host: str
    user: str | None = None
    port: int = 22

    @classmethod
    def parse(cls, url: str) -> SshTarget:
        """Parse ``ssh://user@host[:port]`` (IPv6 hosts in brackets); ConfigError if malformed."""
        fix = "write it as ssh://user@host or ssh://user@host:2222"
        if not url.startswith("ssh://"):
            raise ConfigError(f"not an SSH device {url!r}; {fix}")
        rest = url[len("ssh://"):].rstrip("/")
        user, at, hostport = rest.rpartition("@")
        if not at:
            user, hostport = "", rest
        port = 22
        match = re.match(r"^(.*?)(?::(\d+))?$", hostport)
        host = match.group(1) if match else hostport
        if match and match.group(2):
            port = int(match.group(2))
        if not host or not _HOST_RE.match(host):
            raise ConfigError(f"bad host in {url!r}; {fix}")
        if user and not _USER_RE.match(user):
            raise ConfigError(f"bad user name in {url!r}; {fix}")
        if not 1 <= port <= 65535:
            raise ConfigError(f"bad port {port} in {url!r}; use a port from 1 to 65535")
        return cls(host=host, user=user or None, port=port)

    @property
    def destination(self) -> str:
        """``user@host`` (or ``host``) as ssh and scp take it."""
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return f"ssh://{self.destination}:{self.port}"


@dataclass(frozen=True)
class SshOptions:
    """Client settings. ``known_hosts`` None uses the user's own file; ``identity`` None uses the
    user's default keys or agent; ``accept_new_host_key`` records an unknown board's key."""

    identity: str | None = None
    known_hosts: str | None = None
    accept_new_host_key: bool = False
    connect_timeout_s: int = 10
    ssh: str = "ssh"
    scp: str = "scp"


class SshTransport:
    """Transport to one board over SSH. ``runner`` is the command seam (a real one by default)."""

    def __init__(self, target: SshTarget, options: SshOptions = SshOptions(),
                 runner: CommandRunner = run_command) -> None:
        self.target = target
        self.options = options
        self._runner = runner
        self.description = str(target)
        files = RemoteFiles(self)
        self.read_text = files.read_text
        self.list_dir = files.list_dir

    def _common(self) -> list[str]:
        o = self.options
        args = ["-o", "BatchMode=yes",
                "-o", f"StrictHostKeyChecking={'accept-new' if o.accept_new_host_key else 'yes'}",
                "-o", f"ConnectTimeout={int(o.connect_timeout_s)}",
                "-o", "LogLevel=ERROR"]
        if o.known_hosts:
            args += ["-o", f"UserKnownHostsFile={o.known_hosts}"]
        if o.identity:
            args += ["-i", o.identity, "-o", "IdentitiesOnly=yes"]
        return args

    def ssh_argv(self, argv: list[str]) -> list[str]:
        """The local ``ssh`` argument list that runs ``argv`` on the board (each arg quoted there)."""
        return [self.options.ssh, "-p", str(self.target.port), *self._common(), "--", self.target.destination,
                shlex.join([str(a) for a in argv])]

    def scp_argv(self, source: str, destination: str, recursive: bool = False) -> list[str]:
        """The local ``scp`` argument list for one copy (``host:`` prefixes already applied)."""
        return [self.options.scp, "-q", "-P", str(self.target.port), *self._common(),
                *(["-r"] if recursive else []), "--", source, destination]

    def _remote(self, path: str) -> str:
        return f"{self.target.destination}:{path}"

    def run(self, argv: list[str], timeout_s: float | None = None) -> CommandResult:
        """Run ``argv`` on the board; UnavailableError when SSH itself fails (unreachable host,
        host key mismatch, authentication)."""
        result = self._call(self.ssh_argv(argv), timeout_s)
        return result

    def put(self, local: Path, remote: str) -> None:
        """Copy a local file or folder to the board."""
        local = Path(local)
        result = self._call(self.scp_argv(str(local), self._remote(remote), recursive=local.is_dir()), None)
        if not result.ok:
            raise UnavailableError(f"copying {local.name} to {self.target} failed: {_first(result.stderr)}; "
                                   "check free space and permissions in the remote temp folder")

    def get(self, remote: str, local: Path) -> None:
        """Copy a file from the board; FileNotFoundError when it is not there."""
        result = self._call(self.scp_argv(self._remote(remote), str(local)), None)
        if not result.ok:
            if "no such file" in result.stderr.lower():
                raise FileNotFoundError(2, "No such file or directory on the board", remote)
            raise UnavailableError(f"copying {remote} from {self.target} failed: {_first(result.stderr)}")

    def _call(self, argv: list[str], timeout_s: float | None) -> CommandResult:
        try:
            result = self._runner(argv, timeout_s)
        except FileNotFoundError:
            raise UnavailableError(f"{argv[0]!r} is not installed here; install the OpenSSH client "
                                   "(apt-get install openssh-client)") from None
        if result.returncode == SSH_FAILURE:
            problem = describe_ssh_failure(result.stderr, self.target, self.options)
            if problem:
                raise UnavailableError(problem)
        return result


def describe_ssh_failure(stderr: str, target: SshTarget, options: SshOptions) -> str | None:
    """A one-line message with the fix for ssh's own failures; None when it was the command's."""
    text = stderr.lower()
    known = options.known_hosts or "~/.ssh/known_hosts"
    key_ref = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    if "remote host identification has changed" in text or ("host key for" in text and "has changed" in text):
        return (f"host key of {target} does not match the one in {known} (possible impersonation); if the "
                f"board was reinstalled, check its new key and remove the old one: ssh-keygen -R '{key_ref}'")
    if "host key verification failed" in text or "no matching host key" in text:
        return (f"host key of {target} is not in {known}; check the board's fingerprint and add it "
                f"(ssh-keyscan -p {target.port} {target.host} >> {known}), or pass --accept-new-host-key")
    if "permission denied" in text or "too many authentication failures" in text:
        return (f"authentication to {target} failed (permission denied); pass --ssh-identity KEY or install "
                "your public key in the board's ~/.ssh/authorized_keys")
    for needle, why in (("connection refused", "connection refused"), ("no route to host", "no route to host"),
                        ("timed out", "connection timed out"), ("could not resolve", "host name not found"),
                        ("name or service not known", "host name not found"),
                        ("network is unreachable", "network unreachable"),
                        ("connection closed", "connection closed by the board")):
        if needle in text:
            return f"cannot reach {target} ({why}); check the address and port and that sshd runs on the board"
    if "identity file" in text and "not accessible" in text:
        return f"the SSH key {options.identity!r} cannot be read; check --ssh-identity"
    return None


def _first(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:300] if lines else "no message"
