import math

import pytest
import torch

from medslim.training.evaluate import evaluate_classification, evaluate_segmentation, predict_logits


class Oracle(torch.nn.Module):
    """Returns logits that reproduce a fixed label map (or its shift)."""

    def __init__(self, label, num_classes, shift=0):
        super().__init__()
        self.label, self.num_classes, self.shift = label, num_classes, shift

    def forward(self, x):
        lab = torch.roll(self.label, self.shift, dims=-1)[:, : x.shape[2], : x.shape[3]]
        return torch.nn.functional.one_hot(lab, self.num_classes).movedim(-1, 1).float().expand(
            x.shape[0], -1, *lab.shape[1:])


def _item(label):
    return {"image": torch.zeros(1, *label.shape), "label": label[None].long(), "id": "x"}


def test_perfect_prediction_scores_one_and_zero_distance():
    label = torch.zeros(32, 32, dtype=torch.long)
    label[8:20, 8:20] = 1
    label[22:30, 2:10] = 2
    res = evaluate_segmentation(Oracle(label[None], 3), [_item(label)], 3, ["bg", "a", "b"])
    assert res["dice_per_class"] == {"a": 1.0, "b": 1.0}
    assert res["hd95_per_class"] == {"a": 0.0, "b": 0.0}


def test_shifted_prediction_gives_the_expected_dice_and_distance():
    label = torch.zeros(32, 32, dtype=torch.long)
    label[8:20, 8:20] = 1
    res = evaluate_segmentation(Oracle(label[None], 2, shift=3), [_item(label)], 2, ["bg", "fg"])
    # 12x12 square shifted by 3 columns: overlap 12x9
    assert res["dice"] == pytest.approx(2 * 108 / (144 + 144))
    assert res["hd95"] == pytest.approx(3.0)


def test_empty_prediction_scores_zero_and_no_distance():
    label = torch.zeros(16, 16, dtype=torch.long)
    label[4:8, 4:8] = 1
    res = evaluate_segmentation(Oracle(torch.zeros(1, 16, 16, dtype=torch.long), 2), [_item(label)], 2,
                                ["bg", "fg"])
    assert res["dice"] == 0.0 and math.isnan(res["hd95"]) and res["hd95_undefined"] == 1


def test_padding_is_cropped_before_scoring():
    label = torch.zeros(20, 20, dtype=torch.long)
    label[2:6, 2:6] = 1
    padded = torch.zeros(32, 32, dtype=torch.long)
    padded[:20, :20] = label
    # the oracle predicts foreground in the padded margin: it must not count
    pred = padded.clone()
    pred[25:30, 25:30] = 1
    item = _item(padded) | {"shape": (20, 20)}
    res = evaluate_segmentation(Oracle(pred[None], 2), [item], 2, ["bg", "fg"])
    assert res["dice"] == 1.0


def test_sliding_windows_only_for_volumes_larger_than_the_patch():
    calls = []

    class Net(torch.nn.Module):
        def forward(self, x):
            calls.append(tuple(x.shape[2:]))
            return torch.zeros(x.shape[0], 2, *x.shape[2:])

    predict_logits(Net(), torch.zeros(1, 1, 16, 16, 16), patch_size=(16, 16, 16))
    assert calls == [(16, 16, 16)]
    calls.clear()
    out = predict_logits(Net(), torch.zeros(1, 1, 24, 16, 16), patch_size=(16, 16, 16))
    assert out.shape == (1, 2, 24, 16, 16) and calls and all(c == (16, 16, 16) for c in calls)


def test_classification_accuracy_and_auc():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.stack([-x.flatten(1).mean(1), x.flatten(1).mean(1)], 1)

    items = [{"image": torch.full((1, 2, 2), v), "label": torch.tensor(int(v > 0)), "id": str(i)}
             for i, v in enumerate([-2.0, -1.0, 1.0, 2.0, 0.5])]
    res = evaluate_classification(Fixed(), items, 2)
    assert res == {"n_cases": 5, "accuracy": 1.0, "auc": 1.0}
    # a positive case scored between the two negatives: 1 of 8 pairs misordered, 1 of 6 wrong
    items.append({"image": torch.full((1, 2, 2), -1.5), "label": torch.tensor(1), "id": "5"})
    res = evaluate_classification(Fixed(), items, 2)
    assert res["accuracy"] == pytest.approx(5 / 6) and res["auc"] == pytest.approx(7 / 8)
