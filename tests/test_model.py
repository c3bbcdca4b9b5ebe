"""LaplacianCNN structure and checkpoints."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import recapfast as rf
from recapfast.models.checkpoint import CheckpointError


def test_structure_and_fixed_laplacian():
    model = rf.LaplacianCNN()
    assert model.widths == (8, 16, 32, 64, 128)
    assert len(model.units) == 5 and model.fc.out_features == 2
    assert all(not p.is_floating_point() or p.requires_grad for p in model.parameters())
    # The Laplacian is not learnt and not saved: the state dict holds the convolutions, BN and fc only.
    assert all(k.startswith(("units.", "fc.")) for k in model.state_dict())


def test_forward_applies_the_papers_laplacian_with_zero_padding():
    """What forward feeds the first BatchNorm, with the stem convolution made the identity on channels 0-2:
    the Laplacian [[0,-1,0],[-1,4,-1],[0,-1,0]] of each channel, zero padded, written out by hand."""
    model = rf.LaplacianCNN(widths=(4, 4, 4, 4, 4)).eval()
    with torch.no_grad():
        model.units[0].conv.weight.zero_()
        model.units[0].conv.bias.zero_()
        for c in range(3):
            model.units[0].conv.weight[c, c, 1, 1] = 1.0
    x = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    x[0, 0] = 1                 # constant: 0 inside, the missing neighbours show at the border
    x[0, 1, 1, 2] = 10          # one impulse
    expected = torch.tensor([[[2., 1, 1, 2], [1, 0, 0, 1], [1, 0, 0, 1], [2, 1, 1, 2]],
                             [[0, 0, -10, 0], [0, -10, 40, -10], [0, 0, -10, 0], [0, 0, 0, 0]],
                             [[0, 0, 0, 0]] * 4])
    seen = []
    hook = model.units[0].bn.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    assert torch.equal(seen[0][0, :3], expected) and not seen[0][0, 3:].any()


@pytest.mark.parametrize("size", [32, 64, 67])
def test_forward_shapes_and_uint8_equals_float(size):
    model = rf.LaplacianCNN(widths=(4, 4, 8, 8, 8)).eval()
    x = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 2)
        assert torch.equal(out, model(x.float()))


def test_forward_is_the_paper_architecture():
    """The stem is Laplacian (zero pad) then conv; then BN, ReLU, 5x5/2 avg pool; GAP at unit 5; linear."""
    torch.manual_seed(0)
    model = rf.LaplacianCNN(widths=(4, 4, 4, 4, 4)).eval()
    x = torch.rand(2, 3, 40, 40) * 255
    lap = torch.tensor([[0., -1, 0], [-1, 4, -1], [0, -1, 0]]).expand(3, 1, 3, 3)
    h = F.conv2d(x, lap, padding=1, groups=3)
    for i, unit in enumerate(model.units):
        h = F.relu(unit.bn(unit.conv(h)))
        h = h.mean((2, 3)) if i == 4 else F.avg_pool2d(h, 5, 2, 2, count_include_pad=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.fc(h), rtol=1e-5, atol=1e-5)


def test_bad_widths_and_input():
    with pytest.raises(ValueError, match="five"):
        rf.LaplacianCNN(widths=(4, 4))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        rf.LaplacianCNN()(torch.zeros(1, 1, 8, 8))


def test_checkpoint_roundtrip_and_tampering(tmp_path):
    model = rf.LaplacianCNN(widths=(4, 4, 8, 8, 8)).eval()
    path = rf.save_checkpoint(model, tmp_path / "m.safetensors", {"note": "x"})
    loaded = rf.load_model(path)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert json.loads(path.with_suffix(".json").read_text())["model"]["widths"] == [4, 4, 8, 8, 8]
    # config that does not fit the weights
    cfg = json.loads(path.with_suffix(".json").read_text())
    cfg["model"]["widths"] = [8, 8, 8, 8, 8]
    path.with_suffix(".json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        rf.load_model(path)
    # corrupted weights
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        rf.load_model(path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        rf.load_model(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="bundled name"):
        rf.load_model(tmp_path / "model.pt")
