"""Horizontal-flip test-time augmentation in each family's predictor, on checkpoints of short trials:
`predict(paths, flip=True)` must be the prediction of each image's mirror image with the boxes mirrored back, and
must differ from the prediction of the image as it is."""

import numpy as np
import PIL.Image
import pytest

import trainables
from detfuse.core.data import load_dataset
from detfuse.core.data.synthetic import generate
from detectron2_trials import trial_config as detectron2_config
from local_runs import train_in_local_run
from yolov5_trials import trial_config as yolo_config


def yolo_decode(path):
    from ultralytics.utils.patches import imread

    return imread(str(path))[..., ::-1]  # BGR -> RGB


def detectron2_decode(path):
    from detectron2.data import detection_utils

    return detection_utils.read_image(str(path), format="RGB")


DECODE = {"yolov5": yolo_decode, "detectron2": detectron2_decode}  # each family's own decoding, as RGB arrays


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Synthetic photos of several sizes, both orientations: enough training images for YOLO to place boxes."""
    return load_dataset(str(generate(tmp_path_factory.mktemp("litter"), seed=4, num_train=200, num_val=4,
                                     num_test=0)))


@pytest.fixture(scope="module")
def checkpoints(dataset, tmp_path_factory):
    """{family: checkpoint dir} of a short trial of each family. YOLO needs five epochs before its boxes follow
    the image rather than cover it (a mirror-symmetric answer); Detectron2's proposals follow it from the start,
    and it keeps every detection scoring 0.001 or more, as YOLO does, so a model this young has boxes to compare."""
    configs = {
        "yolov5": {**yolo_config(5), "dataset": str(dataset.root)},
        "detectron2": detectron2_config("faster_rcnn", dataset=dataset.root, max_epochs=0.1, eval_every=0.1,
                                        image_size=160, score_thresh=0.001),
    }
    found = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETFUSE_CACHE", str(tmp_path_factory.mktemp("cache")))
        for family, config in configs.items():
            found[family] = train_in_local_run(config, tmp_path_factory.mktemp(family)).latest_checkpoint()
    return found


def rows(detections, mirrored_width=None):
    """(category_id, box, score) of each detection, the box mirrored back (x1, x2 -> W - x2, W - x1) when the
    detections are of a mirror image `mirrored_width` pixels wide."""
    if mirrored_width is None:
        return [(d.category_id, d.box, d.score) for d in detections]
    return [(d.category_id, (mirrored_width - d.box[2], d.box[1], mirrored_width - d.box[0], d.box[3]), d.score)
            for d in detections]


def same(a, b):
    """Whether two lists of rows are the same detections in the same order, within ~1e-3 px and 1e-5 score."""
    return len(a) == len(b) and all(
        ca == cb and np.allclose(ba, bb, rtol=0, atol=1e-3) and abs(sa - sb) <= 1e-5
        for (ca, ba, sa), (cb, bb, sb) in zip(a, b))


@pytest.mark.parametrize("family", ["yolov5", "detectron2"])
def test_a_flipped_prediction_is_the_mirror_images_prediction_mirrored_back(family, dataset, checkpoints,
                                                                          tmp_path):
    val = dataset.splits["val"]
    images = [val.image_path(image) for image in val.coco["images"]]
    widths, mirrors = [], []
    for path in images:  # the mirror image of the pixels the family decodes, stored losslessly
        pixels = DECODE[family](path)
        assert not np.array_equal(pixels, pixels[:, ::-1]), f"{path} is symmetric: flipping it proves nothing"
        mirrors.append(tmp_path / f"{path.stem}-mirror.png")
        PIL.Image.fromarray(np.ascontiguousarray(pixels[:, ::-1])).save(mirrors[-1])
        widths.append(pixels.shape[1])
    predictor = trainables.load_family(family, "test").load_predictor(checkpoints[family], "cpu")

    flipped = predictor.predict(images, flip=True)
    of_mirrors = predictor.predict(mirrors)
    plain = predictor.predict(images)

    assert all(flipped), "every image has detections, or the comparison says little"
    for detections, mirror_detections, width in zip(flipped, of_mirrors, widths):
        assert same(rows(detections), rows(mirror_detections, width))
    # the model is not mirror-symmetric: the augmentation gives other detections than the image as it is
    assert not all(same(rows(a), rows(b)) for a, b in zip(plain, flipped))
