"""Detectron2 predictions on image files, in original pixels and COCO category ids.

The same class scores the model on the validation split during training and serves the ensemble job through
`load_predictor`, so a checkpoint predicts at ensemble time exactly what it was scored on. Images are read
and resized as detectron2's test-time DatasetMapper does (shortest edge to the config's test size).
"""

import torch

from detfuse import checkpoint_meta
from detfuse.compat import import_detectron2

import_detectron2()

from detectron2.data import detection_utils  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from detfuse.errors import UserError  # noqa: E402
from detfuse.evaluation import Detection  # noqa: E402
from trainables.detectron2 import checkpoints  # noqa: E402
from trainables.detectron2.adapters import ARCHITECTURES  # noqa: E402


class _TestImages(torch.utils.data.Dataset):
    """Image files as the model's test-time inputs: CHW float tensors plus the original height and width."""

    def __init__(self, paths, cfg):
        self.paths = [str(p) for p in paths]
        self.image_format = cfg.INPUT.FORMAT
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:
            image = detection_utils.read_image(self.paths[index], format=self.image_format)
        except OSError as error:
            raise UserError(f"{self.paths[index]}: cannot read this image file ({error})") from None
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        return {"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                "height": height, "width": width}


def _as_list(items):
    return items


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

    def predict(self, image_paths):
        """One list of `Detection`s per image path, in the order given."""
        loader = torch.utils.data.DataLoader(
            _TestImages(image_paths, self.cfg), batch_size=self.batch_size, num_workers=self.workers,
            collate_fn=_as_list, generator=torch.Generator(),
        )
        was_training = self.model.training
        self.model.eval()
        results = []
        try:
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                for inputs in loader:
                    for output in self.model(inputs):
                        results.append(self._detections(output["instances"]))
        finally:
            self.model.train(was_training)
        return results

    def _detections(self, instances):
        instances = instances.to("cpu")
        boxes = instances.pred_boxes.tensor.float().tolist()
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
