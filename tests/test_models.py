"""Model structure: parameter counts, BN/no-BN, per-block decomposition, option-A shortcut."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.models import MODELS, count_params, make_model
from experiments.models.resnet import BasicBlock, ResNet, shortcut_option_a


def _abstract(name, **kw):
  # Shapes only: counting parameters needs no initialised values.
  return nnx.eval_shape(lambda: make_model(name, seed=0, **kw))


# Published counts (He et al. 2016 Table 6; Huang et al. 2017 Table 2), in millions.
@pytest.mark.parametrize("name,millions", [
    ("resnet20", 0.27), ("resnet56", 0.85), ("resnet110", 1.7),
])
def test_resnet_param_counts_match_published(name, millions):
  n = count_params(_abstract(name, num_classes=10, use_bn=True))
  assert round(n / 1e6, 2 if millions < 1 else 1) == millions


def test_resnet20_exact_count_by_hand():
  # stem 3*3*3*16; stage1 6 convs 16->16; stage2 32 (first 16->32); stage3 64;
  # head 64*10+10; BN: scale+bias per conv output channel.
  convs = 3 * 3 * (3 * 16 + 6 * 16 * 16 + (16 * 32 + 5 * 32 * 32)
                   + (32 * 64 + 5 * 64 * 64))
  bn = 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)
  head = 64 * 10 + 10
  assert count_params(make_model("resnet20", use_bn=False, seed=0)) == convs + head
  assert count_params(make_model("resnet20", use_bn=True, seed=0)) == convs + bn + head


def test_densenet_bc100_about_0_8m():
  n = count_params(_abstract("densenet_bc100", num_classes=100, use_bn=True))
  assert 0.75e6 < n < 0.85e6


def _modules_of(model, cls):
  return [m for _, m in nnx.iter_graph(model) if isinstance(m, cls)]


@pytest.mark.parametrize("name", ["resnet20", "densenet_bc100"])
def test_no_bn_removes_only_batchnorm(name):
  with_bn = _abstract(name, num_classes=10, use_bn=True)
  without = _abstract(name, num_classes=10, use_bn=False)
  assert _modules_of(with_bn, nnx.BatchNorm)
  assert not _modules_of(without, nnx.BatchNorm)
  assert not nnx.state(without, nnx.BatchStat)
  # Same convs and dense layer, same shapes and same initial values.
  def shapes(m, cls):
    return [x.kernel.get_value().shape for x in _modules_of(m, cls)]
  assert shapes(with_bn, nnx.Conv) == shapes(without, nnx.Conv)
  assert shapes(with_bn, nnx.Linear) == shapes(without, nnx.Linear)
  for a, b in zip(_modules_of(with_bn, nnx.Conv), _modules_of(without, nnx.Conv)):
    assert a.bias is None and b.bias is None  # convs never have a bias
  # "no BN" changes nothing else: identical initial conv/dense weights
  wb = make_model("resnet20", use_bn=True, seed=0)
  wo = make_model("resnet20", use_bn=False, seed=0)
  for a, b in zip(_modules_of(wb, (nnx.Conv, nnx.Linear)),
                  _modules_of(wo, (nnx.Conv, nnx.Linear))):
    np.testing.assert_array_equal(a.kernel[...], b.kernel[...])


def test_blocks_compose_to_forward_pass():
  model = make_model("resnet20", use_bn=False, seed=1)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  h = model.stem(x)
  for block in model.blocks:
    h = block(h)
  np.testing.assert_array_equal(model.head(h), model(x))
  assert len(model.blocks) == 9
  assert [b.stride for b in model.blocks] == [1, 1, 1, 2, 1, 1, 2, 1, 1]


def test_option_a_shortcut_subsamples_and_zero_pads():
  x = jnp.arange(2 * 4 * 4 * 16, dtype=jnp.float32).reshape(2, 4, 4, 16)
  y = shortcut_option_a(x, 32, 2)
  assert y.shape == (2, 2, 2, 32)
  np.testing.assert_array_equal(y[..., :8], 0)
  np.testing.assert_array_equal(y[..., 24:], 0)
  np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])


def test_kaiming_normal_init_scale():
  model = make_model("resnet110", use_bn=False, seed=0)
  k = np.asarray(model.blocks[-1].conv1.kernel[...])  # 3x3x64x64, fan_in 576
  assert abs(k.std() - np.sqrt(2 / 576)) / np.sqrt(2 / 576) < 0.02
  assert abs(k.mean()) < 3 * np.sqrt(2 / 576) / np.sqrt(k.size)
  # untruncated normal (torch.nn.init.kaiming_normal_): tails beyond 2 sigma exist
  assert np.mean(np.abs(k) > 2 * k.std()) > 0.03


def test_seed_determines_init():
  a = nnx.state(make_model("resnet20", seed=3), nnx.Param)
  b = nnx.state(make_model("resnet20", seed=3), nnx.Param)
  c = nnx.state(make_model("resnet20", seed=4), nnx.Param)
  la, lb, lc = jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)
  assert all(np.array_equal(x, y) for x, y in zip(la, lb))
  # every kernel (ndim > 1) differs between seeds; BN scale/bias start at 1/0
  assert all(not np.array_equal(x, y) for x, y in zip(la, lc) if x.ndim > 1)


def test_batchnorm_train_vs_eval_mode():
  model = make_model("resnet20", use_bn=True, seed=0)
  x = 3.0 + jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  model.train()
  y_train = model(x)
  model.eval()
  y_eval = model(x)
  assert not np.allclose(y_train, y_eval)  # running stats differ from batch stats


def test_unknown_model_lists_choices():
  with pytest.raises(ValueError, match="resnet110.*densenet_bc100"):
    make_model("resnet19", num_classes=10, use_bn=True, seed=0)
  with pytest.raises(ValueError, match="6n\\+2"):
    ResNet(21, rngs=nnx.Rngs(0))


def test_model_names():
  assert MODELS == ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                    "resnet218", "densenet_bc100")


def test_zero_init_residual_blocks_start_as_identity_and_keep_other_draws():
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from experiments.models import make_model

  plain = make_model("resnet20", use_bn=False, seed=3)
  zero = make_model("resnet20", use_bn=False, seed=3, zero_init_residual=True)
  for bp, bz in zip(plain.blocks, zero.blocks):
    assert float(jnp.abs(bz.conv2.kernel.value).max()) == 0.0
    assert float(jnp.abs(bp.conv2.kernel.value).max()) > 0.0
    # every other weight is the same draw
    assert bool(jnp.array_equal(bp.conv1.kernel.value, bz.conv1.kernel.value))
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 16))
  block = zero.blocks[0]  # stride 1, 16 -> 16 channels: relu(0 + x)
  assert bool(jnp.array_equal(block(x), jax.nn.relu(x)))
  # the logits no longer blow up with depth
  deep = make_model("resnet56", use_bn=False, seed=0, zero_init_residual=True)
  logits = deep(jax.random.normal(jax.random.key(1), (4, 32, 32, 3)))
  assert float(jnp.abs(logits).max()) < 100.0
  with pytest.raises(ValueError, match="zero_init_residual applies to the ResNets"):
    make_model("densenet_bc100", zero_init_residual=True)
  del nnx
