"""Vocabulary trimming: the kept set, the rewritten tokenizers (tokenizer.json and GGUF), the
pipeline around it, and real runs on MiniLM (Cranfield) and SmolLM2 (llama.cpp)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from edgeemb.errors import EdgeembError
from edgeemb.recipe import parse_recipe
from edgeemb.sources import open_model
from edgeemb.sources.hf import tokenizer_vocabulary
from edgeemb.steps import StepContext
from edgeemb.steps.trim import TrimConfig, trim_vocab
from edgeemb.table import DenseTable, TrimmedTable, load_table, save_table
from edgeemb.vocab import TokenType, Vocabulary, script_mask
from tests.conftest import WORDS, data_file

KEPT_TEXT = "the water was long and very little"


def _context(model) -> StepContext:
    return StepContext(model.tokens, model.tokenize, vocabulary=model.vocabulary)


def _trim(model, tmp_path: Path, corpus_text: str, **options) -> TrimmedTable:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text)
    return trim_vocab(model.table, TrimConfig(corpus=(corpus,), holdout=0, **options), _context(model))


def _bpe_tokenizer_json() -> dict:
    """A byte-level BPE trained on the test words: many merges, so intermediates matter."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    text = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(0, len(WORDS), 7)]
    tokenizer.train_from_iterator(text, trainer)
    return json.loads(tokenizer.to_str())


# --- the kept set ---------------------------------------------------------------------------------


def test_wordpiece_trim_keeps_kept_text_identical_and_falls_back_to_characters(tiny_model, tmp_path):
    model = open_model(tiny_model)
    trimmed = _trim(model, tmp_path, KEPT_TEXT)
    keep, tokenize = trimmed.keep, model.vocabulary().retokenizer(trimmed.keep)
    assert [int(keep[i]) for i in tokenize(KEPT_TEXT)] == model.tokenize(KEPT_TEXT)
    # 'people' was not in the corpus: it falls back to word pieces, never to [UNK]
    pieces = [model.tokens[keep[i]] for i in tokenize("people")]
    assert pieces == ["p", "##e", "##o", "##p", "##l", "##e"]
    assert not any(model.tokens[i].startswith("[unused") for i in keep)  # reserved slots are dropped
    assert np.array_equal(trimmed.rows.weight, model.table.weight[keep])
    assert trimmed.facts["rows"] == len(keep) < model.vocab_size


def test_bpe_closure_keeps_merge_intermediates(tmp_path):
    data = _bpe_tokenizer_json()
    vocab = tokenizer_vocabulary(data)
    corpus = ["water would people", "the little words"]
    seen = np.zeros(len(vocab), bool)
    seen[[i for line in corpus for i in vocab.tokenize(line)]] = True
    closed = vocab.closure(seen | vocab.floor())
    keep = np.flatnonzero(closed)
    assert closed.sum() > (seen | vocab.floor()).sum()  # whole words need their merge parts
    tokenize = vocab.retokenizer(keep)
    for line in corpus:  # every original token kept: the same tokens
        assert [int(keep[i]) for i in tokenize(line)] == vocab.tokenize(line)
    fallback = tokenize("zebra")  # not in the corpus: smaller pieces, same text
    assert "".join(vocab.surface(int(keep[i])) for i in fallback) == "zebra"


def test_unigram_trim_keeps_kept_text_and_falls_back_to_characters():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<unk>"], unk_token="<unk>")
    tokenizer.train_from_iterator([" ".join(WORDS[i:] + WORDS[:i]) for i in range(0, len(WORDS), 5)], trainer)
    vocab = tokenizer_vocabulary(json.loads(tokenizer.to_str()))
    seen = np.zeros(len(vocab), bool)
    seen[vocab.tokenize(KEPT_TEXT)] = True
    keep = np.flatnonzero(vocab.closure(seen | vocab.floor()))
    trimmed = vocab.retokenizer(keep)
    assert [int(keep[i]) for i in trimmed(KEPT_TEXT)] == vocab.tokenize(KEPT_TEXT)
    unk = vocab.special["unk"]
    assert unk not in [int(keep[i]) for i in trimmed("people would find")]  # pieces, not <unk>


def test_spm_closure_replays_score_ordered_merges():
    tokens = ["<unk>", "a", "b", "c", "ab", "bc", "abc"]
    types = np.array([TokenType.UNKNOWN] + [TokenType.NORMAL] * 6, np.uint8)
    scores = np.array([0, 0, 0, 0, -1, -2, -3], np.float32)  # 'ab' merges before 'bc'
    vocab = Vocabulary(
        "spm", tokens, types, {"unk": 0}, tokenize=lambda t: [], retokenizer=lambda k: lambda t: [], scores=scores
    )
    keep = np.zeros(7, bool)
    keep[[0, 6]] = True
    assert [tokens[i] for i in np.flatnonzero(vocab.closure(keep))] == ["<unk>", "ab", "abc"]


def test_script_policy_reads_pieces_as_text():
    tokens = ["▁the", "▁Привет", "▁café", "—", "<unused7>", "日本"]
    vocab = Vocabulary(
        "spm", tokens, np.ones(6, np.uint8), {}, tokenize=lambda t: [], retokenizer=lambda k: lambda t: []
    )
    assert script_mask(vocab, ("ascii",)).tolist() == [True, False, False, False, False, False]
    assert script_mask(vocab, ("latin",)).tolist() == [True, False, True, True, False, False]
    assert script_mask(vocab, ("cyrillic",)).tolist() == [True, True, False, True, False, False]


def test_a_script_can_be_limited_to_the_first_ids(tiny_model):
    model = open_model(tiny_model)
    everything = trim_vocab(model.table, TrimConfig(scripts=("latin",)), _context(model))
    first = trim_vocab(model.table, TrimConfig(scripts=({"latin": 40},)), _context(model))
    assert set(first.keep) < set(everything.keep) and first.facts["script_rows"] == 40 - 1  # id 5 is a gap ("a" twice)


def test_trimmed_table_round_trips_and_counts_only_its_rows(tmp_path):
    rows = DenseTable(np.arange(12, dtype=np.float32).reshape(4, 3))
    table = TrimmedTable(rows, np.array([0, 2, 5, 9], np.int32), {"rows": 4, "source_rows": 10})
    save_table(table, tmp_path / "t.safetensors")
    loaded = load_table(tmp_path / "t.safetensors")
    assert isinstance(loaded, TrimmedTable) and loaded.facts == table.facts
    assert np.array_equal(loaded.keep, table.keep) and np.array_equal(loaded.lookup(np.array([3])), [[9, 10, 11]])
    assert loaded.nbytes == rows.nbytes  # the renumbering is edgeemb's record, not runtime bytes


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"quantize": {"format": "int8"}}, {"trim_vocab": {"scripts": ["latin"]}}], "must be the first step"),
        ([{"trim_vocab": {}}], "give a policy"),
        ([{"trim_vocab": {"scripts": ["latn"]}}], "unknown script 'latn'"),
        ([{"trim_vocab": {"scripts": [{"latin": 0}]}}], "positive count"),
        ([{"trim_vocab": {"scripts": ["latin"], "min_count": 2}}], "min_count needs a corpus"),
        ([{"trim_vocab": {"corpus": ["a.txt"], "min_count": 2, "top_k": 5}}], "at most one"),
    ],
)
def test_bad_recipes_are_refused(steps, message):
    with pytest.raises(EdgeembError, match=message):
        parse_recipe({"steps": steps})


def test_bad_trims_are_refused(tiny_model, tmp_path):
    model = open_model(tiny_model)
    with pytest.raises(EdgeembError, match="has no text"):
        _trim(model, tmp_path, "\n  \n")
    with pytest.raises(EdgeembError, match=r"drops '\[CLS\]'.*still needs it"):
        _trim(model, tmp_path, KEPT_TEXT, drop=("[CLS]",))
    with pytest.raises(EdgeembError, match="not a piece"):
        _trim(model, tmp_path, KEPT_TEXT, drop=("nonesuch",))
    with pytest.raises(EdgeembError, match="tokenizer type 'WordLevel' is not supported"):
        tokenizer_vocabulary({"model": {"type": "WordLevel", "vocab": {}}})


# --- GGUF -----------------------------------------------------------------------------------------


def test_gguf_export_rewrites_the_vocabulary_and_copies_the_rest(tmp_path):
    from gguf.constants import GGMLQuantizationType as Q

    from edgeemb.export.gguf import export_gguf
    from edgeemb.sources.gguf import TOKEN_EMBD, read_gguf_header
    from tests.sources.test_gguf import TOKENS, write_gguf

    weight = write_gguf(tmp_path / "src.gguf", Q.Q8_0)
    keep = np.array([0, 3, 50, 93, 94], np.int32)
    table = TrimmedTable(DenseTable(weight[keep]), keep, {"source_rows": len(TOKENS)})
    export_gguf(tmp_path / "src.gguf", table, tmp_path / "out.gguf", "Q8_0")
    before, after = read_gguf_header(tmp_path / "src.gguf"), read_gguf_header(tmp_path / "out.gguf")
    assert after.metadata["tokenizer.ggml.tokens"] == [TOKENS[i] for i in keep]
    assert np.array_equal(after.metadata["tokenizer.ggml.scores"], before.metadata["tokenizer.ggml.scores"][keep])
    unchanged = set(before.metadata) - {"tokenizer.ggml.tokens", "tokenizer.ggml.scores"}
    assert all(np.array_equal(before.metadata[k], after.metadata[k]) for k in unchanged)
    assert after.tensor(TOKEN_EMBD).shape == (5, weight.shape[1])
    assert after.tensor("blk.0.attn_q.weight").nbytes == before.tensor("blk.0.attn_q.weight").nbytes


# --- the pipeline ---------------------------------------------------------------------------------


def test_compress_trims_then_quantises_and_reports_it(tiny_model, tiny_sts, tmp_path):
    from edgeemb.pipeline import EvaluationData, compress, evaluate_artifact

    corpus = tmp_path / "corpus.txt"
    held = [" ".join(WORDS[0:4] + WORDS[64:68]), " ".join(WORDS[4:8] + WORDS[68:72])]  # half seen before, half not
    corpus.write_text("\n".join([" ".join(WORDS[i : i + 8]) for i in range(0, 64, 8)] + held))
    recipe = parse_recipe(
        {
            "name": "trim-int8",
            "steps": [{"trim_vocab": {"corpus": [str(corpus)], "holdout": 0.2}}, {"quantize": {"format": "int8"}}],
        }
    )
    result = compress(tiny_model, recipe, tmp_path / "out", data=EvaluationData(sts=tiny_sts))
    vocabulary = result.report.table.vocabulary
    assert vocabulary.rows == result.manifest.table.shape[0] < vocabulary.source_rows
    assert vocabulary.holdout.lines == 2 and 0 < vocabulary.holdout.token_coverage < 1
    assert vocabulary.holdout.lines_changed == 1 and vocabulary.holdout.token_increase > 0
    assert (
        "vocabulary trimmed" in result.report.table.storage
        and "held-out corpus" in (tmp_path / "out" / "report.md").read_text()
    )
    again = evaluate_artifact(tmp_path / "out", EvaluationData(sts=tiny_sts))
    assert again.quality.sts.compressed == pytest.approx(result.report.quality.sts.compressed)


# --- real models ----------------------------------------------------------------------------------


@pytest.mark.real
def test_minilm_trimmed_on_cranfield_keeps_its_queries_and_reports_other_text_degraded(tmp_path):
    """MiniLM trimmed to the pieces of Cranfield's documents keeps 28% of its rows; Cranfield's
    queries (not in the corpus) keep their sentence embeddings (mean cosine > 0.99), while STS-B
    sentences, another domain, drift far more, and the drift is reported, not hidden."""
    from edgeemb.evaluate.data import read_beir, read_sts
    from edgeemb.pipeline import EvaluationData, evaluate_quality

    beir = data_file("cranfield_beir")
    model = open_model("minilm")
    table = trim_vocab(model.table, TrimConfig(corpus=(beir,)), _context(model))
    assert table.shape[0] < 0.3 * model.vocab_size and table.facts["holdout"]["token_coverage"] > 0.98
    queries, sts = tmp_path / "queries.txt", data_file("stsb", "stsb_en_dev.tsv")
    queries.write_text("\n".join(read_beir(beir).query_texts) + "\n")
    in_domain = evaluate_quality(model, table, EvaluationData(texts=queries)).drift
    sentences = tmp_path / "sts.txt"
    sentences.write_text("\n".join(read_sts(sts).sentences1[:300]) + "\n")
    other = evaluate_quality(model, table, EvaluationData(texts=sentences)).drift
    assert in_domain.mean_cosine > 0.99 and other.mean_cosine < in_domain.mean_cosine - 0.1


@pytest.mark.real
def test_smollm2_trimmed_gguf_runs_in_llama_cpp_and_scores_by_bits_per_byte(tmp_path):
    """SmolLM2 trimmed to ASCII pieces and those of the second half of WikiText-2 exports a GGUF
    that llama.cpp loads and runs; on the first half, scored by bits per byte, it stays within 1%
    of the source; Russian text (dropped pieces) still tokenises and decodes back to itself."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    from edgeemb.evaluate.llamacpp import llama_vocabulary
    from edgeemb.pipeline import EvaluationData, compress

    text = data_file("wikitext2", "wikitext2_raw_test_joined.txt").read_text(encoding="utf-8")
    middle = text.index("\n", len(text) // 2)
    (tmp_path / "first.txt").write_text(text[:middle])
    (tmp_path / "second.txt").write_text(text[middle:])
    policy = {"scripts": ["ascii"], "corpus": [str(tmp_path / "second.txt")]}
    recipe = parse_recipe(
        {"name": "trim", "steps": [{"trim_vocab": policy}], "export": {"format": "gguf", "type": "Q8_0"}}
    )
    result = compress(
        "smollm2-135m",
        recipe,
        tmp_path / "out",
        data=EvaluationData(perplexity=tmp_path / "first.txt", max_tokens=1024),
    )
    ppl = result.report.quality.perplexity
    assert ppl.runtime == "llama.cpp" and ppl.bits_per_byte.compressed < 1.01 * ppl.bits_per_byte.original
    assert result.export.export.file_bytes < result.export.export.source_bytes
    vocab = llama_vocabulary(tmp_path / "out" / "model.gguf")
    russian = "Привет, мир! Как дела?".encode()
    ids = vocab.tokenize(russian, add_bos=False, special=False)
    assert vocab.detokenize(ids) == russian and max(ids) < result.report.table.vocabulary.rows


def test_trimmed_tables_export_to_onnx_and_sentence_transformers_with_their_tokenizer(tiny_model, tmp_path):
    from edgeemb.pipeline import compress, export_artifact
    from edgeemb.recipe import ExportConfig

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(WORDS[i : i + 8]) for i in range(0, 64, 8)))
    recipe = parse_recipe(
        {
            "name": "trim-svd-int4",
            "steps": [
                {"trim_vocab": {"corpus": [str(corpus)], "holdout": 0}},
                {"svd": {"rank": 32}},
                {"quantize": {"format": "int4", "block_size": 32}},
            ],
        }
    )
    compress(tiny_model, recipe, tmp_path / "out")
    st = export_artifact(tmp_path / "out", ExportConfig(format="st"), tmp_path / "st")
    assert st.verify.max_abs_diff < 1e-5  # the saved directory tokenises as the trimmed model does
    onnx = export_artifact(tmp_path / "out", ExportConfig(format="onnx"), tmp_path / "model.onnx")
    assert onnx.verify.max_abs_diff < 1e-4 and Path(onnx.export.tokenizer) == tmp_path / "model.tokenizer.json"
    from tokenizers import Tokenizer

    rows = json.loads((tmp_path / "st" / "config.json").read_text())["vocab_size"]
    assert Tokenizer.from_file(str(tmp_path / "model.tokenizer.json")).get_vocab_size() == rows < 192


def test_cli_previews_a_trim_and_refuses_bad_policies(tiny_model, tmp_path):
    from click.testing import CliRunner

    from edgeemb.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(KEPT_TEXT + "\n" + KEPT_TEXT)
    result = CliRunner().invoke(main, ["trim", str(tiny_model), "--corpus", str(corpus), "--holdout", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    preview = json.loads(result.output)
    assert preview["rows"] < preview["source_rows"] == 192 and preview["holdout"]["lines_changed"] == 0
    result = CliRunner().invoke(main, ["trim", str(tiny_model), "--scripts", "latn"])
    assert result.exit_code == 1 and "unknown script 'latn'" in result.output


def test_the_trim_summary_names_every_rule_and_adds_up_to_the_rows_kept(tiny_model, tmp_path):
    # #19 problem 6: the text left out the character rows the JSON reports, so its parts did not add up.
    from click.testing import CliRunner

    from edgeemb.cli import main
    from edgeemb.report.markdown import vocabulary_rows
    from edgeemb.results import TrimPreview, from_json

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(KEPT_TEXT)
    args = ["trim", str(tiny_model), "--scripts", "ascii", "--characters", "--corpus", str(corpus), "--holdout", "0"]
    preview = from_json(TrimPreview, CliRunner().invoke(main, [*args, "--json"]).output)
    assert preview.character_rows and preview.script_rows and preview.corpus is not None
    ((label, text),) = vocabulary_rows(preview)
    terms = re.findall(r"(?:^|([+-]) )([\d,]+) (\w+)", text.split(" = ", 1)[1])
    assert [what for _, _, what in terms] == ["always", "by", "single", "by", "counted", "merge"]
    assert sum(int(n.replace(",", "")) * (-1 if sign == "-" else 1) for sign, n, _ in terms) == preview.rows
    assert f"{preview.character_rows:,} single characters" in text
    printed = CliRunner().invoke(main, args, env={"COLUMNS": "300"}).output
    assert f"{preview.character_rows:,} single characters" in printed


def test_a_trimmed_table_offloads_as_a_smaller_store_streamed_in_its_own_ids(tiny_model, tmp_path):
    from edgeemb.offload import OffloadConfig
    from edgeemb.offload.run import offload
    from edgeemb.pipeline import compress

    corpus, text = tmp_path / "corpus.txt", tmp_path / "text.txt"
    corpus.write_text(KEPT_TEXT)
    text.write_text(KEPT_TEXT + " people")  # 'people' was dropped: it streams as character pieces
    compress(
        tiny_model,
        parse_recipe({"name": "trim", "steps": [{"trim_vocab": {"corpus": [str(corpus)], "holdout": 0}}]}),
        tmp_path / "out",
    )
    report = offload(tmp_path / "out", text, OffloadConfig(cache_bytes=(4096,))).offload
    table = load_table(tmp_path / "out" / "table.safetensors")
    assert report.rows == table.shape[0] < 192
    assert report.tokens == len(KEPT_TEXT.split()) + len("people")
