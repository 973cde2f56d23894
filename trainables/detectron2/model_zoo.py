"""detectron2 model-zoo names: `detectron2://PATH` is PATH under detectron2's download base, exactly as
detectron2's own `Detectron2Handler` resolves it (e.g. detectron2://ImageNetPretrained/MSRA/R-50.pkl, or
detectron2://COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl from its model-zoo table).

$DETFUSE_DETECTRON2_ZOO_URL replaces the base, for a mirror inside an air-gapped network; the cache path stays
detectron2/PATH whichever base served the file. Importing this module does not import detectron2.
"""

from detfuse.core.weights_source import NamedWeights, published_url, safe_relative_path

PREFIX = "detectron2://"
NAME_FORM = "a detectron2:// model-zoo name"  # for messages listing what `weights` accepts
ZOO_URL = "https://dl.fbaipublicfiles.com/detectron2/"
ZOO_URL_VARIABLE = "DETFUSE_DETECTRON2_ZOO_URL"


def named_weights(source, where):
    """The model-zoo file `source` names, or None when it is not a detectron2:// name."""
    if not source.startswith(PREFIX):
        return None
    path = safe_relative_path(source[len(PREFIX):], f"{where}: weights {source}")
    return NamedWeights(url=published_url(ZOO_URL, ZOO_URL_VARIABLE, path), cache_key=f"detectron2/{path}")
