"""Recipes: the validated `Recipe` type (built from YAML or in Python), typed format options,
and bounded YAML parsing."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgeemb import formats
from edgeemb.errors import EdgeembError
from edgeemb.formats.codebook import PQ
from edgeemb.formats.ggml import Q4_0
from edgeemb.formats.integer import Int2, Int4
from edgeemb.recipe import MAX_RECIPE_BYTES, ExportConfig, Recipe, builtin_recipes, load_recipe, parse_recipe
from edgeemb.steps import StepContext
from edgeemb.steps.peers import Model2VecConfig
from edgeemb.steps.quantize import FormatConfig, MixedPrecisionConfig, QuantizeConfig, quantize
from edgeemb.steps.svd import SVDConfig
from edgeemb.steps.trim import TrimConfig
from edgeemb.table import DenseTable
from tests.test_cli import assert_one_line_error, run

# --- recipe files and their one-line errors ----------------------------------------------------


def test_every_builtin_recipe_loads_validates_and_says_what_it_is_for():
    recipes = builtin_recipes()
    assert {"int4", "int8"} <= set(recipes)
    for name, path in recipes.items():
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.steps and recipe.description
        assert path.read_text().startswith("# "), f"{name}: the file opens with a comment on what it is for"


@pytest.mark.parametrize("model", ["minilm", "smollm2-135m", "gemma3-270m"])
def test_each_real_model_has_a_near_lossless_a_small_a_smallest_and_a_device_recipe(model):
    mine = {name: load_recipe(name) for name in builtin_recipes() if name.startswith(model + "-")}
    formats = {name: [config.model_dump().get("format") for _, config in recipe.steps] for name, recipe in mine.items()}
    assert ["int8"] in formats.values()
    assert any(recipe.offload is not None for recipe in mine.values()), "a device recipe carries an offload plan"
    assert len(mine) >= 4


def test_a_recipe_can_carry_an_offload_plan():
    plan = {"profiles": ["emmc-5.1"], "cache_mb": 2, "head_type": "Q4_0"}
    recipe = parse_recipe({"steps": ["quantize"], "offload": plan})
    assert recipe.offload.profiles == ("emmc-5.1",) and recipe.offload.cache_mb == 2
    assert recipe.to_dict()["offload"]["layout"] == "single"


def test_a_recipe_can_ask_for_an_export():
    recipe = parse_recipe({"steps": [{"svd": {"rank": 8}}], "export": {"format": "gguf", "type": "Q5_0"}})
    assert recipe.export.format == "gguf" and recipe.export.type == "Q5_0"
    assert recipe.to_dict()["export"] == {"format": "gguf", "type": "Q5_0", "quantize_rest": False}
    assert recipe.digest != parse_recipe({"steps": [{"svd": {"rank": 8}}]}).digest


def test_recipe_digest_is_stable_and_fills_defaults():
    a = parse_recipe({"steps": [{"quantize": {"format": "int4"}}]})
    b = parse_recipe({"steps": [{"quantize": {"format": "int4", "factor_dtype": "float16"}}]})
    c = parse_recipe({"steps": [{"quantize": {"format": "int8"}}]})
    assert a.digest == b.digest != c.digest


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steps": [{"prune": {}}]}, "step 1: unknown step 'prune'"),
        ({"steps": [{"svd": {"rnk": 3}}]}, "step 1 'svd': unknown key 'rnk'"),
        ({"steps": [{"svd": {"rank": 3, "energy": 0.9}}]}, "exactly one of rank, energy, max_bytes"),
        ({"steps": [{"quantize": {"format": "int7"}}]}, "unknown quantisation format 'int7'"),
        ({"steps": [{"quantize": {"format": "int4", "blok_size": 32}}]}, "format 'int4' has no option 'blok_size'"),
        (
            {"steps": [{"mixed_precision": {"rare": {"format": "int2", "zero": 1}}}]},
            "format 'int2' has no option 'zero'",
        ),
        ({"steps": [{"mixed_precision": {"frequent_share": 0.1}}]}, "unknown key 'frequent_share'"),
        ({"steps": [{"quantize": {"format": "int4"}}], "stpes": []}, "unknown key 'stpes'"),
        ({"steps": []}, "non-empty list"),
        ({"steps": [{"svd": {"rank": -1}}]}, "rank: Input should be greater than or equal to 1"),
        ("just text", "expected a mapping"),
        (
            {"steps": ["quantize"], "export": {"format": "zip"}},
            "export: format: Input should be 'gguf', 'onnx', 'st' or 'hf'",
        ),
        ({"steps": ["quantize"], "export": {"format": "gguf", "tpye": "Q4_0"}}, "export: tpye: Extra inputs are not"),
        (
            {"steps": ["quantize"], "offload": {"profiles": ["floppy"]}},
            "offload: profiles: unknown flash profile 'floppy'",
        ),
        ({"steps": ["quantize"], "offload": {"cache_mb": 0}}, "offload: cache_mb: Input should be greater than 0"),
    ],
)
def test_bad_recipes_name_the_problem(data, message):
    with pytest.raises(EdgeembError, match=message):
        parse_recipe(data, origin="r.yaml")


def test_recipe_files_unreadable_or_unknown(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [unclosed")
    with pytest.raises(EdgeembError, match="cannot read it as YAML"):
        load_recipe(bad)
    with pytest.raises(EdgeembError, match="no recipe 'nosuch'"):
        load_recipe("nosuch")


def test_a_folder_or_file_named_like_a_recipe_does_not_hide_the_builtin(tiny_model, tmp_path, monkeypatch):
    # #19 problem 3: `compress -r int8 -o int8` made a folder `int8`, and the next `-r int8` read it as the recipe.
    monkeypatch.chdir(tmp_path)
    assert run("compress", tiny_model, "-r", "int8", "-o", "int8").exit_code == 0
    result = run("compress", tiny_model, "-r", "int8", "-o", "other", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["recipe"]["name"] == "int8"
    (tmp_path / "int4").write_text("steps: [svd]\n")  # a bare word is a name, even when such a file exists
    assert load_recipe("int4") == load_recipe(builtin_recipes()["int4"])


def test_a_recipe_path_is_a_separator_or_a_yaml_suffix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "int8").write_text("name: mine\nsteps: [{quantize: {format: int4}}]\n")
    (tmp_path / "mine.yml").write_text("steps: [{quantize: {format: int2}}]\n")
    assert load_recipe("./int8").name == "mine"
    assert load_recipe("mine.yml").name == "mine"
    assert load_recipe("int8").name == "int8"
    with pytest.raises(EdgeembError, match="recipe int4.yaml: no such file"):
        load_recipe("int4.yaml")
    with pytest.raises(EdgeembError, match=r"no recipe 'mine': not a built-in .*as a path \(\./mine\.yaml\)"):
        load_recipe("mine")


# --- the Recipe type: built in Python, checked as a file is ------------------------------------


def test_a_recipe_built_from_step_configs_is_the_recipe_its_yaml_describes():
    built = Recipe.from_steps([SVDConfig(rank=8), QuantizeConfig(format=Int4(block_size=32))], name="svd-int4")
    steps = [{"svd": {"rank": 8}}, {"quantize": {"format": "int4", "block_size": 32}}]
    parsed = parse_recipe({"name": "svd-int4", "steps": steps})
    assert [name for name, _ in built.steps] == ["svd", "quantize"]
    assert built.to_dict() == parsed.to_dict() and built.digest == parsed.digest
    assert parse_recipe(built.to_dict()).digest == built.digest  # the dict form reads back as the same recipe


LATIN = TrimConfig(scripts=("latin",))


@pytest.mark.parametrize(
    ("steps", "export", "message"),
    [
        ([QuantizeConfig(), LATIN], None, "'trim_vocab' renumbers the vocabulary: it must be the first step"),
        ([LATIN, LATIN], None, "must be the first step, and come once"),
        ([QuantizeConfig(), Model2VecConfig()], None, "'model2vec_distill' makes a static model: it must be the first"),
        ([Model2VecConfig()], ExportConfig(format="onnx"), "cannot export it"),
        ([FormatConfig()], None, "step 1: a FormatConfig configures no step"),
        ([], None, "'steps' must be a non-empty list"),
    ],
)
def test_the_order_rules_hold_for_a_recipe_built_in_python(steps, export, message):
    with pytest.raises(EdgeembError, match=f"^recipe mine: .*{message}"):
        Recipe.from_steps(steps, name="mine", export=export)


def test_recipe_is_frozen_and_takes_no_unknown_keys():
    recipe = Recipe.from_steps([QuantizeConfig()], name="q")
    with pytest.raises(ValueError):
        recipe.name = "other"
    with pytest.raises(ValueError, match="colour"):
        Recipe(name="q", steps=[QuantizeConfig()], colour="red")
    with pytest.raises(ValueError, match="takes a SVDConfig, not a QuantizeConfig"):
        Recipe(name="q", steps=[("svd", QuantizeConfig())])
    with pytest.raises(EdgeembError, match="not a plain name"):
        parse_recipe({"name": "../../elsewhere", "steps": ["quantize"]})


def test_each_step_config_knows_its_step():
    named = [QuantizeConfig, MixedPrecisionConfig, SVDConfig, TrimConfig]
    assert [config.step_name for config in named] == ["quantize", "mixed_precision", "svd", "trim_vocab"]
    assert FormatConfig.step_name is None


# --- a format object or a name with options ----------------------------------------------------


@pytest.mark.parametrize(
    ("as_object", "as_written"),
    [
        (QuantizeConfig(format=Int4(block_size=32)), {"format": "int4", "block_size": 32}),
        (QuantizeConfig(format=Int4()), {"format": "int4"}),
        (
            QuantizeConfig(format=Q4_0(search=True), importance="head"),
            {"format": "Q4_0", "search": True, "importance": "head"},
        ),
        (QuantizeConfig(format=PQ(subspaces=64, centroids=256)), {"format": "pq", "subspaces": 64, "centroids": 256}),
        (
            MixedPrecisionConfig(rare=FormatConfig(format=Int2(block_size=16, zero_point=True))),
            {"rare": {"format": "int2", "block_size": 16, "zero_point": True}},
        ),
    ],
)
def test_a_format_object_and_its_name_with_options_are_one_config(as_object, as_written):
    written = type(as_object).model_validate(as_written)
    assert as_object == written and as_object.model_dump(mode="json") == written.model_dump(mode="json")
    name = as_object.step_name
    digests = {parse_recipe({"steps": [{name: config}]}).digest for config in (as_object, as_written)}
    assert len(digests) == 1


def test_a_format_object_takes_its_own_options():
    with pytest.raises(ValueError, match="'block_size' goes to the format object itself"):
        QuantizeConfig(format=Int4(), block_size=32)
    with pytest.raises(EdgeembError, match="format: a format name"):
        parse_recipe({"steps": [{"quantize": {"format": 4}}]})


def test_the_builtin_recipes_serialise_as_they_are_written():
    """The format's options as written, so a digest recorded in an OUT/ manifest still matches:
    int4's is the one every earlier version of edgeemb computed for it."""
    dumped = load_recipe("minilm-pq").to_dict()["steps"]
    written = {"format": "pq", "subspaces": 64, "centroids": 256}
    assert dumped == [{"quantize": {**written, "factor_dtype": "float16", "importance": None}}]
    assert load_recipe("int4").digest == "2e85282c57c48bfb6c083ada9f58c286e4190f2ed840f4b705fc748a6659862b"


# --- typed options: no coercion, ranges --------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "arguments", "message"),
    [
        ("quantize", {"format": "int4", "block_size": "32"}, "block_size: Input should be a valid integer, not str"),
        ("quantize", {"format": "int4", "block_size": 32.5}, "block_size: Input should be a valid integer, not float"),
        ("quantize", {"format": "int4", "block_size": 0}, "block_size: Input should be greater than 0"),
        ("quantize", {"format": "int4", "zero_point": "no"}, "zero_point: Input should be a valid boolean, not str"),
        (
            "quantize",
            {"format": "int8", "scale_dtype": "bfloat16"},
            "scale_dtype: Input should be 'float16' or 'float32'",
        ),
        ("quantize", {"format": "pq", "subspaces": "64"}, "subspaces: Input should be a valid integer, not str"),
        ("quantize", {"format": "pq", "seed": -1}, "seed: Input should be greater than or equal to 0"),
        ("quantize", {"format": "vocab_kmeans", "train_rows": 0}, "train_rows: Input should be greater than 0"),
        ("quantize", {"format": "Q4_0", "search": "yes"}, "search: Input should be a valid boolean, not str"),
        ("mixed_precision", {"rare": {"format": "int2", "zero_point": 1}}, "rare: zero_point: Input should be a valid"),
        ("svd", {"rank": "8"}, "rank: Input should be a valid integer"),
        ("svd", {"rank": 8, "center": "no"}, "center: Input should be a valid boolean"),
        ("trim_vocab", {"scripts": ["latin"], "characters": "true"}, "characters: Input should be a valid boolean"),
        ("trim_vocab", {"scripts": "latin"}, "scripts: Input should be a valid tuple"),
        ("onnxruntime_int4", {"symmetric": "no"}, "symmetric: Input should be a valid boolean"),
    ],
)
def test_option_values_of_the_wrong_type_are_refused_naming_the_option(step, arguments, message):
    with pytest.raises(EdgeembError) as error:
        parse_recipe({"steps": [{step: arguments}]}, origin="r.yaml")
    assert str(error.value).startswith(f"recipe r.yaml: step 1 '{step}': {message}")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"steps": ["quantize"], "export": {"format": "onnx", "quantize_rest": "no"}},
            "export: quantize_rest: Input should be a valid boolean",
        ),
        ({"steps": ["quantize"], "offload": {"cache_mb": "2"}}, "offload: cache_mb: Input should be a valid number"),
        ({"steps": ["quantize"], "evaluate": {"sts": 5}}, "evaluate: sts: Input should be a valid string"),
        ({"steps": ["quantize"], "description": ["a", "list"]}, "description: Input should be a valid string"),
        ({"steps": ["quantize"], "name": 2024}, "name: Input should be a valid string"),
    ],
)
def test_recipe_sections_are_typed_too(data, message):
    with pytest.raises(EdgeembError, match=f"^recipe r.yaml: {message}"):
        parse_recipe(data, origin="r.yaml")


def test_values_of_the_right_type_still_read_as_written(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        textwrap.dedent("""\
        steps:
          - trim_vocab: {scripts: [latin, {cyrillic: 1000}], corpus: [a.txt, b.txt], coverage: 1}
          - svd: {energy: 1, round_to: 16}
          - quantize: {format: int4, block_size: null, zero_point: true}
        export: {format: onnx}
        offload: {profiles: [emmc-5.1], cache_mb: 2}
    """)
    )
    (_, trim_config), (_, svd_config), (_, quantize_config) = load_recipe(recipe).steps
    assert trim_config.scripts == ("latin", {"cyrillic": 1000})
    assert [path.name for path in trim_config.corpus] == ["a.txt", "b.txt"]
    assert trim_config.coverage == 1 and svd_config.energy == 1
    assert quantize_config.format == Int4(block_size=None, zero_point=True)


def test_a_format_built_in_python_is_checked_as_a_recipe_option_is():
    with pytest.raises(EdgeembError, match="block_size: Input should be a valid integer"):
        Int4(block_size="32")
    with pytest.raises(EdgeembError, match="iterations: Input should be greater than or equal to 0"):
        PQ(iterations=-1)
    assert formats.format_from_spec(Int4(block_size=16).spec()) == Int4(block_size=16)


def test_importance_weights_are_a_declared_capability():
    """`weighted` is set exactly on the formats that implement quantize_weighted."""
    implemented = {
        name
        for name in formats.names()
        if type(formats.get_format(name)).quantize_weighted is not formats.QuantFormat.quantize_weighted
    }
    assert implemented == {name for name in formats.names() if formats.get_format(name).weighted} >= {"Q4_0", "Q5_0"}
    table = DenseTable(np.ones((4, 32), np.float32))
    context = StepContext(head_importance=lambda: np.ones(32, np.float32))
    with pytest.raises(EdgeembError, match="format int4 does not take importance weights"):
        quantize(table, QuantizeConfig(format="int4", importance="head"), context)
    weighted = quantize(table, QuantizeConfig(format="Q4_0", importance="head"), context)
    assert np.allclose(weighted.to_dense(), 1.0)


# --- bounded parsing -----------------------------------------------------------------------------


def _bomb(levels: int = 9) -> str:
    """A billion laughs: 9 lines of anchors and aliases that mean 9**9 strings."""
    rows = ["[&l0 [" + ", ".join(["lol"] * 9) + "]"]
    rows += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return ", ".join(rows) + "]"


_BOMBS = {
    "name": "name: {bomb}\nsteps: [quantize]\n",
    "description": "description: {bomb}\nsteps: [quantize]\n",
    "evaluate": "steps: [quantize]\nevaluate: {{sts: {bomb}}}\n",
    "format option": "steps:\n  - quantize: {{format: int4, block_size: {bomb}}}\n",
}

# Run apart, with its address space capped 512 MiB above what the imports took: a recipe that
# expanded the bomb would die there (or time out), not take the machine's memory.
_LOAD_CAPPED = """
import json, os, resource, sys, time
from edgeemb.errors import EdgeembError
from edgeemb.recipe import load_recipe, parse_recipe

pages = int(open("/proc/self/statm").read().split()[0])
resource.setrlimit(resource.RLIMIT_AS, (pages * os.sysconf("SC_PAGE_SIZE") + (512 << 20),) * 2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
results = {}

def refused(label, load):
    start = time.perf_counter()
    try:
        load()
        results[label] = ("accepted", 0.0)
    except EdgeembError as exc:
        results[label] = (str(exc), time.perf_counter() - start)

for path in sys.argv[1:]:
    refused(path, lambda: load_recipe(path))
laughs = ["lol"] * 9
for _ in range(8):  # the same bomb built in Python: shared lists, 9**9 strings once printed
    laughs = [laughs] * 9
for key, data in {"name": {"name": laughs, "steps": ["quantize"]},
                  "description": {"description": laughs, "steps": ["quantize"]},
                  "evaluate": {"evaluate": {"sts": laughs}, "steps": ["quantize"]},
                  "format option": {"steps": [{"quantize": {"format": "int4", "block_size": laughs}}]}}.items():
    refused("python " + key, lambda: parse_recipe(data))
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"results": results, "grown_kib": grown}))
"""


def test_an_alias_bomb_is_refused_at_once_wherever_it_is(tmp_path):
    paths = []
    for where, template in _BOMBS.items():
        path = tmp_path / f"{where.replace(' ', '-')}.yaml"
        path.write_text(template.format(bomb=_bomb()))
        paths.append(str(path))
    done = subprocess.run([sys.executable, "-c", _LOAD_CAPPED, *paths], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout)
    results = measured["results"]
    assert len(results) == 8
    refusal = "line [12]: YAML anchors and aliases \\(&l0, \\*l0\\) are not allowed in a recipe; write the value out"
    for label, (message, seconds) in results.items():
        if label.startswith("python "):  # refused by type before anything expands it
            assert re.fullmatch(r"recipe recipe: .*Input should be a valid (string|integer)(, not list)?", message)
        else:
            assert re.fullmatch(f"recipe {re.escape(label)}: {refusal}", message), message
        assert seconds < 0.5, (label, seconds)
    assert measured["grown_kib"] < 64 * 1024  # MiB-level, not the GiBs an expansion takes


def test_a_single_anchor_is_refused_with_its_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - quantize: &q {format: int8}\n")
    with pytest.raises(EdgeembError, match=r"r.yaml: line 2: YAML anchors and aliases \(&q, \*q\) are not allowed"):
        load_recipe(recipe)


def test_recipe_files_are_bounded_in_size_nesting_and_kind(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("steps: [quantize]\ndescription: " + "x" * MAX_RECIPE_BYTES + "\n")
    with pytest.raises(EdgeembError, match="big.yaml: larger than 1 MiB"):
        load_recipe(big)
    deep = tmp_path / "deep.yaml"
    deep.write_text("steps: [quantize]\ndescription: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(EdgeembError, match="deep.yaml: line 2: nested more than 32 levels deep"):
        load_recipe(deep)
    with pytest.raises(EdgeembError, match="not a regular file"):
        load_recipe(tmp_path)


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "r.yaml"
    os.mkfifo(fifo)
    code = textwrap.dedent("""\
        import sys
        from edgeemb.recipe import load_recipe
        try:
            load_recipe(sys.argv[1])
        except Exception as error:
            print(error)
    """)
    done = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"recipe {fifo}: not a regular file"


def test_the_cli_refuses_an_alias_bomb_in_one_line_and_writes_nothing(tiny_model, tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(_BOMBS["description"].format(bomb=_bomb(levels=4)))  # 9**4 if it ever expanded here
    out = tmp_path / "out"
    assert_one_line_error(run("compress", tiny_model, "-r", recipe, "-o", out), "YAML anchors and aliases")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]
