import pytest
import torch

from medslim.training.losses import DeepSupervisionLoss, make_loss


def _perfect_logits(label, num_classes=3):
    return torch.nn.functional.one_hot(label[:, 0], num_classes).movedim(-1, 1).float() * 20


def test_dice_ce_is_low_for_a_perfect_prediction_and_high_for_a_wrong_one():
    loss = make_loss("segmentation")
    label = torch.randint(0, 3, (2, 1, 16, 16))
    good = loss(_perfect_logits(label), label)
    bad = loss(_perfect_logits((label + 1) % 3), label)
    assert good < 0.05 < bad


def test_deep_supervision_list_uses_resized_labels_and_halving_weights():
    calls = []

    class Probe(torch.nn.Module):
        def forward(self, out, target):
            calls.append((tuple(out.shape[2:]), tuple(target.shape[2:])))
            return out.mean() * 0 + len(calls)

    loss = DeepSupervisionLoss(Probe())
    label = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    value = loss([torch.zeros(1, 2, 32, 32), torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 8, 8)], label)
    assert calls == [((32, 32), (32, 32)), ((16, 16), (16, 16)), ((8, 8), (8, 8))]
    weights = torch.tensor([1, 0.5, 0.25]) / 1.75
    assert value.item() == pytest.approx(float((weights * torch.tensor([1.0, 2.0, 3.0])).sum()))


def test_stacked_heads_as_monai_dynunet_returns_them():
    loss = make_loss("segmentation")
    label = torch.randint(0, 2, (2, 1, 16, 16))
    perfect = _perfect_logits(label, 2)
    stacked = torch.stack([perfect, perfect], dim=1)  # (B, heads, C, H, W)
    assert loss(stacked, label) == pytest.approx(loss(perfect, label).item(), abs=1e-6)


def test_classification_uses_cross_entropy():
    loss = make_loss("classification")
    assert loss(torch.tensor([[5.0, -5.0]]), torch.tensor([0])) < 0.01


def test_equal_style_averages_scales_against_area_resized_soft_targets():
    from medslim.training.losses import SoftTargetMultiScaleLoss

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, out, target):
            seen.append(target)
            return out.mean() * 0 + len(seen)

    label = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    label[0, 0, 0, 0] = 1  # one foreground pixel of the top-left 2x2 block
    value = SoftTargetMultiScaleLoss(Probe())([torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)], label)
    assert value.item() == pytest.approx((1 + 2) / 2)  # equal weights
    assert seen[0].shape == (1, 2, 4, 4) and seen[0][0, 1, 0, 0] == 1
    assert seen[1][0, 1, 0, 0].item() == pytest.approx(0.25)  # a fraction, not a nearest guess
    torch.testing.assert_close(seen[1].sum(1), torch.ones(1, 2, 2))


def test_equal_style_is_low_for_perfect_outputs_at_every_scale():
    loss = make_loss("segmentation", "auto", "equal")
    label = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    label[:, :, 4:12, 4:12] = 1
    small = torch.nn.functional.interpolate(label.float(), size=(8, 8), mode="area").long()
    good = loss([_perfect_logits(label, 2), _perfect_logits(small, 2)], label)
    bad = loss([_perfect_logits(1 - label, 2), _perfect_logits(1 - small, 2)], label)
    assert good < 0.05 < bad
    for name in ("dice", "ce"):
        assert make_loss("segmentation", name, "equal")(_perfect_logits(label, 2), label) < 0.05


@pytest.mark.parametrize("name, style, named", [("dice_bce", "halving", "dice_bce"),
                                                ("dice", "thirds", "thirds")])
def test_unknown_loss_or_supervision_style_is_refused_by_name(name, style, named):
    from medslim.errors import ConfigError

    with pytest.raises(ConfigError, match=named):
        make_loss("segmentation", name, style)
