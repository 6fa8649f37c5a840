"""Built-in demo data: a small synthetic marketplace in the exact competition layout.

Deterministic from a seed. A category is a product family (its noun is in the text; its shape is
in the image) crossed with a colour (in the image always, in the text only sometimes). Families
come in pairs that share an image shape, so the image alone cannot tell paired families apart and
the text alone often cannot tell the colour: a model needs both. Class sizes follow a power law
with singletons and classes of 2-4 rows; a few rows are deliberately broken (missing image,
corrupt image, empty description) and must be handled, not crash the pipeline.

Like a real marketplace, a product (its own model name, description and photo) is often listed as
2-5 variants: a size in the title, the same description, the photo recoloured (background and
shade). The test split is drawn by product, so each product's variants are all in train or all in
test: plain folds would validate rows whose sibling variants they trained on, and overstate the
test score; the folds stage's `auto` policy must notice and group (src/smart_product/folds.py).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# (family name, nouns used in titles, words used in descriptions); families 2i and 2i+1 share a shape
FAMILIES = [
    ("Кружки", ["Кружка", "Чашка"], ["керамика", "объём 350 мл", "для чая и кофе"]),
    ("Свечи", ["Свеча ароматическая", "Свеча"], ["воск", "аромат ванили", "время горения 30 ч"]),
    ("Футболки", ["Футболка", "Майка"], ["хлопок 100%", "круглый вырез", "оверсайз"]),
    ("Полотенца", ["Полотенце", "Полотенце банное"], ["махра", "70x140 см", "впитывает влагу"]),
    ("Чехлы", ["Чехол для телефона", "Чехол-книжка"], ["силикон", "защита камеры", "для смартфона"]),
    ("Блокноты", ["Блокнот", "Ежедневник"], ["80 листов", "в клетку", "твёрдая обложка"]),
    ("Кроссовки", ["Кроссовки", "Кеды"], ["сетка", "подошва ЭВА", "для бега"]),
    ("Носки", ["Носки", "Гольфы"], ["хлопок", "набор 5 пар", "размер 41-45"]),
    ("Рюкзаки", ["Рюкзак", "Рюкзак городской"], ["отделение для ноутбука", "20 л", "водоотталкивающий"]),
    ("Сумки", ["Сумка", "Сумка-шоппер"], ["экокожа", "на молнии", "через плечо"]),
    ("Наушники", ["Наушники беспроводные", "Гарнитура"], ["Bluetooth 5.3", "шумоподавление", "кейс"]),
    ("Часы", ["Часы наручные", "Смарт-часы"], ["пульсометр", "водозащита", "ремешок"]),
    ("Игрушки", ["Мягкая игрушка", "Плюшевый мишка"], ["для детей от 3 лет", "гипоаллергенно", "40 см"]),
    ("Конструкторы", ["Конструктор", "Набор деталей"], ["500 деталей", "совместим с лего", "развивающий"]),
    ("Кремы", ["Крем для лица", "Крем увлажняющий"], ["гиалуроновая кислота", "50 мл", "SPF 30"]),
    ("Шампуни", ["Шампунь", "Шампунь для волос"], ["без сульфатов", "400 мл", "для всех типов"]),
    ("Сковороды", ["Сковорода", "Сотейник"], ["антипригарное покрытие", "28 см", "для индукции"]),
    ("Лампы", ["Лампа настольная", "Светильник"], ["LED", "3 режима яркости", "USB"]),
    ("Коврики", ["Коврик для йоги", "Фитнес-коврик"], ["TPE", "6 мм", "нескользящий"]),
    ("Зарядки", ["Зарядное устройство", "Кабель USB Type-C"], ["быстрая зарядка", "20 Вт", "1 м"]),
]
SHAPES = ["circle", "square", "triangle", "diamond", "star", "ring", "cross", "hexagon", "bar", "ellipse"]
COLOURS = [
    ("красный", (205, 40, 40)),
    ("синий", (40, 70, 200)),
    ("зелёный", (40, 160, 60)),
    ("жёлтый", (225, 200, 30)),
    ("чёрный", (30, 30, 30)),
    ("розовый", (230, 120, 180)),
]
TEXTURES = ["plain", "stripes", "dots"]
SHOP_A = ["Уютный", "Солнечный", "Быстрый", "Добрый", "Новый", "Большой", "Весёлый", "Северный"]
SHOP_B = ["Дом", "Маркет", "Склад", "Мир", "Стиль"]
GENERIC = ["Товар для дома", "Хит продаж", "Новинка", "Подарок", "Выгодный набор"]
FILLER = [
    "Отличное качество.",
    "Быстрая доставка по России.",
    "Подходит для подарка.",
    "Гарантия 12 месяцев.",
    "Производство: Россия.",
    "Товар сертифицирован.",
]
BRANDS = ["Ромашка", "Технолайн", "Уралочка", "Домовёнок", "Северянка", "Байкал", "Волна"]

SYLLABLES = ["ар", "го", "ве", "га", "ли", "ра", "мо", "ни", "ка", "то", "зе", "ну", "ри", "са", "до", "бе", "лу", "ма"]
SIZES = ["размер S", "размер M", "размер L", "размер XL", "42", "44", "46", "набор 2 шт", "набор 3 шт", "мини", "макси"]
P_VARIANTS = 0.3  # share of products listed as several variants ...
N_VARIANTS = (2, 4)  # ... between these many (inclusive)

N_CLASSES = 60
N_SINGLETONS = 5
RARE_SIZES = [2, 2, 2, 3, 3, 3, 4, 4, 4]


def _class_sizes(n_train: int) -> np.ndarray:
    """Power-law sizes for the big classes, then classes of 2-4 rows, then singletons."""
    n_big = N_CLASSES - len(RARE_SIZES) - N_SINGLETONS
    budget = n_train - sum(RARE_SIZES) - N_SINGLETONS
    raw = np.arange(1, n_big + 1, dtype=float) ** -0.9
    big = np.maximum(5, np.floor(raw / raw.sum() * budget)).astype(int)
    big[0] += budget - big.sum()
    return np.concatenate([big, RARE_SIZES, np.ones(N_SINGLETONS, int)])


def _image_params(rng, shape: str, rgb, texture: str, size: int = 96) -> dict:
    """Everything random about one product's photo except its pixel noise."""
    return {
        "shape": shape,
        "texture": texture,
        "size": size,
        "bg": tuple(int(v) for v in rng.integers(200, 250, 3)),
        "col": tuple(int(np.clip(c + rng.normal(0, 22), 0, 255)) for c in rgb),
        "r": size * rng.uniform(0.22, 0.34),
        "cx": size / 2 + rng.uniform(-10, 10),
        "cy": size / 2 + rng.uniform(-10, 10),
        "rot": rng.uniform(0, 2 * math.pi),
        "blur": rng.uniform(0, 1.2),
    }


def _recolour(rng, params: dict) -> dict:
    """A variant's photo: the same shot with another background and a shade of the same colour."""
    return {
        **params,
        "bg": tuple(int(v) for v in rng.integers(200, 250, 3)),
        "col": tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in params["col"]),
    }


def draw_shape(d, shape: str, cx: float, cy: float, r: float, rot: float, col) -> None:
    """One of SHAPES, filled with `col`, centred at (cx, cy), radius r, turned by rot, on a PIL ImageDraw."""

    def poly(n, radius, phase=0.0):
        return [
            (
                cx + radius * math.cos(phase + rot + 2 * math.pi * i / n),
                cy + radius * math.sin(phase + rot + 2 * math.pi * i / n),
            )
            for i in range(n)
        ]

    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        d.ellipse(box, fill=col)
    elif shape == "ellipse":
        d.ellipse([cx - r, cy - r * 0.55, cx + r, cy + r * 0.55], fill=col)
    elif shape == "ring":
        d.ellipse(box, outline=col, width=int(r * 0.35))
    elif shape == "square":
        d.polygon(poly(4, r * 1.2, math.pi / 4), fill=col)
    elif shape == "diamond":
        d.polygon([(cx, cy - r * 1.2), (cx + r * 0.7, cy), (cx, cy + r * 1.2), (cx - r * 0.7, cy)], fill=col)
    elif shape == "triangle":
        d.polygon(poly(3, r * 1.2), fill=col)
    elif shape == "hexagon":
        d.polygon(poly(6, r * 1.1), fill=col)
    elif shape == "star":
        pts = []
        for i in range(10):
            rad = r * (1.2 if i % 2 == 0 else 0.5)
            a = rot + math.pi * i / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        d.polygon(pts, fill=col)
    elif shape == "cross":
        w = r * 0.35
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=col)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=col)
    elif shape == "bar":
        d.rectangle([cx - r * 1.3, cy - r * 0.35, cx + r * 1.3, cy + r * 0.35], fill=col)


def _draw_image(rng, params: dict):
    from PIL import Image, ImageDraw, ImageFilter

    shape, texture, size, bg, col = (params[k] for k in ("shape", "texture", "size", "bg", "col"))
    r, cx, cy, rot = params["r"], params["cx"], params["cy"], params["rot"]
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)

    draw_shape(d, shape, cx, cy, r, rot, col)
    if texture == "stripes":
        for x in range(0, size, 8):
            d.line([(x, 0), (x - size, size)], fill=bg, width=2)
    elif texture == "dots":
        for x in range(4, size, 10):
            for y in range(4, size, 10):
                d.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=bg)
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(params["blur"])), dtype=float)
    arr += rng.normal(0, 14, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _model_name(rng) -> str:
    name = "".join(SYLLABLES[i] for i in rng.integers(len(SYLLABLES), size=int(rng.integers(2, 4))))
    return name.capitalize() + (f"-{int(rng.integers(1, 100))}" if rng.random() < 0.5 else "")


def _product(rng, fam: int, colour: int, shops: list, fam_shops: dict) -> dict:
    name, nouns, words = FAMILIES[fam]
    colour_name = COLOURS[colour][0]
    noun = nouns[rng.integers(len(nouns))]
    brand = BRANDS[rng.integers(len(BRANDS))]
    model = _model_name(rng)
    say_colour = rng.random() < 0.4  # the colour is named in the text only sometimes
    generic = rng.random() < 0.12  # some titles say nothing about the product
    title = GENERIC[rng.integers(len(GENERIC))] if generic else noun
    title += f" {brand} {model}" + (f" {colour_name}" if say_colour and rng.random() < 0.5 else "")
    sentences = [f"{noun if rng.random() < 0.6 else 'Товар'} &laquo;{brand}&raquo; {model}."]
    sentences += [w.capitalize() + "." for w in rng.permutation(words)[: rng.integers(1, 4)]]
    sentences += list(rng.permutation(FILLER)[: rng.integers(1, 3)])
    if say_colour:
        sentences.append(f"Цвет: {colour_name}.")
    sentences.append(f"Артикул {int(rng.integers(10_000, 99_999))}.")
    description = (
        "<p>" + "&nbsp;".join(sentences[:2]) + "</p><ul>" + "".join(f"<li>{s}</li>" for s in sentences[2:]) + "</ul>"
    )
    if rng.random() < 0.04:
        description = ""
    custom = {"Цвет": [colour_name]} if say_colour and rng.random() < 0.5 else {}
    defined = {"Бренд": [brand]} if rng.random() < 0.7 else {}
    filters = {"Категория": [name.lower()]} if rng.random() < 0.3 else {}
    attributes = list(rng.permutation(words)[: rng.integers(0, 3)])
    shop = fam_shops[fam][rng.integers(len(fam_shops[fam]))] if rng.random() < 0.7 else int(rng.integers(len(shops)))
    return {
        "shop_id": 1000 + shop,
        "shop_title": shops[shop],
        "rating": float(np.round(rng.uniform(3.5, 5.0), 2)) if rng.random() < 0.7 else float("nan"),
        "sale": bool(rng.random() < 0.2),
        "text_fields": json.dumps(
            {
                "title": title,
                "description": description,
                "attributes": attributes,
                "custom_characteristics": custom,
                "defined_characteristics": defined,
                "filters": filters,
            },
            ensure_ascii=False,
        ),
    }


def make_demo_data(
    out_dir: str | Path, seed: int = 0, n_train: int = 2000, test_frac: float = 1.0, image_size: int = 96
) -> Path:
    """Write train/test parquet, images and solution.csv under out_dir; returns out_dir."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    for split in ("train", "test"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)

    # 60 classes = 20 families x 3 colours; the rarest ranks go to random classes
    classes = [(f, (f // 2 + 2 * j) % len(COLOURS)) for f in range(len(FAMILIES)) for j in range(3)]
    classes = [classes[i] for i in rng.permutation(len(classes))]
    cat_ids = rng.choice(np.arange(2000, 15000), N_CLASSES, replace=False)
    sizes = _class_sizes(n_train)
    shops = [f"{a} {b}" for a in SHOP_A for b in SHOP_B]
    fam_shops = {f: list(rng.choice(len(shops), 2, replace=False)) for f in range(len(FAMILIES))}

    # each class's train and test rows are filled with products of 1 or 2-5 variants; a product
    # is all in train or all in test (the split is by product)
    products = []
    for (fam, colour), cid, n in zip(classes, cat_ids, sizes):
        n_test = int(round(n * test_frac)) if n >= 2 else 0  # singleton classes stay in train
        for split, left in (("train", n), ("test", n_test)):
            while left > 0:
                k = int(rng.integers(N_VARIANTS[0], N_VARIANTS[1] + 1)) if (n > 1 and rng.random() < P_VARIANTS) else 1
                k = min(k, left)
                products.append(
                    {
                        "split": split,
                        "category_id": int(cid),
                        "fam": fam,
                        "colour": colour,
                        "variants": k,
                        "category_name": f"{FAMILIES[fam][0]}/{COLOURS[colour][0]}",
                    }
                )
                left -= k
    products = [products[i] for i in rng.permutation(len(products))]
    n_rows = sum(p["variants"] for p in products)
    pids = iter(rng.choice(np.arange(100_000, 999_999), n_rows, replace=False))

    records = []
    for g, prod in enumerate(tqdm(products, desc="demo products", mininterval=1)):
        base = _product(rng, prod["fam"], prod["colour"], shops, fam_shops)
        params = _image_params(
            rng, SHAPES[prod["fam"] // 2], COLOURS[prod["colour"]][1], TEXTURES[rng.integers(len(TEXTURES))], image_size
        )
        sizes_v = rng.permutation(SIZES)[: prod["variants"]]
        for v in range(prod["variants"]):
            rec = dict(base)
            if prod["variants"] > 1:
                fields = json.loads(base["text_fields"])
                fields["title"] = f"{fields['title']} {sizes_v[v]}"
                rec["text_fields"] = json.dumps(fields, ensure_ascii=False)
                rec["sale"] = bool(rng.random() < 0.2)
            row = {
                "product_id": int(next(pids)),
                "product_group": g,
                **{k: prod[k] for k in ("split", "category_id", "category_name", "fam", "colour")},
                **rec,
            }
            img = _draw_image(rng, params if v == 0 else _recolour(rng, params))
            img.save(out / "images" / row["split"] / f"{row['product_id']}.jpg", quality=90)
            records.append(row)
    df = pd.DataFrame(records)

    # deliberately broken rows: missing images, corrupt images (empty descriptions happen above)
    train_ids = df.loc[df.split == "train", "product_id"].to_numpy()
    broken = rng.choice(train_ids, 5, replace=False)
    for pid in broken[:3]:
        (out / "images" / "train" / f"{pid}.jpg").unlink()
    for pid in broken[3:]:
        (out / "images" / "train" / f"{pid}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    test_missing = df.loc[df.split == "test", "product_id"].iloc[0]
    (out / "images" / "test" / f"{test_missing}.jpg").unlink()

    cols = ["product_id", "category_id", "category_name", "sale", "shop_id", "shop_title", "rating", "text_fields"]
    train = df[df.split == "train"][cols].reset_index(drop=True)
    test = df[df.split == "test"]
    test[[c for c in cols if c not in ("category_id", "category_name")]].reset_index(drop=True).to_parquet(
        out / "test.parquet", index=False
    )
    train.to_parquet(out / "train.parquet", index=False)
    test[["product_id", "category_id"]].to_csv(out / "solution.csv", index=False)
    multi = df.groupby("product_group")["product_id"].transform("size") > 1
    log.info(
        "demo data: %d train / %d test listings, %d classes (%d singletons); %.0f%% of listings "
        "are variants of a product (kept on one side of the split) -> %s",
        len(train),
        len(test),
        train.category_id.nunique(),
        int((train.category_id.value_counts() == 1).sum()),
        100 * multi.mean(),
        out,
    )
    return out
