"""report.md: the figures of report.json, short, for people. Renders; computes nothing."""

from __future__ import annotations

from pathlib import Path

from edgeemb.results import Exported, GGUFExported, Quality, Report, Requantised, SimilarityScored, TrimFacts


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def size_change(ratio: float) -> str:
    """A source-to-compressed byte ratio as people read it: 1.55x smaller, 1.46x larger."""
    if round(ratio, 2) == 1:  # as shown: within rounding of the same bytes
        return "the same size"
    return f"{ratio:.2f}x smaller" if ratio > 1 else f"{1 / ratio:.2f}x larger"


def requantised_rows(requantised: Requantised | None) -> list[tuple[str, str]]:
    """A re-quantised export's tables, the file's beside the recipe's, as (label, value) rows."""
    if requantised is None:
        return []
    recipe, shipped = requantised.recipe, requantised.shipped

    def figures(table) -> str:
        quality = table.quality
        return (
            f"{table.storage}, {human_bytes(table.bytes)}, {table.bits_per_param:.2f} bits "
            f"({size_change(table.ratio_vs_source)} than the source); relative error {quality.relative_error:.4f}, "
            f"row cosine mean {quality.row_cosine_mean:.4f}, nn overlap {quality.nn_overlap_mean:.3f}"
        )

    return [
        (
            "re-quantised",
            f"the file ships token_embd as {shipped.storage}, not the recipe's table: its own figures below "
            "(error against the source's original table)",
        ),
        ("shipped token_embd", figures(shipped)),
        ("recipe's table", figures(recipe)),
    ]


def format_number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def comparison_rows(quality: Quality) -> list[tuple[str, str, str, str, str]]:
    """(metric, data, original, compressed, change) for each model-level figure, formatted."""
    rows = []
    if quality.sts is not None:
        sts = quality.sts
        data = f"{sts.data} ({sts.pairs} pairs{f', prompt {sts.prompt}' if sts.prompt else ''})"
        rows.append(("STS Spearman x100", data, f"{sts.original:.2f}", f"{sts.compressed:.2f}", f"{sts.delta:+.2f}"))
        for name, by in (sts.similarities or {}).items():
            figures = (f"{by.original:.2f}", f"{by.compressed:.2f}", f"{by.delta:+.2f}")
            rows.append((f"STS Spearman x100, {name}", f"{sts.data} ({_set_up(by)})", *figures))
    if quality.retrieval is not None:
        ret = quality.retrieval
        prompts = {"query": ret.query_prompt, "document": ret.document_prompt}
        named = ", ".join(f"{role} prompt {name}" for role, name in prompts.items() if name)
        data = f"{ret.data} ({named})" if named else ret.data
        for key, label in (("ndcg_at_10", "nDCG@10"), ("recall_at_10", "recall@10")):
            before, after = getattr(ret.original, key), getattr(ret.compressed, key)
            rows.append((label, data, f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}"))
            for name, scored in (ret.similarities or {}).items():
                before, after = getattr(scored.original, key), getattr(scored.compressed, key)
                figures = (f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}")
                rows.append((f"{label}, {name}", f"{ret.data} ({_set_up(scored)})", *figures))
    if quality.perplexity is not None:
        ppl = quality.perplexity
        change = f"{ppl.compressed / ppl.original - 1:+.2%}"
        per = " per source token" if ppl.compressed_tokens_scored is not None else ""
        data = f"{ppl.data} ({ppl.tokens_scored} tokens, {ppl.runtime})"
        rows.append((f"perplexity{per}", data, f"{ppl.original:.3f}", f"{ppl.compressed:.3f}", change))
        if ppl.bits_per_byte is not None:
            bits = ppl.bits_per_byte
            rows.append(
                ("bits per byte", ppl.data, f"{bits.original:.4f}", f"{bits.compressed:.4f}", f"{bits.delta:+.4f}")
            )
    return rows


def health_rows(quality: Quality) -> list[tuple[str, str, str, str, str]]:
    """(metric, data, original, compressed, change) for the word-similarity and context probes."""
    rows = []
    for words in quality.words or ():
        data = f"{Path(words.data).name} ({words.pairs_scored} of {words.pairs} pairs)"
        kinds = [("static", words.static_original, words.static_compressed)]
        if words.contextual_original is not None and words.contextual_compressed is not None:
            kinds.append(("contextual", words.contextual_original, words.contextual_compressed))
        rows += [
            (f"word Spearman x100, {kind}", data, f"{before:.2f}", f"{after:.2f}", f"{after - before:+.2f}")
            for kind, before, after in kinds
        ]
    if quality.probes is not None:
        probes = quality.probes
        data = f"{Path(probes.data).name} ({probes.probes} probes)"
        for separation in probes.separations:
            if separation.original is not None and separation.compressed is not None:
                before, after = separation.original, separation.compressed
                rows.append((f"{separation.name} AUC", data, f"{before:.3f}", f"{after:.3f}", f"{after - before:+.3f}"))
    return rows


def _set_up(scored: SimilarityScored) -> str:
    """What a similarity other than cosine fitted on, or its neighbours."""
    if scored.fit is not None:
        return f"fit on {scored.fit.source}, {scored.fit.texts} texts"
    return f"k = {scored.k}"


def vocabulary_rows(vocab: TrimFacts | None) -> list[tuple[str, str]]:
    """What a vocabulary trim kept and how held-out text fares, as (label, value) rows."""
    if vocab is None:
        return []
    rules = [
        (vocab.floor_rows, "always kept (special, byte, fallback)"),
        (vocab.script_rows, "by script"),
        (vocab.character_rows, "single characters"),
        (vocab.corpus.frequent_rows if vocab.corpus is not None else None, "by corpus"),
    ]
    kept = [(rows, what) for rows, what in rules if rows is not None]  # the rules the trim used
    terms = " + ".join(f"{rows:,} {what}" for rows, what in kept)
    # Each rule's count is its own, and the rules overlap (an ASCII letter is a script piece and a
    # single character) while `drop` removes pieces: the difference is shown, so the sum is the rows kept.
    shared = sum(rows for rows, _ in kept) - (vocab.rows - vocab.closure_rows_added)
    if shared:
        terms += f" - {shared:,} counted by more than one rule or dropped"
    rows = [
        (
            "vocabulary",
            f"{vocab.rows:,} of {vocab.source_rows:,} rows ({vocab.rows / vocab.source_rows:.1%}) = {terms} "
            f"+ {vocab.closure_rows_added:,} merge intermediates added",
        )
    ]
    if vocab.holdout is not None:
        held = vocab.holdout
        rows.append(
            (
                "held-out corpus",
                f"{held.lines:,} lines: {held.token_coverage:.2%} of their tokens kept, "
                f"{held.lines_changed:.1%} of lines tokenised differently, {held.token_increase:+.2%} tokens",
            )
        )
    return rows


def render_report(report: Report) -> str:
    model, table, quality = report.model, report.table, report.quality
    head = {None: "none (encoder)", True: "tied to the table", False: "separate"}[model.tied]
    default = report.recipe.default
    lines = [
        f"# edgeemb: {model.name} with recipe `{report.recipe.name}`",
        "",
        *([f"No recipe was named: `{report.recipe.name}` is {default}.", ""] if default else []),
        f"{model.architecture} ({model.format}), vocab {model.vocab} x dim {model.dim}; "
        f"the table is {model.table_share_of_params:.1%} of {model.total_params / 1e6:.1f} M parameters "
        f"and {model.table_share_of_bytes:.1%} of the weights' bytes; output head: {head}.",
        "",
        "| | source | compressed |",
        "|---|---|---|",
        f"| storage | {model.stored_dtype} | {table.storage} |",
        f"| table bytes | {human_bytes(model.table_bytes)} | {human_bytes(table.bytes)} "
        f"({size_change(table.ratio_vs_source)}; {table.ratio_vs_fp32:.2f}x vs fp32) |",
        f"| bits per parameter | {8 * model.table_bytes / model.table_params:.2f} | {table.bits_per_param:.2f} |",
        "",
        *(f"**Warning:** {warning}." for warning in table.warnings or ()),
        *([""] if table.warnings else []),
        *(f"- {label}: {value}" for label, value in vocabulary_rows(table.vocabulary)),
        *([""] if table.vocabulary is not None else []),
        "## Quality",
        "",
    ]
    if quality.table is None:
        lines.append(f"No table-level figures: {table.replaces_model}.")
    else:
        lines += ["Table level (no data):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key.replace('_', ' ')} | {format_number(value)} |" for key, value in quality.table]
    comparisons = comparison_rows(quality) + health_rows(quality)
    if comparisons:
        lines += [
            "",
            "Model level (sentence embeddings):",
            "",
            "| metric | data | original | compressed | change |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {' | '.join(row)} |" for row in comparisons]
    if quality.drift is not None:
        drift = quality.drift
        lines += [
            "",
            f"Sentence-embedding cosine, original vs compressed, over {drift.n} texts: "
            f"mean {drift.mean_cosine:.4f}, 1st percentile {drift.p01_cosine:.4f}, min {drift.min_cosine:.4f}.",
        ]
    if report.export is not None:
        lines += ["", *export_lines(report.export)]
    return "\n".join(lines) + "\n"


def export_lines(exported: Exported) -> list[str]:
    """report.md's export section: the file written and its check in the runtime it is for."""
    written, check = exported.export, exported.verify
    if check is None:  # `edgeemb export --no-verify`
        file = f"`{written.path}` ({human_bytes(written.file_bytes)}), not verified."
        return [f"## Export ({written.format})", "", file, *_gguf_notes(exported)]
    if not isinstance(exported, GGUFExported):
        return [
            f"## Export ({written.format})",
            "",
            f"`{written.path}` ({human_bytes(written.file_bytes)}), verified in {check.runtime}.",
        ]
    source, export = check.source, check.export
    lines = [
        "## Export (GGUF, verified in llama.cpp)",
        "",
        "| | source | export |",
        "|---|---|---|",
        f"| file | {human_bytes(written.source_bytes)} | `{written.path}`, {human_bytes(written.file_bytes)} "
        f"({written.file_bytes / written.source_bytes - 1:+.1%}) |",
        f"| token_embd | {human_bytes(written.source_table_bytes)} | {written.tensor_type}, "
        f"{human_bytes(written.table_bytes)} |",
        f"| greedy output ({len(export.greedy_ids)} tokens) | {_cell(source.greedy_text)} | "
        f"{check.greedy_tokens_equal_to_source} tokens as the source: {_cell(export.greedy_text)} |",
        f"| decode tokens/s (same run) | {source.decode_tokens_per_s:.1f} | {export.decode_tokens_per_s:.1f} |",
        f"| peak RSS | {human_bytes(source.peak_rss_bytes)} | {human_bytes(export.peak_rss_bytes)} |",
    ]
    if check.greedy_tokens_equal_to_transformers is not None:
        agreed = check.greedy_tokens_equal_to_transformers
        lines.append(f"| greedy tokens as transformers with the same table | | {agreed} |")
    if check.table is not None:
        logits = check.table
        lines.append(
            f"| logits vs the expected table in F32 ({logits.tokens} tokens) | | mean KL {logits.mean_kl:.2e} nats "
            f"per token, same top token at {logits.top1_agreement:.1%} |"
        )
    if source.perplexity is not None and export.perplexity is not None and check.text is not None:
        before, after = source.perplexity.perplexity, export.perplexity.perplexity
        lines.append(
            f"| perplexity ({export.perplexity.tokens_scored} tokens of {check.text.data}) | {before:.3f} "
            f"| {after:.3f} ({after / before - 1:+.2%}) |"
        )
    return lines + _gguf_notes(exported)


def _gguf_notes(exported: Exported) -> list[str]:
    """A GGUF export's notes and, when the table was quantised again, the shipped table's figures."""
    if not isinstance(exported, GGUFExported):
        return []
    notes = [f"- {note}" for note in exported.export.notes]
    notes += [f"- {label}: {value}" for label, value in requantised_rows(exported.requantised)]
    return ["", *notes] if notes else []


def _cell(text: str, width: int = 60) -> str:
    """Generated text in a table cell: quoted, cut, with no character that ends the cell or row."""
    return repr(text[:width]).replace("|", "\\|")
