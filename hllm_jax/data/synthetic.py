"""A built-in synthetic HLLM dataset, deterministic from a seed, and a matching tokenizer.

K topics, each with its own vocabulary; an item's title, tag and description use its topic's
words (plus shared filler words), and users walk a Markov chain over topics (stay, move to the
next topic, or jump), so the text of the last items carries signal about the next one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hllm_jax.data import tables
from hllm_jax.data.text import DEFAULT_PROMPT, format_text

ITEM_COLUMNS = ("item_id", "title", "tag", "description")
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class SyntheticConfig:
    num_users: int = 200
    num_items: int = 300
    num_topics: int = 8
    words_per_topic: int = 24
    shared_words: int = 40
    min_seq_len: int = 5
    max_seq_len: int = 20
    stay_prob: float = 0.6    # next item from the same topic
    next_prob: float = 0.3    # ... from topic (t + 1) % K; otherwise a uniformly random topic
    popularity: float = 1.0   # Zipf exponent of item popularity inside a topic
    empty_tag_prob: float = 0.1
    seed: int = 0
    start_time: int = 1_600_000_000

    def check(self) -> None:
        if self.num_topics < 1 or self.num_items < self.num_topics:
            raise ValueError("need num_items >= num_topics >= 1")
        if not 3 <= self.min_seq_len <= self.max_seq_len:
            raise ValueError("need 3 <= min_seq_len <= max_seq_len (leave-one-out needs 3)")
        if self.stay_prob < 0 or self.next_prob < 0 or self.stay_prob + self.next_prob > 1:
            raise ValueError("need stay_prob, next_prob >= 0 and stay_prob + next_prob <= 1")


@dataclass(frozen=True)
class SyntheticData:
    config: SyntheticConfig
    interactions: tuple[tuple[str, str, int], ...]   # (item_id, user_id, timestamp), file order
    items: tuple[tuple[str, str, str, str], ...]     # (item_id, title, tag, description)
    item_topic: dict[str, int]
    topic_words: tuple[tuple[str, ...], ...]
    shared_words: tuple[str, ...]

    @property
    def vocabulary(self) -> tuple[str, ...]:
        return tuple(w for ws in self.topic_words for w in ws) + self.shared_words


def _words(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct pronounceable words of 2-3 syllables."""
    syl = [c + v for c in _CONSONANTS for v in _VOWELS]
    out: dict[str, None] = {}
    while len(out) < n:
        k = int(rng.integers(2, 4))
        out.setdefault("".join(syl[int(j)] for j in rng.integers(0, len(syl), k)), None)
    return list(out)


def _pick(rng: np.random.Generator, own: Sequence[str], shared: Sequence[str], n: int, p_own: float) -> list[str]:
    return [own[int(rng.integers(len(own)))] if rng.random() < p_own else shared[int(rng.integers(len(shared)))]
            for _ in range(n)]


def _item_rows(cfg: SyntheticConfig, rng, topic_of: np.ndarray, topic_words, shared) -> list[tuple[str, ...]]:
    rows = []
    for j, t in enumerate(topic_of):
        own = topic_words[t]
        title = " ".join(_pick(rng, own, shared, int(rng.integers(3, 7)), 0.8)).capitalize()
        tag = ""
        if rng.random() >= cfg.empty_tag_prob:
            tag = " ".join(_pick(rng, own, shared, int(rng.integers(1, 4)), 1.0))
        desc = " ".join(_pick(rng, own, shared, int(rng.integers(8, 15)), 0.6)) + "."
        rows.append((f"s{j:05d}", title, tag, desc))
    return rows


def _walk(cfg: SyntheticConfig, rng, members: list[np.ndarray], weights: list[np.ndarray], length: int) -> list[int]:
    """One user's item indices: a topic Markov chain, popularity-weighted items, few repeats."""
    k = cfg.num_topics
    topic = int(rng.integers(k))
    seq: list[int] = []
    for _ in range(length):
        for _try in range(4):
            item = int(rng.choice(members[topic], p=weights[topic]))
            if item not in seq:
                break
        seq.append(item)
        r = rng.random()
        topic = topic if r < cfg.stay_prob else (topic + 1) % k if r < cfg.stay_prob + cfg.next_prob \
            else int(rng.integers(k))
    return seq


def generate(config: SyntheticConfig = SyntheticConfig()) -> SyntheticData:
    """The synthetic dataset of `config` (same config, same data)."""
    cfg = config
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    words = _words(rng, cfg.num_topics * cfg.words_per_topic + cfg.shared_words)
    topic_words = tuple(tuple(words[t * cfg.words_per_topic:(t + 1) * cfg.words_per_topic])
                        for t in range(cfg.num_topics))
    shared = tuple(words[cfg.num_topics * cfg.words_per_topic:]) or words[:1]
    topic_of = rng.permutation(np.arange(cfg.num_items) % cfg.num_topics)
    items = _item_rows(cfg, rng, topic_of, topic_words, shared)
    members = [np.flatnonzero(topic_of == t) for t in range(cfg.num_topics)]
    weights = []
    for m in members:
        w = 1.0 / np.arange(1, len(m) + 1) ** cfg.popularity
        weights.append(w[rng.permutation(len(m))] / w.sum())
    rows = []
    for u in range(cfg.num_users):
        seq = _walk(cfg, rng, members, weights, int(rng.integers(cfg.min_seq_len, cfg.max_seq_len + 1)))
        t = cfg.start_time + int(rng.integers(0, 10_000_000))
        for j in seq:
            t += int(rng.integers(60, 86_400))
            rows.append((items[j][0], f"u{u:05d}", t))
    order = np.argsort(np.asarray([r[2] for r in rows]), kind="stable")  # a time-ordered log
    return SyntheticData(cfg, tuple(rows[i] for i in order), tuple(items),
                         {items[j][0]: int(t) for j, t in enumerate(topic_of)}, topic_words, tuple(shared))


def write_csv(data: SyntheticData, out_dir: str | Path) -> Path:
    """Write interactions.csv and items.csv (the HLLM layout) into out_dir; returns out_dir."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "interactions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(tables.INTERACTION_COLUMNS)
        w.writerows(data.interactions)
    with open(d / "items.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(ITEM_COLUMNS)
        w.writerows(data.items)
    return d


def to_dataset(data: SyntheticData, text_keys: Sequence[str] | None = None, **kwargs) -> tables.Dataset:
    """The same `Dataset` that `tables.load_dir(write_csv(data, d), text_keys)` returns."""
    src = f"<synthetic seed={data.config.seed}>"
    inter = tables.parse_interactions(tables.INTERACTION_COLUMNS,
                                      ((n, [i, u, str(t)]) for n, (i, u, t) in enumerate(data.interactions, 2)),
                                      src + "/interactions.csv")
    items = tables.parse_items(ITEM_COLUMNS, ((n, list(r)) for n, r in enumerate(data.items, 2)),
                               src + "/items.csv", text_keys)
    return tables.build_dataset(inter, items, **kwargs)


def synthetic_dataset(config: SyntheticConfig = SyntheticConfig(),
                      text_keys: Sequence[str] | None = None) -> tables.Dataset:
    """`to_dataset(generate(config), text_keys)`."""
    return to_dataset(generate(config), text_keys)


def item_texts(data: SyntheticData, prompt: str = DEFAULT_PROMPT) -> list[str]:
    """The item texts as text.py builds them (all three columns), for tokenizer training."""
    keys = ITEM_COLUMNS[1:]
    return [format_text([v or None for v in r[1:]], keys, prompt) for r in data.items]


def train_tokenizer(texts: Sequence[str], out_dir: str | Path, vocab_size: int = 1000) -> Path:
    """Train a character BPE tokenizer (Metaspace, `<unk>`=0, `<s>`=1 prepended, `</s>`=2) on texts
    and save it as a transformers tokenizer directory (AutoTokenizer-loadable, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(d))
    return d


def synthetic_tokenizer(data: SyntheticData, out_dir: str | Path, vocab_size: int = 1000,
                        prompt: str = DEFAULT_PROMPT) -> Path:
    """A tokenizer trained on the dataset's own item texts (prompt included)."""
    return train_tokenizer(item_texts(data, prompt), out_dir, vocab_size)
