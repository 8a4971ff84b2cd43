"""The compiled forest pass: the same means, spreads and conformal bounds as scikit-learn's
per-tree path on every space, exact threshold rounding, and unchanged refusals."""
from __future__ import annotations

import numpy as np
import pytest

from costmeter.errors import ConfigError
from costmeter.models.spaces import get_space
from costmeter.predictors.api import ForestPredictor
from costmeter.predictors.estimators import tree_kernel

SPACES = ("nb201", "ofa_mbv3", "fbnet")


def _fit(space: str) -> ForestPredictor:
    """The space's default model (fewer trees), with its conformal calibration."""
    from costmeter.predictors.estimators.arch import ArchPredictor

    module = get_space(space)
    archs = module.sample(240, seed=3)
    macs = module.features(archs)["macs_total"].to_numpy()
    noise = np.random.default_rng(1).lognormal(0.0, 0.05, len(archs))
    template = ArchPredictor(space, device="cpu", runtime="onnxruntime", conformal_folds=5)
    regressor = template.default_regressor().set_params(n_estimators=12)
    return ForestPredictor(template.set_params(regressor=regressor).fit(
        archs, (0.1 + macs / 5e7) * noise))


@pytest.fixture(scope="module", params=SPACES)
def fitted(request: pytest.FixtureRequest) -> tuple[str, ForestPredictor]:
    return request.param, _fit(request.param)


def _predict_both(model: ForestPredictor, archs: object, monkeypatch: pytest.MonkeyPatch,
                  **kwargs: object) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(compiled path, scikit-learn path) outputs of ``model.predict``."""
    model.estimator.__dict__.pop("_table", None)  # NB201's whole-space table: rebuild it
    fast = model.predict(archs, **kwargs)
    monkeypatch.setenv("COSTMETER_TREE_KERNEL", "sklearn")
    model.estimator.__dict__.pop("_table", None)
    reference = model.predict(archs, **kwargs)
    monkeypatch.delenv("COSTMETER_TREE_KERNEL")
    model.estimator.__dict__.pop("_table", None)
    return fast, reference


def test_compiled_pass_matches_sklearn_means_spreads_and_bounds(
        fitted: tuple[str, ForestPredictor], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("numba")
    space, model = fitted
    archs = get_space(space).sample(3000, seed=11)
    assert tree_kernel.kernel_available()
    for kwargs in ({}, {"coverage": 0.9}):
        fast, reference = _predict_both(model, archs, monkeypatch, **kwargs)
        assert len(fast) == len(reference) == (3 if kwargs else 2)
        for got, want in zip(fast, reference):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        assert np.all(fast[0] > 0) and np.ptp(fast[0]) > 0  # a real spread of predictions
    array = get_space(space).to_array(archs)
    for got, want in zip(model.predict(array, coverage=0.8), model.predict(archs, coverage=0.8)):
        np.testing.assert_array_equal(got, want)


def test_kernel_reproduces_per_tree_mean_and_std_of_a_log_target_forest() -> None:
    pytest.importorskip("numba")
    from costmeter.predictors.estimators.forest import ModelForest

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 7)).astype(np.float32)
    X[:, 3] = np.round(X[:, 3])  # ties on a discrete feature, as the spaces' counts have
    y = np.exp(X[:, 0] + 0.5 * X[:, 3] + 0.1 * rng.normal(size=600))
    forest = ModelForest(n_estimators=20, min_samples_leaf=1).fit(X, y)
    probe = np.concatenate([X, rng.normal(size=(2000, 7)).astype(np.float32)])
    trees = forest._tree_outputs(probe)
    mean, std = tree_kernel.tree_mean_std(forest.estimator_, probe)
    np.testing.assert_allclose(mean, trees.mean(axis=0), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(std, trees.std(axis=0), rtol=1e-9, atol=1e-13)
    latency, spread = forest.predict_with_uncertainty(probe)
    np.testing.assert_allclose(latency, np.exp(trees.mean(axis=0)), rtol=1e-13)
    np.testing.assert_allclose(spread / latency, trees.std(axis=0), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("n_trees", [1, 3, 6, 13])
def test_kernel_groups_and_leftovers_match_per_tree_outputs(n_trees: int) -> None:
    """Rows and trees walk in groups of four: counts that leave rows and trees over (and fewer
    trees than a group) must give what every tree's own predict gives, row for row."""
    pytest.importorskip("numba")
    from costmeter.predictors.estimators.forest import ModelForest

    rng = np.random.default_rng(n_trees)
    X = rng.normal(size=(400, 5)).astype(np.float32)
    X[:, 1] = np.round(X[:, 1] * 2)
    forest = ModelForest(n_estimators=n_trees, min_samples_leaf=1).fit(
        X, np.exp(X[:, 0] + 0.3 * X[:, 1]))
    for rows in (tree_kernel.MIN_COMPILED_ROWS + 1, tree_kernel.MIN_COMPILED_ROWS + 3, 1030):
        probe = np.concatenate([X, rng.normal(size=(rows - len(X), 5)).astype(np.float32)])
        trees = forest._tree_outputs(probe)
        mean, std = tree_kernel.tree_mean_std(forest.estimator_, probe)
        np.testing.assert_allclose(mean, trees.mean(axis=0), rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(std, trees.std(axis=0), rtol=1e-9, atol=1e-13)


def test_sibling_order_keeps_every_node_and_pairs_children() -> None:
    from costmeter.predictors.estimators.forest import ModelForest

    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    forest = ModelForest(n_estimators=3, min_samples_leaf=1).fit(X, np.exp(X[:, 0]))
    feature, threshold, left, value, roots = tree_kernel.flatten_forest(forest.estimator_)
    for est, root in zip(forest.estimator_.estimators_, roots):
        tree = est.tree_
        order = tree_kernel.sibling_order(tree.children_left, tree.children_right)
        assert sorted(order.tolist()) == list(range(tree.node_count)) and order[0] == 0
        for pos, node in enumerate(order):
            k = int(root) + pos
            if tree.children_left[node] < 0:
                assert left[k] == k and threshold[k] == np.inf
            else:
                child = int(left[k]) - int(root)
                assert order[child] == tree.children_left[node]
                assert order[child + 1] == tree.children_right[node]
                assert feature[k] == tree.feature[node]
            assert value[k] == tree.value[node].ravel()[0]


def test_base_without_the_column_gather_is_the_same_to_the_last_bit(
        fitted: tuple[str, ForestPredictor]) -> None:
    """The default models' base uses every column: it skips the gather, not a single bit."""
    space, model = fitted
    regressor = model.estimator.regressor_
    x = model.estimator._inputs_from_matrix(get_space(space).feature_matrix(
        get_space(space).sample(3000, seed=12)))
    assert len(regressor.linear_columns_) == x.shape[1]
    gathered = x[:, regressor.linear_columns_].astype(np.float64)
    np.testing.assert_array_equal(regressor._linear64(x), gathered)
    np.testing.assert_array_equal(regressor._base(regressor._linear64(x)), regressor._base(gathered))


def test_fallback_is_the_per_tree_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    from costmeter.predictors.estimators.forest import ModelForest

    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    forest = ModelForest(n_estimators=8).fit(X, np.exp(X[:, 0]))
    monkeypatch.setenv("COSTMETER_TREE_KERNEL", "sklearn")
    assert not tree_kernel.kernel_available()
    trees = forest._tree_outputs(X)
    mean, std = forest.tree_mean_std(X)
    np.testing.assert_array_equal(mean, trees.mean(axis=0))
    np.testing.assert_array_equal(std, trees.std(axis=0))


def test_float32_floor_decides_comparisons_like_the_float64_threshold() -> None:
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(size=20000), rng.integers(0, 1000, 2000) * 1.0,
                        rng.lognormal(15, 3, 2000)]).astype(np.float32)
    pairs = np.sort(rng.choice(x, size=(5000, 2)), axis=1).astype(np.float64)
    thresholds = np.concatenate([pairs.mean(axis=1), x[:2000].astype(np.float64) + 1e-12,
                                 x[:2000].astype(np.float64)])
    low = tree_kernel.float32_floor(thresholds)
    assert low.dtype == np.float32 and np.all(low.astype(np.float64) <= thresholds)
    xs = np.sort(x)
    for t, f in zip(thresholds[::7], low[::7]):
        np.testing.assert_array_equal(xs <= t, xs <= f)


BAD_STRINGS = {
    "nb201": ("|nor_conv_3x3~0|+|bogus~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|", "bogus"),
    "ofa_mbv3": ("r176|k3e4,k5e6|k7e3,k9e4,k5e6|k3e4,k3e4|k3e4,k3e4|k3e4,k3e4", "kernel"),
    "fbnet": ("|".join(["k3_e1"] * 21 + ["k9_e9"]), "k9_e9"),
}


def test_bad_strings_still_raise_one_line_errors(fitted: tuple[str, ForestPredictor]) -> None:
    space, model = fitted
    bad, words = BAD_STRINGS[space]
    good = get_space(space).sample(5000, seed=2)
    with pytest.raises(ConfigError) as info:
        model.predict(good + [bad], coverage=0.9)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_bad_row_past_the_first_chunk_is_named_by_its_batch_row(
        fitted: tuple[str, ForestPredictor]) -> None:
    """Chunks are checked one at a time; the error still counts rows from the batch's start."""
    from costmeter.predictors.api import chunk_rows

    space, model = fitted
    module = get_space(space)
    array = module.to_array(module.sample(chunk_rows(len(module.feature_names())) + 500, seed=1))
    row = len(array) - 7
    array[row, 0] = 99  # outside every space's first field
    with pytest.raises(ConfigError, match=f"\\(row {row}\\)") as info:
        model.predict(array, coverage=0.9)
    with pytest.raises(ConfigError) as whole:
        module.to_array(array)
    assert str(info.value) == str(whole.value)


def test_ofa_byte_mask_validation_agrees_with_the_field_by_field_check() -> None:
    from costmeter.models.spaces import ofa_mbv3

    rng = np.random.default_rng(5)
    base = ofa_mbv3.sample_array(400, seed=9)
    for trial in range(200):
        a = base[rng.integers(0, len(base), 3)].copy()
        for _ in range(int(rng.integers(0, 3))):
            a[rng.integers(0, len(a)), rng.integers(0, a.shape[1])] = rng.choice(
                [-1, 0, 2, 3, 4, 5, 6, 7, 9, 128, 130, 224, 255, 256, 999])
        try:
            want = ofa_mbv3._validate_slowly(a)
        except ConfigError as error:
            with pytest.raises(ConfigError) as raised:
                ofa_mbv3._validate_array(a)
            assert str(raised.value) == str(error)
            continue
        np.testing.assert_array_equal(ofa_mbv3._validate_array(a), want)


def test_ofa_token_decoder_reads_every_sampled_string() -> None:
    from costmeter.models.spaces import ofa_mbv3
    from costmeter.models.spaces.ofa_mbv3.strings import decode_canonical

    strings = ofa_mbv3.sample(3000, seed=8)
    np.testing.assert_array_equal(decode_canonical(strings), ofa_mbv3.sample_array(3000, seed=8))
    shifted = [strings[0] + "|k3e4", "|".join(strings[1].split("|")[:-1])] + strings[2:5]
    assert decode_canonical(shifted) is None  # the '|' count is checked per string
    assert decode_canonical([" " + strings[0]]) is None and decode_canonical([]) is None


def test_fbnet_byte_decoder_agrees_with_the_parser_or_steps_aside() -> None:
    from costmeter.models.spaces.fbnet import encoding

    strings = encoding.sample(2000, seed=4)
    np.testing.assert_array_equal(encoding._fast_codes(strings), encoding.sample_codes(2000, seed=4))
    rng = np.random.default_rng(6)
    alphabet = list("k35e136_g2skip| \n") + ["é"]
    for _ in range(400):
        text = strings[int(rng.integers(0, len(strings)))]
        at = int(rng.integers(0, len(text)))
        text = text[:at] + str(rng.choice(alphabet)) + text[at + int(rng.integers(0, 2)):]
        fast = encoding._fast_codes([strings[0], text])
        try:
            want = np.stack([encoding.parse(strings[0]), encoding.parse(text)])
        except ConfigError:
            assert fast is None
            continue
        if fast is not None:  # the parser also accepts spellings with spaces; those step aside
            np.testing.assert_array_equal(fast, want)
    assert encoding._fast_codes([strings[0] + "|skip"]) is None
    assert encoding._fast_codes(["|".join(strings[0].split("|")[:-1]), strings[1] + "|skip"]) is None
