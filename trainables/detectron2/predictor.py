"""Detectron2 predictions on image files, in original pixels and COCO category ids.

The same class scores the model on the validation split during training and serves the ensemble job through
`load_predictor`, so a checkpoint predicts at ensemble time exactly what it was scored on. Images are read
and resized as detectron2's test-time DatasetMapper does (shortest edge to the config's test size).
`predict(..., flip=True)` mirrors each decoded image left-right before the resize and maps the boxes back onto the
image: test-time augmentation that the ensemble fuses as another member.

Only images of the same resized shape share a batch: detectron2 pads a batch to its largest image, and with
GroupNorm (whose statistics cover the padding) an image's detections would depend on its batch neighbours, so
the trial's evaluation (sharded over DDP workers) and a re-scoring in the ensemble job would disagree.
"""

import numpy as np
import torch
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from detfuse.core import checkpoint_meta
from detfuse.core.errors import UserError
from detfuse.core.evaluation import Detection
from trainables.detectron2 import checkpoints
from trainables.detectron2.adapters import ARCHITECTURES


class _TestImages(torch.utils.data.Dataset):
    """Image files as the model's test-time inputs: CHW float tensors plus the original height and width; each
    image mirrored left-right first when `flip`."""

    def __init__(self, paths, cfg, flip):
        self.paths = [str(p) for p in paths]
        self.image_format = cfg.INPUT.FORMAT
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.flip = flip

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:
            image = detection_utils.read_image(self.paths[index], format=self.image_format)
        except OSError as error:
            raise UserError(f"{self.paths[index]}: cannot read this image file ({error})") from None
        if self.flip:
            image = np.ascontiguousarray(image[:, ::-1])
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        return {"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                "height": height, "width": width}


class Detectron2Predictor:
    """Runs a detectron2 model (test-time thresholds from its config) on image files."""

    def __init__(self, model, cfg, category_ids, device, batch_size=4, workers=0, amp=False):
        self.model = model
        self.cfg = cfg
        self.category_ids = list(category_ids)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.workers = workers
        self.amp = amp and self.device.type == "cuda"

    def predict(self, image_paths, flip=False):
        """One list of `Detection`s per image path, in the order given. `flip`: predict each image mirrored
        left-right, boxes mapped back onto the image as it is."""
        loader = torch.utils.data.DataLoader(_TestImages(image_paths, self.cfg, flip), batch_size=None,
                                             num_workers=self.workers, generator=torch.Generator())
        results = [None] * len(loader.dataset)
        by_shape = {}  # resized (height, width) -> [(index, model input)] waiting for a full batch

        def run(batch):
            for (index, inputs), output in zip(batch, self.model([inputs for _, inputs in batch])):
                results[index] = self._detections(output["instances"], inputs["width"], flip)

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                for index, inputs in enumerate(loader):
                    shape = tuple(inputs["image"].shape[1:])
                    by_shape.setdefault(shape, []).append((index, inputs))
                    if len(by_shape[shape]) == self.batch_size:
                        run(by_shape.pop(shape))
                for batch in by_shape.values():
                    run(batch)
        finally:
            self.model.train(was_training)
        return results

    def _detections(self, instances, width, flip):
        instances = instances.to("cpu")
        boxes = instances.pred_boxes.tensor.float()
        if flip:  # x1, x2 on the mirror image are W - x2, W - x1 on the image
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        boxes = boxes.tolist()
        scores = instances.scores.float().tolist()
        classes = instances.pred_classes.tolist()
        return [Detection(self.category_ids[c], tuple(box), score) for box, score, c in zip(boxes, scores, classes)]


def load_predictor(checkpoint_dir, device="cpu"):
    """A `Detectron2Predictor` for the weights of a trial checkpoint directory."""
    meta = checkpoints.read_meta(checkpoint_dir)
    adapter = ARCHITECTURES.get(meta["architecture"])
    if adapter is None:
        raise UserError(f"{checkpoint_dir}: unknown detectron2 architecture '{meta['architecture']}'")
    hparams = adapter.resolve(meta["hparams"], f"{checkpoint_dir}/{checkpoint_meta.FILE_NAME}")
    cfg = adapter.build_config(hparams, len(meta["class_names"]))
    cfg.defrost()
    cfg.MODEL.DEVICE = str(device)
    cfg.freeze()
    model = build_model(cfg)
    model.load_state_dict(checkpoints.read_model_state(checkpoint_dir))
    return Detectron2Predictor(model.eval(), cfg, meta["category_ids"], device, amp=hparams["amp"])
