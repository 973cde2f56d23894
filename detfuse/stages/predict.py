"""`detfuse predict BUNDLE IMAGES... --out DIR`: run an exported bundle's fused ensemble on image files.

Nothing in the bundle is read before every file matched its manifest (detfuse.stages.bundle.open_bundle), and the families
load weights with torch.load(weights_only=True), so a bundle from shared storage cannot run code on this machine.
Each member runs on every image through its family's predictor (a "+hflip" member on the images mirrored
left-right, from the same loaded checkpoint as its trial's plain member), and the detections are fused image by
image with the bundle's fitted parameters, exactly as the ensemble job fused them. Writes to DIR:

    predictions.json   COCO: images (id, file_name, width, height), categories, and one annotation per fused
                       detection (bbox [x, y, w, h] in pixels, score, category_id = COCO id)
    predictions.csv    the submission format of detfuse.stages.ensemble_outputs (image_id = the image's file name)
    images/<name>      each image with the detections scoring at least the draw threshold drawn on it
"""

import contextlib
import json
import pickle
import warnings
from pathlib import Path

from detfuse.core import checkpoint_meta
from detfuse.stages import bundle
from detfuse.stages.ensemble_outputs import coco_results, read_fusion_spec, submission_csv
from detfuse.core.errors import UserError
from detfuse.core.fusion import fuse_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_DRAW_THRESHOLD = 0.3
# distinct, readable on photos; class k gets colour k modulo the list
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 200, 200),
           (240, 50, 230), (150, 190, 40), (128, 0, 0), (0, 0, 128))


def collect_images(arguments):
    """Image files named on the command line; a directory stands for the images directly inside it."""
    paths = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{argument}: a directory with no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"{argument}: no such image file or directory")
    by_name = {}
    for path in paths:
        if path.name in by_name:
            raise UserError(f"{by_name[path.name]} and {path} share the file name {path.name!r}; outputs are named "
                            f"after it: predict them in separate runs (another --out)")
        by_name[path.name] = path
    return paths


@contextlib.contextmanager
def _unreadable_image(path):
    from PIL import UnidentifiedImageError

    try:
        yield
    except (OSError, UnidentifiedImageError, ImportError) as error:
        # ImportError: once Ultralytics is imported, its patched Image.open answers a file Pillow cannot identify
        # by importing a HEIF plugin, which is not installed
        raise UserError(f"{path}: cannot read this image file ({type(error).__name__}: {error})") from None


def _check_image(path):
    """Refuse a file Pillow cannot identify as an image. Reads the header only: holding every decoded image until
    the members have run would take memory in proportion to the number of images."""
    from PIL import Image

    with _unreadable_image(path), Image.open(path):
        pass


def _read_image(path):
    """The image decoded to RGB, turned as viewers show it (its EXIF orientation applied)."""
    from PIL import Image, ImageOps

    with _unreadable_image(path), Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def load_members(verified, spec, device):
    """One predictor per fusion member, in fusion order, from the bundle's verified checkpoint directories; members
    of the same checkpoint (a trial and its +hflip) share one."""
    import trainables

    covered = {entry.path for entry in verified.entries}
    loaded, checkpoints = {}, []  # checkpoint folder -> its predictor; each member's checkpoint folder
    for member in spec.members:
        where = f"{verified.uri}/{bundle.FUSION}: member {member.name}"
        relative = str(member.checkpoint).strip("/")
        checkpoints.append(relative)
        if relative in loaded:
            continue
        if f"{relative}/{checkpoint_meta.FILE_NAME}" not in covered or ".." in relative.split("/"):
            raise UserError(f"{where}: checkpoint {relative!r} is not a folder of this bundle's manifest")
        checkpoint_dir = verified.directory / relative
        meta = checkpoint_meta.read_meta(checkpoint_dir, member.family)
        if list(meta.get("category_ids", [])) != list(spec.category_ids):
            raise UserError(f"{where}: checkpoint trained on category ids {meta.get('category_ids')}, but the "
                            f"ensemble fuses {spec.category_ids}; the bundle is inconsistent, re-export it")
        family = trainables.load_family(member.family, where)
        try:
            loaded[relative] = family.load_predictor(checkpoint_dir, device)
        except pickle.UnpicklingError as error:  # torch.load(weights_only=True) met more than tensors
            reason = next((line.strip() for line in str(error).splitlines() if "Unsupported global" in line),
                          str(error).splitlines()[0])
            raise UserError(f"{where}: refusing to load {relative}: it holds pickled objects beyond weights, which "
                            f"could run code ({reason.split('. Please use')[0]})") from None
    return [loaded[relative] for relative in checkpoints]


@contextlib.contextmanager
def _framework_warnings(verbose):
    """The frameworks' deprecation chatter is hidden unless -v: the summary lines are what the user reads."""
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        yield


def member_detections(verified, spec, image_paths, device):
    """For each fusion member, in fusion order, its detections on each of `image_paths`."""
    for path in image_paths:  # every file is an image before any model loads
        _check_image(path)
    outputs = []
    for predictor, member in zip(load_members(verified, spec, device), spec.members):
        detections = predictor.predict(list(image_paths), flip=member.tta == "hflip")
        if len(detections) != len(image_paths):
            raise RuntimeError(f"member {member.name}: {len(detections)} results "
                               f"for {len(image_paths)} images")
        outputs.append(detections)
    return outputs


def fuse_and_draw(spec, outputs, image_paths, images_dir, draw_threshold):
    """(COCO images, fused Predictions with those images' ids); writes each image with its detections drawn.

    Each image is decoded once, here: its size places the fused boxes, its pixels take the drawing."""
    params = spec.weighted_params
    images, predictions = [], []
    for index, path in enumerate(image_paths):
        picture = _read_image(path)
        image = {"id": index + 1, "file_name": path.name, "width": picture.width, "height": picture.height}
        fused = fuse_image([member_outputs[index] for member_outputs in outputs], picture.width, picture.height,
                           spec.category_ids, params, where=str(path))
        fused = [p._replace(image_id=image["id"]) for p in fused]
        draw_detections(picture, fused, spec, draw_threshold).save(images_dir / path.name)
        images.append(image)
        predictions.extend(fused)
    return images, predictions


def coco_document(images, predictions, spec, bundle_id):
    annotations = [{"id": number, **row, "area": row["bbox"][2] * row["bbox"][3], "iscrowd": 0}
                   for number, row in enumerate(coco_results(predictions), start=1)]
    categories = [{"id": int(c), "name": name} for c, name in zip(spec.category_ids, spec.class_names)]
    return {"info": {"description": f"detections of detfuse bundle {bundle_id}"}, "images": images,
            "categories": categories, "annotations": annotations}


def draw_detections(picture, predictions, spec, threshold):
    """A copy of `picture` with a box and "class score" label for each prediction scoring at least `threshold`."""
    from PIL import ImageDraw, ImageFont

    canvas = picture.copy()
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()  # bundled with Pillow: nothing is downloaded
    line = max(1, round(max(canvas.size) / 300))
    class_index = {int(c): k for k, c in enumerate(spec.category_ids)}
    for p in sorted(predictions, key=lambda p: p.score):  # the most confident drawn last, on top
        if p.score < threshold:
            continue
        k = class_index[int(p.category_id)]
        color = PALETTE[k % len(PALETTE)]
        x1, y1, x2, y2 = p.box
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line)
        label = f"{spec.class_names[k]} {p.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        height = bottom - top + 2
        label_y = y1 - height if y1 >= height else y1  # above the box unless that leaves the image
        draw.rectangle((x1, label_y, x1 + right - left + 2, label_y + height), fill=color)
        draw.text((x1 + 1 - left, label_y + 1 - top), label, fill=(255, 255, 255), font=font)
    return canvas


def run_predict(bundle_uri, images, out_dir, device=None, draw_threshold=DEFAULT_DRAW_THRESHOLD, settings=None,
                verbose=False):
    if not 0.0 <= draw_threshold <= 1.0:
        raise UserError(f"--draw-threshold {draw_threshold}: give a score between 0 and 1")
    image_paths = collect_images(images)
    verified = bundle.open_bundle(bundle_uri, settings)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = read_fusion_spec(str(verified.directory / bundle.FUSION))
    out = Path(out_dir).expanduser()
    with _framework_warnings(verbose):
        outputs = member_detections(verified, spec, image_paths, device)
        (out / "images").mkdir(parents=True, exist_ok=True)
        coco_images, predictions = fuse_and_draw(spec, outputs, image_paths, out / "images", draw_threshold)
    (out / "predictions.json").write_text(json.dumps(coco_document(coco_images, predictions, spec,
                                                                   verified.bundle_id), indent=2))
    (out / "predictions.csv").write_text(submission_csv(predictions, coco_images, spec.category_ids))
    drawn = sum(p.score >= draw_threshold for p in predictions)
    print(f"bundle {verified.bundle_id} ({len(spec.members)} members, {spec.params.method}): {len(predictions)} "
          f"detections on {len(coco_images)} image(s), {drawn} scoring >= {draw_threshold:g} drawn\n"
          f"{out / 'predictions.json'}\n{out / 'predictions.csv'}\n{out / 'images'}/")
    return 0
