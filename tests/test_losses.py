"""InfoNCE on hand-computed cases: values, the 0.99 false-negative mask, valid-position mean, metrics."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from hllm_jax.losses import info_nce
from hllm_jax.models.hllm import LOGIT_SCALE_MAX, project_logit_scale


def test_two_positions_by_hand():
    # D = 2. Position 0: user e0, target e0, negatives e1 and (e0+e1)/sqrt2.
    e0, e1 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    user = jnp.asarray([[e0, 3 * e1]])                 # [1, 2, 2] (norms do not matter)
    targets = jnp.asarray([[2 * e0, e0]])
    negs = jnp.asarray([e1, e0 + e1])
    mask = jnp.asarray([[True, True]])
    loss, m, logits = info_nce(user, targets, negs, mask, 2.0)
    c = 1 / math.sqrt(2)
    # position 0 logits: 2*[1, 0, c]; position 1: 2*[0, 1, c]
    ce = lambda row, k=0: -(row[k] - math.log(sum(math.exp(x) for x in row)))
    want = (ce([2, 0, 2 * c]) + ce([0, 2, 2 * c])) / 2
    assert abs(float(loss) - want) < 1e-6
    np.testing.assert_allclose(np.asarray(logits[0, 0]), [2, 0, 2 * c], rtol=1e-6, atol=1e-7)
    assert float(m["nce_samples"]) == 3.0
    assert float(m["nce_top1_acc"]) == 0.5  # position 0 ranks first, position 1 does not
    assert "nce_top5_acc" not in m           # k larger than the row (3) is skipped


def test_near_identical_negative_is_masked_and_counted():
    t = np.array([1.0, 0.0, 0.0])
    user = jnp.asarray([[[0.5, 0.5, 0.0]]])
    negs = jnp.asarray([t * 3, t + [0, 0.05, 0], [0.0, 0.0, 1.0]])  # cos 1, cos 0.9988, cos 0
    loss, m, logits = info_nce(user, jnp.asarray([[t]]), negs, jnp.asarray([[True]]), 1.0)
    row = np.asarray(logits[0, 0])
    assert np.isneginf(row[1]) and np.isneginf(row[2]) and np.isfinite(row[[0, 3]]).all()
    assert float(m["nce_samples"]) == 2.0
    c = 1 / math.sqrt(2)
    want = -(c - math.log(math.exp(c) + math.exp(0.0)))
    assert abs(float(loss) - want) < 1e-6
    # threshold just above 0.9988 keeps the second negative
    _, m2, _ = info_nce(user, jnp.asarray([[t]]), negs, jnp.asarray([[True]]), 1.0, threshold=0.9995)
    assert float(m2["nce_samples"]) == 3.0


def test_mean_over_valid_positions_only_and_finite_gradients():
    r = np.random.default_rng(0)
    user = jnp.asarray(r.normal(size=(2, 3, 4)), jnp.float32)
    targets = jnp.asarray(r.normal(size=(2, 3, 4)), jnp.float32)
    negs = jnp.asarray(r.normal(size=(5, 4)), jnp.float32)
    mask = jnp.asarray([[False, True, True], [False, False, True]])
    loss, m, _ = info_nce(user, targets, negs, mask, 10.0)
    # Garbage in masked positions must not change anything.
    user2 = user.at[0, 0].set(1e3).at[1, :2].set(-7.0)
    loss2, _, _ = info_nce(user2, targets, negs, mask, 10.0)
    assert float(loss) == float(loss2)
    per = [info_nce(user[b:b + 1, s:s + 1], targets[b:b + 1, s:s + 1], negs, jnp.ones((1, 1), bool), 10.0)[0]
           for b, s in [(0, 1), (0, 2), (1, 2)]]
    assert abs(float(loss) - float(np.mean(per))) < 1e-5
    assert float(m["valid_positions"]) == 3
    g = jax.grad(lambda u: info_nce(u, targets, negs.at[0].set(targets[0, 1]), mask, 10.0)[0])(user)
    assert np.isfinite(np.asarray(g)).all()
    assert np.all(np.asarray(g)[0, 0] == 0)


def test_logit_scale_projection_keeps_gradient():
    params = {"logit_scale": jnp.asarray(7.0)}
    assert float(project_logit_scale(params)["logit_scale"]) == np.float32(LOGIT_SCALE_MAX)
    assert float(project_logit_scale({"logit_scale": jnp.asarray(-1.0)})["logit_scale"]) == 0.0
    # The train step projects the parameter and differentiates at the projected value (not through
    # a clip), so the gradient is never zeroed by the clamp.
    f = lambda s: info_nce(jnp.ones((1, 1, 2)), jnp.asarray([[[1.0, 0.0]]]), jnp.asarray([[1.0, 0.7]]),
                           jnp.ones((1, 1), bool), jnp.exp(s))[0]
    s = project_logit_scale(params)["logit_scale"]
    assert float(jax.grad(f)(s)) != 0.0
