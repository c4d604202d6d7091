"""Tests of the stats command (python -m hllm_jax.data.stats)."""

import json
from pathlib import Path

import pytest

from hllm_jax.data import stats, synthetic

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY_DATA = SHARED / "data" / "amazon-allbeauty-2023-tiny"
TINY_TOKENIZER = SHARED / "reference" / "tiny" / "tokenizer"
needs_fixture = pytest.mark.skipif(not TINY_DATA.is_dir(), reason=f"fixture {TINY_DATA} absent (needs ../shared/data)")


@needs_fixture
def test_stats_text_report(capsys):
    assert stats.main(["--data_dir", str(TINY_DATA), "--max_seq_len", "10"]) == 0
    out = capsys.readouterr().out
    assert "users 253  items 356  interactions 2,535" in out
    assert "num_users 254, num_items 357" in out
    assert "valid 253; test 253" in out
    assert "sequence length (per user, all items): n=253 min=5" in out
    assert "field 'price'" in out and "duplicate_rows: 0" in out and "short_users: 0" in out


@needs_fixture
@pytest.mark.skipif(not TINY_TOKENIZER.is_dir(), reason=f"tokenizer {TINY_TOKENIZER} absent (needs ../shared)")
def test_stats_json_with_tokenizer(capsys, tmp_path):
    argv = ["--data_dir", str(TINY_DATA), "--text_keys", "title,categories", "--tokenizer", str(TINY_TOKENIZER),
            "--max_text_len", "32", "--max_seq_len", "10", "--cache_dir", str(tmp_path), "--json"]
    assert stats.main(argv) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["users"], s["items"], s["interactions"]) == (253, 356, 2535)
    assert s["split"]["train_interactions"] == 2535 - 2 * 253
    assert s["text_keys"] == ["title", "categories"]
    t = s["tokens"]
    assert t["items"] == 357 and t["lengths"]["max"] <= 32 and t["truncated"] > 0
    assert s["filtered"]["items_without_text"] == 0


def test_stats_counts_are_consistent_on_synthetic():
    ds = synthetic.synthetic_dataset(synthetic.SyntheticConfig(num_users=40, num_items=60, seed=1))
    s = stats.compute_stats(ds, max_seq_len=4)
    sp = s["split"]
    assert s["users"] == 40 and sp["valid"] == sp["test"] == 40 and sp["train_samples_last"] == 40
    assert sp["train_interactions"] == s["interactions"] - 80
    assert sp["train_samples_chunks"] >= 40
    assert set(s["field_chars"]) == {"title", "tag", "description"}
    assert "filtered / dropped / flagged" in stats.format_stats(s)


def test_stats_bad_input_exits_2(tmp_path, capsys):
    assert stats.main(["--data_dir", str(tmp_path / "missing")]) == 2
    assert "data directory not found" in capsys.readouterr().err
    (tmp_path / "interactions.csv").write_text("item_id,user_id,timestamp\na,u,x\n")
    (tmp_path / "items.csv").write_text("item_id,title\na,A\n")
    assert stats.main(["--data_dir", str(tmp_path)]) == 2
    assert "interactions.csv:2: timestamp 'x'" in capsys.readouterr().err
