import json

import pandas as pd
import pytest

from smart_product.data import (
    DataError,
    apply_image_status,
    check_images,
    clean_text,
    load_data,
    load_split,
    parse_text_fields,
)


def test_clean_text_strips_html_and_entities():
    raw = "<p>Кружка&nbsp;&laquo;Ромашка&raquo;</p><ul><li>керамика</li><li>350&amp;мл</li></ul><script>x=1</script>"
    assert clean_text(raw) == "Кружка «Ромашка» керамика 350&мл"
    assert clean_text(None) == "" and clean_text("  a \n\t b ") == "a b"


def test_parse_text_fields_dicts_as_text_and_keys():
    out = parse_text_fields(
        json.dumps(
            {
                "title": "Кружка",
                "description": "<b>big</b>",
                "attributes": ["a", 5],
                "custom_characteristics": {"Цвет": ["синий", "белый"]},
                "filters": None,
            }
        )
    )
    assert out["title"] == "Кружка" and out["description"] == "big"
    assert out["attributes"] == ["a", "5"]
    assert out["custom_characteristics_text"] == "Цвет: синий, белый"
    assert out["custom_characteristics_keys"] == ["Цвет"]
    assert out["filters_keys"] == [] and out["defined_characteristics_text"] == ""


def test_load_demo_tidy_frame(demo_dir):
    train, test = load_data(demo_dir)
    assert len(train) == 2000 and 450 <= len(test) <= 550
    for col in [
        "product_id",
        "category_id",
        "shop_id",
        "rating",
        "sale",
        "title",
        "description",
        "attributes",
        "custom_characteristics_text",
        "filters_keys",
        "image_path",
        "has_image",
    ]:
        assert col in train.columns
    assert "category_id" not in test.columns
    assert not train.description.str.contains("<").any()
    assert (~train.has_image).sum() == 3  # three demo images are missing on purpose


def test_category_name_is_optional(demo_dir, copy_data):
    train = pd.read_parquet(demo_dir / "train.parquet").drop(columns="category_name")
    loaded = load_split(copy_data(train=train), "train")
    assert "category_name" not in loaded.columns and len(loaded) == len(train)


def test_corrupt_and_missing_images_are_counted_not_fatal(demo_dir, caplog):
    train = load_split(demo_dir, "train")
    status = check_images(train)
    counts = status.status.value_counts()
    assert counts["missing"] == 3 and counts["corrupt"] == 2
    fixed = apply_image_status(train, status, "train")
    assert (~fixed.has_image).sum() == 5
    assert fixed.loc[~fixed.has_image, "image_path"].isna().all()
    assert "3 missing, 2 corrupt" in caplog.text


def _broken(demo_dir, copy_data, split="train", **change):
    df = pd.read_parquet(demo_dir / f"{split}.parquet")
    for fn in change.values():
        df = fn(df)
    return copy_data(**{split: df})


def _set(col, row, value):
    def fn(df):
        df = df.copy()
        df[col] = df[col].astype(object)
        df.at[row, col] = value
        return df

    return fn


@pytest.mark.parametrize(
    "name,split,change,message",
    [
        ("missing column", "train", lambda df: df.drop(columns="shop_id"), "column 'shop_id': missing column"),
        (
            "missing target column",
            "train",
            lambda df: df.drop(columns="category_id"),
            "column 'category_id': missing column",
        ),
        ("wrong dtype", "train", lambda df: df.assign(rating=df.rating.astype(str)), "column 'rating': wrong dtype"),
        (
            "wrong id dtype",
            "test",
            lambda df: df.assign(product_id=df.product_id.astype(str)),
            "column 'product_id': wrong dtype",
        ),
        (
            "float category ids",
            "train",
            lambda df: df.assign(category_id=df.category_id + 0.5),
            "column 'category_id': wrong dtype float64 (expected int or str)",
        ),
        ("not json", "train", _set("text_fields", 3, "{title: oops"), "not valid JSON"),
        ("not an object", "test", _set("text_fields", 2, "[1, 2]"), "expected a JSON object, got list"),
        ("title not str", "train", _set("text_fields", 4, '{"title": 5}'), "'title': expected a string, got int"),
        (
            "attributes str",
            "train",
            _set("text_fields", 4, '{"attributes": "x"}'),
            "'attributes': expected a list of strings",
        ),
        (
            "dict not object",
            "train",
            _set("text_fields", 4, '{"filters": [1]}'),
            "'filters': expected an object, got list",
        ),
        (
            "dict values nested",
            "train",
            _set("text_fields", 4, '{"filters": {"a": [{"b": 1}]}}'),
            "list items must be strings",
        ),
        ("duplicate id", "train", lambda df: pd.concat([df, df.iloc[[5]]], ignore_index=True), "duplicate product_id"),
        ("missing target", "train", _set("category_id", 7, None), "missing target"),
        ("no rows", "test", lambda df: df.iloc[:0], "no rows"),
    ],
)
def test_validation_errors_are_one_clear_line(demo_dir, copy_data, name, split, change, message):
    df = pd.read_parquet(demo_dir / f"{split}.parquet")
    data = copy_data(**{split: change(df)})
    with pytest.raises(DataError) as err:
        load_data(data)
    text = str(err.value)
    assert message in text
    line = next(ln for ln in text.splitlines() if message in ln)
    assert f"{split}.parquet" in line  # names the file
    if "product_id=" in line:
        pid = int(line.split("product_id=")[1].split(":")[0])
        assert pid in set(df.product_id)  # names the row


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="train.parquet: missing file"):
        load_data(tmp_path)


def test_id_in_train_and_test(demo_dir, copy_data):
    test = pd.read_parquet(demo_dir / "test.parquet")
    train = pd.read_parquet(demo_dir / "train.parquet")
    test.loc[0, "product_id"] = train.product_id.iloc[10]
    with pytest.raises(DataError, match=f"product_id={train.product_id.iloc[10]}: also in train"):
        load_data(copy_data(test=test))


def test_many_problems_are_capped_and_totalled(demo_dir, copy_data):
    train = pd.read_parquet(demo_dir / "train.parquet")
    train["text_fields"] = "not json"
    with pytest.raises(DataError) as err:
        load_data(copy_data(train=train))
    lines = str(err.value).splitlines()
    assert len(lines) < 20 and "text_fields not JSON: 2000" in lines[-1]


@pytest.mark.skipif(
    not (pytest.importorskip("pathlib").Path(__file__).resolve().parents[2] / "shared/data/flipkart").exists(),
    reason="../shared/data not present",
)
def test_real_flipkart_loads():
    from conftest import SHARED

    train, test = load_data(SHARED / "flipkart")
    assert len(train) == 843 and len(test) == 207
    assert (~train.has_image).sum() + (~test.has_image).sum() == 3
    assert train.title.str.len().gt(0).mean() > 0.99
