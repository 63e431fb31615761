import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gipip_jax.victims import VICTIMS, ShapeError, Victim, count_params, make_victim

TINY = ("lenet", "convnet_tiny", "resnet_tiny")


@pytest.mark.parametrize("name", VICTIMS)
@pytest.mark.parametrize("size", [32, 64])
def test_output_shape_of_every_victim(name, size):
    # eval_shape traces without compiling, so even resnet18 at 64 px costs little.
    victim = make_victim(name, 10, (size, size, 3))
    variables = jax.eval_shape(victim.init, jax.random.key(0))
    logits = jax.eval_shape(lambda v, x: victim.apply(v, x), variables, jnp.zeros((2, size, size, 3)))
    assert logits.shape == (2, 10)
    assert ("batch_stats" in variables) == (name != "lenet")


@pytest.mark.parametrize("size", [32, 64])
def test_resnet18_with_many_classes(size):
    victim = make_victim("resnet18", 200, (size, size, 3))
    variables = jax.eval_shape(victim.init, jax.random.key(0))
    logits, stats = jax.eval_shape(lambda v, x: victim.apply(v, x, train=True), variables, jnp.zeros((3, size, size, 3)))
    assert logits.shape == (3, 200)
    assert jax.tree.structure(stats) == jax.tree.structure(variables["batch_stats"])


def test_param_counts_match_the_documented_layouts():
    counts = {
        name: count_params(jax.eval_shape(make_victim(name, 10, (32, 32, 3)).init, jax.random.key(0)))
        for name in VICTIMS
    }
    assert counts["resnet18"] == 11_173_962  # the standard CIFAR ResNet-18 count
    assert counts["lenet"] == 15_826  # 3 convs (8,136) + dense 768 -> 10
    assert counts["convnet"] == 539_178
    assert counts["convnet_tiny"] < 20_000 and counts["resnet_tiny"] < 30_000


@pytest.mark.parametrize("name", TINY)
def test_tiny_victims_run_at_both_sizes(name):
    for size in (32, 64):
        victim = make_victim(name, 5, (size, size, 3))
        variables = jax.jit(victim.init)(jax.random.key(1))
        logits = jax.jit(victim.apply)(variables, jax.random.normal(jax.random.key(2), (2, size, size, 3)))
        assert logits.shape == (2, 5) and bool(jnp.all(jnp.isfinite(logits)))


def test_lenet_weights_are_uniform_in_half_interval():
    variables = make_victim("lenet", 10, (32, 32, 3)).init(jax.random.key(0))
    leaves = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(variables["params"])])
    assert leaves.min() >= -0.5 and leaves.max() <= 0.5
    assert leaves.min() < -0.45 and leaves.max() > 0.45  # spread over the whole interval
    assert set(variables["params"]) == {"Conv_0", "Conv_1", "Conv_2", "Dense_0"}
    assert variables["params"]["Dense_0"]["kernel"].shape == (12 * 8 * 8, 10)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="resnet18"):
        make_victim("vgg16", 10, (32, 32, 3))


def test_wrong_image_shape_names_both_shapes():
    victim = make_victim("lenet", 10, (32, 32, 3))
    variables = victim.init(jax.random.key(0))
    with pytest.raises(ShapeError, match=r"\(32, 32, 3\).*\(64, 64, 3\)"):
        victim.apply(variables, jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ShapeError):
        jax.jit(lambda x: victim.apply(variables, x))(jnp.zeros((1, 32, 32, 1)))
    assert issubclass(ShapeError, ValueError)


def test_eval_mode_is_pure_and_train_mode_returns_new_batch_stats():
    victim = make_victim("resnet_tiny", 4, (32, 32, 3))
    variables = jax.jit(victim.init)(jax.random.key(0))
    before = jax.tree.map(np.array, variables)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    apply_eval = jax.jit(victim.apply)
    first, second = apply_eval(variables, x), apply_eval(variables, x)
    np.testing.assert_array_equal(first, second)
    # Running statistics, not batch statistics: a row's logits do not depend on the rest of the batch.
    np.testing.assert_allclose(apply_eval(variables, x[:1])[0], first[0], rtol=1e-5, atol=1e-6)

    logits, new_stats = jax.jit(lambda v, x: victim.apply(v, x, train=True))(variables, x)
    assert logits.shape == (4, 4)
    assert jax.tree.structure(new_stats) == jax.tree.structure(variables["batch_stats"])
    assert not np.allclose(new_stats["BatchNorm_0"]["mean"], variables["batch_stats"]["BatchNorm_0"]["mean"])
    jax.tree.map(np.testing.assert_array_equal, variables, before)


def test_train_mode_without_batch_norm_returns_empty_stats():
    victim = make_victim("lenet", 3, (32, 32, 3))
    variables = victim.init(jax.random.key(0))
    logits, stats = victim.apply(variables, jnp.zeros((2, 32, 32, 3)), train=True)
    assert logits.shape == (2, 3) and stats == {}


@pytest.mark.parametrize("name", ["lenet", "resnet_tiny"])
def test_double_backward_through_the_parameter_gradient(name):
    """What gradient inversion needs: d/dx of a function of d(loss)/d(params)."""
    victim = make_victim(name, 3, (32, 32, 3))
    variables = victim.init(jax.random.key(0))
    labels = jnp.array([0, 2])

    def param_grad_norm(x):
        def loss(params):
            logits = victim.apply({**variables, "params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads = jax.grad(loss)(variables["params"])
        return sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))

    dx = jax.jit(jax.grad(param_grad_norm))(jax.random.normal(jax.random.key(1), (2, 32, 32, 3)))
    assert dx.shape == (2, 32, 32, 3)
    assert bool(jnp.all(jnp.isfinite(dx))) and float(jnp.abs(dx).max()) > 0


def test_victim_is_hashable_for_static_jit_arguments():
    victim = make_victim("lenet", 10, (32, 32, 3))
    assert isinstance(victim, Victim)
    assert hash(victim) == hash(make_victim("lenet", 10, [32, 32, 3]))


def _conv_kernels(params, prefix=()):
    """{path: kernel} of every 4-D kernel (kh, kw, in, out) in a params tree."""
    found = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if leaf.ndim == 4:
            found["/".join(str(getattr(p, "key", p)) for p in path)] = np.asarray(leaf)
    return found


def test_torch_init_resnet18_matches_pytorch_formulas():
    """kaiming_normal_(fan_out, relu) convs: std sqrt(2 / (out·kh·kw)), untruncated; nn.Linear's
    U(±1/sqrt(fan_in)) for the dense weights and bias; BN 1 / 0."""
    variables = make_victim("resnet18", 10, (32, 32, 3), init="torch").init(jax.random.key(0))
    kernels = _conv_kernels(variables["params"])
    assert len(kernels) == 20  # stem + 16 block convs + 3 projection shortcuts
    for path, k in kernels.items():
        kh, kw, _, out = k.shape
        expected = np.sqrt(2.0 / (out * kh * kw))
        # sampling error of a std estimate from n draws: ~ std / sqrt(2n); 5 of those
        assert abs(k.std() - expected) < 5 * expected / np.sqrt(2 * k.size) + 1e-7, path
        assert abs(k.mean()) < 5 * expected / np.sqrt(k.size), path
        if k.size > 10000:  # untruncated: tails beyond 2 std exist (~4.6 %)
            assert 0.03 < np.mean(np.abs(k) > 2 * expected) < 0.06, path
    dense = variables["params"]["Dense_0"]
    bound = 1 / np.sqrt(512)
    for leaf in (dense["kernel"], dense["bias"]):
        leaf = np.asarray(leaf)
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.8 * bound
    assert abs(np.asarray(dense["kernel"]).std() - bound / np.sqrt(3)) < 0.1 * bound / np.sqrt(3)
    for leaf in jax.tree.leaves({k: v for k, v in variables["params"].items() if "BatchNorm" in k}):
        assert set(np.unique(np.asarray(leaf))) <= {0.0, 1.0}


def test_torch_init_convnet_uses_conv2d_default_and_flax_is_unchanged():
    """ConvNet under "torch": nn.Conv2d's U(±1/sqrt(in·kh·kw)); "flax" (the default) is Flax's own."""
    params = make_victim("convnet", 10, (32, 32, 3), init="torch").init(jax.random.key(1))["params"]
    for path, k in _conv_kernels(params).items():
        kh, kw, cin, _ = k.shape
        bound = 1 / np.sqrt(cin * kh * kw)
        assert np.abs(k).max() <= bound and abs(k.std() - bound / np.sqrt(3)) < 0.1 * bound, path
    bias = np.asarray(params["Dense_0"]["bias"])
    assert np.all(np.abs(bias) <= 1 / np.sqrt(256)) and np.any(bias != 0)
    flax_default = make_victim("convnet", 10, (32, 32, 3)).init(jax.random.key(1))
    flax_named = make_victim("convnet", 10, (32, 32, 3), init="flax").init(jax.random.key(1))
    chex_equal = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), flax_default, flax_named)
    assert all(jax.tree.leaves(chex_equal))
    assert np.all(np.asarray(flax_default["params"]["Dense_0"]["bias"]) == 0)
    with pytest.raises(ValueError, match="unknown victim init"):
        make_victim("convnet", 10, (32, 32, 3), init="kaiming")
