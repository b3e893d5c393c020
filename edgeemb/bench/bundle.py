"""`edgeemb bundle`: one tarball that benchmarks a GGUF on a device: the model, llama-bench built
for the device (`edgeemb cross`), and `run.sh`, a POSIX shell script (no Python needed: it runs
from `adb shell` too) that runs llama-bench there, samples its peak RSS from /proc, and writes
`bench.json` in the schema of `edgeemb bench` (`edgeemb.bench/1`), so `edgeemb compare` shows the
device's figures beside this host's.

llama-bench reports mean rates over its repetitions, not per-token latencies: a device result's
latency has a mean and no percentiles.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

from edgeemb.bench.backends import SCHEMA
from edgeemb.bench.cross import cross_build
from edgeemb.bench.devices import DeviceProfile
from edgeemb.errors import EdgeembError
from edgeemb.outputs import check_target, register_mark, staged

RUN_SH = """#!/bin/sh
# edgeemb bundle for {target}: benchmark {model} with llama.cpp's llama-bench on this device and
# write bench.json in the schema of `edgeemb bench` ({schema}). Read it here with
# `edgeemb compare bench.json [host.json ...]`.
#   sh run.sh                                               on the device
#   EDGEEMB_RUNNER="qemu-aarch64 -cpu {qemu_cpu}" sh run.sh   under emulation
# THREADS=N overrides the thread count (default: every CPU).
set -eu
cd "$(dirname "$0")"
threads=${{THREADS:-$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)}}
${{EDGEEMB_RUNNER:-}} ./llama-bench -m {model} -p {prompt} -n {generate} -r {runs} -t "$threads" \\
    -o jsonl > llama-bench.jsonl &
pid=$!
peak=0
while kill -0 "$pid" 2> /dev/null; do
    hwm=$(sed -n 's/^VmHWM:[[:space:]]*\\([0-9]*\\) kB$/\\1/p' "/proc/$pid/status" 2> /dev/null || true)
    if [ -n "$hwm" ] && [ "$hwm" -gt "$peak" ]; then peak=$hwm; fi
    sleep 0.1
done
wait "$pid"
rate() {{ grep "\\"$1\\": *0," llama-bench.jsonl | sed -n 's/.*"avg_ts": *\\([0-9.eE+-]*\\).*/\\1/p' | head -n 1; }}
prompt_ts=$(rate n_gen)
gen_ts=$(rate n_prompt)
if [ -z "$prompt_ts" ] || [ -z "$gen_ts" ]; then
    echo "llama-bench printed no rates: see llama-bench.jsonl" >&2; exit 1
fi
cat > bench.json << EOF
{{
  "schema": "{schema}",
  "artifact": "{model}",
  "backend": "llama.cpp",
  "file_bytes": $(wc -c < {model}),
  "host": {{"machine": "$(uname -m)", "runner": "${{EDGEEMB_RUNNER:-device}}"}},
  "profile": "{target}",
  "limits": {{"cores": {{"asked": null, "applied": $threads, "how": "llama-bench -t"}}}},
  "fits": true,
  "unit": "generated token",
  "latency_ms": {{"mean": $(awk "BEGIN {{ print 1000 / $gen_ts }}"), "p50": null, "p95": null, "count": {runs}}},
  "prompt_ms_per_token": $(awk "BEGIN {{ print 1000 / $prompt_ts }}"),
  "prompt_tokens": {prompt},
  "throughput": {{"value": $gen_ts, "unit": "tokens/s"}},
  "threads": $threads,
  "peak_rss_bytes": $((peak * 1024)),
  "measured_by": "llama-bench (mean rates over {runs} repetitions); peak RSS sampled from /proc every 0.1 s"
}}
EOF
echo "wrote bench.json"
"""


@register_mark(".tar.gz", ".tgz")
def _marked(path: Path) -> bool:
    """A bundle's run.sh opens with edgeemb's comment."""
    with tarfile.open(path, "r:gz") as bundle:
        for member in bundle:
            if member.name.endswith("/run.sh") and member.isfile():
                script = bundle.extractfile(member)
                return script is not None and script.read(200).startswith(b"#!/bin/sh\n# edgeemb bundle for ")
    return False


def make_bundle(
    model: Path,
    device: DeviceProfile,
    out: Path,
    *,
    prompt_tokens: int = 64,
    generate: int = 32,
    runs: int = 3,
    ndk: Path | None = None,
    force: bool = False,
) -> dict:
    """Write `out` (.tar.gz): `model`, llama-bench for `device` and run.sh, in one folder."""
    model, out = Path(model), Path(out)
    if model.suffix != ".gguf" or not model.is_file():
        raise EdgeembError(f"{model}: a bundle carries a GGUF file (llama.cpp); this is not one")
    check_target(out, force)
    folder = out.name.removesuffix(".tar.gz").removesuffix(".tgz")
    with tempfile.TemporaryDirectory() as scratch:
        # the device runs it; qemu is not needed here
        build = cross_build(device, Path(scratch) / "bin", ndk=ndk, smoke=False)
        script = RUN_SH.format(
            target=device.name,
            model=model.name,
            schema=SCHEMA,
            qemu_cpu=device.qemu_cpu,
            prompt=prompt_tokens,
            generate=generate,
            runs=runs,
        )
        with staged(out, force) as staging, tarfile.open(staging, "w:gz") as bundle:
            bundle.add(model, f"{folder}/{model.name}")
            bundle.add(Path(scratch) / "bin" / "llama-bench", f"{folder}/llama-bench")
            entry = tarfile.TarInfo(f"{folder}/run.sh")
            entry.size, entry.mode = len(script.encode()), 0o755
            bundle.addfile(entry, io.BytesIO(script.encode()))
    return {
        "bundle": str(out),
        "folder": folder,
        "target": device.name,
        "model": model.name,
        "bytes": out.stat().st_size,
        "llama_bench": {"arm_arch": build.arm_arch, "toolchain": build.toolchain, "llama_cpp": build.llama_cpp},
        "notes": build.notes,
    }
