"""Built-in demo data: procedurally drawn cartoon characters in the Kaggle layout.

One look per class (skin, hair shape and colour, shirt, trousers, accessory), drawn with flat
colours and black outlines in varied pose, scale, position, background and lighting, so a
model has to learn shapes and colour combinations, not one colour per class. The writer plants
the real data set's problems: exact duplicates, test images that are downscaled copies of
training frames, near-identical consecutive frames, a corrupt JPEG and a non-image.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance

CLASSES = (
    "abraham_grampa_simpson agnes_skinner apu_nahasapeemapetilon barney_gumble bart_simpson "
    "carl_carlson charles_montgomery_burns chief_wiggum cletus_spuckler comic_book_guy disco_stu "
    "edna_krabappel fat_tony gil groundskeeper_willie homer_simpson kent_brockman krusty_the_clown "
    "lenny_leonard lionel_hutz lisa_simpson maggie_simpson marge_simpson martin_prince mayor_quimby "
    "milhouse_van_houten miss_hoover moe_szyslak ned_flanders nelson_muntz otto_mann patty_bouvier "
    "principal_skinner professor_john_frink rainier_wolfcastle ralph_wiggum selma_bouvier sideshow_bob "
    "sideshow_mel snake_jailbird troy_mcclure waylon_smithers"
).split()

PALETTE = [
    (255, 217, 15), (250, 200, 150), (140, 90, 50), (30, 90, 200), (220, 40, 40), (40, 160, 70),
    (240, 240, 240), (60, 60, 60), (250, 130, 20), (150, 60, 170), (120, 200, 230), (200, 170, 90),
]
HAIR = ("spiky", "bald", "tall", "bun", "flat", "curly")
ACCESSORY = ("none", "glasses", "hat", "tie", "beard")


@dataclass(frozen=True)
class Look:
    skin: tuple[int, int, int]
    hair: str
    hair_colour: tuple[int, int, int]
    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    accessory: str
    width: float  # body width relative to height


def class_looks(classes: tuple[str, ...] | list[str] = CLASSES, seed: int = 7, taken: frozenset = frozenset()) -> dict[str, Look]:
    """A distinct look per class, the same for every run with the same seed; ``taken`` holds
    looks (as ``_look_key``) that must not be reused."""
    rng = random.Random(seed)
    looks, seen = {}, {*taken}
    for name in classes:
        while True:
            look = Look(
                skin=rng.choice(PALETTE[:3]), hair=rng.choice(HAIR), hair_colour=rng.choice(PALETTE),
                shirt=rng.choice(PALETTE), trousers=rng.choice(PALETTE), accessory=rng.choice(ACCESSORY),
                width=rng.choice((0.35, 0.5, 0.7)),
            )
            key = _look_key(look)
            if key not in seen:
                seen.add(key)
                looks[name] = look
                break
    return looks


def _look_key(look: Look) -> tuple:
    return (look.hair, look.shirt, look.trousers, look.accessory)


def _background(draw: ImageDraw.ImageDraw, rng: random.Random, w: int, h: int) -> None:
    draw.rectangle((0, 0, w, h), fill=rng.choice(PALETTE))
    draw.rectangle((0, int(h * rng.uniform(0.6, 0.85)), w, h), fill=rng.choice(PALETTE))
    for _ in range(rng.randint(1, 4)):  # furniture, windows, doors
        x, y = rng.uniform(0, w), rng.uniform(0, h * 0.7)
        bw, bh = rng.uniform(0.1, 0.35) * w, rng.uniform(0.1, 0.4) * h
        draw.rectangle((x, y, x + bw, y + bh), fill=rng.choice(PALETTE), outline=(0, 0, 0), width=2)


def _character(draw: ImageDraw.ImageDraw, look: Look, rng: random.Random, w: int, h: int) -> None:
    s = rng.uniform(0.55, 0.95) * h  # figure height
    cx, top = rng.uniform(0.3, 0.7) * w, rng.uniform(0.02, 0.2) * h
    head_r, bw = 0.16 * s, look.width * s * 0.5
    line = {"outline": (0, 0, 0), "width": max(1, int(s / 90))}
    body_top, legs_top = top + 2 * head_r, top + 2 * head_r + 0.38 * s
    # trousers, shirt, arms (pose), head, hair, face, accessory
    draw.rectangle((cx - bw * 0.45, legs_top, cx + bw * 0.45, top + s), fill=look.trousers, **line)
    draw.rounded_rectangle((cx - bw * 0.5, body_top, cx + bw * 0.5, legs_top), radius=bw * 0.2, fill=look.shirt, **line)
    for side in (-1, 1):
        ax, ay = cx + side * bw * 0.5, body_top + 0.05 * s
        hx, hy = ax + side * rng.uniform(0.05, 0.25) * s, ay + rng.uniform(-0.15, 0.3) * s
        draw.line((ax, ay, hx, hy), fill=look.shirt, width=max(2, int(s / 18)))
        draw.ellipse((hx - 0.03 * s, hy - 0.03 * s, hx + 0.03 * s, hy + 0.03 * s), fill=look.skin, **line)
    hx0, hy0 = cx - head_r, top
    draw.ellipse((hx0, hy0, hx0 + 2 * head_r, hy0 + 2.2 * head_r), fill=look.skin, **line)
    hc = look.hair_colour
    if look.hair == "spiky":
        for i in range(5):
            x = hx0 + (i + 0.5) * 2 * head_r / 5
            draw.polygon([(x - head_r * 0.2, top + head_r * 0.3), (x, top - head_r * 0.5), (x + head_r * 0.2, top + head_r * 0.3)], fill=hc)
    elif look.hair == "tall":
        draw.rounded_rectangle((cx - head_r * 0.7, top - head_r * 1.8, cx + head_r * 0.7, top + head_r * 0.4), radius=head_r * 0.5, fill=hc, **line)
    elif look.hair == "bun":
        draw.ellipse((cx - head_r * 0.5, top - head_r * 0.8, cx + head_r * 0.5, top + head_r * 0.2), fill=hc, **line)
    elif look.hair == "flat":
        draw.rectangle((hx0, top, hx0 + 2 * head_r, top + head_r * 0.5), fill=hc)
    elif look.hair == "curly":
        for i in range(4):
            x = hx0 + i * 2 * head_r / 3.5
            draw.ellipse((x - head_r * 0.3, top - head_r * 0.3, x + head_r * 0.3, top + head_r * 0.3), fill=hc)
    eye = head_r * 0.28
    for side in (-1, 1):
        ex, ey = cx + side * head_r * 0.35, top + head_r * 0.9
        draw.ellipse((ex - eye, ey - eye, ex + eye, ey + eye), fill=(255, 255, 255), **line)
        draw.ellipse((ex - eye * 0.3, ey - eye * 0.3, ex + eye * 0.3, ey + eye * 0.3), fill=(0, 0, 0))
        if look.accessory == "glasses":
            draw.ellipse((ex - eye * 1.3, ey - eye * 1.3, ex + eye * 1.3, ey + eye * 1.3), outline=(0, 0, 0), width=max(2, int(s / 60)))
    mouth_y = top + head_r * 1.6
    draw.arc((cx - head_r * 0.4, mouth_y - head_r * 0.3, cx + head_r * 0.4, mouth_y + head_r * 0.3), 20, 160, fill=(0, 0, 0), width=2)
    if look.accessory == "hat":
        draw.rectangle((hx0 - head_r * 0.2, top - head_r * 0.1, hx0 + 2.2 * head_r, top + head_r * 0.2), fill=(40, 40, 40))
        draw.rectangle((hx0 + head_r * 0.3, top - head_r * 0.9, hx0 + 1.7 * head_r, top), fill=(40, 40, 40))
    elif look.accessory == "tie":
        draw.polygon([(cx, body_top), (cx - bw * 0.1, body_top + 0.25 * s), (cx + bw * 0.1, body_top + 0.25 * s)], fill=(200, 0, 0), outline=(0, 0, 0))
    elif look.accessory == "beard":
        draw.chord((cx - head_r, top + head_r, cx + head_r, top + 2.3 * head_r), 0, 180, fill=(110, 80, 60), **line)


def draw_frame(look: Look | None, rng: random.Random, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """One frame of a character in a random scene and light (``None``: an empty room)."""
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    _background(draw, rng, *size)
    if look is not None:
        _character(draw, look, rng, *size)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.25))
    return ImageEnhance.Color(img).enhance(rng.uniform(0.7, 1.2))


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def shrink(img: Image.Image, factor: float) -> Image.Image:
    """The picture ``factor`` times smaller on each side (at least 8 pixels), as the Kaggle test
    images are smaller copies of frames."""
    return img.resize((max(8, round(img.width / factor)), max(8, round(img.height / factor))), Image.Resampling.BILINEAR)


def downscaled_copy(img: Image.Image, factor: float, quality: int = 75) -> bytes:
    """A test-set style copy of a frame: ``factor`` times smaller and re-encoded."""
    return jpeg(shrink(img, factor), quality)


def near_identical(img: Image.Image, rng: random.Random) -> Image.Image:
    """The next frame of the same shot: a tiny shift and a flicker of light."""
    dx, dy = rng.randint(-2, 2), rng.randint(-2, 2)
    shifted = img.transform(img.size, Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy), fillcolor=img.getpixel((0, 0)))
    return ImageEnhance.Brightness(shifted).enhance(rng.uniform(0.97, 1.03))


def write_dataset(
    out: Path,
    classes: int = 42,
    per_class: int = 40,
    test_per_class: int = 4,
    seed: int = 0,
    size: tuple[int, int] = (160, 120),
) -> dict[str, int]:
    """Write the Kaggle layout under ``out`` and return what was planted, by kind."""
    names = CLASSES[:classes] if classes <= len(CLASSES) else tuple(f"class_{i:03d}" for i in range(classes))
    looks, rng = class_looks(names), random.Random(seed)
    train_root, test_root = out / "simpsons_dataset", out / "kaggle_simpson_testset"
    planted = {"train": 0, "test": 0, "exact_duplicates": 0, "test_copies_of_train": 0, "near_identical": 0}
    for name in names:
        folder = train_root / name
        folder.mkdir(parents=True, exist_ok=True)
        frames = []
        for i in range(per_class):
            follows = bool(frames) and rng.random() < 0.15
            frame = near_identical(frames[-1], rng) if follows else draw_frame(looks[name], rng, size)
            planted["near_identical"] += follows
            frames.append(frame)
            (folder / f"pic_{i:04d}.jpg").write_bytes(jpeg(frame))
        for i in range(test_per_class):
            if i == 0 and per_class:  # the Kaggle test set holds downscaled training frames
                data = downscaled_copy(frames[rng.randrange(per_class)], 3)
                planted["test_copies_of_train"] += 1
            else:
                data = downscaled_copy(draw_frame(looks[name], rng, size), 3)
            test_root.mkdir(parents=True, exist_ok=True)
            (test_root / f"{name}_{i}.jpg").write_bytes(data)
        planted["train"] += per_class
        planted["test"] += test_per_class
    first = train_root / names[0]
    if per_class:  # the real set's problems
        (first / f"pic_{per_class:04d}.jpg").write_bytes((first / "pic_0000.jpg").read_bytes())
        planted["exact_duplicates"] += 1
        (first / f"pic_{per_class + 1:04d}.jpg").write_bytes(jpeg(draw_frame(looks[names[0]], rng, size))[:600])
        (first / "notes.txt").write_text("not an image\n")
    return planted


def write_unknown(out: Path, classes: int, count: int, seed: int = 0, size: tuple[int, int] = (64, 48), strangers: int = 12) -> int:
    """``count`` small frames of characters that are none of the first ``classes`` classes
    (``strangers`` new looks) and, one in five, of empty rooms: what real footage is full
    of and a closed-set model still names. Returns how many were written."""
    taken = frozenset(_look_key(look) for look in class_looks(CLASSES[:classes]).values())
    looks = list(class_looks([f"stranger_{i:02d}" for i in range(strangers)], seed=seed + 101, taken=taken).values())
    rng = random.Random(seed + 202)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        look = None if i % 5 == 4 else looks[i % len(looks)]
        (out / f"unknown_{i:04d}.jpg").write_bytes(downscaled_copy(draw_frame(look, rng, (size[0] * 3, size[1] * 3)), 3))
    return count


def fingerprints(n: int, seed: int = 0, clustered: float = 0.5, max_cluster: int = 12, max_flip: int = 6):
    """Generated fingerprints at any scale, for the grouping benchmark and tests: (pHashes
    uint64[n], thumbnails uint8[n, 192]). About ``clustered`` of the rows sit in clusters of
    2..``max_cluster`` near-identical frames (pHash within ``max_flip`` bits of the first, small
    thumbnail noise); the rest are unrelated frames."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = np.where(rng.random(n) < clustered / 2, rng.integers(2, max_cluster + 1, n), 1)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    cluster = np.repeat(np.arange(len(sizes)), sizes)[:n]
    first = np.r_[True, cluster[1:] != cluster[:-1]]
    base_hash = rng.integers(0, 2**64 - 1, len(sizes), dtype=np.uint64, endpoint=True)
    base_thumb = rng.integers(0, 256, (len(sizes), 192), dtype=np.uint8)
    flips = np.where(first, 0, rng.integers(0, max_flip + 1, n))
    mask = np.zeros(n, np.uint64)
    for j in range(max_flip):  # a bit drawn twice flips back: "up to" max_flip bits
        bit = rng.integers(0, 64, n).astype(np.uint64)
        mask ^= np.where(flips > j, np.uint64(1) << bit, np.uint64(0))
    thumbs = base_thumb[cluster]
    for start in range(0, n, 65536):  # small thumbnail noise on cluster members, in chunks: memory stays ~n x 192 bytes
        rows = slice(start, start + 65536)
        noise = rng.integers(-6, 7, (len(thumbs[rows]), 192), dtype=np.int16) * ~first[rows, None]
        thumbs[rows] = np.clip(thumbs[rows].astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return base_hash[cluster] ^ mask, thumbs
