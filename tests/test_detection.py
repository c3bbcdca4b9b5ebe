"""ROC AUC, EER, TPR at 1% FPR and the confusion matrix against scikit-learn; the Evaluator keeps them on device."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import recapfast as rf
from recapfast.engine.detection import equal_error_rate, recaptured_log_odds, roc_auc, roc_curve, tpr_at_fpr
from recapfast.engine.evaluate import Evaluator
from recapfast.engine.trust import TrustConfig

metrics = pytest.importorskip("sklearn.metrics")


def sklearn_eer(scores, labels):
    """EER from scikit-learn's ROC: the FPR = FNR crossing, linearly interpolated between its two ROC points."""
    fpr, tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    diff = fpr - (1 - tpr)
    j = int(np.argmax(diff >= 0))
    if diff[j] == 0:
        return fpr[j]
    w = -diff[j - 1] / (diff[j] - diff[j - 1])
    return fpr[j - 1] + w * (fpr[j] - fpr[j - 1])


@pytest.mark.parametrize("seed", range(5))
def test_against_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(labels * rng.uniform(0, 2), 1.0), int(rng.integers(0, 3)))   # many ties
    fpr, tpr, thr = roc_curve(scores, labels)
    s_fpr, s_tpr, s_thr = metrics.roc_curve(labels, scores, drop_intermediate=False)
    assert np.array_equal(fpr, s_fpr) and np.array_equal(tpr, s_tpr) and np.array_equal(thr[1:], s_thr[1:])
    assert roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert equal_error_rate(scores, labels)[0] == pytest.approx(sklearn_eer(scores, labels), abs=1e-12)
    assert tpr_at_fpr(scores, labels, 0.01) == s_tpr[s_fpr <= 0.01].max()
    assert tpr_at_fpr(scores, labels, 0.2) == s_tpr[s_fpr <= 0.2].max()


def test_perfect_inverted_and_one_class():
    labels = np.array([0, 0, 1, 1])
    assert roc_auc([0.1, 0.2, 0.8, 0.9], labels) == 1.0 and equal_error_rate([0.1, 0.2, 0.8, 0.9], labels)[0] == 0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], labels) == 0.0 and equal_error_rate([0.9, 0.8, 0.2, 0.1], labels)[0] == 1
    assert np.isnan(roc_auc([0.1, 0.2], [1, 1])) and np.isnan(equal_error_rate([0.1, 0.2], [1, 1])[0])


def test_log_odds_is_logit_of_p():
    logits = torch.tensor([[0.3, 2.0], [5.0, -40.0], [1.0, 1.0]])
    p = logits.softmax(1)[:, 1].double()
    assert torch.allclose(recaptured_log_odds(logits).double(), torch.log(p / (1 - p)), atol=1e-5)
    three = torch.tensor([[0.0, 1.0, 2.0]])
    assert torch.allclose(recaptured_log_odds(three), torch.tensor([1.0 - float(torch.logsumexp(torch.tensor([0.0, 2.0]),
                                                                                                 0))]))


def test_evaluator_cells_equal_scikit_learn_on_direct_scores(small_model):
    g = torch.Generator().manual_seed(4)
    xs = torch.randint(0, 256, (3, 10, 3, 32, 32), dtype=torch.uint8, generator=g)
    ys = torch.randint(0, 2, (3, 10), generator=g)
    ev = Evaluator(small_model, [1, 3], ("fgsm", "llcm"), trust=TrustConfig())
    for x, y in zip(xs, ys):
        ev.update(x, y)
    res = ev.result("m")
    y = ys.reshape(-1).numpy()
    x = xs.reshape(-1, 3, 32, 32)
    with torch.no_grad():
        cells = {("clean", 0.0): small_model(x.float())}
        for name, fn in (("fgsm", rf.fgsm), ("llcm", rf.llcm)):
            for e in (1.0, 3.0):
                adv = torch.cat([fn(small_model, xb, yb, e) for xb, yb in zip(xs, ys)])
                cells[(name, e)] = small_model(adv)
    got = {(c["attack"], c["eps"]): c for c in [res.detection["clean"], *res.detection["cells"]]}
    assert set(got) == set(cells)
    for key, logits in cells.items():
        scores = (logits[:, 1] - logits[:, 0]).numpy()
        c = got[key]
        assert c["auc"] == pytest.approx(metrics.roc_auc_score(y, scores), abs=1e-6)
        assert c["eer"] == pytest.approx(sklearn_eer(scores, y), abs=1e-6)
        assert c["confusion"] == metrics.confusion_matrix(y, logits.argmax(1).numpy(), labels=[0, 1]).tolist()
    assert "ROC AUC" in res.to_markdown() and '"auc"' in res.to_json()


class SyncSpy(TorchDispatchMode):
    """Every ATen op that makes the host wait for the device's data: scalar reads (item, bool, int, float, tolist
    all end in _local_scalar_dense), nonzero, masked_select, unique, and indexing with a boolean mask (its output
    size is data-dependent).  Seen at the dispatcher, so implicit syncs (``if tensor:``, ``x[mask]``) count too,
    which the old test's mocks of .item/.cpu/.tolist could not see."""

    SYNCING = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
               "aten._unique2.default", "aten.unique_dim.default", "aten.unique_consecutive.default"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in self.SYNCING or (name == "aten.index.Tensor" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_update_reads_nothing_back(small_model, batch):
    """The trust accumulator keeps everything on the device during update (read back once in result()): the sweep
    attacks, the iterative ones, detection and gradient checks sync nothing. The one read per batch is the flag
    that the clean logits are finite (a batch with NaN/Inf logits is re-run on its finite patches: issue 21); the
    first batch also checks the model's output shape and values once."""
    x, y = batch
    ev = Evaluator(small_model, [1, 2], ("fgsm", "llcm", "bim"), trust=TrustConfig())
    ev.update(x, y)                                  # the first batch: the model's output is checked (reads back)
    with SyncSpy() as spy:
        ev.update(x, y)
    assert spy.seen == ["aten._local_scalar_dense.default"]      # bool(finite.all()), nothing else
    assert ev.result().detection["clean"]["auc"] >= 0


def test_the_sync_spy_sees_implicit_syncs(small_model, batch):
    x, y = batch
    with SyncSpy() as spy:
        t = torch.arange(4.0)
        if t.sum() > 0:          # implicit bool()
            pass
        _ = t[t > 1]             # boolean mask
        _ = (t > 1).nonzero()
    assert spy.seen == ["aten._local_scalar_dense.default", "aten.index.Tensor", "aten.nonzero.default"]
