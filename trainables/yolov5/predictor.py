"""YOLOv5 predictions on image files, in original pixels and COCO category ids.

The same code serves the per-epoch evaluation during training (on the EMA model) and the ensemble job (on a
checkpoint through `load_predictor`), so a checkpoint predicts at ensemble time exactly what it was scored on.
Images are letterboxed to the square training size, as Ultralytics' predictor does with fixed shapes.
`predict(..., flip=True)` mirrors each decoded image left-right before the letterbox and maps the boxes back onto
the image: test-time augmentation that the ensemble fuses as another member.

Boxes are selected by `select_detections`, not Ultralytics' `non_max_suppression`: that one stops after a
wall-clock limit and silently returns nothing for the rest of the batch, and it takes a pure-Python NMS loop
(about 10x slower) unless something else imported torchvision first. A checkpoint's predictions would then
depend on the machine's load and on which other models shared the process, and re-scoring it in a fresh worker
(the ensemble job, `detfuse predict`) would not give the number its trial reported.
"""


import numpy as np
import torch
import torchvision

from trainables.yolov5 import environment

environment.configure()

from ultralytics.data.augment import LetterBox  # noqa: E402  (after configure)
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import ops  # noqa: E402
from ultralytics.utils.patches import imread  # noqa: E402

from detfuse.core.errors import UserError  # noqa: E402
from detfuse.core.evaluation import Detection  # noqa: E402
from trainables.yolov5 import checkpoint  # noqa: E402


class _LetterboxedImages(torch.utils.data.Dataset):
    """Image files as letterboxed RGB uint8 tensors, with each original (height, width); each image mirrored
    left-right first when `flip`."""

    def __init__(self, paths, image_size, flip):
        self.paths = list(paths)
        self.letterbox = LetterBox(new_shape=(image_size, image_size), auto=False, scaleup=True)
        self.flip = flip

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        image = imread(self.paths[index])  # BGR
        if image is None:
            raise UserError(f"{self.paths[index]}: cannot read this image file")
        if self.flip:
            image = np.ascontiguousarray(image[:, ::-1])
        boxed = self.letterbox(image=image)
        return torch.from_numpy(np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1))), image.shape[:2]


def _collate(items):
    images, shapes = zip(*items)
    return torch.stack(images), shapes


class YoloPredictor:
    """Runs a YOLOv5 detection model on image files. Defaults follow COCO evaluation: low confidence, 100 boxes."""

    def __init__(self, model, image_size, category_ids, device, confidence=0.001, iou=0.7, max_detections=100,
                 batch_size=16, workers=0):
        self.model = model
        self.image_size = image_size
        self.category_ids = list(category_ids)
        self.device = torch.device(device)
        self.confidence = confidence
        self.iou = iou
        self.max_detections = max_detections
        self.batch_size = batch_size
        self.workers = workers

    def predict(self, image_paths, flip=False):
        """One list of `Detection`s per image path, in the order given. `flip`: predict each image mirrored
        left-right, boxes mapped back onto the image as it is."""
        return self.predict_batches(self.letterboxed_batches(image_paths, flip), flip)

    def letterboxed_batches(self, image_paths, flip=False):
        """The (uint8 images, original shapes) batches `predict` feeds the model, decoded by `workers` processes.
        A list of them can be predicted again and again (`predict_batches`): a trial scores the same val
        images every epoch, and decoding them each time costs it as much as the model does."""
        return torch.utils.data.DataLoader(
            _LetterboxedImages(image_paths, self.image_size, flip), batch_size=self.batch_size,
            num_workers=self.workers, collate_fn=_collate, pin_memory=self.device.type == "cuda",
        )

    def predict_batches(self, batches, flip=False):
        """`predict` of batches from `letterboxed_batches` (made with the same `flip`)."""
        results = []
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.float16,
                                             enabled=self.device.type == "cuda"):
            for images, shapes in batches:
                images = images.to(self.device, non_blocking=True).float() / 255
                outputs = select_detections(self.model(images), self.confidence, self.iou, self.max_detections)
                for output, shape in zip(outputs, shapes):
                    results.append(self._detections(output, images.shape[2:], shape, flip))
        return results

    def _detections(self, output, letterboxed_shape, original_shape, flip):
        boxes = ops.scale_boxes(letterboxed_shape, output[:, :4].clone(), original_shape)
        if flip:  # x1, x2 on the mirror image are W - x2, W - x1 on the image
            boxes[:, [0, 2]] = original_shape[1] - boxes[:, [2, 0]]
        boxes = boxes.tolist()
        scores = output[:, 4].tolist()
        classes = output[:, 5].long().tolist()
        return [Detection(self.category_ids[c], tuple(box), score) for box, score, c in zip(boxes, scores, classes)]


MAX_CANDIDATES = 30000  # per image, the highest-scoring (box, class) pairs that enter NMS (as in Ultralytics)


def select_detections(raw, confidence, iou, max_detections):
    """Per image, [x1, y1, x2, y2, score, class] rows (float32) of the detections kept from the model's raw
    output (batch, 4 + classes, anchors; xywh boxes): every (box, class) pair scoring above `confidence`, NMS
    within each class, the `max_detections` best. Each image is computed on its own, with no time limit, so a
    batch gives what its images give one at a time."""
    if isinstance(raw, (list, tuple)):  # eval mode returns (inference output, feature maps)
        raw = raw[0]
    selected = []
    for anchors in raw.float().transpose(1, 2):  # (anchors, 4 + classes)
        boxes = ops.xywh2xyxy(anchors[:, :4])
        box_index, class_index = torch.nonzero(anchors[:, 4:] > confidence, as_tuple=True)
        scores = anchors[box_index, 4 + class_index]
        if scores.numel() > MAX_CANDIDATES:
            top = scores.topk(MAX_CANDIDATES).indices
            box_index, class_index, scores = box_index[top], class_index[top], scores[top]
        keep = torchvision.ops.batched_nms(boxes[box_index], scores, class_index, iou)[:max_detections]
        selected.append(torch.cat([boxes[box_index[keep]], scores[keep, None], class_index[keep, None].float()], 1))
    return selected


def build_model(architecture, num_classes):
    """A YOLOv5u detection model of `architecture` (e.g. yolov5s) with randomly initialised weights."""
    return DetectionModel(f"{architecture}.yaml", nc=num_classes, verbose=False)


def load_predictor(checkpoint_dir, device="cpu"):
    """A `YoloPredictor` for the EMA weights of a trial checkpoint directory. The model is not fused
    (conv + batch norm), because the trial scored it unfused: fusing moves scores by ~1e-4, enough to reorder
    a weak model's boxes and move its mAP50."""
    meta = checkpoint.read_meta(checkpoint_dir)
    model = build_model(meta["architecture"], len(meta["class_names"]))
    model.load_state_dict(checkpoint.read_weights(checkpoint_dir))
    model = model.to(device).eval()
    return YoloPredictor(model, meta["hparams"]["image_size"], meta["category_ids"], device)
