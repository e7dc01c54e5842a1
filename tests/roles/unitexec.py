"""Run a command inside a systemd unit's sandbox, applied by hand: systemd is not PID 1 here.

``python unitexec.py UNIT_FILE [--writable DIR ...] -- ARGV...`` reads the ``[Service]`` section
of UNIT_FILE and, in this order, applies what can be reproduced in one process, then execs ARGV:

- a mount namespace (slave of the host's, as systemd's: new mounts on the host, such as an
  ``ip netns add`` after the start, still reach the service);
  ``ProtectProc=invisible`` / ``ProcSubset=pid``: a fresh /proc, ``hidepid=invisible,subset=pid``;
  ``ProtectHome=yes``: empty /root and /home (the Python that runs the command stays visible
  where it lives, a concession to test machines whose Python is under /root);
  ``ReadOnlyPaths=``: each bound onto itself, as systemd does;
  ``ProtectSystem=strict``: everything read-only but the ``--writable`` directories (standing
  in for ``StateDirectory=``);
- ``DynamicUser=yes``: uid and gid 65534, no supplementary groups;
- ``CapabilityBoundingSet=``: every other capability dropped from the bounding set, so that
  after exec even root holds only these; no ambient capabilities;
- ``NoNewPrivileges=yes``; ``MemoryDenyWriteExecute=yes`` as the kernel's own PR_SET_MDWE;
- ``SystemCallFilter=`` (groups expanded by ``systemd-analyze syscall-filter``),
  ``SystemCallErrorNumber=EPERM``, ``RestrictAddressFamilies=`` (``socket(2)`` of any other
  family fails) and ``SystemCallArchitectures=native``, as one seccomp filter (libseccomp).

Not reproduced: PrivateTmp, PrivateDevices, the Protect{Kernel*,ControlGroups,Clock,Hostname}
settings, RestrictNamespaces and RestrictRealtime. Needs root and Linux >= 6.3.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_SLAVE = 0x20, 0x1000, 0x2000, 0x4000, 0x80000
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64 alike
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_SET_MDWE = 24, 38, 47, 65
PR_CAP_AMBIENT_CLEAR_ALL, PR_MDWE_REFUSE_EXEC_GAIN = 4, 1
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
NOBODY = 65534
CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
        "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
        "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
        "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
        "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]

libc = ctypes.CDLL(None, use_errno=True)


def service_settings(unit: Path) -> dict[str, list[str]]:
    """``[Service]`` directives, each with its values in order (an empty value resets)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section != "[Service]":
            continue
        key, _, value = line.partition("=")
        values = settings.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return settings


def last(settings: dict[str, list[str]], key: str, default: str = "") -> str:
    return settings[key][-1] if settings.get(key) else default


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    _check(libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                      ctypes.c_ulong(flags), data and data.encode()), f"mount {target}")


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _read_only_everywhere() -> None:
    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr),
                        ctypes.sizeof(attr)), "mount_setattr / read-only")


def _hide_homes() -> None:
    keep = Path(sys.base_prefix).resolve()
    staging = tempfile.mkdtemp(prefix="unitexec-")
    inside_home = any(keep.is_relative_to(home) for home in ("/root", "/home"))
    if inside_home:
        _mount(str(keep), staging, None, MS_BIND | MS_REC)
    for home in ("/root", "/home"):
        if Path(home).is_dir():
            _mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    if inside_home:
        keep.mkdir(parents=True)
        _mount(staging, str(keep), None, MS_MOVE)
    os.rmdir(staging)


def apply_mounts(settings: dict[str, list[str]], writable: list[str]) -> None:
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_SLAVE)
    if last(settings, "ProtectProc") == "invisible" or last(settings, "ProcSubset") == "pid":
        options = []
        if last(settings, "ProtectProc") == "invisible":
            options.append("hidepid=invisible")
        if last(settings, "ProcSubset") == "pid":
            options.append("subset=pid")
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ",".join(options))
    if last(settings, "ProtectHome") == "yes":
        _hide_homes()
    for value in settings.get("ReadOnlyPaths", []):
        for word in value.split():
            path = word.removeprefix("-")
            if word.startswith("-") and not Path(path).exists():
                continue
            _mount(path, path, None, MS_BIND | MS_REC)  # as systemd does; made read-only below
    if last(settings, "ProtectSystem") == "strict":
        _read_only_everywhere()
        for path in writable:
            _mount(path, path, None, MS_BIND)
            _mount(None, path, None, MS_REMOUNT | MS_BIND)


def apply_privileges(settings: dict[str, list[str]], cap_last: int) -> None:
    if "CapabilityBoundingSet" in settings:
        keep = {name for value in settings["CapabilityBoundingSet"] for name in value.split()}
        unknown = keep - set(CAPS)
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}")
        for number in range(cap_last + 1):
            name = CAPS[number] if number < len(CAPS) else f"CAP_{number}"
            if name not in keep:
                _check(libc.prctl(PR_CAPBSET_DROP, number, 0, 0, 0), f"drop {name}")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient")
    if last(settings, "DynamicUser") == "yes":
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    if last(settings, "NoNewPrivileges") == "yes":
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    if last(settings, "MemoryDenyWriteExecute") == "yes":
        _check(libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0), "PR_SET_MDWE")


def expand(item: str, seen: set[str] | None = None) -> set[str]:
    """A syscall name, or a ``@group`` expanded (recursively) as systemd does."""
    if not item.startswith("@"):
        return {item}
    seen = set() if seen is None else seen
    seen.add(item)
    listing = subprocess.run(["systemd-analyze", "syscall-filter", item], capture_output=True,
                             text=True, check=True, timeout=30).stdout
    calls: set[str] = set()
    for line in listing.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#") and word not in seen:
            calls |= expand(word, seen)
    return calls


def allowed_syscalls(settings: dict[str, list[str]]) -> set[str] | None:
    values = settings.get("SystemCallFilter", [])
    if not values:
        return None
    if values[0].startswith("~"):
        raise ValueError("only allow-list SystemCallFilter= is reproduced")
    allowed: set[str] = set()
    for value in values:
        deny = value.startswith("~")
        names = set().union(*(expand(item) for item in value.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def load_seccomp(allowed: set[str], families: list[int] | None) -> None:
    seccomp = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = seccomp.seccomp_init(0x00050000 | errno.EPERM)  # SCMP_ACT_ERRNO(EPERM)
    if not ctx:
        raise OSError("seccomp_init failed")
    for name in sorted(allowed):
        if name == "socket" and families is not None:
            continue
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            continue  # not a syscall of this architecture
        seccomp.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, 0, None)
    if families is not None and "socket" in allowed:
        number = seccomp.seccomp_syscall_resolve_name(b"socket")
        for family in families:
            cmp = ArgCmp(0, SCMP_CMP_EQ, family, 0)
            result = seccomp.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, 1,
                                                    ctypes.byref(cmp))
            if result != 0:
                raise OSError(-result, f"seccomp rule for socket({family})")
    result = seccomp.seccomp_load(ctx)
    if result != 0:
        raise OSError(-result, "seccomp_load")


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit("usage: unitexec.py UNIT [--writable DIR ...] -- ARGV...")
    split = argv.index("--")
    head, command = argv[:split], argv[split + 1:]
    unit = Path(head[0])
    writable = [head[i + 1] for i, word in enumerate(head) if word == "--writable"]
    settings = service_settings(unit)
    cap_last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    allowed = allowed_syscalls(settings)  # before the mounts: systemd-analyze needs /proc
    families = None
    if settings.get("RestrictAddressFamilies"):
        names = " ".join(settings["RestrictAddressFamilies"]).split()
        families = [int(getattr(socket, name)) for name in names]
    environment = dict(os.environ)
    for value in settings.get("Environment", []):
        for word in shlex.split(value):
            key, _, text = word.partition("=")
            environment[key] = text
    if settings.get("LimitNOFILE"):  # before the capabilities go: may raise the hard limit
        files = int(last(settings, "LimitNOFILE"))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
        except (ValueError, OSError):  # no CAP_SYS_RESOURCE here (a container): as far as allowed
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(files, hard), hard))
    apply_mounts(settings, writable)
    apply_privileges(settings, cap_last)
    if allowed is not None:
        load_seccomp(allowed, families)
    os.execve(command[0], command, environment)


if __name__ == "__main__":
    main(sys.argv[1:])
