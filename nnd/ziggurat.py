"""Exact ziggurat samplers for student_t and gennorm, and the random-word helpers they share.

The ziggurat (Marsaglia & Tsang 2000) covers a symmetric unimodal density with 2^12 layers
of equal area: a draw takes one random word (12 bits for the layer, 1 for the sign, the rest
for the position) and is accepted at once unless it falls in a layer's wedge or the tail;
those draws are finished in a fixed-size buffer (:class:`_Ziggurat`), so there is no
per-element loop and the sampler jits. Layers are chosen through an alias table
(:func:`_alias`). The tables are built in float64 on the host from the law's curve
(:class:`GenNormCurve`, :class:`StudentTCurve`), which need only the incomplete gamma and
beta functions written here (:func:`gamma_q`, :func:`beta_i`), not scipy.

Only :mod:`nnd.increments` uses this module: ``StudentT.sample`` and ``GenNorm.sample`` call
:func:`sample`, and ``Logistic.sample`` turns random words into uniforms with
:func:`bits_uniform`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


#: The ziggurat has 2^12 layers: a draw takes one random word, 12 bits for the layer,
#: 1 for the sign and the rest (19 of 32, 51 of 64) for the position in the layer.
LAYER_BITS = 12
#: Buffer for the draws that leave the fast path: their expected number plus this many
#: standard deviations (plus 8); a larger count (probability < 1e-6 per call) is served
#: by further passes of the buffer.
MARGIN = 5.0
# States of a buffer slot.
_DONE, _FIRST, _RESTART, _TAIL = 0, 1, 2, 3
# Random words per slot and step (see _Ziggurat._step); the first two steps' words come
# with the fast path's, later steps (rarely needed) draw their own.
_STEP_WORDS, _PREDRAWN_STEPS = 5, 2


def gamma_q(a: float, y: float) -> float:
    """Regularised upper incomplete gamma Q(a, y) in float64 (series or Lentz's continued
    fraction, Numerical Recipes §6.2); the ziggurat's tables need it without scipy."""
    if y <= 0.0:
        return 1.0
    log_front = -y + a * math.log(y) - math.lgamma(a)
    if y < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= y / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return 1.0 - total * math.exp(log_front)
    tiny = 1e-300
    b = y + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return math.exp(log_front) * h


def beta_i(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) in float64 (Lentz's continued fraction,
    Numerical Recipes §6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - beta_i(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (tiny if abs(d) < tiny else d)
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (tiny if abs(d) < tiny else d)
            c = 1.0 + num / c
            c = tiny if abs(c) < tiny else c
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    return math.exp(log_front) * h / a


@dataclasses.dataclass(frozen=True)
class GenNormCurve:
    """f(x) = exp(-x^β) on x ≥ 0: |z|/α of the generalised normal (units of its α)."""

    beta: float

    def inverse(self, c: float) -> float:  # x with 1 - f(x) = c
        return (-math.log1p(-c)) ** (1.0 / self.beta)

    def inverse_height(self, y: float) -> float:  # x with f(x) = y
        return (-math.log(y)) ** (1.0 / self.beta)

    def density(self, x: float) -> float:
        return math.exp(-x ** self.beta)

    def tail_area(self, r: float) -> float:  # ∫_r^∞ f = Γ(1/β) Q(1/β, r^β) / β
        a = 1.0 / self.beta
        return math.exp(math.lgamma(a)) * gamma_q(a, r ** self.beta) / self.beta

    def density_device(self, x):
        return jnp.exp(-x ** self.beta)

    def tail(self, u1, u2, r: float):
        """One proposal beyond r, exact after acceptance: y = x^β has density
        ∝ y^(a-1) e^(-y) on y > y_r (a = 1/β); propose y_r + Exp(λ) with
        λ = 1 - max(a - 1, 0)/y_r and accept with probability
        (y/y_r)^(a-1) exp(-(1 - λ)(y - y_r)) ≤ 1."""
        a, y_r = 1.0 / self.beta, r ** self.beta
        lam = 1.0 - max(a - 1.0, 0.0) / y_r
        if lam <= 0.0:
            raise ValueError(f"gennorm tail: r = {r:g} is not past the mode of x^β")
        d = -jnp.log(u1) / lam
        log_accept = (a - 1.0) * jnp.log1p(d / y_r) - (1.0 - lam) * d
        return (y_r + d) ** a, jnp.log(u2) < log_accept


@dataclasses.dataclass(frozen=True)
class StudentTCurve:
    """f(x) = (1 + x²/ν)^(-(ν+1)/2) on x ≥ 0: |t_ν| (units of t_ν, before the rescaling)."""

    df: float

    def inverse(self, c: float) -> float:
        return math.sqrt(self.df * math.expm1(-2.0 / (self.df + 1.0) * math.log1p(-c)))

    def inverse_height(self, y: float) -> float:
        return math.sqrt(self.df * math.expm1(-2.0 / (self.df + 1.0) * math.log(y)))

    def density(self, x: float) -> float:
        return math.exp(-0.5 * (self.df + 1.0) * math.log1p(x * x / self.df))

    def tail_area(self, r: float) -> float:  # √ν B(ν/2, ½) I_{ν/(ν+r²)}(ν/2, ½) / 2
        nu = self.df
        log_b = math.lgamma(0.5 * nu) + math.lgamma(0.5) - math.lgamma(0.5 * nu + 0.5)
        return 0.5 * math.sqrt(nu) * math.exp(log_b) * beta_i(0.5 * nu, 0.5, nu / (nu + r * r))

    def density_device(self, x):
        return jnp.exp(-0.5 * (self.df + 1.0) * jnp.log1p(jnp.square(x) / self.df))

    def tail(self, u1, u2, r: float):
        """One proposal beyond r, exact after acceptance: s = x² has density
        ∝ s^(-1/2) (ν + s)^(-(ν+1)/2) on s > r²; propose from the Lomax law
        ∝ (ν + s)^(-(ν+1)/2) by inversion, (ν + s)/(ν + r²) = U^(-2/(ν-1)), and accept
        with probability √(r²/s) (on average about ½ as ν → 2, near 1 for large ν)."""
        nu, s_r = self.df, r * r
        s = s_r + (nu + s_r) * jnp.expm1(-2.0 / (nu - 1.0) * jnp.log(u1))
        return jnp.sqrt(s), jnp.square(u2) * s < s_r


@dataclasses.dataclass(frozen=True, eq=False)
class _ZigguratTables:
    """Layers of a ziggurat (Marsaglia & Tsang 2000) under a decreasing f with f(0) = 1.

    n = 2^layer_bits layers of equal area v. Layer 0 is the base strip
    [0, r] × [0, f(r)] with the tail beyond r; layer i ≥ 1 is [0, x_i] × [f(x_i), f(x_{i+1})]
    with x_1 = r > x_2 > … > x_n = 0, so its part x < x_{i+1} lies under f.
    ``x[0] = v/f(r)`` is the base strip's width as if it were a rectangle.
    """

    x: np.ndarray  # [n + 1] float64
    f: np.ndarray  # [n + 1] float64: f(x_i) for i ≥ 1, f[0] = f(r) (unused), f[n] = 1
    alias_threshold: np.ndarray  # [n]: alias table of the layers weighted by 1 - x_{i+1}/x_i
    alias_index: np.ndarray  # [n] int32
    r: float
    fail: float  # probability that a draw leaves the fast path, mean_i (1 - x_{i+1}/x_i)


@functools.lru_cache(maxsize=64)
def tables(curve, layer_bits: int = LAYER_BITS) -> _ZigguratTables:
    """The 2^layer_bits layers under ``curve`` (bisection on r until the top layer closes
    at f(0) = 1)."""
    n = 1 << layer_bits

    def climb(r):
        # Heights y = f(x) go up by v/x per layer. Below ½ they are kept as y, above as the
        # co-height c = 1 - y, so that neither loses digits (f(r) may be 1e-17, f → 1 at
        # the top).
        y = curve.density(r)
        v = r * y + curve.tail_area(r)
        if v <= 0.0:
            return 1.0, [r], v  # f and its tail underflow: r is far too large
        xs, c = [r], None
        for _ in range(n - 2):
            if c is None:
                y += v / xs[-1]
                if y >= 0.5:
                    c = 1.0 - y
            else:
                c -= v / xs[-1]
            if c is not None and c <= 0.0:
                return -1.0, xs, v  # reached the top too early: r is too small
            xs.append(curve.inverse(c) if c is not None else curve.inverse_height(y))
        top = (1.0 - y) if c is None else c
        return top - v / xs[-1], xs, v  # 0 when the top layer closes

    lo, hi = 1e-3, 1e3
    while climb(hi)[0] < 0.0:
        lo, hi = hi, hi * 1e3
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if climb(mid)[0] < 0.0:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1.0 < 1e-14:
            break
    _, xs, v = climb(hi)
    r = hi
    x = np.array([v / curve.density(r)] + xs + [0.0])
    f = np.array([curve.density(r)] + [curve.density(t) for t in xs] + [1.0])
    weight = 1.0 - x[1:] / x[:-1]
    threshold, index = _alias(weight)
    return _ZigguratTables(x, f, threshold, index, r, float(weight.mean()))


def _alias(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table: pick j uniformly, keep it with probability threshold[j],
    else take index[j]; j comes out with probability ∝ weight[j]."""
    n = len(weight)
    q = weight * n / weight.sum()
    threshold, index = np.ones(n), np.arange(n, dtype=np.int32)
    small = [j for j in range(n) if q[j] < 1.0]
    large = [j for j in range(n) if q[j] >= 1.0]
    while small and large:
        s, l = small.pop(), large.pop()
        threshold[s], index[s] = q[s], l
        q[l] -= 1.0 - q[s]
        (small if q[l] < 1.0 else large).append(l)
    return threshold, index


def bits_uniform(bits, num_bits: int, dtype):
    """(m + ½)·2^-k from the top k bits m of each word: uniform on (0, 1), never 0 or 1."""
    total = jnp.iinfo(bits.dtype).bits
    return ((bits >> (total - num_bits)).astype(dtype) + 0.5) * (2.0 ** -num_bits)


class _Ziggurat:
    """Exact draws of ±x, x ≥ 0 with density ∝ ``curve`` f, from its ziggurat, inside jit.

    Fast path, one random word per draw: layer i and u ∈ (0, 1) from the word, x = u·x_i,
    kept when u < x_{i+1}/x_i, i.e. when x lies in the part of the layer under f (all but
    ``tables.fail`` of the draws: 0.05–0.3 % for the laws here). The other draws are
    finished from a buffer of independent draws of the law they then follow, the law of a
    ziggurat draw whose first attempt left the fast path: a layer i with probability
    ∝ 1 - x_{i+1}/x_i and x uniform on [x_{i+1}, x_i] (the attempt given that it left the
    fast path), then the wedge test, the tail beyond r, and fresh attempts after a
    rejection. The k-th draw (row-major) that left the fast path takes slot k. Which
    draws leave depends only on their own words and the slots only on theirs, so the
    output is i.i.d. from the law; the buffer is a vectorised loop over its slots that
    usually ends after two rounds, and more draws than slots are served by further
    rounds of the same loop (probability < 1e-6 per call).
    """

    def __init__(self, curve, layer_bits: int = LAYER_BITS):
        self.curve = curve
        self.layer_bits = layer_bits
        self.tables = tables(curve, layer_bits)

    def _attempt(self, words, dtype):
        """An attempt from each word: (layer, x, whether x lies under f with no test, sign)."""
        t = self.tables
        layer = (words & ((1 << self.layer_bits) - 1)).astype(jnp.int32)
        sign = ((words >> self.layer_bits) & 1).astype(jnp.bool_)
        position_bits = min(jnp.iinfo(words.dtype).bits - self.layer_bits - 1,
                            jnp.finfo(dtype).nmant)
        u = bits_uniform(words, position_bits, dtype)
        x = u * jnp.asarray(t.x, dtype)[layer]
        return layer, x, u < jnp.asarray(t.x[1:] / t.x[:-1], dtype)[layer], sign

    def _step(self, words, value, state, dtype):
        """One attempt for each unfinished slot; ``words`` [5, m].

        _FIRST: the first attempt given that it left the fast path (words 0, 1), then the
        wedge test (word 2) or a tail proposal (words 3, 4). _RESTART: a fresh attempt
        (word 0), kept on the fast path or finished the same way. _TAIL: another tail
        proposal. The tail proposal is its own rejection sampler, so a rejected one is
        retried as a tail proposal, a rejected wedge point as a fresh attempt.
        """
        t = self.tables
        x_tab = jnp.asarray(t.x, dtype)
        f_tab = jnp.asarray(t.f, dtype)
        mantissa = jnp.finfo(dtype).nmant
        nbits = jnp.iinfo(words.dtype).bits
        j = (words[0] & ((1 << self.layer_bits) - 1)).astype(jnp.int32)
        keep = bits_uniform(words[0], min(nbits - self.layer_bits, mantissa), dtype)
        outer = jnp.where(keep < jnp.asarray(t.alias_threshold, dtype)[j], j,
                          jnp.asarray(t.alias_index)[j])
        u = bits_uniform(words[1], mantissa, dtype)
        outer_x = x_tab[outer + 1] + u * (x_tab[outer] - x_tab[outer + 1])
        fresh, fresh_x, fast, _ = self._attempt(words[0], dtype)
        first = state == _FIRST
        layer = jnp.where(first, outer, fresh)
        x = jnp.where(first, outer_x, fresh_x)
        w = bits_uniform(words[2], mantissa, dtype)
        under = f_tab[layer] + w * (f_tab[layer + 1] - f_tab[layer]) < self.curve.density_device(x)
        tail_x, tail_ok = self.curve.tail(bits_uniform(words[3], mantissa, dtype),
                                          bits_uniform(words[4], mantissa, dtype), t.r)
        kept = (state == _RESTART) & fast
        to_tail = (state == _TAIL) | (~kept & (layer == 0))
        new_value = jnp.where(to_tail & ~kept, tail_x, x)
        new_state = jnp.where(kept, _DONE, jnp.where(to_tail, jnp.where(tail_ok, _DONE, _TAIL),
                                                     jnp.where(under, _DONE, _RESTART)))
        done = state == _DONE
        return jnp.where(done, value, new_value), jnp.where(done, _DONE, new_state)

    def sample(self, key, shape, dtype, *, margin: float = MARGIN,
               predrawn_steps: int = _PREDRAWN_STEPS):
        """Draws of ±x of ``shape`` in float32 or float64 (units of the curve).

        ``margin`` sets the buffer's size (standard deviations of the number of draws off
        the fast path) and ``predrawn_steps`` how many of its steps take their words from
        the fast path's draw; tests lower both to force the rare branches.
        """
        size = math.prod(shape)
        if size == 0:
            return jnp.zeros(shape, dtype)
        if self.tables.x[0] >= jnp.finfo(dtype).max:
            raise ValueError(f"{self.curve} reaches {self.tables.x[0]:.3g} in its ziggurat, past "
                             f"the range of {jnp.dtype(dtype).name}; draw it in float64")
        uint = jnp.uint64 if jnp.finfo(dtype).bits == 64 else jnp.uint32
        rows = -(-size // 32)
        n = 32 * rows
        expected = self.tables.fail * n
        m = max(1, min(n, math.ceil(expected + margin * math.sqrt(expected) + 8)))
        pre = predrawn_steps * _STEP_WORDS * m
        key_words = _key_words(key)
        words = jax.random.bits(key, (n + pre + key_words,), uint)
        layer, x, fast, sign = self._attempt(words[:n].reshape(rows, 32), dtype)
        predrawn = words[n:n + pre].reshape(predrawn_steps, _STEP_WORDS, m)
        key_loop = _key_from_words(key, words[n + pre:])  # words nothing else uses

        # Draws that left the fast path, 32 to a word; the one ranked k (row-major) takes
        # slot k - chunk·m of the buffer's pass number ``chunk``.
        lanes = jnp.arange(32, dtype=jnp.uint32)
        off = jnp.sum((~fast).astype(jnp.uint32) << lanes, axis=1, dtype=jnp.uint32)  # [rows]
        count = jax.lax.population_count(off).astype(jnp.int32)
        ends = jnp.cumsum(count)
        total = ends[-1]
        slot = jnp.arange(m)
        up_to = jnp.asarray((np.uint64(2) << np.arange(32, dtype=np.uint64)) - 1, jnp.uint32)

        def fill(out, value, chunk):  # writes the slots' draws where they belong
            k = chunk * m + slot
            row = jnp.minimum(jnp.searchsorted(ends, k, side="right"), rows - 1)
            j = k - (ends[row] - count[row])  # k is the j-th draw off the fast path in its row
            bits_up_to = jax.lax.population_count(off[row][:, None] & up_to)  # [m, 32]
            lane = jnp.sum(bits_up_to <= j[:, None], axis=1)
            lane = jnp.minimum(lane, 31)
            value = jnp.where(sign[row, lane], -value, value)
            return out.at[jnp.where(k < total, row, rows), lane].set(value, mode="drop")

        def draw(key_now):  # a step's words and the next step's key, from one draw
            more = jax.random.bits(key_now, (_STEP_WORDS * m + key_words,), uint)
            step_words = more[:_STEP_WORDS * m].reshape(_STEP_WORDS, m)
            return step_words, _key_from_words(key, more[-key_words:])

        def body(carry):
            i, key_now, chunk, value, state, out = carry
            if predrawn_steps:
                step_words, key_now = jax.lax.cond(
                    i < predrawn_steps,
                    lambda k: (jax.lax.dynamic_index_in_dim(
                        predrawn, jnp.minimum(i, predrawn_steps - 1), keepdims=False), k),
                    draw, key_now)
            else:
                step_words, key_now = draw(key_now)
            value, state = self._step(step_words, value, state, dtype)

            def next_chunk(args):  # all slots done: place them, start the next pass if any
                chunk, state, out = args
                out = fill(out, value, chunk)
                return chunk + 1, jnp.where((chunk + 1) * m + slot < total, _FIRST, _DONE), out

            chunk, state, out = jax.lax.cond(jnp.all(state == _DONE), next_chunk, lambda a: a,
                                             (chunk, state, out))
            return i + 1, key_now, chunk, value, state, out

        init = (jnp.int32(0), key_loop, jnp.int32(0), jnp.zeros((m,), dtype),
                jnp.where(slot < total, _FIRST, _DONE), jnp.where(sign, -x, x))
        out = jax.lax.while_loop(lambda c: jnp.any(c[4] != _DONE), body, init)[-1]
        return out.reshape(-1)[:size].reshape(shape)


@functools.lru_cache(maxsize=64)
def _ziggurat(curve, layer_bits: int = LAYER_BITS) -> _Ziggurat:
    return _Ziggurat(curve, layer_bits)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def sample(curve, key, shape, dtype):
    """Jitted, so that eager calls run as one program (inlined under an outer jit)."""
    return _ziggurat(curve).sample(key, shape, dtype)


def _key_words(key) -> int:
    """How many 32-bit words make a key of this kind (2 for threefry)."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return int(np.prod(data.shape)) * jnp.iinfo(data.dtype).bits // 32


def _key_from_words(key, words):
    """A key of the same kind as ``key`` whose data are ``words`` (random bits)."""
    if words.dtype != jnp.uint32:
        words = jax.lax.bitcast_convert_type(words, jnp.uint32).reshape(-1)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        data = jax.random.key_data(key)
        return jax.random.wrap_key_data(words[:data.size].reshape(data.shape).astype(data.dtype),
                                        impl=jax.random.key_impl(key))
    return words[:key.size].reshape(key.shape).astype(key.dtype)
