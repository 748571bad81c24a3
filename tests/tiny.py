"""Tiny models, a tiny tokenizer and tiny data files for the training, CLI and distributed tests.
Everything is built from configs in a second or two; nothing is downloaded."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = ["good", "great", "tasty", "fresh", "love", "bad", "stale", "awful", "broken", "hate", "the", "coffee",
         "was", "and", "tea", "box", "it", "very", "a", "snack"]
POSITIVE, NEGATIVE = WORDS[:5], WORDS[5:10]


def tokenizer(path: Path):
    """A byte-level BPE tokenizer trained on the tiny corpus, with <pad>, <eos>, <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS)] * 5 + [f"Question: what is {a} plus {b}?\nAnswer: {a + b}" for a in range(10)
                                      for b in range(10)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<unk>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(str(path))
    return fast


def bert_folder(path: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    tok = tokenizer(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    BertForSequenceClassification(config).save_pretrained(str(path))
    return path


def llama_folder(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(str(path))
    return path


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Separable toy reviews: label 'pos' iff the first word is a positive one."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = [rng.choice(POSITIVE if positive else NEGATIVE)] + rng.sample(WORDS[10:], 4)
        rows.append({"text": " ".join(words), "label": "pos" if positive else "neg"})
    return rows


def answer_rows(n: int, seed: int = 0) -> list[dict]:
    """A learnable toy generation task: the answer is always the same short word."""
    rng = random.Random(seed)
    return [{"prompt": f"what is {rng.randint(0, 9)} plus {rng.randint(0, 9)}?", "completion": "tea"}
            for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
