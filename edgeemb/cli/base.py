"""The `edgeemb` group, its edge (`edgeemb.boundary`) and the options its commands share."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from edgeemb import __version__
from edgeemb.boundary import one_line, signals_unwind
from edgeemb.evaluate.similarity import SIMILARITIES
from edgeemb.pipeline import EvaluationData

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)  # a file to read
_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)  # a folder to read
_NEW_FILE = click.Path(dir_okay=False, path_type=Path)  # a file to write


class _Cli(click.Group):
    def main(self, *args, **kwargs):
        """Click's usage errors as one line too (the usage and a --help hint would add three)."""
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.Abort:
            click.echo("Error: aborted", err=True)
            sys.exit(1)
        except click.exceptions.NoArgsIsHelpError as exc:  # `edgeemb` alone: its help, as before
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "edgeemb"
            click.echo(f"Error: {exc.format_message()} (see `{command} --help`)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)

    def invoke(self, ctx: click.Context):
        try:
            with signals_unwind():
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BaseException as exc:  # the edge: every ending is one line (edgeemb.boundary)
            ending = one_line(exc)
            if ending is None or isinstance(exc, SystemExit):
                raise
            error = click.ClickException(ending[0])
            error.exit_code = ending[1]
            raise error from None


_model_argument = click.argument("model", required=False, metavar="[MODEL]")
_MODEL_HELP = (
    "MODEL is a short name (minilm, smollm2-135m, gemma3-270m, qwen2.5-0.5b, mpnet, embeddinggemma-300m; see "
    "`edgeemb models`), a Hugging Face or "
    "sentence-transformers directory, or a GGUF file. Default: minilm."
)
_DATA_OPTIONS = (
    click.option("--sts", type=_FILE, help="STS TSV (sentence1, sentence2, score): Spearman x100 of the whole model."),
    click.option(
        "--beir", type=_FOLDER, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv): nDCG@10 and recall@10."
    ),
    click.option(
        "--texts",
        type=_FILE,
        help="Plain text, one text per line: cosine of original vs compressed sentence embeddings.",
    ),
    click.option(
        "--perplexity",
        "perplexity_text",
        type=_FILE,
        help=(
            "Plain text: perplexity of a causal LM (GGUF or Hugging Face) with the original and the compressed table "
            "(transformers; llama.cpp, on the exported file, when the recipe exports GGUF)."
        ),
    ),
    click.option(
        "--max-tokens",
        type=click.IntRange(min=1),
        default=4096,
        show_default=True,
        help="Tokens of --perplexity text to score.",
    ),
    click.option(
        "--words",
        type=_FILE,
        multiple=True,
        help=(
            "word1/word2/score TSV (WordSim353, SimLex-999, ...): Spearman x100 of the static table and of the "
            "contextual model, with coverage (repeat for more)."
        ),
    ),
    click.option(
        "--probes",
        type=_FILE,
        help="Context probes TSV (sentence_a, span_a, sentence_b, span_b, relation): polysemy and synonymy in context.",
    ),
    click.option("--builtin-probes", is_flag=True, help="Run edgeemb's built-in context probe set."),
    click.option(
        "--similarity",
        "similarities",
        type=click.Choice(SIMILARITIES),
        multiple=True,
        help="STS and retrieval also scored with this similarity, beside cosine (repeat for more).",
    ),
    click.option(
        "--fit-text",
        type=_FILE,
        help="centered/whitened: fit the mean (and covariance) on these lines, not on the evaluated texts.",
    ),
    click.option(
        "--prompt",
        "prompts",
        multiple=True,
        metavar="ROLE=NAME",
        help=(
            "The model's prompt for an evaluation role (sts, query, document), or none. Default: the model's "
            "STS, query and document prompts where it defines them (EmbeddingGemma does), else none."
        ),
    ),
    click.option(
        "--csls-k",
        type=click.IntRange(min=1),
        default=10,
        show_default=True,
        help="csls: neighbours in each side's hubness penalty.",
    ),
)
_CALIBRATION_HELP = (
    "Plain text for steps that measure activations (quantize importance: head); " "keep it apart from evaluation text."
)


def _given(**options):
    """The options the command line set, not those left at their defaults."""
    source = click.get_current_context().get_parameter_source
    return {name: value for name, value in options.items() if source(name) is not ParameterSource.DEFAULT}


def _data_options(function):
    """The evaluation-data options, handed to the command as one `data: EvaluationData`."""

    @functools.wraps(function)
    def command(**options):
        fields = {name: options.pop(name) for name in _DATA_FIELDS}
        fields["perplexity"] = fields.pop("perplexity_text")
        return function(data=EvaluationData(**fields), **options)

    for option in reversed(_DATA_OPTIONS):
        command = option(command)
    return command


_DATA_FIELDS = (
    "sts",
    "beir",
    "texts",
    "perplexity_text",
    "max_tokens",
    "words",
    "probes",
    "builtin_probes",
    "similarities",
    "fit_text",
    "csls_k",
    "prompts",
)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeemb")
def main() -> None:
    """Compress the token embedding table of small models for edge devices, and measure what it cost.

    \b
    edgeemb inspect gemma3-270m          what the table is and how compressible it looks
    edgeemb compress                      default recipe (int4) on the embedded MiniLM
    edgeemb compress minilm -r int8 --sts stsb_en_dev.tsv -o out/minilm-int8
    edgeemb evaluate out/minilm-int8 --beir cranfield_beir/
    """
