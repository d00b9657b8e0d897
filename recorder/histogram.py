"""A log-linear latency histogram in the style of HdrHistogram: fixed memory, ~1% relative precision.

Values are non-negative integers (nanoseconds here). Bucket k holds values with the same top
`SUB_BITS` significant bits, so the relative error of any reported percentile is below 2^-SUB_BITS.
"""

from __future__ import annotations

from collections.abc import Iterable

SUB_BITS = 7  # 128 distinct sub-buckets per power of two: < 0.8% relative error
_SUB = 1 << SUB_BITS
_EXACT = _SUB << 1  # values below this are counted exactly


def _index(value: int) -> int:
    if value < _EXACT:
        return value
    shift = value.bit_length() - SUB_BITS - 1
    return shift * _SUB + (value >> shift)


def _lowest(index: int) -> int:
    if index < _EXACT:
        return index
    shift = index // _SUB - 1
    return (index - shift * _SUB) << shift


def _highest(index: int) -> int:
    if index < _EXACT:
        return index
    shift = index // _SUB - 1
    return _lowest(index) + (1 << shift) - 1


class Histogram:
    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self, values: Iterable[int] = ()) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0
        for v in values:
            self.record(v)

    def record(self, value: int) -> None:
        value = max(0, int(value))
        i = _index(value)
        self.counts[i] = self.counts.get(i, 0) + 1
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += 1
        self.total += value

    def merge(self, other: Histogram) -> None:
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n
        if other.count:
            self.min = other.min if self.count == 0 else min(self.min, other.min)
            self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    def percentile(self, p: float) -> int:
        """The value at percentile p (0-100): the highest value of the bucket holding that rank."""
        if self.count == 0:
            return 0
        if p >= 100:
            return self.max
        rank = max(1, int(p / 100 * self.count + 0.5)) if p > 0 else 1
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(_highest(i), self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def summary(self, scale: float = 1e3, percentiles: tuple[float, ...] = (50, 90, 99, 99.9)) -> dict[str, float]:
        """Percentiles divided by `scale` (default: ns → µs), plus count, mean and max."""
        out: dict[str, float] = {"count": self.count, "mean": self.mean / scale}
        for p in percentiles:
            out[f"p{p:g}"] = self.percentile(p) / scale
        out["max"] = self.max / scale
        return out

    def cdf(self) -> list[tuple[int, float]]:
        """(bucket upper value, cumulative fraction) points, for plotting."""
        points = []
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            points.append((min(_highest(i), self.max), seen / self.count))
        return points
