"""Build ``l1quant/data/compare_text.txt``, the default evaluation text of ``l1quant compare``.

License-clean by construction: the prose (``benchmarks/compare_text_prose.txt``) was written for this project, and
the rest is worked arithmetic, algebra and counting problems generated here from a fixed seed (the kind of step by
step reasoning the L1 models are trained on). Re-running it gives the same bytes.

    python benchmarks/make_compare_text.py            # rewrites l1quant/data/compare_text.txt
"""

from __future__ import annotations

import math
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["Ada", "Bruno", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lina", "Mateo",
         "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Samir", "Tove", "Umar", "Vera", "Wen", "Ximena", "Yusuf", "Zora"]
ITEMS = [("apple", "apples"), ("pencil", "pencils"), ("marble", "marbles"), ("stamp", "stamps"), ("book", "books"),
         ("shell", "shells"), ("card", "cards"), ("coin", "coins"), ("ticket", "tickets"), ("seed", "seeds")]


def _mult(r: random.Random) -> str:
    a, b = r.randint(12, 99), r.randint(12, 99)
    t, u = divmod(b, 10)
    return (f"Problem: What is {a} * {b}?\nSolution: Split {b} into {t * 10} + {u}. Then {a} * {t * 10} = {a * t * 10} "
            f"and {a} * {u} = {a * u}. Adding, {a * t * 10} + {a * u} = {a * b}. The answer is \\boxed{{{a * b}}}.\n")


def _share(r: random.Random) -> str:
    n1, n2 = r.sample(NAMES, 2)
    s, p = r.choice(ITEMS)
    k = r.randint(3, 9)
    each = r.randint(4, 15)
    extra = r.randint(1, k - 1)
    total = k * each + extra
    return (f"Problem: {n1} has {total} {p} and shares them equally among {k} friends, giving the rest to {n2}. How "
            f"many {p} does {n2} get?\nSolution: Divide {total} by {k}: {k} * {each} = {k * each}, which leaves "
            f"{total} - {k * each} = {extra}. Each friend gets {each} {p}, and {n2} gets the remaining {extra}. "
            f"The answer is \\boxed{{{extra}}}.\n")


def _linear(r: random.Random) -> str:
    a, x, b = r.randint(2, 12), r.randint(-15, 20), r.randint(-30, 30)
    c = a * x + b
    sb = f"+ {b}" if b >= 0 else f"- {-b}"
    return (f"Problem: Solve {a}x {sb} = {c} for x.\nSolution: Subtract {b} from both sides to get {a}x = {c - b}. "
            f"Divide both sides by {a}: x = {(c - b)} / {a} = {x}. Check: {a} * {x} {sb} = {a * x + b}, which matches. "
            f"The answer is \\boxed{{{x}}}.\n")


def _speed(r: random.Random) -> str:
    n = r.choice(NAMES)
    v, h = r.randint(3, 18) * 5, r.randint(2, 7)
    m = r.choice([0, 15, 30, 45])
    km = v * h + v * m // 60
    return (f"Problem: {n} drives at a steady {v} km per hour for {h} hours and {m} minutes. How far does {n} "
            f"travel?\nSolution: In {h} hours {n} covers {v} * {h} = {v * h} km. {m} minutes is {m}/60 of an hour, so "
            f"that part adds {v} * {m}/60 = {v * m // 60} km. The total is {v * h} + {v * m // 60} = {km} km. "
            f"The answer is \\boxed{{{km}}}.\n")


def _gcd(r: random.Random) -> str:
    g = r.randint(2, 15)
    a, b = g * r.randint(2, 20), g * r.randint(2, 20)
    steps, x, y = [], max(a, b), min(a, b)
    while y:
        steps.append(f"{x} = {x // y} * {y} + {x % y}")
        x, y = y, x % y
    return (f"Problem: Find the greatest common divisor of {a} and {b}.\nSolution: Use the Euclidean algorithm. "
            + "; ".join(steps) + f". The last nonzero remainder is {x}. The answer is \\boxed{{{math.gcd(a, b)}}}.\n")


def _combo(r: random.Random) -> str:
    n, k = r.randint(5, 12), r.randint(2, 4)
    num = " * ".join(str(n - i) for i in range(k))
    den = " * ".join(str(i) for i in range(k, 0, -1))
    return (f"Problem: In how many ways can a committee of {k} be chosen from {n} people?\nSolution: Order does not "
            f"matter, so the count is {n} choose {k} = ({num}) / ({den}) = {math.perm(n, k)} / {math.factorial(k)} = "
            f"{math.comb(n, k)}. The answer is \\boxed{{{math.comb(n, k)}}}.\n")


def _percent(r: random.Random) -> str:
    price, pct = r.randint(4, 60) * 5, r.choice([10, 15, 20, 25, 30, 40])
    off = price * pct // 100
    return (f"Problem: A jacket costs {price} dollars and is on sale for {pct} percent off. What is the sale price?\n"
            f"Solution: {pct} percent of {price} is {price} * {pct} / 100 = {off}. Subtract: {price} - {off} = "
            f"{price - off}. The answer is \\boxed{{{price - off}}}.\n")


def _ages(r: random.Random) -> str:
    n1, n2 = r.sample(NAMES, 2)
    y, d, t = r.randint(5, 20), r.randint(2, 30), r.randint(2, 10)
    return (f"Problem: {n1} is {d} years older than {n2}. In {t} years the sum of their ages will be "
            f"{2 * y + d + 2 * t}. How old is {n2} now?\nSolution: Let {n2}'s age be a. Then {n1} is a + {d}, and in "
            f"{t} years the sum is (a + {t}) + (a + {d} + {t}) = 2a + {d + 2 * t}. Setting 2a + {d + 2 * t} = "
            f"{2 * y + d + 2 * t} gives 2a = {2 * y}, so a = {y}. The answer is \\boxed{{{y}}}.\n")


def _series(r: random.Random) -> str:
    a, d, n = r.randint(1, 20), r.randint(2, 9), r.randint(8, 40)
    last = a + (n - 1) * d
    return (f"Problem: What is the sum of the first {n} terms of the arithmetic sequence {a}, {a + d}, {a + 2 * d}, "
            f"...?\nSolution: The {n}th term is {a} + ({n} - 1) * {d} = {last}. The sum is the number of terms times "
            f"the average of the first and last: {n} * ({a} + {last}) / 2 = {n * (a + last) // 2}. The answer is "
            f"\\boxed{{{n * (a + last) // 2}}}.\n")


def _area(r: random.Random) -> str:
    w, h, cw, ch = r.randint(6, 30), r.randint(6, 30), r.randint(1, 5), r.randint(1, 5)
    return (f"Problem: A rectangular garden is {w} meters by {h} meters. A square shed of {cw} by {cw} meters and a "
            f"pond of {ch} by {ch} meters sit inside it. How many square meters are left for planting?\nSolution: "
            f"The garden has area {w} * {h} = {w * h}. The shed takes {cw * cw} and the pond {ch * ch}, together "
            f"{cw * cw + ch * ch}. Left: {w * h} - {cw * cw + ch * ch} = {w * h - cw * cw - ch * ch}. The answer is "
            f"\\boxed{{{w * h - cw * cw - ch * ch}}}.\n")


KINDS = [_mult, _share, _linear, _speed, _gcd, _combo, _percent, _ages, _series, _area]


def build(n_problems: int = 260, seed: int = 14) -> str:
    """The full text: the title and prose, then ``n_problems`` worked problems."""
    r = random.Random(seed)
    prose = (ROOT / "benchmarks" / "compare_text_prose.txt").read_text(encoding="utf-8").strip()
    problems = "\n".join(r.choice(KINDS)(r) for _ in range(n_problems))
    return prose + "\n\nWorked Problems\n\n" + problems


if __name__ == "__main__":
    out = ROOT / "l1quant" / "data" / "compare_text.txt"
    out.write_text(build(), encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size} bytes)")
