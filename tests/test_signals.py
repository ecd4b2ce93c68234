import numpy as np
import pytest
import torch

from prmagic_core.models.encoding import Encoded
from prmagic_core.refine import Step, Trajectory
from prmagic_core.select import SelectorEvidence, margin
from prmagic_core.signals import EpisodeFeatures, candidate_signals, distinct_reencoded, extra_passes, stability, vote


def _halves(size=16):
    left, right = np.zeros((size, size), bool), np.zeros((size, size), bool)
    left[:, : size // 2], right[:, size // 2 :] = True, True
    return left, right


def _two_region_episode():
    """A 4x4 grid whose left half carries feature A and right half feature B; the support's
    object is the left half, so A is the foreground prototype and B the background's."""
    a, b = torch.zeros(8), torch.zeros(8)
    a[0], b[1] = 1.0, 1.0
    z = torch.zeros(1, 8, 4, 4)
    z[0, :, :, :2] = a[:, None, None]
    z[0, :, :, 2:] = b[:, None, None]
    encoded = Encoded(np.zeros((16, 16, 3), np.uint8), z, (16, 16), (16, 16), 16)
    return encoded, _halves()


def test_feature_signals_on_a_constructed_embedding():
    encoded, (left, right) = _two_region_episode()
    features = EpisodeFeatures(encoded, [encoded], [left])
    merged = left | right
    np.testing.assert_allclose(features.scores("contrastive", [left, right]), [1.0, -1.0], atol=1e-6)
    # the merged mask pools A + B: equally close to the support's foreground and background
    assert features.scores("contrastive", [merged])[0] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(features.scores("prototype_iou", [left, right, merged]), [1.0, 0.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(features.scores("purity", [left, right, merged]), [1.0, 0.0, 0.5], atol=1e-6)
    # centring removes the common (A + B) / 2: left -> (A - B) / 2, the support's object the same
    np.testing.assert_allclose(features.scores("centred", [left, right]), [1.0, -1.0], atol=1e-6)
    with pytest.raises(ValueError, match="no feature signal"):
        features.scores("pooled", [left])


def test_mask_signals_known_answers():
    left, right = _halves()
    empty = np.zeros_like(left)
    np.testing.assert_allclose(stability([left, left, right, right]), [1.0, 1.0, 0.0, 1.0])
    # the majority of (left, left, right) is left
    np.testing.assert_allclose(vote([left, left, right]), [1.0, 1.0, 0.0])
    corner = np.zeros_like(left)
    corner[:4, :4] = True
    hole = left.copy()
    hole[5, 2] = False  # another mask, the same box as ``left``
    counts = distinct_reencoded([left, left, right, empty, ~empty, hole, corner])
    assert counts == {"masked-image": 4, "crop-pool": 3}
    assert extra_passes(["masked-image", "margin"], counts) == 5 and extra_passes(["pooled", "vote"], counts) == 0
    assert extra_passes(["masked-image", "crop-pool"], counts) == 9


def test_margin_is_the_mean_probability_inside_minus_outside():
    encoded, (left, _) = _two_region_episode()
    logits = torch.full((16, 16), -20.0)
    logits[:, :8] = 20.0
    assert margin(logits, left, encoded) == pytest.approx(1.0, abs=1e-4)
    assert margin(logits, ~left, encoded) == pytest.approx(-1.0, abs=1e-4)
    assert margin(logits, np.zeros_like(left), encoded) == 0.0


def test_decoder_signals_read_the_decodes_evidence():
    encoded, (left, right) = _two_region_episode()
    logits = torch.full((16, 16), -20.0)
    logits[:, :8] = 20.0
    # no evidence: NaN confidence, the margin on the candidate's own logits and mask
    plain = Step(left, logits, None, None)
    # evidence: its IoU prediction, and the margin on its logits and the mask it hands over
    swapped = Step(left, logits, None, None, evidence=SelectorEvidence(right, 0.7, logits))
    # evidence without margin logits: the candidate's logits on the evidence's mask
    confidence_only = Step(right, logits, None, None, evidence=SelectorEvidence(None, 0.4))
    trajectory = Trajectory([plain, swapped, confidence_only])
    signals = candidate_signals(["iou_prediction", "margin"], trajectory, None, encoded, [], [])
    np.testing.assert_allclose(signals["iou_prediction"], [np.nan, 0.7, 0.4])
    np.testing.assert_allclose(signals["margin"], [1.0, -1.0, -1.0], atol=1e-4)


def test_margin_of_merged_image_frame_logits_is_the_unions():
    """Matcher under the release keeps the merged masks' image-frame logits (k, H, W): the margin
    is read on their maximum, whose foreground is the union the candidate mask is."""
    encoded, (left, right) = _two_region_episode()
    merged = torch.full((2, *left.shape), -20.0)
    merged[0][torch.as_tensor(left)] = 20.0
    quiet = Step(left, merged.clone(), None, None)  # the second merged mask is empty: the union is the left half
    merged[1][torch.as_tensor(right)] = 20.0
    loud = Step(left, merged, None, None)  # the union covers the right half too, outside the candidate's mask
    signals = candidate_signals(["margin"], Trajectory([quiet, loud]), None, encoded, [], [])
    np.testing.assert_allclose(signals["margin"], [1.0, 0.0], atol=1e-4)
