"""Built-in demo data: a small synthetic marketplace in the exact competition layout.

Deterministic from a seed. A category is a product family (its noun is in the text; its shape is
in the image) crossed with a colour (in the image always, in the text only sometimes). Families
come in pairs that share an image shape, so the image alone cannot tell paired families apart and
the text alone often cannot tell the colour: a model needs both. Class sizes follow a power law
with singletons and classes of 2-4 rows; a few rows are deliberately broken (missing image,
corrupt image, empty description) and must be handled, not crash the pipeline.
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
COLOURS = [("красный", (205, 40, 40)), ("синий", (40, 70, 200)), ("зелёный", (40, 160, 60)),
           ("жёлтый", (225, 200, 30)), ("чёрный", (30, 30, 30)), ("розовый", (230, 120, 180))]
TEXTURES = ["plain", "stripes", "dots"]
SHOP_A = ["Уютный", "Солнечный", "Быстрый", "Добрый", "Новый", "Большой", "Весёлый", "Северный"]
SHOP_B = ["Дом", "Маркет", "Склад", "Мир", "Стиль"]
GENERIC = ["Товар для дома", "Хит продаж", "Новинка", "Подарок", "Выгодный набор"]
FILLER = ["Отличное качество.", "Быстрая доставка по России.", "Подходит для подарка.",
          "Гарантия 12 месяцев.", "Производство: Россия.", "Товар сертифицирован."]
BRANDS = ["Ромашка", "Технолайн", "Уралочка", "Домовёнок", "Северянка", "Байкал", "Волна"]

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


def _draw_image(rng, shape: str, rgb, texture: str, size: int = 96):
    from PIL import Image, ImageDraw, ImageFilter

    bg = tuple(int(v) for v in rng.integers(200, 250, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    col = tuple(int(np.clip(c + rng.normal(0, 22), 0, 255)) for c in rgb)
    r = size * rng.uniform(0.22, 0.34)
    cx, cy = size / 2 + rng.uniform(-10, 10), size / 2 + rng.uniform(-10, 10)
    rot = rng.uniform(0, 2 * math.pi)

    def poly(n, radius, phase=0.0):
        return [(cx + radius * math.cos(phase + rot + 2 * math.pi * i / n),
                 cy + radius * math.sin(phase + rot + 2 * math.pi * i / n)) for i in range(n)]

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
    if texture == "stripes":
        for x in range(0, size, 8):
            d.line([(x, 0), (x - size, size)], fill=bg, width=2)
    elif texture == "dots":
        for x in range(4, size, 10):
            for y in range(4, size, 10):
                d.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=bg)
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2))), dtype=float)
    arr += rng.normal(0, 14, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _product(rng, fam: int, colour: int, shops: list, fam_shops: dict) -> dict:
    name, nouns, words = FAMILIES[fam]
    colour_name = COLOURS[colour][0]
    noun = nouns[rng.integers(len(nouns))]
    brand = BRANDS[rng.integers(len(BRANDS))]
    say_colour = rng.random() < 0.4  # the colour is named in the text only sometimes
    generic = rng.random() < 0.12   # some titles say nothing about the product
    title = GENERIC[rng.integers(len(GENERIC))] if generic else noun
    title += f" {brand}" + (f" {colour_name}" if say_colour and rng.random() < 0.5 else "")
    sentences = [f"{noun if rng.random() < 0.6 else 'Товар'} &laquo;{brand}&raquo;."]
    sentences += [w.capitalize() + "." for w in rng.permutation(words)[: rng.integers(1, 4)]]
    sentences += list(rng.permutation(FILLER)[: rng.integers(1, 3)])
    if say_colour:
        sentences.append(f"Цвет: {colour_name}.")
    description = "<p>" + "&nbsp;".join(sentences[:2]) + "</p><ul>" + "".join(
        f"<li>{s}</li>" for s in sentences[2:]) + "</ul>"
    if rng.random() < 0.04:
        description = ""
    custom = {"Цвет": [colour_name]} if say_colour and rng.random() < 0.5 else {}
    defined = {"Бренд": [brand]} if rng.random() < 0.7 else {}
    filters = {"Категория": [name.lower()]} if rng.random() < 0.3 else {}
    attributes = list(rng.permutation(words)[: rng.integers(0, 3)])
    shop = (fam_shops[fam][rng.integers(len(fam_shops[fam]))] if rng.random() < 0.7
            else int(rng.integers(len(shops))))
    return {
        "shop_id": 1000 + shop,
        "shop_title": shops[shop],
        "rating": float(np.round(rng.uniform(3.5, 5.0), 2)) if rng.random() < 0.7 else float("nan"),
        "sale": bool(rng.random() < 0.2),
        "text_fields": json.dumps({
            "title": title, "description": description, "attributes": attributes,
            "custom_characteristics": custom, "defined_characteristics": defined,
            "filters": filters}, ensure_ascii=False),
    }


def make_demo_data(out_dir: str | Path, seed: int = 0, n_train: int = 2000,
                   test_frac: float = 0.25, image_size: int = 96) -> Path:
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

    rows = []
    for (fam, colour), cid, n in zip(classes, cat_ids, sizes):
        n_test = int(round(n * test_frac)) if n >= 5 else 0
        for i in range(n + n_test):
            rows.append({"split": "train" if i < n else "test", "category_id": int(cid),
                         "category_name": f"{FAMILIES[fam][0]}/{COLOURS[colour][0]}",
                         "fam": fam, "colour": colour})
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    for pid, row in zip(rng.choice(np.arange(100_000, 999_999), len(rows), replace=False), rows):
        row["product_id"] = int(pid)

    records = []
    for row in tqdm(rows, desc="demo products", mininterval=1):
        rec = {"product_id": row["product_id"], **_product(rng, row["fam"], row["colour"], shops, fam_shops)}
        img = _draw_image(rng, SHAPES[row["fam"] // 2], COLOURS[row["colour"]][1],
                          TEXTURES[rng.integers(len(TEXTURES))], image_size)
        img.save(out / "images" / row["split"] / f"{row['product_id']}.jpg", quality=90)
        records.append({**row, **rec})
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

    cols = ["product_id", "category_id", "category_name", "sale", "shop_id", "shop_title", "rating",
            "text_fields"]
    train = df[df.split == "train"][cols].reset_index(drop=True)
    test = df[df.split == "test"]
    test[[c for c in cols if c not in ("category_id", "category_name")]].reset_index(drop=True) \
        .to_parquet(out / "test.parquet", index=False)
    train.to_parquet(out / "train.parquet", index=False)
    test[["product_id", "category_id"]].to_csv(out / "solution.csv", index=False)
    log.info("demo data: %d train / %d test products, %d classes (%d singletons) -> %s",
             len(train), len(test), train.category_id.nunique(),
             int((train.category_id.value_counts() == 1).sum()), out)
    return out
