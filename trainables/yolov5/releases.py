"""Ultralytics release files by name: `yolov5su.pt` is the file of that name in the ultralytics/assets GitHub
release that the pinned ultralytics (8.4.190) downloads its own assets from, as its `attempt_download_asset`
resolves it. Legacy YOLOv5 names mean their YOLOv5u files (yolov5s.pt -> yolov5su.pt), as in Ultralytics: the
family builds YOLOv5u models. Each release holds one scale (yolov5su.pt: yolov5s), and is refused for another:
its layers have other widths and depths, so next to nothing would load. A local file of that name wins, as in
Ultralytics: trials' configs name it by its absolute path (trainables.trial_config), which is not a release name.

$DETFUSE_ULTRALYTICS_ASSETS_URL replaces the release's base URL (tag included), for a mirror inside an
air-gapped network; the cache path stays ultralytics/<file>. Importing this module does not import ultralytics.
"""

import re

from detfuse.core.weights_source import NamedWeights, published_url

ASSETS_URL = "https://github.com/ultralytics/assets/releases/download/v8.4.0/"
ASSETS_URL_VARIABLE = "DETFUSE_ULTRALYTICS_ASSETS_URL"
RELEASE_NAME = re.compile(r"yolov5([nsmlx])u?\.pt")
NAME_FORM = "an Ultralytics release file name such as yolov5su.pt"  # for messages listing what `weights` accepts


def named_weights(source, where):
    """The release file `source` names, or None when it is not a YOLOv5u release name."""
    match = RELEASE_NAME.fullmatch(source)
    if match is None:
        return None
    name = f"yolov5{match.group(1)}u.pt"
    return NamedWeights(url=published_url(ASSETS_URL, ASSETS_URL_VARIABLE, name), cache_key=f"ultralytics/{name}",
                        architecture=f"yolov5{match.group(1)}")
