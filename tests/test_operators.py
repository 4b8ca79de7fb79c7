"""Property suite over the operator registry: a new operator is tested by being registered.

Each case builds a registered operator at a small size from parameter values chosen by parameter name
(no per-operator branches); operators with a `boundary` or `method` choice are also tested in the
spectral (SVD) setting. Each property picks its cases by what the operators declare: all of them act on
the test image and compare image-like measurements (`measurement_ndim == 3`), the linear ones
(`is_linear`) add adjoint, pinv, norm and matrix checks, those with `svd()` the spectral ones. A nonlinear
operator defined here (`Tanh`) shows that an operator joins exactly the properties it declares.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from posterior_diffusion.operators import (
    Operator,
    describe_capable,
    from_config,
    get_operator,
    list_operators,
    operator_class,
    operator_params,
)
from posterior_diffusion.operators.noise import NOISE_MODELS, NoiseModel, noise_params
from posterior_diffusion.operators.registry import OPERATORS

IMAGE = (2, 8, 8)
SMALL = {
    "image_size": [8, 8],
    "kernel_size": 5,
    "kernel": [[0.1, 0.2, 0.1], [0.05, 0.3, 0.05], [0.0, 0.1, 0.1]],
    "factor": 2,
    "missing": 0.5,
}
SPECTRAL = {"boundary": "circular", "method": "average"}
TANH = "test_tanh"


class Tanh(Operator):
    """y = tanh(x) elementwise: a nonlinear operator with image-like measurements, registered only by these tests."""

    def forward(self, x):
        return torch.tanh(x)


@pytest.fixture(autouse=True)
def tanh_operator():
    """The test-only operator is registered while each test of this module runs (and at collection), never after."""
    with OPERATORS.registered(TANH, Tanh):
        yield


def _cases():
    """Every registered operator at a small size, and again in its spectral setting where it has one."""
    cases = []
    for name in list_operators():
        params = {k: v for k, v in SMALL.items() if k in operator_params(name)}
        cases.append(pytest.param(name, params, id=name))
        spectral = {k: v for k, v in SPECTRAL.items() if k in operator_params(name)}
        if spectral:
            cases.append(pytest.param(name, {**params, **spectral}, id=f"{name}-{'-'.join(spectral.values())}"))
    return cases


def make(name, params, **extra):
    return get_operator(name, **params, **extra).double()


def _select(cases, *, linear: bool = False, svd: bool = False):
    """The cases whose operators have image-like measurements and, where asked, are linear or have an SVD."""
    picked = []
    for case in cases:
        cls = operator_class(case.values[0])
        if cls.measurement_ndim != 3 or (linear and not cls.is_linear):
            continue
        if svd and make(*case.values).svd() is None:
            continue
        picked.append(case)
    return picked


with OPERATORS.registered(TANH, Tanh):
    CASES = _select(_cases())
    LINEAR = _select(_cases(), linear=True)
    WITH_SVD = _select(_cases(), linear=True, svd=True)


def rand(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_a_nonlinear_operator_joins_the_generic_properties_only():
    assert TANH in list_operators()
    groups = {"all": CASES, "linear": LINEAR, "svd": WITH_SVD}
    ids = {group: {case.id for case in cases} for group, cases in groups.items()}
    assert TANH in ids["all"] and TANH not in ids["linear"] | ids["svd"]
    assert {"gaussian_blur-circular", "super_resolution-average", "denoise"} <= ids["svd"]
    assert not {"gaussian_blur", "super_resolution"} & ids["svd"] and "gaussian_blur" in ids["linear"]
    nonlinear = {"phase_retrieval", "high_dynamic_range"}  # registered operators: the generic properties only
    assert nonlinear <= ids["all"] and not nonlinear & (ids["linear"] | ids["svd"])
    op = get_operator(TANH)
    assert op.svd() is None and not op.has_svd and TANH not in describe_capable("linear")


def test_svd_is_stated_once_and_described_with_its_setting():
    for case in LINEAR:
        op = make(*case.values)
        assert op.has_svd == (op.svd() is not None)
    text = describe_capable("svd")
    assert "gaussian_blur (boundary='circular')" in text and "super_resolution (method='average')" in text
    assert "denoise," in text and TANH not in text


@pytest.mark.parametrize("name,params", LINEAR)
def test_adjoint_identity(name, params):
    op = make(name, params)
    x = rand((3, *IMAGE), 1)
    y = rand((3, *op.measurement_shape(IMAGE)), 2)
    lhs = (op(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    assert abs(float(lhs - rhs)) <= 1e-5 * abs(float(lhs))


def _autograd_residual_gradient(op, y, x):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(op.residual_norm(y, x).square().sum() / 2, x)
    return grad


@pytest.mark.parametrize("noise", [{"noise_sigma": 0.1}, {"noise": "poisson", "poisson_rate": 2.0}])
@pytest.mark.parametrize("name,params", CASES)
def test_residual_gradient_matches_autograd(name, params, noise):
    """The closed form samplers step with (A^T of the noise model's gradient for linear operators) is the
    gradient of ||r(y, A x)||^2 / 2, per sample, in inference mode too."""
    op = make(name, params, **noise)
    x = rand((3, *IMAGE), 1)
    y = op(rand((3, *IMAGE), 2)).clamp(-1, 1)
    expected = _autograd_residual_gradient(op, y, x)
    with torch.inference_mode():
        got = op.residual_gradient(y, x)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert float(expected.abs().max()) > 0


def test_residual_gradient_of_a_noise_model_without_a_closed_form():
    """A user's noise model that only defines residual_norm gets its gradient by autograd (the base class), also
    through a linear operator's adjoint and in inference mode."""
    from posterior_diffusion.operators.noise import NoiseModel

    class Weighted(NoiseModel):
        def residual_norm(self, y, y_hat):
            return ((y - y_hat) * torch.linspace(0.5, 2.0, y.shape[-1], dtype=y.dtype)).flatten(1).norm(dim=1)

    op = make("inpaint_random", {"image_size": [8, 8], "missing": 0.5})
    op.noise = Weighted()
    x, y = rand((2, *IMAGE), 1), rand((2, *IMAGE), 2)
    expected = _autograd_residual_gradient(op, y, x)
    with torch.inference_mode():
        got = op.residual_gradient(y, x)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12) and float(expected.abs().max()) > 0


@pytest.mark.parametrize("name,params", LINEAR)
def test_norm_squared_approaches_the_largest_eigenvalue_of_the_normal_operator_from_below(name, params):
    """Power iteration where there is no SVD (50 steps: 0.44 % low for bicubic SR, whose top singular values
    cluster; 300 steps within 0.1 %), max(s)^2 otherwise; never above the dense spectral norm."""
    op = make(name, params)
    dense = float(torch.linalg.matrix_norm(op.matrix(IMAGE), ord=2)) ** 2
    assert op.norm_squared(IMAGE) == pytest.approx(dense, rel=1e-2)
    power = op.norm_squared(IMAGE, iters=300)
    assert power <= dense * (1 + 1e-9) and power == pytest.approx(dense, rel=1e-3)


@pytest.mark.parametrize("name,params", WITH_SVD)
def test_norm_squared_of_an_svd_is_exact(name, params):
    op = make(name, params)
    dense = float(torch.linalg.matrix_norm(op.matrix(IMAGE), ord=2)) ** 2
    assert op.norm_squared(IMAGE) == pytest.approx(dense, rel=1e-6)


@pytest.mark.parametrize("name,params", LINEAR)
def test_pinv_is_least_squares(name, params):
    op = make(name, params)
    y = rand((2, *op.measurement_shape(IMAGE)), 3)
    x = op.pinv(y)
    normal_residual = op.adjoint(op(x) - y)  # zero at a least-squares solution
    assert float(normal_residual.norm()) <= 1e-4 * float(op.adjoint(y).norm())
    # minimum norm: pinv(A x) is the projection of x on range(A^T), never longer than x
    x0 = rand((2, *IMAGE), 4)
    assert float(op.pinv(op(x0)).norm()) <= float(x0.norm()) * (1 + 1e-6)


@pytest.mark.parametrize("name,params", LINEAR)
def test_pinv_in_float32_converges_without_blowing_up(name, params):
    op = get_operator(name, **params)
    x0 = rand((2, *IMAGE), 3).float()
    x = op.pinv(op(x0))  # a consistent system: the minimum-norm solution is never longer than x0
    assert torch.isfinite(x).all() and float(x.norm()) <= 1.01 * float(x0.norm())
    assert float(op.adjoint(op(x) - op(x0)).norm()) <= 1e-3 * float(op.adjoint(op(x0)).norm())


@pytest.mark.parametrize("name,params", WITH_SVD)
def test_svd_reproduces_operator(name, params):
    op = make(name, params)
    svd = op.svd()
    x = rand((2, *IMAGE), 5)
    c = svd.V_t(x)
    assert torch.allclose(svd.V(c), x, atol=1e-10), "V is not orthonormal (V V^T x != x)"
    assert torch.allclose(c.abs().square().sum(), x.square().sum()), "V^T does not preserve norms"
    s = svd.singular_values(IMAGE)
    assert (s >= 0).all()
    assert torch.allclose(svd.U(s * c), op(x), atol=1e-10)
    y = rand((2, *op.measurement_shape(IMAGE)), 6)
    assert torch.allclose(svd.U(svd.U_t(y)), y, atol=1e-10), "U U^T is not the identity on measurements"


@pytest.mark.parametrize("name,params", LINEAR)
def test_matrix_matches_forward(name, params):
    op = make(name, params)
    x = rand((1, *IMAGE), 7)
    a = op.matrix(IMAGE)
    assert torch.allclose(a @ x.reshape(-1), op(x).reshape(-1), atol=1e-10)


def _dense_prox(a, z, y, rho, sigma_y):
    """argmin ||y - A x||^2 / (2 sigma_y^2) + rho / 2 ||x - z||^2 per sample, by a dense solve of the normal equations
    (A^T A / sigma_y^2 + rho I) x = A^T y / sigma_y^2 + rho z."""
    eye = torch.eye(a.shape[1], dtype=a.dtype)
    rows = [
        torch.linalg.solve(a.T @ a / sigma_y**2 + r * eye, a.T @ yb.reshape(-1) / sigma_y**2 + r * zb.reshape(-1))
        for zb, yb, r in zip(z, y, rho, strict=True)
    ]
    return torch.stack(rows).reshape(z.shape)


@pytest.mark.parametrize("name,params", LINEAR)
def test_prox_matches_a_dense_solve(name, params):
    """One weight per image (DiffPIR's rho_t, DAPS's per-sample values), through the SVD where there is one and
    conjugate gradients otherwise: the defaults within 1e-3, more iterations to 1e-6 (float32 SR basis)."""
    op = make(name, params, noise_sigma=0.1)
    a = op.matrix(IMAGE)
    z, y = rand((3, *IMAGE), 1), rand((3, *op.measurement_shape(IMAGE)), 2)
    rho = torch.tensor([0.5, 4.0, 50.0], dtype=torch.float64)
    expected = _dense_prox(a, z, y, rho, 0.1)
    for tol, options in ((1e-3, {}), (1e-6, {"max_iter": 500, "tol": 1e-12})):
        with torch.inference_mode():
            got = op.prox(z, y, rho, **options)
        assert ((got - expected).flatten(1).norm(dim=1) <= tol * expected.flatten(1).norm(dim=1)).all()
    # a float rho is that weight for every image; sigma_y given explicitly overrides the noise model's
    assert torch.allclose(op.prox(z, y, 4.0), op.prox(z, y, torch.full((3,), 4.0, dtype=torch.float64)))
    twice = _dense_prox(a, z, y, torch.full((3,), 4.0, dtype=torch.float64), 0.2)
    assert torch.allclose(op.prox(z, y, 4.0, sigma_y=0.2, max_iter=500, tol=1e-12), twice, atol=1e-6)
    # the weight matters in the right direction: a larger rho stays nearer z
    near, far = op.prox(z, y, 100.0), op.prox(z, y, 0.1)
    assert float((near - z).norm()) < float((far - z).norm())


@pytest.mark.parametrize("name,params", LINEAR)
def test_prox_does_not_depend_on_the_batch(name, params):
    """Each image's conjugate gradients stop on their own (a converged one is frozen while others go on)."""
    op = make(name, params, noise_sigma=0.05)
    z, y = rand((3, *IMAGE), 5), rand((3, *op.measurement_shape(IMAGE)), 6)
    rho = torch.tensor([1e-3, 1.0, 1e3], dtype=torch.float64)
    together = op.prox(z, y, rho)
    alone = torch.cat([op.prox(z[i : i + 1], y[i : i + 1], rho[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,params", LINEAR)
def test_prox_limits(name, params):
    """rho = inf returns z; sigma_y = 0 (noiseless) is the limit lam -> 0: the least-squares solution nearest z,
    z + A^+ (y - A z), which fits consistent data exactly (dense pinv with an SVD; CG with enough iterations)."""
    op = make(name, params, noise_sigma=0.1)
    z, y = rand((2, *IMAGE), 3), op(rand((2, *IMAGE), 4))
    got = op.prox(z, y, torch.tensor([float("inf"), 1.0], dtype=torch.float64))
    assert torch.equal(got[0], z[0]) and not torch.allclose(got[1], z[1])
    x = op.prox(z, y, 1.0, sigma_y=0.0, max_iter=500, tol=1e-12)
    assert float((op(x) - y).norm()) <= 1e-6 * float(y.norm())
    if op.has_svd:
        a = op.matrix(IMAGE)
        nearest = z.flatten(1) + (y.flatten(1) - z.flatten(1) @ a.T) @ torch.linalg.pinv(a).T
        assert torch.allclose(x.flatten(1), nearest, atol=1e-6)
        assert torch.allclose(op.prox(z, y, 1.0, sigma_y=1e-9), x, atol=1e-5)  # continuous at the limit


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prox_keeps_the_input_dtype(dtype):
    for params in ({"kernel_size": 5}, {"kernel_size": 5, "boundary": "circular"}):
        op = get_operator("gaussian_blur", **params)
        z = rand((2, *IMAGE), 5).to(dtype)
        x = op.prox(z, op(z.float()), torch.tensor([1.0, 10.0]))
        assert x.dtype == dtype and torch.isfinite(x.float()).all()


def test_prox_refusals():
    op = get_operator("gaussian_blur", kernel_size=5)
    z = rand((2, *IMAGE), 6).float()
    with pytest.raises(ValueError, match="rho must be >= 0"):
        op.prox(z, op(z), -1.0)
    with pytest.raises(ValueError, match=r"rho must be a float or a \(2,\) tensor"):
        op.prox(z, op(z), torch.ones(3))
    with pytest.raises(ValueError, match="sigma_y must be"):
        op.prox(z, op(z), 1.0, sigma_y=float("nan"))
    poisson = get_operator("gaussian_blur", kernel_size=5, noise="poisson")
    with pytest.raises(ValueError, match="pass sigma_y explicitly"):
        poisson.prox(z, op(z), 1.0)
    assert torch.isfinite(poisson.prox(z, op(z), 1.0, sigma_y=0.05)).all()
    with pytest.raises(ValueError, match=f"needs a linear operator; '{TANH}' is nonlinear.*gaussian_blur"):
        get_operator(TANH).prox(z, z, 1.0)


@pytest.mark.parametrize("name,params", CASES)
def test_config_round_trip_and_seeded_measure(name, params):
    op = get_operator(name, **params, noise_sigma=0.1)
    twin = from_config(op.to_config())
    assert twin.to_config() == op.to_config()
    x = rand((2, *IMAGE), 8).float().clamp(-1, 1)
    assert torch.equal(twin(x), op(x))
    y1 = op.measure(x, torch.Generator().manual_seed(3))
    y2 = twin.measure(x, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, op.measure(x, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("name,params", CASES)
def test_forward_is_differentiable_and_batch_independent(name, params):
    op = make(name, params)
    x = rand((3, *IMAGE), 9).requires_grad_(True)
    op(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.allclose(op(x[1:2]), op(x)[1:2])


def test_gaussian_noise_level():
    op = get_operator("denoise", noise_sigma=0.2)
    x = torch.zeros(4, 1, 64, 64)
    y = op.measure(x, torch.Generator().manual_seed(0))
    assert abs(float(y.std()) - 0.2) < 0.005


def test_poisson_noise_is_shot_noise():
    op = get_operator("denoise", noise="poisson", poisson_rate=1.0)
    x = torch.full((1, 1, 128, 128), 0.0)  # 0.5 on [0, 1] -> mean count 127.5
    y = op.measure(x, torch.Generator().manual_seed(0))
    counts = (y + 1) / 2 * 255
    assert abs(float(counts.mean()) - 127.5) < 1.0
    assert abs(float(counts.var()) - 127.5) < 8.0  # variance = mean


def test_a_registered_noise_model_is_built_from_its_declared_parameters():
    class Uniform(NoiseModel):
        params: ClassVar[dict[str, str]] = {"uniform_width": "width"}

        def __init__(self, width: float = 0.1):
            self.width = width

        def sample(self, y_clean, generator=None):
            return y_clean + self.width * (2 * torch.rand(y_clean.shape, generator=generator, dtype=y_clean.dtype) - 1)

        def to_config(self):
            return {"noise": "test_uniform", "uniform_width": self.width}

    with NOISE_MODELS.registered("test_uniform", Uniform):
        assert noise_params() == ("noise", "noise_sigma", "poisson_rate", "uniform_width")
        op = get_operator("denoise", noise="test_uniform", uniform_width=0.3)
        assert op.noise.width == 0.3 and from_config(op.to_config()).noise.width == 0.3
        y = op.measure(torch.zeros(1, 1, 16, 16), torch.Generator().manual_seed(0))
        assert 0.2 < float(y.abs().max()) <= 0.3
        assert get_operator("denoise", noise="test_uniform").noise.width == 0.1  # the model's default
    with pytest.raises(ValueError, match=r"unknown noise model 'test_uniform'; valid: gaussian, poisson"):
        get_operator("denoise", noise="test_uniform")


def test_unknown_names_and_params_are_listed():
    with pytest.raises(ValueError, match=r"unknown operator 'blurr'; valid: .*gaussian_blur"):
        get_operator("blurr")
    with pytest.raises(ValueError, match=r"unknown parameter.*sigmaa.*valid: kernel_size, sigma"):
        get_operator("gaussian_blur", sigmaa=2)
    with pytest.raises(ValueError, match="unknown noise model"):
        get_operator("denoise", noise="laplace")
    with pytest.raises(ValueError, match="boundary"):
        get_operator("gaussian_blur", boundary="zero")


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="too large for reflect padding"):
        get_operator("gaussian_blur").measure(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="not divisible by the SR factor 4"):
        get_operator("super_resolution", factor=4).measure(torch.zeros(1, 3, 10, 10))
    with pytest.raises(ValueError, match=r"mask is \(8, 8\) but the image is \(16, 16\)"):
        get_operator("inpaint_random", image_size=8).measure(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="NaN"):
        get_operator("denoise").measure(torch.full((1, 1, 4, 4), float("nan")))


# Independent references -----------------------------------------------------------------------------------
