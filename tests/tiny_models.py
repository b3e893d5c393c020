"""Tiny random models of each architecture edgeemb exports, built on the fly (a second or two each).

- `causal_lm`: a Hugging Face causal LM (llama, qwen2, qwen3, gemma3, phi3) with a SentencePiece
  tokenizer.model that llama.cpp's convert_hf_to_gguf.py reads (its byte-level BPE path needs a
  tokenizer whose pre-tokenizer it has a hash for, which no tiny vocabulary has), and the fast
  tokenizer.json transformers builds from it.
- `sentence_encoder`: a sentence-transformers model (bert, xlm-roberta, mpnet, gemma3, modernbert)
  with a WordPiece tokenizer over the same words, mean pooling.
"""

from __future__ import annotations

import io
from pathlib import Path

from tests.conftest import WORDS, _wordpiece_tokenizer

CAUSAL_LMS = ("llama", "qwen2", "qwen3", "gemma3", "phi3")
SENTENCE_ENCODERS = ("bert", "xlm-roberta", "mpnet", "gemma3", "modernbert")
VOCAB = 320


def _sentencepiece(folder: Path) -> None:
    """A BPE SentencePiece model of VOCAB pieces over WORDS: <unk>, <s>, </s>, the <|endoftext|> a
    Phi-3 vocabulary has (llama.cpp looks it up by name when it loads one), and the 256 byte pieces
    (llama.cpp's SentencePiece tokenizer spells a character it has no piece for in bytes)."""
    import sentencepiece
    from transformers import LlamaTokenizer

    lines = [" ".join(WORDS[i : i + 7]) for i in range(0, len(WORDS), 3)]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 5),
        model_writer=model,
        vocab_size=VOCAB,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=["<|endoftext|>"],
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    LlamaTokenizer.from_pretrained(folder).save_pretrained(folder)  # tokenizer.json beside it


def causal_lm(folder: Path, arch: str, *, tied: bool = True, seed: int = 0, init: float = 0.1) -> Path:
    """A random 2-layer `arch` causal LM (vocab 320, width 64) saved in `folder`. `init` is the
    weights' standard deviation: 0.1 makes greedy output change from token to token."""
    import torch
    import transformers as hf

    classes = {
        "llama": (hf.LlamaConfig, hf.LlamaForCausalLM, {}),
        "qwen2": (hf.Qwen2Config, hf.Qwen2ForCausalLM, {}),
        "qwen3": (hf.Qwen3Config, hf.Qwen3ForCausalLM, {"head_dim": 16}),
        "gemma3": (hf.Gemma3TextConfig, hf.Gemma3ForCausalLM, {"head_dim": 16, "sliding_window": 16}),
        "phi3": (hf.Phi3Config, hf.Phi3ForCausalLM, {}),
    }
    config_class, model_class, extra = classes[arch]
    folder = Path(folder)
    folder.mkdir(parents=True)
    _sentencepiece(folder)
    config = config_class(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=tied,
        initializer_range=init,
        **extra,
    )
    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    return folder


def sentence_encoder(folder: Path, arch: str) -> Path:
    """A random 1-layer `arch` sentence-transformers model (vocab 192, width 64), mean pooling."""
    import torch
    import transformers as hf
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz") + WORDS
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += [f"[unused{i}]" for i in range(192 - len(vocab))]
    common = {"vocab_size": len(vocab), "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    common |= {"intermediate_size": 128, "max_position_embeddings": 64, "pad_token_id": 0}
    configs = {
        "bert": (hf.BertConfig, hf.BertModel, {}),
        "xlm-roberta": (hf.XLMRobertaConfig, hf.XLMRobertaModel, {"max_position_embeddings": 66}),
        "mpnet": (hf.MPNetConfig, hf.MPNetModel, {"max_position_embeddings": 66}),
        "gemma3": (hf.Gemma3TextConfig, hf.Gemma3TextModel, {"head_dim": 32, "num_key_value_heads": 1}),
        "modernbert": (
            hf.ModernBertConfig,
            hf.ModernBertModel,
            {
                "cls_token_id": 2,
                "sep_token_id": 3,
                "bos_token_id": 2,
                "eos_token_id": 3,
                "global_attn_every_n_layers": 1,
            },
        ),
    }
    config_class, model_class, extra = configs[arch]
    folder = Path(folder)
    base = folder / "base"
    torch.manual_seed(0)
    model_class(config_class(**(common | extra))).save_pretrained(base)
    _wordpiece_tokenizer(vocab).save_pretrained(base)
    transformer = modules.Transformer(str(base), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, modules.Pooling(64, "mean")], device="cpu")
    model.save(str(folder / "st"))
    return folder / "st"
