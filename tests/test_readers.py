import numpy as np
import pandas as pd
import pytest

from coldllm.config import DataConfig
from coldllm.data import DataError, build_dataset, load_dataset, read_raw
from coldllm.data.readers import PUBLISHED_FILES


def write_citeulike(root, users_lines, titles):
    root.mkdir(parents=True, exist_ok=True)
    (root / "users.dat").write_text("\n".join(users_lines) + "\n")
    (root / "titles.txt").write_text("\n".join(titles) + "\n")
    return DataConfig(path=str(root), split="random", cache_dir=str(root / "cache"))


def test_citeulike_reader(tmp_path):
    cfg = write_citeulike(tmp_path / "c", ["2 0 2", "1 1", "3 0 1 2"], ["A", "B", "C"])
    raw = read_raw(cfg)
    assert raw.interactions.shape == (6, 2)
    assert list(raw.items["text"]) == ["A", "B", "C"]
    assert set(map(tuple, raw.interactions.to_numpy())) >= {("0", "0"), ("1", "1"), ("2", "2")}


def test_citeulike_bad_count_names_file_and_line(tmp_path):
    cfg = write_citeulike(tmp_path / "c", ["2 0 2", "3 1"], ["A", "B", "C"])
    with pytest.raises(DataError, match=r"users\.dat:2: count says 3"):
        read_raw(cfg)


def test_citeulike_non_integer_names_line(tmp_path):
    cfg = write_citeulike(tmp_path / "c", ["1 0", "2 1 x"], ["A", "B"])
    with pytest.raises(DataError, match=r"users\.dat:2: expected integers, found 'x'"):
        read_raw(cfg)


def test_citeulike_item_without_title(tmp_path):
    cfg = write_citeulike(tmp_path / "c", ["1 5"], ["A"])
    with pytest.raises(DataError, match=r"users\.dat:1: item 5 has no title"):
        read_raw(cfg)


def test_missing_directory_is_clear(tmp_path):
    with pytest.raises(DataError, match="COLDLLM_DATA"):
        read_raw(DataConfig(path=str(tmp_path / "nope")))


def test_published_split_is_loaded_as_is(tmp_path):
    cfg = write_citeulike(tmp_path / "c", ["2 0 1", "2 1 2", "1 3"], ["A", "B", "C", "D"])
    split = tmp_path / "c" / "split"
    split.mkdir()
    parts = {"train": [(0, 0), (1, 1), (0, 1)], "warm_val": [], "warm_test": [], "cold_val": [(1, 2)],
             "cold_test": [(2, 3)]}
    for part, rows in parts.items():
        pd.DataFrame(rows, columns=["user", "item"]).to_csv(split / PUBLISHED_FILES[part], index=False)
    cfg.split = "published"
    data = build_dataset(read_raw(cfg), cfg)
    assert data.is_cold.tolist() == [False, False, True, True]
    assert sorted(map(tuple, data.parts["train"].tolist())) == [(0, 0), (0, 1), (1, 1)]
    assert data.parts["cold_test"].tolist() == [[2, 3]]


def test_published_split_rejects_cold_item_with_training_pairs(tmp_path):
    cfg = write_citeulike(tmp_path / "c", ["2 0 1"], ["A", "B"])
    split = tmp_path / "c" / "split"
    split.mkdir()
    rows = {"train": [(0, 0), (0, 1)], "cold_val": [(0, 1)]}
    for part, name in PUBLISHED_FILES.items():
        pd.DataFrame(rows.get(part, []), columns=["user", "item"]).to_csv(split / name, index=False)
    cfg.split = "published"
    with pytest.raises(DataError, match="cold_val"):
        build_dataset(read_raw(cfg), cfg)


def _tabular(tmp_path, fmt):
    inter = pd.DataFrame({"uid": ["a", "a", "b", "c"], "iid": [1, 2, 2, 3], "ts": [1, 2, 3, 4]})
    items = pd.DataFrame({"iid": [1, 2, 3], "title": ["x", "y", "z"], "genre": ["g1", "g2", None]})
    if fmt == "csv":
        inter.to_csv(tmp_path / "inter.csv", index=False)
        items.to_csv(tmp_path / "items.csv", index=False)
    else:
        inter.to_parquet(tmp_path / "inter.parquet")
        items.to_parquet(tmp_path / "items.parquet")
    return DataConfig(format=fmt, path=str(tmp_path), interactions=f"inter.{fmt}", items=f"items.{fmt}",
                      user_field="uid", item_field="iid", timestamp_field="ts",
                      text_fields=["title", "genre"], split="random")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tabular_reader(tmp_path, fmt):
    raw = read_raw(_tabular(tmp_path, fmt))
    assert list(raw.interactions.columns) == ["user", "item", "timestamp"]
    assert raw.interactions["item"].tolist() == ["1", "2", "2", "3"]
    assert raw.items["text"].tolist() == ["x. g1", "y. g2", "z."]


def test_csv_ragged_row_names_line(tmp_path):
    cfg = _tabular(tmp_path, "csv")
    (tmp_path / "inter.csv").write_text("uid,iid,ts\na,1,1\nb,2,2,9\n")
    with pytest.raises(DataError, match=r"inter\.csv:3"):
        read_raw(cfg)


def test_csv_empty_id_names_line(tmp_path):
    cfg = _tabular(tmp_path, "csv")
    (tmp_path / "inter.csv").write_text("uid,iid,ts\na,1,1\n,2,2\n")
    with pytest.raises(DataError, match=r"inter\.csv:3: empty 'uid'"):
        read_raw(cfg)


def test_missing_text_field_is_named(tmp_path):
    cfg = _tabular(tmp_path, "csv")
    cfg.text_fields = ["abstract"]
    with pytest.raises(DataError, match=r"items\.csv: text field\(s\) \['abstract'\]"):
        read_raw(cfg)


def test_unknown_item_id_is_an_error(tmp_path):
    cfg = _tabular(tmp_path, "csv")
    (tmp_path / "inter.csv").write_text("uid,iid,ts\na,1,1\nb,99,2\n")
    with pytest.raises(DataError, match="'99' is not in the item table"):
        build_dataset(read_raw(cfg), cfg)


def test_recbole_atomic_files(tmp_path):
    (tmp_path / "toy.inter").write_text("user_id:token\titem_id:token\trating:float\n1\t10\t5\n2\t11\t3\n")
    (tmp_path / "toy.item").write_text("item_id:token\ttitle:token_seq\n10\tA film\n11\tB film\n")
    cfg = DataConfig(name="toy", format="recbole", path=str(tmp_path), user_field="user_id",
                     item_field="item_id", split="random")
    raw = read_raw(cfg)
    assert raw.interactions.values.tolist() == [["1", "10"], ["2", "11"]]
    assert raw.items["text"].tolist() == ["A film", "B film"]
    (tmp_path / "toy.inter").write_text("user_id:token\titem_id:token\n1\t10\n2\n")
    with pytest.raises(DataError, match=r"toy\.inter:3: expected 2 fields, found 1"):
        read_raw(cfg)
    (tmp_path / "toy.inter").write_text("user_id\titem_id:token\n1\t10\n")
    with pytest.raises(DataError, match=r"toy\.inter:1: header field 'user_id'"):
        read_raw(cfg)


def test_dataset_cache_round_trip(tmp_path):
    cfg = write_citeulike(tmp_path / "c", [f"3 {u % 5} {(u + 1) % 5} {(u + 2) % 5}" for u in range(20)],
                          ["t0", "t1", "t2", "t3", "t4"])
    first = load_dataset(cfg)
    (tmp_path / "c" / "users.dat").write_text("garbage\n")  # a cache hit must not re-read raw files
    again = load_dataset(cfg)
    assert again.summary() == first.summary()
    for part in first.parts:
        np.testing.assert_array_equal(again.parts[part], first.parts[part])
    np.testing.assert_array_equal(again.is_cold, first.is_cold)
    assert list(again.item_text) == list(first.item_text)


def test_users_dat_not_utf8_names_line(tmp_path):
    cfg = write_citeulike(tmp_path / "c", ["1 0"], ["A"])
    (tmp_path / "c" / "users.dat").write_bytes(b"1 0\n1 \xff\n")
    with pytest.raises(DataError, match=r"users\.dat:2: not UTF-8"):
        read_raw(cfg)


def test_recbole_duplicate_item_counts_file_lines(tmp_path):
    (tmp_path / "toy.inter").write_text("user_id:token\titem_id:token\n1\t10\n")
    (tmp_path / "toy.item").write_text("item_id:token\ttitle:token_seq\n10\tA\n\n10\tB\n")
    cfg = DataConfig(name="toy", format="recbole", path=str(tmp_path), user_field="user_id",
                     item_field="item_id", split="random")
    with pytest.raises(DataError, match=r"toy\.item:4: item '10' appears again with another text \(first at line 2\)"):
        read_raw(cfg)


def test_parquet_duplicate_item_names_rows(tmp_path):
    cfg = _tabular(tmp_path, "parquet")
    pd.DataFrame({"iid": [1, 2, 1], "title": ["x", "y", "z"], "genre": ["a", "b", "c"]}).to_parquet(
        tmp_path / "items.parquet")
    with pytest.raises(DataError, match=r"items\.parquet: row 3: item '1' appears again .* \(first at row 1\)"):
        read_raw(cfg)


def test_identical_duplicate_items_are_one_item(tmp_path):
    cfg = _tabular(tmp_path, "csv")
    (tmp_path / "items.csv").write_text("iid,title,genre\n1,x,g1\n2,y,g2\n3,z,\n1,x,g1\n")
    assert len(build_dataset(read_raw(cfg), cfg).item_ids) == 3


def test_csv_lines_count_blank_lines(tmp_path):
    cfg = _tabular(tmp_path, "csv")
    (tmp_path / "inter.csv").write_text("uid,iid,ts\na,1,1\n\nb,2,x\n")
    with pytest.raises(DataError, match=r"inter\.csv:4: timestamp 'x'"):
        read_raw(cfg)


def test_csv_ids_keep_their_spelling(tmp_path):
    cfg = _tabular(tmp_path, "csv")
    (tmp_path / "inter.csv").write_text("uid,iid,ts\n007,01,1\n")
    raw = read_raw(cfg)
    assert raw.interactions[["user", "item"]].values.tolist() == [["007", "01"]]


def _movielens(tmp_path):
    """Explicit 1-5 star ratings, as in MovieLens: only 4 and 5 are likes."""
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,10,5,100\n1,11,2,101\n2,10,1,102\n2,12,4.5,103\n3,11,4,104\n")
    (tmp_path / "movies.csv").write_text("movieId,title\n10,Heat\n11,Ran\n12,Alien\n")
    return DataConfig(format="csv", path=str(tmp_path), interactions="ratings.csv", items="movies.csv",
                      user_field="userId", item_field="movieId", timestamp_field="timestamp", split="random",
                      min_rating=4)


def test_min_rating_keeps_only_likes(tmp_path):
    cfg = _movielens(tmp_path)
    raw = read_raw(cfg)
    # the 2-star and 1-star rows are not interactions; a timestamp stays with its row
    assert raw.interactions[["user", "item"]].values.tolist() == [["1", "10"], ["2", "12"], ["3", "11"]]
    assert raw.interactions["timestamp"].tolist() == [100, 103, 104]
    cfg.min_rating = 0  # the default reads no rating: every row is an interaction
    assert len(read_raw(cfg).interactions) == 5


def test_min_rating_in_recbole_files(tmp_path):
    (tmp_path / "ml.inter").write_text("user_id:token\titem_id:token\trating:float\n1\t10\t5\n\n2\t11\t2\n3\t11\t4\n")
    (tmp_path / "ml.item").write_text("item_id:token\ttitle:token_seq\n10\tHeat\n11\tRan\n")
    cfg = DataConfig(name="ml", format="recbole", path=str(tmp_path), user_field="user_id", item_field="item_id",
                     split="random", min_rating=3)
    assert read_raw(cfg).interactions.values.tolist() == [["1", "10"], ["3", "11"]]
    (tmp_path / "ml.inter").write_text("user_id:token\titem_id:token\trating:float\n1\t10\t5\n\n2\t11\tgood\n")
    with pytest.raises(DataError, match=r"ml\.inter:4: rating 'good' in 'rating' is not a number"):
        read_raw(cfg)


def test_min_rating_needs_a_rating_column(tmp_path):
    cfg = _movielens(tmp_path)
    cfg.rating_field = "stars"
    with pytest.raises(DataError, match=r"ratings\.csv: data\.min_rating is set but the rating column 'stars'"):
        read_raw(cfg)
    cfg.rating_field, cfg.min_rating = "rating", 6
    with pytest.raises(DataError, match="no interaction is rated at least data.min_rating=6"):
        read_raw(cfg)


def test_new_data_settings_at_their_defaults_keep_the_cache_key():
    from coldllm.data.dataset import cache_key

    cfg = DataConfig()
    assert cache_key(cfg) == cache_key(DataConfig(min_rating=0.0, rating_field="rating"))
    assert cache_key(cfg) != cache_key(DataConfig(min_rating=4))


def test_text_template_writes_the_item_text_from_columns(tmp_path):
    (tmp_path / "ml.inter").write_text("user_id:token\titem_id:token\trating:float\n1\tHeat (1995)\t5\n")
    (tmp_path / "ml.item").write_text("item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n"
                                      "Heat (1995)\tHeat\t1995\tAction Crime Thriller\n")
    cfg = DataConfig(name="ml", format="recbole", path=str(tmp_path), user_field="user_id", item_field="item_id",
                     split="random", text_template="{movie_title} ({release_year}). Genres: {genre:list}.")
    assert read_raw(cfg).items["text"].tolist() == ["Heat (1995). Genres: Action, Crime, Thriller."]
    cfg.text_template = "{movie_title}, {director}"
    with pytest.raises(DataError, match=r"ml\.item: data\.text_template field\(s\) \['director'\] not in columns"):
        read_raw(cfg)
    assert cache_key_of(cfg) != cache_key_of(DataConfig(name="ml", format="recbole", path=str(tmp_path),
                                                        user_field="user_id", item_field="item_id", split="random"))


def test_a_missing_recbole_dataset_says_how_to_fetch_it(tmp_path):
    cfg = DataConfig(name="ml-1m", format="recbole", path=str(tmp_path), split="random")
    with pytest.raises(DataError, match=r"ml-1m\.inter: file not found .*coldllm fetch ml-1m"):
        read_raw(cfg)


def cache_key_of(cfg):
    from coldllm.data.dataset import cache_key

    return cache_key(cfg)
