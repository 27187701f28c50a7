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


def test_zero_init_residual_zeroes_only_blocks_with_identity_shortcut_and_keeps_other_draws():
  plain = make_model("resnet20", use_bn=False, seed=3)
  zero = make_model("resnet20", use_bn=False, seed=3, zero_init_residual=True)
  for bp, bz in zip(plain.blocks, zero.blocks):
    identity = bz.stride == 1 and bz.conv1.in_features == bz.cout
    # the downsampling blocks (first of stages 2 and 3) keep their drawn conv2
    assert bool(jnp.array_equal(bz.conv2.kernel.value, bp.conv2.kernel.value)) != identity
    assert (float(jnp.abs(bz.conv2.kernel.value).max()) == 0.0) == identity
    # every other weight is the same draw
    assert bool(jnp.array_equal(bp.conv1.kernel.value, bz.conv1.kernel.value))
  assert sum(not (b.stride == 1 and b.conv1.in_features == b.cout) for b in zero.blocks) == 2
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 16))
  block = zero.blocks[0]  # stride 1, 16 -> 16 channels: relu(0 + x)
  assert bool(jnp.array_equal(block(x), jax.nn.relu(x)))
  # the logits no longer blow up with depth (Kaiming init: order 10^2-10^3)
  deep = make_model("resnet56", use_bn=False, seed=0, zero_init_residual=True)
  logits = deep(jax.random.normal(jax.random.key(1), (4, 32, 32, 3)))
  assert float(jnp.abs(logits).max()) < 100.0
  with pytest.raises(ValueError, match="zero_init_residual applies to the ResNets"):
    make_model("densenet_bc100", zero_init_residual=True)


def _never_updated_conv_channels(model, images, labels, steps: int) -> tuple[int, int]:
  """(conv output channels whose kernel gradient was exactly 0 at every one of
  ``steps`` Adam steps on the given real batches, all conv output channels)."""
  import optax
  from experiments.input_pipeline.augment import normalize

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  r_leaves, r_def = jax.tree.flatten(rest)

  def loss_fn(p, x, y):
    # The rest (BatchNorm statistics) is rebuilt in this trace so NNX lets the
    # train-mode BatchNorm update it; the update itself is discarded.
    m = nnx.merge(graphdef, p, jax.tree.unflatten(r_def, r_leaves))
    logits = m(normalize(x))  # train mode: batch statistics
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, s, x, y):
    g = jax.grad(loss_fn)(p, x, y)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, g

  ever = None
  for t in range(steps):
    params, opt_state, grads = step(params, opt_state, images[t], labels[t])
    # per conv kernel (H, W, Cin, Cout): did any weight of output channel c move?
    hit = [jnp.any(g != 0, axis=(0, 1, 2)) for path, g in jax.tree.leaves_with_path(grads)
           if g.ndim == 4]
    ever = hit if ever is None else [a | b for a, b in zip(ever, hit)]
  dead = sum(int((~h).sum()) for h in ever)
  return dead, sum(h.size for h in ever)


# Steps of four ResNets on real data (~9 s idle on 2 cores for the zero-init cases, which
# failed before the fix; as much again for the Kaiming-init controls): with the long tests, which CI runs.
@pytest.mark.slow
@pytest.mark.parametrize("use_bn", [False, True], ids=["nobn", "bn"])
@pytest.mark.parametrize("zero_init", [False, True], ids=["kaiming", "zero_init"])
def test_every_conv_channel_gets_a_gradient_in_the_first_steps_on_real_data(use_bn, zero_init):
  # Issue #22: zeroing conv2 of the downsampling blocks left the channels that
  # option A pads with zeros at exactly 0 through every later block; 528 of
  # the 688 conv output channels of ResNet-20 never received a gradient.
  from experiments.input_pipeline import load_dataset

  ds = load_dataset("sample")
  rng = np.random.default_rng(0)
  steps, batch = 3, 64
  idx = rng.permutation(len(ds.train))[:steps * batch].reshape(steps, batch)
  images = jnp.asarray(ds.train.images[idx])
  labels = jnp.asarray(ds.train.labels[idx])
  model = make_model("resnet20", use_bn=use_bn, seed=0, zero_init_residual=zero_init)
  dead, total = _never_updated_conv_channels(model, images, labels, steps)
  assert total == 16 + 6 * 16 + 6 * 32 + 6 * 64 == 688
  # a ReLU may silence a channel for a few batches, never a whole stage
  assert dead <= 0.02 * total, f"{dead} of {total} conv output channels never got a gradient"
