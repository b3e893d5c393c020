"""`edgeemb bench --emulate`: the work a model costs on a device's CPU, counted in instructions
under qemu user mode, where wall time means nothing (qemu is 3-400x off and varies with the host).

A small TCG plugin (qemu/insn_count.c, built here against qemu's public plugin header) counts
the instructions each guest thread executes. A count is only worth reporting if it is the same
in every run, so the guest runs:

- on one thread (llama.cpp `-t 1`, onnxruntime with one intra-op thread): threads that spin or
  wake each other add counts that depend on the host's scheduling;
- in a mount namespace of its own, where /proc/cpuinfo describes the profile's CPU and /sys holds
  only its CPU list: onnxruntime's cpuinfo crashes on the host's /sys, and llama.cpp parses the
  host's cpuinfo, whose clock speeds change from second to second;
- with a clock that advances a microsecond per read (qemu/fixed_clock.c, preloaded into qemu),
  no address randomisation, Python's hash seed fixed and onnxruntime's telemetry thread off.

A unit's cost is the difference of two runs that differ only in the number of units (0 and 1
passes over the sentences; two generation lengths), so start-up and loading cancel out; the
count of the shorter run is reported as start-up. ONNX files run in an aarch64 Python with numpy
and onnxruntime (Debian's python3.11 for arm64 and the manylinux aarch64 wheels of the versions
installed here), GGUF files in the llama-bench that `edgeemb cross` builds for the profile.
Everything is fetched and built once, into ~/.cache/edgeemb/emulate.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgeemb.bench.backends import SCHEMA, backend_for
from edgeemb.bench.cross import cross_build, qemu_user, require_qemu_cpu
from edgeemb.bench.devices import DeviceProfile
from edgeemb.errors import EdgeembError, require_program, run_program

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeemb" / "emulate"
SOURCES = Path(__file__).with_name("qemu")
GUEST_SCRIPT = Path(__file__).with_name("guest.py")
DEBIAN = "http://deb.debian.org/debian"
# Debian bookworm's Python 3.11 for arm64 and the libraries its interpreter and onnxruntime load.
GUEST_PACKAGES = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libssl3",
    "libbz2-1.0",
    "liblzma5",
    "libsqlite3-0",
    "libuuid1",
    "libcrypt1",
    "libncursesw6",
    "libtinfo6",
    "libreadline8",
    "libzstd1",
)
GUEST_PYTHON = "usr/bin/python3.11"
GUEST_ENV = {
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "ORT_DISABLE_TELEMETRY": "1",
    "LANG": "C.UTF-8",
}
# /proc/cpuinfo's "CPU part" (MIDR) and features for the cores qemu models: what cpuinfo parsers
# (onnxruntime's, llama-bench's report) read to name the core. Others get no part and v8.2's features.
ARMV8_0 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
ARMV8_2 = ARMV8_0 + " atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"
CPUS = {
    "cortex-a35": (0xD04, ARMV8_0),
    "cortex-a53": (0xD03, ARMV8_0),
    "cortex-a57": (0xD07, ARMV8_0),
    "cortex-a72": (0xD08, ARMV8_0),
    "cortex-a55": (0xD05, ARMV8_2),
    "cortex-a76": (0xD0B, ARMV8_2),
    "neoverse-n1": (0xD0C, ARMV8_2),
    "cortex-a710": (0xD47, ARMV8_2),
}


@dataclass(frozen=True)
class Count:
    """One emulated run: instructions per guest thread (the first is the main thread) and the
    peak RSS of the qemu process (the guest's memory and the emulator's)."""

    threads: list[int]
    peak_rss_bytes: int


def count_instructions(
    artifact: str | Path,
    device: DeviceProfile,
    *,
    ids: list | None = None,
    generate: int = 32,
    mmap: bool = True,
) -> dict:
    """Count the instructions per sentence (ONNX; `ids`: the sentences as token ids) or per
    generated token (GGUF; `generate` tokens beyond the first 4, the file mapped unless `mmap` is
    False) of `artifact` on `device`'s CPU. Returns a bench result (schema edgeemb.bench/1) with
    `instructions_per_unit` in place of time, `short_run_instructions` the whole count of the
    shorter run (start-up and loading; one warm-up sentence, or 4 tokens), and the qemu process's
    peak RSS."""
    artifact = Path(artifact)
    backend = backend_for(artifact)
    _, version = qemu_user()
    require_qemu_cpu(device.qemu_cpu)
    with tempfile.TemporaryDirectory(prefix="edgeemb-emulate-") as tmp:
        if backend == "onnxruntime":
            if not ids:
                raise EdgeembError("no sentences to run")
            root = python_sysroot()
            program = [str(root / "root" / GUEST_PYTHON), "-s", str(GUEST_SCRIPT), str(artifact.resolve())]
            runs = [(0, [*program, "0"]), (len(ids), [*program, "1"])]
            unit, sysroot, built_for, stdin = "sentence", root, None, json.dumps(ids).encode()
        elif backend == "llama.cpp":
            if generate < 1:
                raise EdgeembError(f"generate must be at least 1, got {generate}")
            binary, built_for = _llama_bench(device, Path(tmp))
            program = [
                str(binary),
                "-m",
                str(artifact.resolve()),
                "-p",
                "0",
                "-r",
                "1",
                "-t",
                "1",
                "--no-warmup",
                "-lm",
                "mmap" if mmap else "none",
                "-o",
                "json",
            ]
            runs = [(4, [*program, "-n", "4"]), (4 + generate, [*program, "-n", str(4 + generate)])]
            unit, sysroot, stdin = "generated token", None, b""
        else:
            raise EdgeembError(
                f"{artifact}: --emulate runs ONNX files (onnxruntime) and GGUF files (llama.cpp), not {backend}"
            )
        counts = [run_counted(argv, device, sysroot=sysroot, stdin=stdin) for _, argv in runs]
    units = runs[1][0] - runs[0][0]
    work = counts[1].threads[0] - counts[0].threads[0]
    others = [sum(count.threads[1:]) for count in counts]
    result = {
        "schema": SCHEMA,
        "artifact": str(artifact),
        "backend": backend,
        "file_bytes": artifact.stat().st_size,
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "profile": device.name,
        "fits": True,
        "emulated": {
            "qemu": version,
            "cpu": device.qemu_cpu,
            "threads": 1,
            **({"arm_arch": built_for, "mmap": mmap} if built_for else {}),
        },
        "unit": unit,
        "units": units,
        "instructions": work,
        "instructions_per_unit": work / units,
        "short_run_instructions": counts[0].threads[0],
        "peak_rss_bytes": max(count.peak_rss_bytes for count in counts),
    }
    if any(others):
        result["other_thread_instructions"] = others  # not in the per-unit figure; they vary from run to run
    return result


def run_counted(argv: list[str], device: DeviceProfile, *, sysroot: Path | None = None, stdin: bytes = b"") -> Count:
    """Run an aarch64 program under qemu as `device`'s CPU and count its instructions (see the
    module docstring for what keeps the count the same from run to run). Its input comes on stdin,
    not in files: a temporary file's random name would change what the guest does."""
    qemu, _ = qemu_user()
    plugin, clock = _helpers()
    with tempfile.TemporaryDirectory(prefix="edgeemb-qemu-") as tmp:
        machine = _fake_machine(Path(tmp), device)
        out = Path(tmp) / "count.json"
        guest_env = {**GUEST_ENV, **({"PYTHONPATH": str(sysroot / "site")} if sysroot else {})}
        inner = [
            "env",
            "-i",
            *(f"{key}={value}" for key, value in guest_env.items()),
            f"LD_PRELOAD={clock}",
            "setarch",
            platform.machine(),
            "-R",
            qemu,
            "-U",
            "LD_PRELOAD",
            "-cpu",
            device.qemu_cpu,
            *(["-L", str(sysroot / "root")] if sysroot else []),
            "-plugin",
            f"{plugin},out={out}",
            *argv,
        ]
        script = (
            f"mount --bind {machine / 'cpuinfo'} /proc/cpuinfo && mount --bind {machine / 'sys'} /sys"
            f" && exec {shlex.join(inner)}"
        )
        user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
        unshare = require_program("unshare", "util-linux")
        done = subprocess.run(
            [unshare, "--mount", "--propagation", "private", *user, "sh", "-c", script],
            input=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        message = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
        if done.returncode or not out.is_file():
            if any("unshare" in line or "mount" in line for line in message[:3]):
                raise EdgeembError(
                    "emulation needs its own mount namespace (to give the guest its CPU's /proc/cpuinfo and /sys): "
                    f"run as root or enable unprivileged user namespaces ({message[0]})"
                )
            raise EdgeembError(
                f"{Path(argv[0]).name} failed under qemu as {device.qemu_cpu} (exit status {done.returncode}): "
                f"{message[-1] if message else 'no message'}"
            )
        counted = json.loads(out.read_text())
    return Count(counted["threads"], counted["peak_rss_kb"] * 1024)


def python_sysroot() -> Path:
    """An aarch64 Python with numpy and onnxruntime (the versions installed here), built once:
    FOLDER/root is Debian's python3.11 for arm64 unpacked, FOLDER/site the manylinux wheels."""
    versions = {name: metadata.version(name) for name in ("onnxruntime", "numpy")}
    folder = CACHE / ("python3.11-" + "-".join(f"{name}{version}" for name, version in versions.items()))
    if (folder / "root" / GUEST_PYTHON).is_file():
        return folder
    require_program("dpkg-deb", "dpkg (a Debian-based host)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        debs = partial / "debs"
        debs.mkdir()
        _apt(["download", *(f"{name}:arm64" for name in GUEST_PACKAGES)], arch="arm64", cwd=debs)
        for deb in sorted(debs.glob("*.deb")):
            run_program(["dpkg-deb", "-x", str(deb), str(partial / "root")], f"cannot unpack {deb.name}")
        wheels = partial / "wheels"
        run_program(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--only-binary=:all:",
                "--platform",
                "manylinux_2_28_aarch64",
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "--no-deps",
                "-d",
                str(wheels),
                *(f"{name}=={version}" for name, version in versions.items()),
            ],
            "cannot download the aarch64 wheels",
        )
        for wheel in wheels.glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(partial / "site")
        shutil.rmtree(debs)
        shutil.rmtree(wheels)
        # Bytecode compiled once, by the guest itself: without it every run compiles (and, writing
        # .pyc files, changes what the next run does).
        qemu, _ = qemu_user()
        run_program(
            [
                qemu,
                "-L",
                str(partial / "root"),
                str(partial / "root" / GUEST_PYTHON),
                "-m",
                "compileall",
                "-q",
                "-j",
                "0",
                str(partial / "root" / "usr" / "lib" / "python3.11"),
                str(partial / "site"),
            ],
            "cannot compile the guest's Python files",
        )
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def plugin_header() -> Path:
    """qemu's public plugin header (qemu-plugin.h): EDGEEMB_QEMU_PLUGIN_H, an installed one, or
    the one in the Debian source package of the installed qemu, fetched once."""
    given = os.environ.get("EDGEEMB_QEMU_PLUGIN_H")
    if given:
        if not Path(given).is_file():
            raise EdgeembError(f"EDGEEMB_QEMU_PLUGIN_H={given}: no such file")
        return Path(given)
    for installed in (Path("/usr/include/qemu-plugin.h"), Path("/usr/include/qemu/qemu-plugin.h")):
        if installed.is_file():
            return installed
    _, version = qemu_user()
    header = CACHE / f"qemu-{version.split()[0]}" / "qemu-plugin.h"
    if header.is_file():
        return header
    debian = re.search(r"\(Debian ([^)]+)\)", version)
    if debian is None:
        raise EdgeembError(
            f"qemu {version} is not Debian's: set EDGEEMB_QEMU_PLUGIN_H to include/qemu/qemu-plugin.h from its source"
        )
    source_version = re.sub(r"\+b\d+$", "", debian.group(1))  # a binary-only rebuild has its source's version
    listing = _apt(["source", "--print-uris", f"qemu={source_version}"], source=True)
    match = re.search(r"'(\S+\.orig\.tar\.\w+)' \S+ \d+ SHA256:([0-9a-f]{64})", listing)
    if match is None:
        raise EdgeembError(f"Debian's source package qemu={source_version} lists no .orig tarball")
    url, digest = match.groups()
    header.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=header.parent) as tmp:
        tarball = Path(tmp) / "qemu.orig.tar"
        try:
            urllib.request.urlretrieve(url, tarball)
        except OSError as exc:
            raise EdgeembError(f"cannot download {url}: {exc}") from None
        if hashlib.sha256(tarball.read_bytes()).hexdigest() != digest:
            raise EdgeembError(f"{url}: its SHA256 is not the one Debian's source index gives")
        with tarfile.open(tarball) as archive:
            member = next((m for m in archive if m.name.endswith("/include/qemu/qemu-plugin.h")), None)
            if member is None:
                raise EdgeembError(f"{url} has no include/qemu/qemu-plugin.h")
            Path(tmp, "qemu-plugin.h").write_bytes(archive.extractfile(member).read())
        Path(tmp, "qemu-plugin.h").replace(header)
    return header


def _helpers() -> tuple[Path, Path]:
    """The counting plugin and the fixed clock, compiled once per source and header."""
    header = plugin_header()
    sources = {name: (SOURCES / f"{name}.c").read_bytes() for name in ("insn_count", "fixed_clock")}
    key = hashlib.sha1(b"".join(sources.values()) + header.read_bytes()).hexdigest()[:12]
    folder = CACHE / f"helpers-{key}"
    libraries = tuple(folder / f"{name}.so" for name in sources)
    if all(library.is_file() for library in libraries):
        return libraries
    compiler = require_program("gcc", "gcc (Debian: apt-get install gcc)")
    folder.mkdir(parents=True, exist_ok=True)
    for name, library in zip(sources, libraries, strict=True):
        partial = library.with_suffix(".so.partial")
        run_program(
            [compiler, "-O2", "-shared", "-fPIC", f"-I{header.parent}", "-o", str(partial), str(SOURCES / f"{name}.c")],
            f"cannot compile {name}.c against {header}",
        )
        partial.replace(library)
    return libraries


def _fake_machine(folder: Path, device: DeviceProfile) -> Path:
    """/proc/cpuinfo and /sys as the device would show them to one process: its cores, its CPU."""
    part, features = CPUS.get(device.qemu_cpu, (None, ARMV8_2))
    processor = (
        f"BogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
        + (f"CPU part\t: {part:#05x}\nCPU revision\t: 0\n" if part else "")
    )
    (folder / "cpuinfo").write_text("".join(f"processor\t: {core}\n{processor}\n" for core in range(device.cores)))
    cpus = folder / "sys" / "devices" / "system" / "cpu"
    cpus.mkdir(parents=True)
    for name in ("possible", "present", "online"):
        (cpus / name).write_text(f"0-{device.cores - 1}\n")
    return folder


def _llama_bench(device: DeviceProfile, folder: Path) -> tuple[Path, str]:
    """The llama-bench that `edgeemb cross` builds for `device` (from its cache after the first)."""
    build = cross_build(device, folder / "cross", smoke=False)
    return folder / "cross" / "llama-bench", build.arm_arch


def _apt(args: list[str], *, arch: str | None = None, source: bool = False, cwd: Path | None = None) -> str:
    """apt-get with a private source list and state (the host's apt configuration is untouched):
    Debian's binary packages for `arch`, or its source packages."""
    require_program("apt-get", "apt (a Debian-based host)")
    codename = _os_release().get("VERSION_CODENAME") or "bookworm"
    folder = CACHE / "apt" / (f"deb-src-{codename}" if source else f"deb-{arch}-{codename}")
    (folder / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (folder / "parts").mkdir(exist_ok=True)
    (folder / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (folder / "parts" / "debian.sources").write_text(
        "\n".join(
            f"Types: {'deb-src' if source else 'deb'}\nURIs: {uri}\nSuites: {suite}\nComponents: main\n"
            + (f"Architectures: {arch}\n" if arch else "")
            + "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            for uri, suite in (
                (DEBIAN, codename),
                (DEBIAN, f"{codename}-updates"),
                (f"{DEBIAN}-security", f"{codename}-security"),
            )
        )
    )
    options = [
        "-o",
        "Dir::Etc::SourceList=/dev/null",
        "-o",
        f"Dir::Etc::SourceParts={folder / 'parts'}",
        "-o",
        f"Dir::State::Lists={folder / 'lists'}",
        "-o",
        "Dir::State::status=/dev/null",
        "-o",
        f"Dir::Cache={folder / 'cache'}",
        "-o",
        "Debug::NoLocking=1",
        *(["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []),  # _apt cannot write the cache
        *(["-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures::={arch}"] if arch else []),
    ]
    if not any((folder / "lists").glob("*Packages*" if not source else "*Sources*")):
        run_program(["apt-get", *options, "-q", "update"], "apt-get update failed for Debian's package index")
    return run_program(["apt-get", *options, "-q", *args], f"apt-get {args[0]} failed", cwd=cwd)


def _os_release() -> dict[str, str]:
    try:
        lines = Path("/etc/os-release").read_text().splitlines()
    except OSError:
        return {}
    return {key: value.strip('"') for key, _, value in (line.partition("=") for line in lines) if value}
