"""`edgeemb cross`: llama.cpp's runtime (llama-bench, llama-completion) built for a device, and
tried under qemu as that device's CPU.

The source is the llama.cpp vendored in the llama-cpp-python sdist of the version edgeemb pins
(`pip download --no-binary`), so the device runs the llama.cpp that measured the model here. A
Linux target (Raspberry Pi) gets static aarch64 binaries from Debian's gcc-aarch64-linux-gnu with
the toolchain file in tools/toolchains/; the CPU features come from the device profile
(`arm_arch`: armv8-a for the Pi 3/4, armv8.2-a with dot products and fp16 for the Pi 5 and
phones), with OpenMP off. An Android target uses the NDK's toolchain when one is given
(`ndk`, or ANDROID_NDK_HOME: ABI arm64-v8a); without one it gets the same static Linux binary,
which runs from `adb shell` but cannot go into an APK. Builds are cached per source version,
architecture and toolchain.

The smoke test runs the build under qemu-user with the profile's CPU (QEMU_CPU): `llama-bench`
on a GGUF when one is given, else `--version`. A binary that needs instructions the CPU lacks
(a dot-product build on a Cortex-A53) stops with SIGILL, reported as "needs a newer CPU".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from edgeemb.bench.devices import DeviceProfile
from edgeemb.errors import EdgeembError, require_program, run_program

BINARIES = ("llama-bench", "llama-completion")
TOOLCHAIN = Path(__file__).resolve().parents[2] / "tools" / "toolchains" / "aarch64-linux-gnu.cmake"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeemb" / "cross"


@dataclass(frozen=True)
class SmokeTest:
    ok: bool
    cpu: str
    command: list[str]
    message: str  # the binary's answer (last lines), or why it failed
    stdout: str = ""  # all it printed (llama-bench's JSON records with a model)


@dataclass(frozen=True)
class CrossBuild:
    target: str
    arm_arch: str
    toolchain: str  # "gcc-aarch64-linux-gnu (static)" or "android-ndk (arm64-v8a, API N)"
    llama_cpp: str  # the llama-cpp-python version whose vendored llama.cpp was built
    binaries: list[str]
    cached: bool
    notes: list[str]
    smoke: SmokeTest | None


def cross_build(
    device: DeviceProfile,
    out: Path,
    *,
    ndk: Path | None = None,
    api: int = 28,
    smoke: bool = True,
    smoke_model: Path | None = None,
    try_cpu: str | None = None,
    force: bool = False,
) -> CrossBuild:
    """Build (or take from the cache) llama-bench and llama-completion for `device`, copy them into
    `out` with BUILD.json, and (with `smoke`) try them under qemu as the device's CPU (or `try_cpu`)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise EdgeembError(f"{out} exists and is not empty; pass --force to replace its files")
    if ndk is None and device.os == "android" and os.environ.get("ANDROID_NDK_HOME"):
        ndk = Path(os.environ["ANDROID_NDK_HOME"])
    notes = []
    if device.os == "android" and ndk is None:
        notes.append(
            "no Android NDK given (--ndk or ANDROID_NDK_HOME): built a static aarch64 Linux binary, which runs from "
            "`adb shell`; an APK or JNI library needs the NDK"
        )
    if device.os != "android" and ndk is not None:
        raise EdgeembError(f"{device.name} is a Linux device; --ndk is for Android targets")
    version = metadata.version("llama-cpp-python")
    toolchain, flags = _toolchain(ndk, api)
    build = CACHE / f"llama.cpp-{version}-{device.arm_arch}-{hashlib.sha1(toolchain.encode()).hexdigest()[:8]}"
    cached = all((build / "bin" / name).is_file() for name in BINARIES)
    if not cached:
        _configure_and_build(llama_cpp_source(version), build, device.arm_arch, flags)
    out.mkdir(parents=True, exist_ok=True)
    for name in BINARIES:
        shutil.copy2(build / "bin" / name, out / name)
    tried = None
    if smoke:
        tried = smoke_test(out / "llama-bench", try_cpu or device.qemu_cpu, smoke_model, built_for=device.arm_arch)
    result = CrossBuild(device.name, device.arm_arch, toolchain, version, list(BINARIES), cached, notes, tried)
    (out / "BUILD.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def smoke_test(binary: Path, cpu: str, model: Path | None = None, built_for: str | None = None) -> SmokeTest:
    """Run an aarch64 llama.cpp `binary` under qemu-user as `cpu` (a QEMU_CPU name)."""
    qemu, _ = qemu_user()
    args = ["-m", str(model), "-p", "8", "-n", "4", "-r", "1", "-t", "1", "-o", "json"] if model else ["--version"]
    command = [qemu, "-cpu", cpu, str(binary), *args]
    try:
        require_qemu_cpu(cpu)
    except EdgeembError as missing:
        return SmokeTest(False, cpu, command, f"not tried: {missing}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode in (-signal.SIGILL, 128 + signal.SIGILL) or "Illegal instruction" in done.stderr:
        built = f"it was built for {built_for}, and " if built_for else ""
        message = f"this binary needs a newer CPU: {built}{cpu} lacks an instruction it uses (SIGILL)"
        return SmokeTest(False, cpu, command, message, done.stdout)
    tail = "\n".join((done.stdout.strip() or done.stderr.strip()).splitlines()[-3:])
    message = tail if done.returncode == 0 else f"exit status {done.returncode}: {tail}"
    return SmokeTest(done.returncode == 0, cpu, command, message, done.stdout)


def qemu_user() -> tuple[str, str]:
    """qemu-aarch64's path and version line (e.g. "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)")."""
    qemu = require_program("qemu-aarch64", "qemu-user (Debian: apt-get install qemu-user)")
    first = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=False).stdout.splitlines()
    return qemu, (first[0].removeprefix("qemu-aarch64 version ").strip() if first else "unknown")


def require_qemu_cpu(cpu: str) -> None:
    """An error naming the CPUs this qemu models, when `cpu` is not one of them."""
    qemu, version = qemu_user()
    listed = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, check=False).stdout.split()
    if cpu not in listed:
        known = ", ".join(name for name in listed if name not in ("Available", "CPUs:"))
        raise EdgeembError(
            f"qemu {version} has no {cpu} model (it has {known}); a newer qemu, or a profile with another qemu_cpu"
        )


def _toolchain(ndk: Path | None, api: int) -> tuple[str, list[str]]:
    if ndk is not None:
        file = ndk / "build" / "cmake" / "android.toolchain.cmake"
        if not file.is_file():
            raise EdgeembError(f"{ndk}: not an Android NDK (no build/cmake/android.toolchain.cmake)")
        flags = [f"-DCMAKE_TOOLCHAIN_FILE={file}", "-DANDROID_ABI=arm64-v8a", f"-DANDROID_PLATFORM=android-{api}"]
        return f"android-ndk (arm64-v8a, API {api})", flags
    require_program(
        "aarch64-linux-gnu-gcc",
        "the cross compiler (Debian: apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu)",
    )
    if not TOOLCHAIN.is_file():
        raise EdgeembError(
            f"{TOOLCHAIN}: missing; edgeemb cross runs from a checkout of the edgeemb repository (tools/toolchains)"
        )
    return "gcc-aarch64-linux-gnu (static)", [f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}", "-DCMAKE_EXE_LINKER_FLAGS=-static"]


def llama_cpp_source(version: str | None = None) -> Path:
    """llama.cpp from the llama-cpp-python sdist (default: the installed version's), downloaded and
    unpacked once per version: its sources, and its convert_hf_to_gguf.py with gguf-py."""
    version = version or metadata.version("llama-cpp-python")
    folder = CACHE / f"llama-cpp-python-{version}"
    source = folder / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").is_file():
        return source
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"llama_cpp_python-{version}.tar.gz"
    if not archive.is_file():
        failure = f"cannot download the llama-cpp-python {version} sdist for its llama.cpp source"
        run_program(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={version}",
                "-d",
                str(folder),
            ],
            failure,
        )
        if not archive.is_file():
            raise EdgeembError(f"{failure}: pip wrote no {archive.name}")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(archive) as sdist:
        sdist.extractall(folder, members=[m for m in sdist.getmembers() if m.name.startswith(prefix)], filter="data")
    return source


def _configure_and_build(source: Path, build: Path, arm_arch: str, flags: list[str]) -> None:
    cmake = require_program("cmake", "cmake (Debian: apt-get install cmake)")
    configure = [
        cmake,
        "-S",
        str(source),
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        *flags,
        "-DGGML_NATIVE=OFF",
        f"-DGGML_CPU_ARM_ARCH={arm_arch}",
        "-DGGML_OPENMP=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_TOOLS=ON",
    ]
    build_step = [cmake, "--build", str(build), "--target", *BINARIES, "-j", str(len(os.sched_getaffinity(0)))]
    for step in (configure, build_step):
        run_program(step, f"llama.cpp build failed ({' '.join(step[:3])} ...)", lines=3)
