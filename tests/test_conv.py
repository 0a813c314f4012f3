"""The models' convolution: the chunked weight gradient equals XLA's on every kind of convolution the models
use, and a hand computation; which CPUs and settings take it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.models import build_backbone, conv
from bwlm_jax.models.conv import MODE_VARIABLE

NHWC = ('NHWC', 'HWIO', 'NHWC')

# (batch, side, in, out, kernel, stride, padding, groups): each kind of convolution in models/.
MODEL_CONVOLUTIONS = {
    'resnet_cifar_3x3': (6, 8, 4, 4, 3, 1, ((1, 1), (1, 1)), 1),
    'resnet_cifar_3x3_stride2': (6, 8, 4, 8, 3, 2, ((1, 1), (1, 1)), 1),
    'resnet_stem_7x7_stride2': (3, 13, 3, 8, 7, 2, ((3, 3), (3, 3)), 1),
    'resnet_1x1': (3, 7, 8, 16, 1, 1, ((0, 0), (0, 0)), 1),
    'resnet_1x1_stride2': (3, 7, 8, 16, 1, 2, ((0, 0), (0, 0)), 1),
    'resnext_grouped': (3, 7, 16, 16, 3, 1, ((1, 1), (1, 1)), 4),
    'resnext_grouped_stride2': (3, 8, 16, 16, 3, 2, ((1, 1), (1, 1)), 4),
    'efficientnet_depthwise_same': (3, 9, 6, 6, 5, 1, 'SAME', 6),
    'efficientnet_depthwise_same_stride2': (3, 8, 6, 6, 3, 2, 'SAME', 6),  # TF's 'SAME': pads (0, 1)
    'efficientnet_depthwise_symmetric_stride2': (3, 8, 6, 6, 5, 2, ((2, 2), (2, 2)), 6),
    'vit_patches': (2, 8, 3, 12, 4, 4, 'VALID', 1),
}


def _gradients(x, w, stride, padding, groups):
  """(dL/dx, dL/dw) of a non-linear loss through conv.conv_general_dilated, traced anew (the mode is read then)."""
  def loss(x, w):
    y = conv.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC,
                                  feature_group_count=groups)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)
  return jax.jit(jax.grad(loss, (0, 1)))(x, w)


def _inputs(batch, side, inputs, outputs, kernel, groups, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, side, side, inputs)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, inputs // groups, outputs)) * 0.3, jnp.float32)
  return x, w


@pytest.mark.parametrize('kind', MODEL_CONVOLUTIONS)
def test_chunked_gradients_equal_xla(kind, monkeypatch):
  batch, side, inputs, outputs, kernel, stride, padding, groups = MODEL_CONVOLUTIONS[kind]
  x, w = _inputs(batch, side, inputs, outputs, kernel, groups)
  monkeypatch.setenv(MODE_VARIABLE, 'xla')
  xla = _gradients(x, w, stride, padding, groups)
  monkeypatch.setenv(MODE_VARIABLE, 'chunked')
  chunked = _gradients(x, w, stride, padding, groups)
  if groups == inputs:  # depthwise: XLA's input gradient one image at a time
    np.testing.assert_allclose(chunked[0], xla[0], rtol=1e-5, atol=1e-6)
  else:  # XLA's own
    np.testing.assert_array_equal(chunked[0], xla[0])
  np.testing.assert_allclose(chunked[1], xla[1], rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(xla[1]))))
  assert float(jnp.max(jnp.abs(xla[1]))) > 0


@pytest.mark.parametrize('chunk', [1, 2, 4, 5, 7])
def test_weight_gradient_by_hand_every_chunking(chunk):
  """Chunks of 1, 2, 4, 5 and 7 of 7 images (a scan plus a remainder, or one call) against a loop over the
  definition dW[i, j, c, o] = sum x_padded[n, s*h + i, s*w + j, c] * dy[n, h, w, o], stride 2, pads (1, 0)."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(7, 5, 6, 3)).astype(np.float32)
  stride, pads = (2, 2), ((1, 0), (1, 0))
  out_h, out_w = (5 + 1 - 3) // 2 + 1, (6 + 1 - 3) // 2 + 1
  dy = rng.normal(size=(7, out_h, out_w, 4)).astype(np.float32)
  padded = np.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)))
  expected = np.zeros((3, 3, 3, 4))
  for i in range(3):
    for j in range(3):
      for h in range(out_h):
        for v in range(out_w):
          expected[i, j] += padded[:, 2 * h + i, 2 * v + j, :].T.astype(np.float64) @ dy[:, h, v, :]
  got = conv.weight_gradient(jnp.asarray(x), jnp.asarray(dy), (3, 3, 3, 4), stride, pads, chunk=chunk)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_model_parameter_gradients_equal_xla(monkeypatch):
  """A whole ResNet-8's parameter gradients (stem, 3x3 at stride 1 and 2, BatchNorm in training mode), with
  chunks of 3 of the 4 images in the first stage (a scan of one chunk plus a remainder)."""
  monkeypatch.setattr(conv, 'CHUNK_BYTES', 3 * 16 * 16 * 16 * 4)
  backbone = build_backbone('resnet8')
  images = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  # Random values in the initialiser's shapes (compiling flax's initialisers would take most of the test).
  shapes = jax.eval_shape(lambda key: backbone.init(key, images, train=False), jax.random.key(1))
  rng = np.random.default_rng(2)
  variables = jax.tree.map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape) * 0.3 + 1, jnp.float32), shapes)

  def gradients():
    def loss(params):
      features, _ = backbone.apply({**variables, 'params': params}, images, train=True, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(features))
    return jax.jit(jax.grad(loss))(variables['params'])

  monkeypatch.setenv(MODE_VARIABLE, 'xla')
  xla = gradients()
  monkeypatch.setenv(MODE_VARIABLE, 'chunked')
  chunked = gradients()
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(xla), jax.tree_util.tree_leaves(chunked)):
    np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5 * float(jnp.max(jnp.abs(a))) + 1e-7,
                               err_msg=jax.tree_util.keystr(path))


def test_which_convolutions_take_the_chunked_gradient(monkeypatch):
  x, w = _inputs(2, 6, 4, 4, 3, 1)

  def custom_vjp_in(kernel=w, **kwargs):
    jaxpr = jax.make_jaxpr(lambda x, w: conv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), **kwargs))(
        x, kernel)
    return 'custom_vjp' in str(jaxpr)

  monkeypatch.setenv(MODE_VARIABLE, 'chunked')
  assert custom_vjp_in(dimension_numbers=NHWC)
  # Outside what it covers, XLA's convolution whatever the mode: other layouts, dilations.
  assert not custom_vjp_in(w.transpose(3, 2, 0, 1), dimension_numbers=('NHWC', 'OIHW', 'NHWC'))
  assert not custom_vjp_in(dimension_numbers=NHWC, rhs_dilation=(2, 2))
  assert not custom_vjp_in(dimension_numbers=NHWC, lhs_dilation=(2, 2))
  monkeypatch.setenv(MODE_VARIABLE, 'xla')
  assert not custom_vjp_in(dimension_numbers=NHWC)
  grouped = _inputs(2, 6, 4, 4, 3, 2)[1]
  assert not custom_vjp_in(grouped, dimension_numbers=NHWC, feature_group_count=2)


@pytest.mark.parametrize('kind', ['resnext_grouped', 'resnext_grouped_stride2'])
def test_grouped_gradients_as_dense_blocks_on_every_cpu_kind(kind, monkeypatch):
  """On a CPU kind that keeps XLA's dense weight gradient (AMD's AVX-512), a grouped convolution still takes the
  dense-blocks weight gradient (built on XLA's dense one), equal to XLA's grouped gradient; a dense convolution
  stays XLA's there, and `BWLM_CPU_TUNING=0` turns it off."""
  batch, side, inputs, outputs, kernel, stride, padding, groups = MODEL_CONVOLUTIONS[kind]
  x, w = _inputs(batch, side, inputs, outputs, kernel, groups, seed=3)
  monkeypatch.setenv(MODE_VARIABLE, 'xla')
  xla = _gradients(x, w, stride, padding, groups)
  monkeypatch.setenv(MODE_VARIABLE, 'auto')
  monkeypatch.setattr(conv, 'cpu_kind', lambda: 'amd-avx512')
  assert conv.grouped_as_dense_blocks() and not conv.chunked_weight_gradient()
  assert not conv.grouped_as_dense_blocks({conv.process_setup.OPT_OUT: '0'})
  traced = str(jax.make_jaxpr(lambda x, w: conv.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=NHWC, feature_group_count=groups))(x, w))
  assert 'custom_vjp' in traced
  dense_w = _inputs(batch, side, inputs, outputs, kernel, 1)[1]
  assert 'custom_vjp' not in str(jax.make_jaxpr(lambda x, w: conv.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=NHWC))(x, dense_w))
  blocks = _gradients(x, w, stride, padding, groups)
  np.testing.assert_array_equal(blocks[0], xla[0])  # XLA's input gradient
  np.testing.assert_allclose(blocks[1], xla[1], rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(xla[1]))))


def test_grouped_weight_gradient_by_hand():
  """The dense-blocks weight gradient of a 2-group convolution (3 inputs and 2 outputs a group, stride 2, pads
  (1, 0)) against a loop over the definition within each group, chunked and from XLA's dense gradient."""
  rng = np.random.default_rng(4)
  x = rng.normal(size=(5, 5, 6, 6)).astype(np.float32)
  stride, pads = (2, 2), ((1, 0), (1, 0))
  out_h, out_w = (5 + 1 - 3) // 2 + 1, (6 + 1 - 3) // 2 + 1
  dy = rng.normal(size=(5, out_h, out_w, 4)).astype(np.float32)
  padded = np.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0))).astype(np.float64)
  expected = np.zeros((3, 3, 3, 4))
  for o in range(4):
    inputs = slice(3 * (o // 2), 3 * (o // 2) + 3)  # output o's group: outputs 0-1 see inputs 0-2, 2-3 see 3-5
    for i in range(3):
      for j in range(3):
        for h in range(out_h):
          for v in range(out_w):
            expected[i, j, :, o] += padded[:, 2 * h + i, 2 * v + j, inputs].T @ dy[:, h, v, o]
  for chunked in (True, False):
    got = conv.grouped_weight_gradient(jnp.asarray(x), jnp.asarray(dy), (3, 3, 3, 4), stride, pads, 2, chunked)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_mode_by_cpu_and_settings(monkeypatch):
  for kind in ('avx2', 'intel-avx512'):
    monkeypatch.setattr(conv, 'cpu_kind', lambda kind=kind: kind)
    assert conv.chunked_weight_gradient({})  # auto on these CPU kinds (the tests run on the CPU)
    assert conv.chunked_weight_gradient({MODE_VARIABLE: 'auto'})
    assert not conv.chunked_weight_gradient({'BWLM_CPU_TUNING': '0'})
    assert not conv.chunked_weight_gradient({MODE_VARIABLE: 'xla'})
  for kind in ('amd-avx512', 'other'):
    monkeypatch.setattr(conv, 'cpu_kind', lambda kind=kind: kind)
    assert not conv.chunked_weight_gradient({})
    assert conv.chunked_weight_gradient({MODE_VARIABLE: 'chunked'})
  with pytest.raises(UsageError, match=r"^BWLM_CONV_WEIGHT_GRADIENT='fast': expected one of auto, xla, chunked\.$"):
    conv.chunked_weight_gradient({MODE_VARIABLE: 'fast'})


def test_cpu_kind_read_from_cpuinfo(tmp_path):
  cases = (('AuthenticAMD', 'fpu avx avx2 fma', 'avx2'), ('GenuineIntel', 'fpu avx2 avx512f avx512bw', 'intel-avx512'),
           ('AuthenticAMD', 'fpu avx2 avx512f avx512bw', 'amd-avx512'), ('GenuineIntel', 'fpu sse4_2', 'other'),
           ('HygonGenuine', 'fpu avx2 avx512f', 'other'))
  for case, (vendor, flags, expected) in enumerate(cases):
    cpuinfo = tmp_path / f'cpuinfo{case}'  # one file each: cpu_info is cached by path
    cpuinfo.write_text(f'processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n\n'
                       f'processor\t: 1\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n')
    assert conv.cpu_kind(str(cpuinfo)) == expected
  assert conv.cpu_kind(str(tmp_path / 'missing')) == 'other'


DEPTHWISE = {kind: shape for kind, shape in MODEL_CONVOLUTIONS.items() if shape[7] == shape[2] > 1}


@pytest.mark.parametrize('kind', DEPTHWISE)
def test_depthwise_multiply_adds_equal_xla_forward_and_both_gradients(kind, monkeypatch):
  batch, side, inputs, outputs, kernel, stride, padding, groups = DEPTHWISE[kind]
  x, w = _inputs(batch, side, inputs, outputs, kernel, groups, seed=3)

  def forward(x, w):
    return jax.jit(lambda x, w: conv.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC,
                                                          feature_group_count=groups))(x, w)

  monkeypatch.setenv(conv.process_setup.DEPTHWISE_VARIABLE, 'xla')
  monkeypatch.setenv(MODE_VARIABLE, 'xla')
  reference, reference_gradients = forward(x, w), _gradients(x, w, stride, padding, groups)
  monkeypatch.setenv(conv.process_setup.DEPTHWISE_VARIABLE, 'shifted')
  shifted, gradients = forward(x, w), _gradients(x, w, stride, padding, groups)
  assert shifted.shape == reference.shape
  np.testing.assert_allclose(shifted, reference, rtol=1e-5, atol=1e-5)
  for ours, xla in zip(gradients, reference_gradients):
    np.testing.assert_allclose(ours, xla, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(xla))))
  # A hand computation of one output: the sum over the kernel's offsets, channel by channel.
  pads = jax.lax.padtype_to_pads((side, side), (kernel, kernel), (stride, stride), padding) if isinstance(
      padding, str) else padding
  padded = np.pad(np.asarray(x), ((0, 0), *pads, (0, 0)))
  n, h, w_, c = 1, 1, 2, 4
  expected = sum(padded[n, stride * h + i, stride * w_ + j, c] * np.asarray(w)[i, j, 0, c]
                 for i in range(kernel) for j in range(kernel))
  np.testing.assert_allclose(shifted[n, h, w_, c], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('side,kernel,stride,pads', [
    (9, 5, 1, ((2, 2), (2, 2))), (8, 3, 2, ((0, 1), (0, 1))), (8, 5, 2, ((2, 2), (2, 2))), (7, 3, 2, ((1, 1), (1, 1))),
    (7, 5, 2, ((1, 2), (2, 1))), (6, 3, 3, ((1, 1), (0, 2)))])
def test_the_phased_input_gradient_equals_xlas(side, kernel, stride, pads):
  # Every stride and padding the models use, odd sides (the last input rows reach no output), a stride of 3.
  x, w = _inputs(2, side, 5, 5, kernel, 5, seed=4)
  y, pullback = jax.vjp(lambda x: jax.lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=NHWC,
                                                                feature_group_count=5), x)
  dy = jnp.asarray(np.random.default_rng(5).normal(size=y.shape), jnp.float32)
  ours = conv.depthwise_input_gradient(dy, w, x.shape, (stride, stride), pads)
  assert ours.shape == x.shape
  np.testing.assert_allclose(ours, pullback(dy)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('chunk_bytes', [1, 6 * 6 * 5 * 4 * 2, 10 ** 9])  # one image, two (a remainder of one), all
def test_the_chunked_depthwise_kernel_gradient_equals_xlas(chunk_bytes):
  x, w = _inputs(5, 6, 5, 5, 3, 5, seed=6)
  pads = ((0, 1), (0, 1))  # TF's SAME at stride 2
  y, pullback = jax.vjp(lambda w: jax.lax.conv_general_dilated(x, w, (2, 2), pads, dimension_numbers=NHWC,
                                                                feature_group_count=5), w)
  dy = jnp.asarray(np.random.default_rng(7).normal(size=y.shape), jnp.float32)
  ours = conv.depthwise_kernel_gradient(x, dy, w.shape, (2, 2), pads, chunk_bytes)
  np.testing.assert_allclose(ours, pullback(dy)[0], rtol=1e-5, atol=1e-5)


def test_the_depthwise_form_is_chosen_in_one_place(monkeypatch):
  monkeypatch.setenv(conv.process_setup.DEPTHWISE_VARIABLE, 'auto')
  assert conv.shifted_depthwise() == (jax.default_backend() == 'cpu')
  assert conv.phased_depthwise_backward() == (conv.cpu_kind() in ('avx2', 'intel-avx512'))
  assert not conv.phased_depthwise_backward({conv.process_setup.OPT_OUT: '0'})
  assert not conv.shifted_depthwise({conv.process_setup.DEPTHWISE_VARIABLE: 'xla'})
  with pytest.raises(UsageError, match=r"BWLM_DEPTHWISE_CONV='fast': expected one of auto, xla, shifted"):
    conv.shifted_depthwise({conv.process_setup.DEPTHWISE_VARIABLE: 'fast'})


@pytest.mark.parametrize('kind', ['resnet_1x1', 'resnet_1x1_stride2'])
def test_a_pointwise_convolution_as_a_matrix_product_equals_xla(kind):
  batch, side, inputs, outputs, kernel, stride, padding, groups = MODEL_CONVOLUTIONS[kind]
  x, w = _inputs(batch, side, inputs, outputs, kernel, groups, seed=5)

  def loss(conv_fn, x, w):
    y = conv_fn(x, w, (stride, stride), padding, dimension_numbers=NHWC)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size), y

  (_, ours), ours_grads = jax.value_and_grad(lambda x, w: loss(conv.conv_general_dilated, x, w), (0, 1),
                                             has_aux=True)(x, w)
  (_, xla), xla_grads = jax.value_and_grad(lambda x, w: loss(jax.lax.conv_general_dilated, x, w), (0, 1),
                                           has_aux=True)(x, w)
  np.testing.assert_allclose(ours, xla, rtol=1e-5, atol=1e-5)
  for a, b in zip(ours_grads, xla_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))
  lowered = jax.jit(lambda x, w: conv.conv_general_dilated(x, w, (stride, stride), padding,
                                                           dimension_numbers=NHWC)).lower(x, w).as_text()
  as_product = stride == 1 or conv.patch_products()  # strided: a slice and a product where patch products pay
  assert ('dot_general' in lowered) == as_product and ('convolution' in lowered) == (not as_product)


@pytest.mark.parametrize('side, inputs, outputs, kernel, stride, padding', [
    (7, 8, 6, 3, 1, ((1, 1), (1, 1))),  # a ResNet's last stage: 7x7 outputs
    (13, 8, 6, 3, 2, ((1, 1), (1, 1))),  # its first block's stride 2, odd input side
    (8, 5, 4, 3, 2, 'SAME'),  # TF's 'SAME': pads (0, 1)
    (6, 4, 4, 2, 1, 'VALID'),
    (7, 8, 6, 1, 2, 'VALID'),  # a strided 1x1 shortcut: its patches are a strided slice
])
def test_a_convolution_as_a_patch_product_equals_xla(side, inputs, outputs, kernel, stride, padding):
  x, w = _inputs(3, side, inputs, outputs, kernel, 1, seed=7)
  pads = padding if not isinstance(padding, str) else jax.lax.padtype_to_pads((side, side), (kernel, kernel),
                                                                               (stride, stride), padding)

  def loss(conv_fn, x, w):
    y = conv_fn(x, w)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size), y

  def xla(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC)

  (_, ours), ours_grads = jax.value_and_grad(
      lambda x, w: loss(lambda x, w: conv.patch_product(x, w, (stride, stride), pads), x, w), (0, 1),
      has_aux=True)(x, w)
  (_, expected), xla_grads = jax.value_and_grad(lambda x, w: loss(xla, x, w), (0, 1), has_aux=True)(x, w)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(expected))))
  for a, b in zip(ours_grads, xla_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))
  half = conv.patch_product(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), (stride, stride), pads)
  assert half.dtype == jnp.bfloat16


def test_which_convolutions_take_the_patch_product(monkeypatch):
  monkeypatch.setenv(MODE_VARIABLE, 'auto')
  monkeypatch.setattr(conv, 'cpu_kind', lambda: 'intel-avx512')

  def patch_product_in(side, kernel=3, stride=1, groups=1, padding=((1, 1), (1, 1))):
    x, w = _inputs(2, side, 4, 4, kernel, groups)
    jaxpr = str(jax.make_jaxpr(lambda x, w: conv.conv_general_dilated(
        x, w, (stride, stride), padding, dimension_numbers=NHWC, feature_group_count=groups))(x, w))
    assert ('conv_general_dilated' in jaxpr) != ('dot_general' in jaxpr)
    return 'dot_general' in jaxpr

  assert patch_product_in(7) and patch_product_in(14, stride=2)  # 7x7 outputs
  assert not patch_product_in(8)  # 8x8 outputs: XLA's (measured slower as a patch product)
  assert patch_product_in(16, kernel=1, stride=2, padding='VALID')  # a strided 1x1 shortcut, whatever its output
  assert not patch_product_in(7, groups=2)  # grouped: dense blocks of XLA's
  assert not patch_product_in(16, kernel=4, stride=4, padding='VALID')  # 16 taps: a ViT's patches stay XLA's
  monkeypatch.setenv(MODE_VARIABLE, 'xla')
  assert not patch_product_in(7)
  monkeypatch.setenv(MODE_VARIABLE, 'auto')
  monkeypatch.setenv(conv.process_setup.OPT_OUT, '0')
  assert not patch_product_in(7)
  monkeypatch.delenv(conv.process_setup.OPT_OUT)
  for kind in ('avx2', 'amd-avx512', 'other'):  # not measured there: XLA's
    monkeypatch.setattr(conv, 'cpu_kind', lambda kind=kind: kind)
    assert not patch_product_in(7)
