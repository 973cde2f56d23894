"""The built-in dataset: small synthetic street-litter photos that a detector learns within minutes on a CPU.

It lets the demo and the tests run anywhere without downloading data, and it keeps the traits of real trash
data that matter to the pipeline: an imbalanced class mix (bags common, batteries rare), objects at several
scales, partial overlaps and cluttered, textured ground. Every class has its own silhouette, palette and
markings, so a model that learns shows it in mAP50 rather than in noise.

Photos vary in shape as real ones do: landscape and portrait at common aspect ratios, the long side at a few sizes
around `image_size`, and about one in ten is a crowded scene of 15-30 smaller objects. Square photos of one size
and a handful of objects hid letterboxing and NMS bugs that real data showed at once.

Drawing is deterministic: each image takes its random numbers from (seed, split, index), so the same seed
gives byte-identical files on the same Pillow/NumPy, and changing one split's size leaves the others' images alone
(the image ids in the JSON files are numbered across splits, so those shift).
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detfuse.core.node_cache import build_once, cache_root

CLASS_NAMES = ("bottle", "can", "bag", "paper", "battery")  # category ids 1..5 in this order
CLASS_SHARES = (0.22, 0.18, 0.40, 0.15, 0.05)  # like real trash data: bags dominate, batteries are rare
BUILTIN_NAME = "builtin-litter-v2"  # change the suffix whenever the generator's output changes

_SPLITS = ("train", "val", "test")
_SUPERSAMPLE = 4  # shapes are drawn this many times larger, then box-filtered down: smooth edges
_MAX_OVERLAP = 0.15  # intersection over the smaller box: objects may touch and overlap a little, never hide
_JPEG_QUALITY = 92
_LONG_SIDES = (0.75, 1.0, 1.25, 1.5)  # a photo's long side as a share of image_size
_ASPECTS = (1.0, 4 / 3, 3 / 2, 16 / 9)  # long over short side; with _LONG_SIDES, image_size**2 pixels on average
_PORTRAIT = 0.4  # chance that a photo that is not square stands upright
_CROWDED = 0.1  # share of crowded scenes: a litter pile or a beach seen from further away
_CROWDED_OBJECTS = (15, 30)  # how many objects a crowded scene tries to place
_CROWDED_SCALE = 0.6  # objects in a crowded scene are this much smaller, so that most of them fit
_MIN_LENGTH = 6  # pixels: a smaller object would vanish when its sprite is filtered down


def generate(out_dir, seed: int = 0, num_train: int = 200, num_val: int = 60, num_test: int = 20,
             image_size: int = 160) -> Path:
    """Write the dataset to `out_dir`: images/*.jpg plus train.json, val.json and test.json (COCO detection
    format, bbox = [x, y, w, h] in pixels, category ids 1..5; test.json lists images and categories only).

    `image_size` sets the scale: each photo's long side is 0.75 to 1.5 times it. Image k < 5 of each split starts
    with an object of class k + 1, so even tiny sets contain every class; all other objects follow CLASS_SHARES.
    """
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64 pixels, got {image_size}")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": k + 1, "name": name, "supercategory": "litter"} for k, name in enumerate(CLASS_NAMES)]
    next_image_id = 1
    for split_index, (split, count) in enumerate(zip(_SPLITS, (num_train, num_val, num_test))):
        if split == "test" and count == 0:
            continue  # the test split is optional in the dataset contract; an empty one is an error there
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            first_class = index if index < len(CLASS_NAMES) else None
            picture, boxes = _draw_image(rng, image_size, first_class)
            file_name = f"{split}_{index:04d}.jpg"
            picture.save(image_dir / file_name, quality=_JPEG_QUALITY)
            width, height = picture.size
            images.append({"id": next_image_id, "file_name": file_name, "width": width, "height": height})
            for class_index, (x, y, w, h) in boxes:
                annotations.append({"id": len(annotations) + 1, "image_id": next_image_id,
                                    "category_id": class_index + 1, "bbox": [x, y, w, h], "area": w * h,
                                    "iscrowd": 0})
            next_image_id += 1
        coco = {"info": {"description": f"detfuse synthetic litter, seed {seed}, {split} split", "version": "1"},
                "images": images, "categories": categories}
        if split != "test":
            coco["annotations"] = annotations
        (out_dir / f"{split}.json").write_text(json.dumps(coco, indent=1) + "\n")
    return out_dir


def builtin_dataset_dir() -> Path:
    """The default built-in set, generated once per machine into the detfuse cache; concurrent Ray trials that
    ask at the same time wait for one of them to finish it (see build_once)."""
    return build_once(cache_root() / "datasets" / BUILTIN_NAME, generate)


def _draw_image(rng, image_size, first_class):
    """One photo and its boxes [(class index, (x, y, w, h))], boxes tight around the visible shapes."""
    width, height = _frame(rng, image_size)
    crowded = rng.random() < _CROWDED
    if crowded:
        count = int(rng.integers(_CROWDED_OBJECTS[0], _CROWDED_OBJECTS[1] + 1))
    else:
        count = int(rng.integers(1, 7))
    scale = np.sqrt(width * height) * (_CROWDED_SCALE if crowded else 1.0)  # objects grow with the photo's size
    canvas = _background(rng, width, height)
    boxes = []
    for number in range(count):
        if number == 0 and first_class is not None:
            class_index = first_class
        else:
            class_index = int(rng.choice(len(CLASS_NAMES), p=CLASS_SHARES))
        sprite = _sprite(rng, class_index, scale)
        placed = _place(rng, sprite, width, height, [box for _, box in boxes])
        if placed is None:
            continue
        left, top, box = placed
        canvas.alpha_composite(sprite, (left, top))
        boxes.append((class_index, box))
    return _camera(rng, canvas), boxes


def _frame(rng, image_size):
    """Width and height of one photo: landscape, portrait or square, its long side a few sizes around image_size."""
    long_side = image_size * _LONG_SIDES[int(rng.integers(len(_LONG_SIDES)))]
    short_side = long_side / _ASPECTS[int(rng.integers(len(_ASPECTS)))]
    if rng.random() < _PORTRAIT:
        return round(short_side), round(long_side)
    return round(long_side), round(short_side)


def _place(rng, sprite, image_width, image_height, taken):
    """A spot where the sprite fits inside the image and barely overlaps earlier objects, or None."""
    alpha = np.asarray(sprite.getchannel("A")) >= 128
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    width, height = sprite.size
    if width > image_width or height > image_height:
        return None
    for _ in range(30):
        left = int(rng.integers(0, image_width - width + 1))
        top = int(rng.integers(0, image_height - height + 1))
        box = (left + x0, top + y0, x1 - x0, y1 - y0)
        if all(_overlap(box, other) <= _MAX_OVERLAP for other in taken):
            return left, top, box
    return None


def _overlap(a, b):
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / min(a[2] * a[3], b[2] * b[3])


# --- ground ---------------------------------------------------------------------------------------------------

_GROUNDS = {  # base colour of each kind of ground
    "asphalt": (78, 78, 84), "grass": (72, 118, 52), "sand": (192, 172, 134),
    "pavement": (148, 146, 138), "soil": (106, 82, 60),
}


def _background(rng, width, height):
    kind = list(_GROUNDS)[int(rng.integers(len(_GROUNDS)))]
    base = np.array(_GROUNDS[kind], dtype=np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0, 5, 3)
    shading = _smooth_noise(rng, width, height, cells=int(rng.integers(2, 6))) * rng.uniform(10, 28)
    grain = rng.normal(0, rng.uniform(5, 12), (height, width, 1)) + rng.normal(0, 3, (height, width, 3))
    pixels = base + shading[..., None] + grain
    if kind in ("sand", "soil"):
        pixels += _smooth_noise(rng, width, height, cells=max(width, height) // 8)[..., None] * 12
    if kind == "asphalt":
        pixels += (rng.random((height, width, 1)) < 0.03) * rng.uniform(30, 60)
    picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGBA")
    draw = ImageDraw.Draw(picture)
    if kind == "pavement":
        _tile_joints(rng, draw, width, height)
    if kind == "grass":
        _grass_blades(rng, draw, width, height, base)
    _pebbles(rng, draw, width, height)
    return picture


def _smooth_noise(rng, width, height, cells):
    """Noise in [-1, 1] that varies over about 1/cells of the image: uneven light, stains, patches."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BILINEAR))


def _tile_joints(rng, draw, width, height):
    step = max(width, height) / rng.uniform(2.5, 5)
    offset = rng.uniform(0, step, 2)
    shade = tuple(int(v) for v in rng.integers(70, 110, 3)) + (255,)
    for k in range(7):
        x, y = offset[0] + k * step, offset[1] + k * step
        draw.line([(x, 0), (x, height)], fill=shade, width=2)
        draw.line([(0, y), (width, y)], fill=shade, width=2)


def _grass_blades(rng, draw, width, height, base):
    for _ in range(width + height):
        x, y = rng.uniform(0, (width, height))
        dx, dy = rng.uniform(-2, 2), rng.uniform(-7, -3)
        colour = np.clip(base * rng.uniform(0.6, 1.4) + rng.normal(0, 8, 3), 0, 255).astype(int)
        draw.line([(x, y), (x + dx, y + dy)], fill=tuple(colour.tolist()) + (255,), width=1)


def _pebbles(rng, draw, width, height):
    """Small stones and specks: clutter a detector must learn to ignore."""
    for _ in range(int(rng.integers(0, 7))):
        x, y = rng.uniform(0, (width, height))
        rx, ry = rng.uniform(1.5, 4, 2)
        grey = int(rng.integers(90, 200))
        tone = (grey, grey - int(rng.integers(0, 15)), grey - int(rng.integers(0, 30)), 255)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=tone, outline=(50, 48, 45, 255))


def _camera(rng, canvas):
    """Exposure varies from photo to photo, and every photo carries sensor noise."""
    pixels = np.asarray(canvas.convert("RGB"), dtype=np.float32)
    pixels = pixels * rng.uniform(0.85, 1.15) + rng.normal(0, 3, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# --- objects --------------------------------------------------------------------------------------------------
# Each sprite is drawn upright on a transparent canvas, _SUPERSAMPLE times larger than it will appear.
# `length` is its long side in final pixels.

_LENGTHS = {  # long side as a share of the photo's scale: a range per class, so objects come at several scales
    "bottle": (0.24, 0.45), "can": (0.15, 0.27), "bag": (0.20, 0.45), "paper": (0.17, 0.35),
    "battery": (0.10, 0.17),
}
_LYING = {"bottle": 0.5, "can": 0.35, "bag": 0.0, "paper": 0.3, "battery": 0.5}  # chance of a quarter turn
_TILT = {"bottle": 25, "can": 25, "bag": 180, "paper": 40, "battery": 25}  # largest further turn, degrees


def _sprite(rng, class_index, scale):
    name = CLASS_NAMES[class_index]
    low, high = _LENGTHS[name]
    length = max(_MIN_LENGTH, scale * float(np.exp(rng.uniform(np.log(low), np.log(high)))))
    sprite = _PAINTERS[name](rng, length * _SUPERSAMPLE)
    angle = rng.uniform(-_TILT[name], _TILT[name]) + (90 if rng.random() < _LYING[name] else 0)
    sprite = sprite.rotate(angle, resample=Image.NEAREST, expand=True)
    width, height = (max(1, round(v / _SUPERSAMPLE)) for v in sprite.size)
    # premultiplied alpha while filtering, so transparent pixels don't darken the edges
    return sprite.convert("RGBa").resize((width, height), Image.BOX).convert("RGBA")


def _jitter(rng, colour, spread=14):
    return tuple(int(v) for v in np.clip(np.asarray(colour) + rng.normal(0, spread, 3), 0, 255)) + (255,)


def _lighter(colour, amount):
    return tuple(int(v + (255 - v) * amount) for v in colour[:3]) + (255,)


def _darker(colour, amount):
    return tuple(int(v * (1 - amount)) for v in colour[:3]) + (255,)


def _canvas(width, height):
    sprite = Image.new("RGBA", (max(2, round(width)), max(2, round(height))), (0, 0, 0, 0))
    return sprite, ImageDraw.Draw(sprite)


def _paint_bottle(rng, length):
    """Tall glass or PET bottle: neck, shoulders, coloured cap, often a label band and a glint."""
    height, width = length, length * rng.uniform(0.32, 0.40)
    sprite, draw = _canvas(width, height)
    glass = _jitter(rng, [(35, 130, 60), (115, 62, 22), (150, 196, 218)][int(rng.integers(3))])
    neck = width * 0.38
    left_neck, right_neck = (width - neck) / 2, (width + neck) / 2
    draw.rounded_rectangle([0, height * 0.34, width - 1, height - 1], radius=width * 0.22, fill=glass)
    draw.polygon([(left_neck, height * 0.2), (right_neck, height * 0.2), (width - 1, height * 0.4),
                  (0, height * 0.4)], fill=glass)
    draw.rectangle([left_neck, height * 0.07, right_neck, height * 0.22], fill=glass)
    cap = _jitter(rng, [(215, 30, 30), (240, 240, 235), (30, 80, 200), (245, 195, 10)][int(rng.integers(4))])
    draw.rectangle([left_neck - neck * 0.1, 0, right_neck + neck * 0.1, height * 0.08], fill=cap)
    if rng.random() < 0.6:
        band = _jitter(rng, [(240, 240, 240), (220, 40, 40), (250, 210, 40)][int(rng.integers(3))])
        draw.rectangle([0, height * 0.52, width - 1, height * 0.72], fill=band)
    draw.rectangle([width * 0.2, height * 0.4, width * 0.3, height * 0.93], fill=_lighter(glass, 0.45))
    return sprite


def _paint_can(rng, length):
    """Drink can: squat cylinder with a silver rim, printed stripes and a vertical metallic sheen."""
    height, width = length, length * rng.uniform(0.55, 0.66)
    sprite, draw = _canvas(width, height)
    body = _jitter(rng, [(200, 30, 35), (30, 70, 190), (230, 190, 30), (40, 150, 60), (20, 20, 25)]
                   [int(rng.integers(5))])
    rim = _jitter(rng, (195, 195, 202), 8)
    lid = width * 0.28
    draw.ellipse([0, height - lid, width - 1, height - 1], fill=rim)
    draw.rectangle([0, lid / 2, width - 1, height - lid / 2], fill=body)
    stripe = _jitter(rng, [(240, 240, 240), (190, 190, 196)][int(rng.integers(2))], 6)
    for centre in rng.uniform(0.35, 0.8, 2):
        draw.rectangle([0, height * centre, width - 1, height * (centre + 0.07)], fill=stripe)
    draw.rectangle([width * 0.62, lid / 2, width * 0.72, height - lid / 2], fill=_lighter(body, 0.5))
    draw.ellipse([0, 0, width - 1, lid], fill=rim)
    draw.ellipse([width * 0.3, lid * 0.25, width * 0.55, lid * 0.7], fill=_darker(rim, 0.55))
    return sprite


def _paint_bag(rng, length):
    """Plastic bag: a lumpy crumpled outline with creases, sometimes with handles."""
    width, height = length, length * rng.uniform(0.7, 1.0)
    sprite, draw = _canvas(width, height)
    film = _jitter(rng, [(236, 236, 230), (35, 35, 42), (60, 110, 205), (175, 175, 178), (220, 120, 160)]
                   [int(rng.integers(5))], 10)
    corners = int(rng.integers(11, 17))
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
    radii = rng.uniform(0.6, 1.0, corners)
    radii = (radii + np.roll(radii, 1) + np.roll(radii, -1)) / 3  # lumpy rather than spiky
    has_handles = rng.random() < 0.6
    top = height * 0.22 if has_handles else 0
    centre_x, centre_y = width / 2, (top + height) / 2
    half_w, half_h = width / 2 - 1, (height - top) / 2 - 1
    outline = [(centre_x + half_w * r * np.cos(a), centre_y + half_h * r * np.sin(a)) for a, r in zip(angles, radii)]
    if has_handles:
        thickness = max(2, round(width * 0.05))
        for x in (width * 0.3, width * 0.7):
            draw.ellipse([x - width * 0.1, 0, x + width * 0.1, top * 2.4], outline=film, width=thickness)
    draw.polygon(outline, fill=film)
    crease = _darker(film, 0.3) if sum(film[:3]) > 200 else _lighter(film, 0.35)
    for _ in range(int(rng.integers(3, 7))):
        start = outline[int(rng.integers(corners))]
        end = (centre_x + rng.uniform(-0.3, 0.3) * width, centre_y + rng.uniform(-0.3, 0.3) * height)
        draw.line([start, end], fill=crease, width=max(2, round(width * 0.02)))
    return sprite


def _paint_paper(rng, length):
    """Sheet of paper: a pale, slightly skewed quadrilateral with ruled lines and a fold."""
    height, width = length, length * rng.uniform(0.65, 0.8)
    sprite, draw = _canvas(width, height)
    sheet = _jitter(rng, [(242, 240, 228), (236, 226, 190), (214, 226, 238)][int(rng.integers(3))], 6)
    skew = rng.uniform(0, 0.07, (4, 2)) * (width, height)
    draw.polygon([(skew[0, 0], skew[0, 1]), (width - 1 - skew[1, 0], skew[1, 1]),
                  (width - 1 - skew[2, 0], height - 1 - skew[2, 1]), (skew[3, 0], height - 1 - skew[3, 1])],
                 fill=sheet)
    ink = _jitter(rng, [(90, 90, 100), (60, 80, 160)][int(rng.integers(2))], 10)
    stroke = max(2, round(length * 0.015))
    for y in np.arange(height * 0.18, height * 0.86, height * rng.uniform(0.08, 0.11)):
        draw.line([(width * 0.16, y), (width * rng.uniform(0.55, 0.84), y)], fill=ink, width=stroke)
    fold = rng.uniform(0.3, 0.7)
    draw.line([(width * 0.1, height * fold), (width * 0.9, height * (1 - fold))], fill=_darker(sheet, 0.2),
              width=max(2, round(length * 0.012)))
    return sprite


def _paint_battery(rng, length):
    """Cell battery: small rounded cylinder in two colours with a metal terminal nub."""
    height, width = length, length * rng.uniform(0.33, 0.42)
    sprite, draw = _canvas(width, height)
    top_colour, body_colour = [((205, 140, 40), (28, 28, 30)), ((196, 196, 204), (30, 60, 175)),
                               ((40, 40, 40), (200, 200, 40))][int(rng.integers(3))]
    draw.rectangle([width * 0.32, 0, width * 0.68, height * 0.1], fill=_jitter(rng, (170, 170, 176), 6))
    draw.rounded_rectangle([0, height * 0.08, width - 1, height - 1], radius=width * 0.15,
                           fill=_jitter(rng, body_colour, 8))
    draw.rectangle([0, height * 0.12, width - 1, height * 0.38], fill=_jitter(rng, top_colour, 8))
    draw.rectangle([width * 0.65, height * 0.12, width * 0.78, height * 0.95], fill=(235, 235, 235, 255))
    return sprite


_PAINTERS = {"bottle": _paint_bottle, "can": _paint_can, "bag": _paint_bag, "paper": _paint_paper,
             "battery": _paint_battery}
