#!/usr/bin/env python3
"""Reference values for fedge's differential-privacy accountant (shared/src/privacy/).

Writes shared/tests/fixtures/dp_reference.json, which the unit tests in shared/src/privacy/accountant.rs and
shared/src/privacy/special.rs read. Nothing here runs in CI; the fixture is committed.

What it computes:
  1. With Google's dp_accounting (RdpAccountant, default orders, ADD_OR_REMOVE_ONE):
     epsilon of PoissonSampledDpEvent(q, GaussianDpEvent(z)) self-composed over `rounds`, at delta 1e-5 and 1e-7,
     for z in {0.5, 0.8, 1.0, 1.5, 3.0}, q in {0.01, 0.1, 1.0}, rounds in {1, 10, 100, 1000}, plus a few extra points
     (small q, large z, mixed compositions).
  2. The distributed discrete Gaussian's RDP (Kairouz, Liu, Steinke 2021, Proposition 14 / Theorem 1), computed
     here with mpmath from the paper's formula, converted to epsilon with dp_accounting's own `compute_epsilon` at the
     same default orders. These are hand computations of the formula, independent of the Rust code.
  3. log-gamma and log-erfc from scipy at points the accountant needs, to pin the Rust special functions.

How to run it (from the repository root):
  python3 -m venv /tmp/dpvenv && /tmp/dpvenv/bin/pip install dp-accounting==0.6.0 mpmath
  /tmp/dpvenv/bin/python scripts/dp_reference.py > shared/tests/fixtures/dp_reference.json
"""

import json
import math
import sys

import dp_accounting
import mpmath
from absl import logging
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib
from scipy import special

DELTAS = [1e-5, 1e-7]
NOISE_MULTIPLIERS = [0.5, 0.8, 1.0, 1.5, 3.0]
SAMPLING_RATES = [0.01, 0.1, 1.0]
ROUNDS = [1, 10, 100, 1000]
# Extra points: tiny and odd sampling rates, large noise, one round.
EXTRA = [(0.7, 0.001, 5000), (10.0, 0.5, 100), (2.0, 0.05, 250), (1.1, 0.3, 3), (0.6, 0.02, 1)]


def gaussian_epsilon(z, q, rounds, delta):
    acc = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return acc.get_epsilon(delta)


def mixed_epsilon(parts, delta):
    acc = dp_accounting.rdp.RdpAccountant()
    for z, q, rounds in parts:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
        acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return acc.get_epsilon(delta)


def ddg_tau(local_variance, agents):
    """tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1)) (KLS21, Theorem 1)."""
    mpmath.mp.dps = 50
    s = mpmath.mpf(local_variance)
    return float(10 * mpmath.fsum(mpmath.exp(-2 * mpmath.pi**2 * s * k / (k + 1)) for k in range(1, agents)))


def ddg_rdp(alpha, l2, l1, local_variance, agents, dim):
    """KLS21 Proposition 14: D_alpha(Z_n || Z_n + Delta) <= min of three terms, Z_n a sum of n N_Z(0, sigma^2)^d."""
    mpmath.mp.dps = 50
    tau = mpmath.mpf(ddg_tau(local_variance, agents))
    a = mpmath.mpf(alpha)
    nv = mpmath.mpf(agents) * mpmath.mpf(local_variance)
    l2s = mpmath.mpf(l2) / mpmath.sqrt(nv)
    l1s = mpmath.mpf(l1) / mpmath.sqrt(nv)
    d = mpmath.mpf(dim)
    t1 = a / 2 * l2s**2 + tau * d
    t2 = a / 2 * (l2s**2 + 2 * l1s * tau + tau**2 * d)
    t3 = a / 2 * (l2s + tau * mpmath.sqrt(d)) ** 2
    return float(min(t1, t2, t3))


DDG_CASES = [
    # l2, l1, local variance, agents, dimension, rounds
    (100.0, 100.0 * math.sqrt(1000), 1000.0, 10, 1000, 1),
    (100.0, 100.0 * math.sqrt(1000), 1000.0, 10, 1000, 100),
    (1000.0, 1000.0 * math.sqrt(10**6), 1e5, 100, 10**6, 50),
    (3.0, 9.0, 1.0, 100, 1000, 1),
    (3.0, 9.0, 0.5, 20, 100, 10),
    (3.0, 9.0, 1.0, 20, 10**5, 10),
    (3.0, 9.0, 0.25, 5, 100, 1),
    (50.0, 400.0, 2.0, 100, 10**6, 200),
    (20.0, 20.0 * math.sqrt(5000), 30.0, 2, 5000, 1000),
]


def main():
    # dp_accounting warns when a fractional order's series does not converge (that order is then skipped, as it is
    # in the Rust port); the warnings are expected and would only clutter the output.
    logging.set_verbosity(logging.ERROR)
    orders = rdp_lib.DEFAULT_RDP_ORDERS
    gaussian = []
    for z in NOISE_MULTIPLIERS:
        for q in SAMPLING_RATES:
            for rounds in ROUNDS:
                gaussian.append(dict(noise_multiplier=z, sampling_rate=q, rounds=rounds,
                                     epsilon=[gaussian_epsilon(z, q, rounds, d) for d in DELTAS]))
    for z, q, rounds in EXTRA:
        gaussian.append(dict(noise_multiplier=z, sampling_rate=q, rounds=rounds,
                             epsilon=[gaussian_epsilon(z, q, rounds, d) for d in DELTAS]))
    mixed_parts = [(1.0, 0.1, 30), (0.8, 0.01, 200), (2.0, 1.0, 5)]
    mixed = dict(parts=[dict(noise_multiplier=z, sampling_rate=q, rounds=r) for z, q, r in mixed_parts],
                 epsilon=[mixed_epsilon(mixed_parts, d) for d in DELTAS])

    ddg = []
    for l2, l1, var, n, dim, rounds in DDG_CASES:
        rdp = [rounds * ddg_rdp(a, l2, l1, var, n, dim) for a in orders]
        eps = [rdp_lib.compute_epsilon(orders, rdp, d)[0] for d in DELTAS]
        ddg.append(dict(l2_sensitivity=l2, l1_sensitivity=l1, local_variance=var, agents=n, dimension=dim,
                        rounds=rounds, tau=ddg_tau(var, n),
                        rdp_at_order_2=rounds * ddg_rdp(2, l2, l1, var, n, dim),
                        rdp_at_order_32=rounds * ddg_rdp(32, l2, l1, var, n, dim),
                        epsilon=eps))

    points = [0.5, 1.0, 1.5, 2.0, 2.5, 3.7, 11.0, 33.3, 128.5, 1025.0, -0.5, -2.5, -7.3]
    lgamma = [dict(x=x, value=float(special.gammaln(x))) for x in points]
    erfc_points = [-30.0, -6.0, -2.0, -0.7, 0.0, 0.3, 1.0, 1.99, 2.01, 3.5, 6.0, 10.0, 27.0, 100.0, 1e4]
    log_erfc = [dict(x=x, value=float(rdp_lib._log_erfc(x))) for x in erfc_points]

    json.dump(dict(generator="scripts/dp_reference.py", dp_accounting=dp_accounting_version(),
                   deltas=DELTAS, orders=list(map(float, orders)), gaussian=gaussian, mixed=mixed,
                   ddg=ddg, lgamma=lgamma, log_erfc=log_erfc), sys.stdout, indent=1)
    sys.stdout.write("\n")


def dp_accounting_version():
    from importlib.metadata import version
    return version("dp-accounting")


if __name__ == "__main__":
    main()
