"""Tests of hllm_jax.data.tables: dense ids, split, samples, and every bad-input rule."""

from pathlib import Path

import numpy as np
import pytest

from hllm_jax.data import tables as T

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY = SHARED / "reference" / "tiny"
DATA = SHARED / "data"
HEADER = "item_id,user_id,timestamp\n"


def write(tmp_path: Path, inter: str, items: str | None = None, name: str = "d") -> Path:
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "interactions.csv").write_text(inter, encoding="utf-8")
    if items is not None:
        (d / "items.csv").write_text(items, encoding="utf-8")
    return d


def rows(*triples) -> str:
    return HEADER + "".join(f"{i},{u},{t}\n" for i, u, t in triples)


ITEMS = "item_id,title\na,A\nb,B\nc,C\nd,D\ne,E\n"


def seqs(ds):
    return {str(ds.user_ids[u]): [str(ds.item_ids[i]) for i in ds.sequence(u)] for u in range(1, ds.num_users)}


# ---------------------------------------------------------------- ids, order, split, samples

def test_dense_ids_first_appearance_in_file_order(tmp_path):
    d = write(tmp_path, rows(("c", "u2", 5), ("a", "u1", 9), ("b", "u1", 1), ("a", "u2", 1), ("c", "u1", 3),
                             ("b", "u2", 7)), ITEMS)
    ds = T.load_dir(d)
    assert list(ds.item_ids) == ["[PAD]", "c", "a", "b"]  # file order, not time order
    assert list(ds.user_ids) == ["[PAD]", "u2", "u1"]
    assert ds.num_items == 4 and ds.num_users == 3  # PAD counted
    assert seqs(ds) == {"u2": ["a", "c", "b"], "u1": ["b", "c", "a"]}
    assert ds.report.items_not_in_interactions == 2  # d, e
    assert not ds.in_item_file[0] and ds.in_item_file[1:].all()
    assert ds.item_text["title"] == (None, "C", "A", "B")


def test_stable_sort_keeps_file_order_for_ties(tmp_path):
    d = write(tmp_path, rows(("a", "u", 2), ("b", "u", 1), ("c", "u", 1), ("d", "u", 1), ("e", "u", 0)), ITEMS)
    assert seqs(T.load_dir(d))["u"] == ["e", "b", "c", "d", "a"]


def test_leave_one_out_split(tmp_path):
    d = write(tmp_path, rows(*[(x, "u", t) for t, x in enumerate("abcde")], ("a", "v", 0), ("b", "v", 1),
                             ("a", "v", 2)), ITEMS)
    ds = T.load_dir(d)
    va, te = T.eval_split(ds, "valid", 3), T.eval_split(ds, "test", 3)
    ids = {str(x): i for i, x in enumerate(ds.item_ids)}
    assert [str(ds.item_ids[t]) for t in va.targets] == ["d", "b"]
    assert [str(ds.item_ids[t]) for t in te.targets] == ["e", "a"]
    assert va.history.tolist() == [[ids["a"], ids["b"], ids["c"]], [0, 0, ids["a"]]]
    assert te.history.tolist() == [[ids["b"], ids["c"], ids["d"]], [0, ids["a"], ids["b"]]]
    # the full history (to mask in ranking) is everything before the target
    assert [list(ds.seq_items[s:e]) for s, e in zip(te.seen_starts, te.seen_stops)][0] == \
        [ids[x] for x in "abcd"]
    assert te.target_in_history.tolist() == [False, True]  # v's test target a occurs earlier
    assert ds.report.test_target_in_history == 1 and ds.report.valid_target_in_history == 0
    train = T.train_samples(ds, 3)
    assert [list(train.sample(i)) for i in range(len(train))] == [[ids["a"], ids["b"], ids["c"]], [ids["a"]]]
    assert train.num_without_target == 1


@pytest.mark.parametrize("n_train,max_seq_len,expected", [
    (3, 3, [[0, 1, 2]]),                    # l < M: one sample
    (4, 3, [[0, 1, 2, 3]]),                 # l == M: one sample
    (9, 3, [[1, 2, 3, 4], [5, 6, 7, 8]]),   # l > M: drop l % M = 1 oldest, chunks of M
    (8, 3, [[0, 1, 2, 3], [4, 5, 6, 7]]),
])
def test_train_chunks(tmp_path, n_train, max_seq_len, expected):
    n = n_train + 2
    items = "item_id,title\n" + "".join(f"i{k},t{k}\n" for k in range(n))
    d = write(tmp_path, rows(*[(f"i{k}", "u", k) for k in range(n)]), items)
    ds = T.load_dir(d)
    s = T.train_samples(ds, max_seq_len)
    got = [[int(str(ds.item_ids[i])[1:]) for i in s.sample(k)] for k in range(len(s))]
    assert got == expected
    last = T.train_samples(ds, max_seq_len, "last")
    assert [int(str(ds.item_ids[i])[1:]) for i in last.sample(0)] == list(range(n_train))[-(max_seq_len + 1):]
    pad = s.padded()
    assert pad.shape == (len(s), max_seq_len + 1)
    mask = s.target_mask()
    assert (mask.sum(1) == s.lengths - 1).all() and mask.shape == (len(s), max_seq_len)


def test_padded_samples_left_pad_with_pad(tmp_path):
    d = write(tmp_path, rows(("a", "u", 0), ("b", "u", 1), ("c", "u", 2), ("d", "u", 3)), ITEMS)
    s = T.train_samples(T.load_dir(d), 4)
    assert s.padded().tolist() == [[0, 0, 0, 1, 2]]
    assert s.target_mask().tolist() == [[False, False, False, True]]


# ---------------------------------------------------------------- the golden case's dense ids

@pytest.mark.skipif(not TINY.is_dir(), reason=f"golden case {TINY} absent (needs ../shared)")
def test_golden_dense_ids_and_samples():
    a = np.load(TINY / "arrays.npz")
    ds = T.load_dir(TINY / "dataset", ["title", "tag", "description"])
    assert np.array_equal(ds.item_ids, a["eval/item_token_ids"])
    assert np.array_equal(ds.user_ids, a["eval/user_token_ids"])
    samples = T.train_samples(ds, 10)
    have = {tuple(samples.sample(i)) for i in range(len(samples))}
    for k in ("batch", "steps/0", "steps/1", "steps/2"):
        for row, mask in zip(a[f"{k}/pos_item_ids"], a[f"{k}/attention_mask"]):
            n = int(mask.sum()) + 1  # the rest is the reference's random left padding
            assert tuple(row[-n:]) in have


# ---------------------------------------------------------------- bad input, one test per rule

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="interactions file not found: .*nope.csv"):
        T.load_dataset(tmp_path / "nope.csv")
    d = write(tmp_path, rows(("a", "u", 0), ("b", "u", 1), ("c", "u", 2)))
    with pytest.raises(FileNotFoundError, match="item file not found: .*items.csv"):
        T.load_dir(d)
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        T.load_dir(tmp_path / "nodir")


def test_missing_column(tmp_path):
    d = write(tmp_path, "item_id,user,timestamp\na,u,1\n", ITEMS)
    with pytest.raises(T.DataError, match=r"interactions.csv:1: missing column\(s\) \['user_id'\].*Fix"):
        T.load_dir(d)
    d = write(tmp_path, rows(("a", "u", 0)), ITEMS, "d2")
    with pytest.raises(T.DataError, match=r"items.csv:1: missing column\(s\) \['tag'\]"):
        T.load_dir(d, ["title", "tag"])
    d = write(tmp_path, rows(("a", "u", 0)), "id,title\na,A\n", "d3")
    with pytest.raises(T.DataError, match=r"missing column\(s\) \['item_id'\]"):
        T.load_dir(d)


def test_columns_matched_by_name_and_extra_columns_ignored(tmp_path):
    d = write(tmp_path, "timestamp,user_id,rating,item_id\n2,u,5,a\n0,u,4,b\n1,u,3,c\n", ITEMS)
    ds = T.load_dir(d)
    assert seqs(ds) == {"u": ["b", "c", "a"]}


def test_non_integer_timestamp(tmp_path):
    d = write(tmp_path, rows(("a", "u", 1), ("b", "u", "1.5")), ITEMS)
    with pytest.raises(T.DataError, match=r"interactions.csv:3: timestamp '1.5' is not an integer.*Fix"):
        T.load_dir(d)
    d = write(tmp_path, rows(("a", "u", "")), ITEMS, "d2")
    with pytest.raises(T.DataError, match=r"interactions.csv:2: timestamp ''"):
        T.load_dir(d)


def test_empty_id(tmp_path):
    d = write(tmp_path, rows(("a", "u", 1), ("", "u", 2)), ITEMS)
    with pytest.raises(T.DataError, match=r"interactions.csv:3: empty item_id or user_id"):
        T.load_dir(d)


@pytest.mark.parametrize("content,msg", [("", "empty file, no header"), (HEADER, "no data rows"),
                                         ("\n\n", "empty file, no header")])
def test_empty_or_header_only(tmp_path, content, msg):
    d = write(tmp_path, content, ITEMS)
    with pytest.raises(T.DataError, match=f"interactions.csv.*{msg}"):
        T.load_dir(d)


def test_items_header_only(tmp_path):
    d = write(tmp_path, rows(("a", "u", 0)), "item_id,title\n")
    with pytest.raises(T.DataError, match="items.csv: no data rows"):
        T.load_dir(d)


def test_wrong_field_count(tmp_path):
    d = write(tmp_path, rows(("a", "u", 0), ("b", "u", 1), ("c", "u", 2)), "item_id,title\na,x,y\n")
    with pytest.raises(T.DataError, match=r"items.csv:2: 3 fields but the header has 2.*quote"):
        T.load_dir(d)


def test_exact_duplicate_rows_keep_first(tmp_path):
    d = write(tmp_path, rows(("a", "u", 0), ("b", "u", 1), ("a", "u", 0), ("c", "u", 2), ("b", "u", 1),
                             ("b", "u", 3)), ITEMS)
    ds = T.load_dir(d)
    assert ds.report.duplicate_rows == 2
    assert seqs(ds) == {"u": ["a", "b", "c", "b"]}  # same item at another time is not a duplicate
    ds = T.load_dir(d, drop_duplicates=False)
    assert ds.report.duplicate_rows == 0 and ds.num_interactions == 6


def test_items_without_text_are_kept_and_counted(tmp_path):
    d = write(tmp_path, rows(("a", "u", 0), ("b", "u", 1), ("c", "u", 2)),
              'item_id,title,tag\na,,\nb,NaN,\nc,C,\n')
    ds = T.load_dir(d)
    assert ds.report.items_without_text == 2
    assert ds.in_item_file.tolist() == [False, True, True, True]
    assert ds.item_text["title"] == (None, None, None, "C")


def test_items_absent_from_item_file_are_kept_and_counted(tmp_path):
    d = write(tmp_path, rows(("a", "u", 0), ("x", "u", 1), ("c", "u", 2), ("x", "v", 0), ("a", "v", 1),
                             ("b", "v", 2)), ITEMS)
    ds = T.load_dir(d)
    assert ds.report.items_missing_from_item_file == 1
    assert ds.report.interactions_missing_item_text == 2
    assert not ds.in_item_file[list(ds.item_ids).index("x")]
    assert ds.report.items_not_in_interactions == 2  # d, e


def test_short_users_dropped_and_counted(tmp_path):
    d = write(tmp_path, rows(("e", "s", 0), ("a", "u", 0), ("b", "u", 1), ("c", "u", 2), ("e", "s", 1),
                             ("d", "t", 5)), ITEMS)
    ds = T.load_dir(d)
    r = ds.report
    assert (r.short_users, r.short_user_interactions, r.items_only_in_short_users) == (2, 3, 2)
    assert list(ds.user_ids) == ["[PAD]", "u"] and list(ds.item_ids) == ["[PAD]", "a", "b", "c"]
    assert r.items_not_in_interactions == 2  # d and e left the catalogue with their users
    with pytest.raises(T.DataError, match="no user has 3 or more"):
        T.load_dir(write(tmp_path, rows(("a", "u", 0), ("b", "u", 1)), ITEMS, "d2"))


def test_non_utf8_bytes_replaced_and_counted(tmp_path):
    d = write(tmp_path, rows(("a", "u", 0), ("b", "u", 1), ("c", "u", 2)), ITEMS)
    (d / "items.csv").write_bytes(b"item_id,title\na,caf\xe9\nb,ok\nc,\xff\xfe bad\n")
    ds = T.load_dir(d)
    assert ds.report.item_non_utf8_lines == 2
    assert ds.item_text["title"][1] == "caf\ufffd"
    raw = (d / "interactions.csv").read_bytes().replace(b"u,1", b"u\xe9,1")
    (d / "interactions.csv").write_bytes(raw)
    assert T.load_dir(d, min_interactions=1).report.interaction_non_utf8_lines == 1


def test_bom_crlf_and_blank_lines(tmp_path):
    d = write(tmp_path, "", ITEMS)
    (d / "interactions.csv").write_bytes(b"\xef\xbb\xbfitem_id,user_id,timestamp\r\na,u,0\r\n\r\nb,u,1\r\nc,u,2\r\n")
    ds = T.load_dir(d)
    assert seqs(ds) == {"u": ["a", "b", "c"]} and ds.report.interaction_blank_lines == 1


def test_duplicate_item_ids_last_row_wins(tmp_path):
    d = write(tmp_path, rows(("a", "u", 0), ("b", "u", 1), ("c", "u", 2)),
              "item_id,title\na,first\nb,B\na,second\nc,C\n")
    ds = T.load_dir(d)
    assert ds.report.item_file_duplicate_ids == 1
    assert ds.item_text["title"][1] == "second"


def test_pandas_cell_rule():
    """Expected strings were checked against the reference's pandas reading (2.3.3 and 3.1.1)."""
    header = ["item_id", "title", "num", "mixed", "flag", "intna", "price", "allna", "sci"]
    data = [["a", "Foo", "0", "0", "True", "5", "1.50", "", "1e3"],
            ["b", "NA", "7", "x", "False", "", "0.0", "", "2"],
            ["c", "None", "007", "", "true", "3", "2", "", "-0.0"],
            ["d", "  ", "+4", "null", "FALSE", "0", "3.25", "", "inf"]]
    t = T.parse_items(header, enumerate(data, 2), "mem")
    assert t.columns["title"] == ["Foo", None, None, "  "]   # NA strings are missing
    assert t.columns["num"] == [None, "7", "7", "4"]         # integer column: 0 skipped
    assert t.columns["mixed"] == ["0", "x", None, None]      # text column: "0" kept
    assert t.columns["flag"] == ["True", None, "True", None]
    assert t.columns["intna"] == ["5.0", None, "3.0", None]  # int with NaN is float
    assert t.columns["price"] == ["1.5", None, "2.0", "3.25"]
    assert t.columns["allna"] == [None] * 4
    assert t.columns["sci"] == ["1000.0", "2.0", None, "inf"]
    upcast = T.parse_items(header, enumerate(data, 2), "mem", ["num", "price"])
    assert upcast.columns["num"] == [None, "7.0", "7.0", "4.0"]  # all-numeric selection upcasts
    raw = T.parse_items(header, enumerate(data, 2), "mem", ["title", "num"], cell_rule="raw")
    assert raw.columns == {"title": ["Foo", "NA", "None", "  "], "num": ["0", "7", "007", "+4"]}


# ---------------------------------------------------------------- the layouts HLLM ships

def test_pixelrec_layout(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "information").mkdir()
    (tmp_path / "dataset" / "Pixel200K.csv").write_text(rows(("i1", "u1", 1600000000), ("i2", "u1", 1600000100),
                                                             ("i3", "u1", 1600000200)))
    (tmp_path / "information" / "Pixel200K.csv").write_text(
        'item_id,title,tag,description\ni1,Cat video,"pets,cute","A cat, jumping"\ni2,Dog,,\ni3,,,only desc\n')
    ds = T.load_dataset(tmp_path / "dataset" / "Pixel200K.csv", tmp_path / "information" / "Pixel200K.csv",
                        ["title", "tag", "description"])
    assert ds.text_keys == ("title", "tag", "description")
    assert ds.item_text["tag"] == (None, "pets,cute", None, None)
    assert ds.item_text["description"][1] == "A cat, jumping"


def test_amazon_books_layout(tmp_path):
    (tmp_path / "amazon_books.csv").write_text(rows(("0001", "A1", 5), ("0002", "A1", 6), ("0003", "A1", 7)))
    (tmp_path / "amazon_books_item.csv").write_text(
        'item_id,description,title\n0001,"Line one\nline two, with comma",Book One\n0002,,\n0003,About,Three\n')
    ds = T.load_dataset(tmp_path / "amazon_books.csv", tmp_path / "amazon_books_item.csv", ["title", "description"])
    assert list(ds.item_ids) == ["[PAD]", "0001", "0002", "0003"]  # string ids: leading zeros kept
    assert ds.item_text["description"][1] == "Line one\nline two, with comma"
    assert ds.report.items_without_text == 1


SHARED_SETS = [("amazon-beauty-2014", ["title"], 22363, 12101, 198502, 7),
               ("amazon-scientific-2018", None, 8317, 4344, 58492, 0),
               ("ml-latest-small", None, 610, 9724, 100836, 0),
               ("amazon-allbeauty-2023-tiny", None, 253, 356, 2535, 0)]


@pytest.mark.parametrize("name,keys,users,items,inter,no_text", SHARED_SETS)
def test_shared_datasets(name, keys, users, items, inter, no_text):
    d = DATA / name
    if not d.is_dir():
        pytest.skip(f"{d} absent (tests read the shared datasets from ../shared/data)")
    ds = T.load_dir(d, keys)
    assert (ds.num_users - 1, ds.num_items - 1, ds.num_interactions) == (users, items, inter)
    assert ds.report.items_without_text == no_text
    assert ds.report.duplicate_rows == 0 and ds.report.short_users == 0
    assert (ds.lengths()[1:] >= 3).all()
