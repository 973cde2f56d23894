"""Fitting an ensemble: which members to keep, their weights and the fusion parameters, chosen on labelled images.

Everything is chosen by mAP50 from the project evaluator on one set of images (the "fit" part) and must be
reported on another (a disjoint part of val, or the test split), so a reported gain is not noise the search fitted.
Members are chosen by greedy forward selection, the parameters by coordinate search over small grids after each
addition; a final backward elimination drops members that stopped helping once the parameters moved.
"""

from dataclasses import dataclass, field, replace

import numpy as np

from detfuse.core.errors import UserError
from detfuse.core.evaluation import evaluate
from detfuse.core.fusion import CONF_TYPES, FusionInputs, FusionParams

# the values tried for each parameter; the method's defaults are always among them
GRIDS = {
    "iou_thr": (0.4, 0.5, 0.55, 0.6, 0.7, 0.8),
    "skip_box_thr": (0.0, 0.001, 0.01, 0.03, 0.1),
    "sigma": (0.1, 0.3, 0.5, 1.0),
}
WEIGHTS = (0.5, 1.0, 2.0, 3.0)  # relative weights tried for each member, the others held
MAX_ROUNDS = 3  # rounds of (backward elimination, coordinate search) at the end; they stop when nothing changes
MIN_GAIN = 1e-4  # a change is kept only when the fit mAP50 rises by more than this: ties keep the simpler choice


def split_image_ids(image_ids, seed, fit_fraction=0.5):
    """Deterministically shuffle `image_ids` with `seed` and cut them into (fit, report) parts, both sorted."""
    ids = sorted(int(i) for i in image_ids)
    if len(ids) < 2:
        raise UserError(f"the val split has {len(ids)} image(s): fitting an ensemble and reporting it on a "
                        f"disjoint part needs at least 2 (better: dozens)")
    order = np.random.default_rng(seed).permutation(len(ids))
    cut = min(max(1, round(len(ids) * fit_fraction)), len(ids) - 1)
    return sorted(ids[i] for i in order[:cut]), sorted(ids[i] for i in order[cut:])


@dataclass
class FittedEnsemble:
    candidates: list  # indexes into the FusionInputs' members that the selection chose from
    members: list  # the chosen ones, in selection order
    params: FusionParams  # params.weights follows `members`
    fit_mAP50: float
    evaluations: int  # fusions scored during the search
    steps: list = field(default_factory=list)  # what the search changed, in order, with the fit mAP50 after it


class _Scorer:
    """mAP50 on the fit images of a member subset fused with given parameters, memoised: the search revisits."""

    def __init__(self, inputs, coco_gt, image_ids):
        self.inputs, self.coco_gt, self.image_ids = inputs, coco_gt, list(image_ids)
        self.memo = {}

    def __call__(self, members, params):
        key = (tuple(members), params)
        if key not in self.memo:
            fused = self.inputs.fuse(params, members, self.image_ids)
            self.memo[key] = evaluate(self.coco_gt, fused, image_ids=self.image_ids).mAP50
        return self.memo[key]


def _with_weights(params, weights):
    """None when every weight is equal: the fused result is the same and fusion.json reads simpler."""
    return replace(params, weights=None if len(set(weights)) <= 1 else tuple(weights))


def _weights_of(params, count):
    return list(params.weights) if params.weights is not None else [1.0] * count


def fit_ensemble(inputs: FusionInputs, coco_gt, image_ids, method="wbf", candidates=None,
                 keep_one_of=()) -> FittedEnsemble:
    """Choose members among `candidates` (indexes into `inputs`, default all) and fusion parameters for `method`
    that maximise mAP50 on `image_ids` of `coco_gt`.

    `keep_one_of`: groups of candidates (e.g. one per family) each of which keeps at least one member, so a
    cross-family ensemble really holds every family, however the fit half happens to rank them.
    """
    candidates = list(range(len(inputs.arrays))) if candidates is None else list(candidates)
    if not candidates:
        raise ValueError("no candidate members to fit an ensemble from")
    groups = [list(group) for group in keep_one_of]
    score = _Scorer(inputs, coco_gt, image_ids)
    params = FusionParams.default(method)
    steps = []

    # Greedy forward selection, refitting the parameters after every addition: a candidate must beat the current
    # set at its best settings. (A lone model fused with default settings merges its own neighbouring boxes, so
    # against that baseline almost any addition would look like a gain.) Required groups enter first, each
    # with its best member.
    first = max(candidates, key=lambda c: score([c], params))  # the first best on ties: candidates' order
    members, best = [first], score([first], params)
    steps.append({"step": "add member", "member": inputs.member_names[first], "fit_mAP50": best})
    for group in groups:
        if not set(group) & set(members):
            params, best, _ = _coordinate_search(score, members, params, best, steps)
            grown = _with_weights(params, _weights_of(params, len(members)) + [1.0])
            chosen = max(group, key=lambda c: score(members + [c], grown))
            members, params, best = members + [chosen], grown, score(members + [chosen], grown)
            steps.append({"step": "add member (required group)", "member": inputs.member_names[chosen],
                          "fit_mAP50": best})
    while True:
        params, best, _ = _coordinate_search(score, members, params, best, steps)
        rest = [c for c in candidates if c not in members]
        if not rest:
            break
        grown = _with_weights(params, _weights_of(params, len(members)) + [1.0])
        chosen = max(rest, key=lambda c: score(members + [c], grown))  # the first best on ties
        value = score(members + [chosen], grown)
        if value <= best + MIN_GAIN:
            break
        members, params, best = members + [chosen], grown, value
        steps.append({"step": "add member", "member": inputs.member_names[chosen], "fit_mAP50": best})

    # members that stopped helping once the parameters moved go, and the rest are refitted without them
    for _ in range(MAX_ROUNDS):
        members, params, best, removed = _backward_elimination(score, members, params, best, steps,
                                                               inputs.member_names, groups)
        if not removed:
            break
        params, best, changed = _coordinate_search(score, members, params, best, steps)
        if not changed:
            break
    return FittedEnsemble(candidates=candidates, members=members, params=params, fit_mAP50=best,
                          evaluations=len(score.memo), steps=steps)


def _coordinate_search(score, members, params, best, steps):
    """One pass over every parameter of the method, then every member's weight, keeping each improvement."""
    changed = False
    grids = {name: values for name, values in GRIDS.items() if name != "sigma" or params.method == "soft_nms"}
    grids["conf_type"] = CONF_TYPES[params.method]
    for name, values in grids.items():
        for value in values:
            trial = replace(params, **{name: value})
            trial_score = score(members, trial)
            if trial_score > best + MIN_GAIN:
                params, best, changed = trial, trial_score, True
                steps.append({"step": f"set {name}", "value": value, "fit_mAP50": best})
    if len(members) > 1:
        for position in range(len(members)):
            for weight in WEIGHTS:
                weights = _weights_of(params, len(members))
                weights[position] = weight
                trial = _with_weights(params, weights)
                trial_score = score(members, trial)
                if trial_score > best + MIN_GAIN:
                    params, best, changed = trial, trial_score, True
                    steps.append({"step": "set weights", "value": weights, "fit_mAP50": best})
    return params, best, changed


def _backward_elimination(score, members, params, best, steps, names, groups=()):
    """Drop members whose removal does not lower the fit mAP50 (ties favour the smaller ensemble), never the
    last member of a required group."""
    removed = False
    position = 0
    while len(members) > 1 and position < len(members):
        weights = _weights_of(params, len(members))
        rest = members[:position] + members[position + 1:]
        if any(set(group) & set(members) and not set(group) & set(rest) for group in groups):
            position += 1
            continue
        trial = _with_weights(params, weights[:position] + weights[position + 1:])
        trial_score = score(rest, trial)
        if trial_score >= best:
            steps.append({"step": "drop member", "member": names[members[position]], "fit_mAP50": trial_score})
            members, params, best, removed = rest, trial, trial_score, True
        else:
            position += 1
    return members, params, best, removed
