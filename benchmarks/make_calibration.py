"""Build ``l1quant/data/calibration.txt``, the default calibration text of ``l1quant imatrix`` and
``convert --calibration``.

License-clean by construction: every line is written here. It mixes what an L1 model reads and writes, in
proportions chosen for a math reasoner:

* **math word problems with worked solutions** (about two thirds): arithmetic, rates, percentages, algebra,
  systems, quadratics, number theory, counting, probability, sequences, geometry, base conversion; numbers drawn
  from a fixed seed, every answer computed here, each asked in L1's prompt wording (``Let's think step by step and
  output the final answer within \\boxed{}. Think for N tokens.``) and answered with step-by-step reasoning inside
  ``<think>`` ... ``</think>`` and a ``\\boxed{}`` answer, as L1 answers;
* **prose** paragraphs written for this project (science, history of computing, everyday life);
* **code**: small Python, C and shell programs generated from templates (names and constants vary).

Re-running it gives the same bytes (tests/test_calibration_text.py checks that, the size and the token count).

    python benchmarks/make_calibration.py            # rewrites l1quant/data/calibration.txt
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "l1quant" / "data" / "calibration.txt"
SEED = 20261206
N_MATH = 300

NAMES = ["Amara", "Benedikt", "Carmen", "Dmitri", "Elif", "Felipe", "Greta", "Hiroshi", "Ines", "Jonas", "Keiko",
         "Luca", "Maren", "Nikhil", "Olga", "Pablo", "Rania", "Sven", "Tariq", "Ulla", "Viktor", "Wanjiru", "Yara",
         "Zeno"]
BUDGETS = [256, 512, 1024, 1536, 2048, 3600]
PROMPT = "{q} Let's think step by step and output the final answer within \\boxed{{}}. Think for {limit} tokens."


def _frac(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"\\frac{{{x.numerator}}}{{{x.denominator}}}"


# ------------------------------------------------------------------------------------------- math problems
# each returns (question, reasoning lines, answer as LaTeX)


def _bakery(r: random.Random) -> tuple[str, list[str], str]:
    name = r.choice(NAMES)
    trays, per = r.randint(3, 9), r.randint(12, 30)
    sold_frac = r.choice([Fraction(1, 2), Fraction(1, 3), Fraction(2, 3), Fraction(1, 4), Fraction(3, 4)])
    total = trays * per
    while (total * sold_frac).denominator != 1:
        per += 1
        total = trays * per
    sold = int(total * sold_frac)
    price = r.randint(2, 6)
    q = (f"{name} bakes {trays} trays of rolls with {per} rolls on each tray. In the morning {name} sells "
         f"{_frac(sold_frac)} of the rolls at ${price} each, and in the afternoon sells the rest at half price. How "
         f"much money does {name} take in?")
    rest = total - sold
    steps = [f"First, the total number of rolls: {trays} trays times {per} rolls is {trays} * {per} = {total}.",
             f"In the morning {name} sells {_frac(sold_frac)} of {total}, which is {sold} rolls.",
             f"At ${price} each, that brings in {sold} * {price} = ${sold * price}.",
             f"The rest is {total} - {sold} = {rest} rolls, sold at half price, ${Fraction(price, 2)} each.",
             f"The afternoon brings in {rest} * {Fraction(price, 2)} = ${_num(Fraction(rest * price, 2))}.",
             (f"Altogether: {sold * price} + {_num(Fraction(rest * price, 2))} = "
             f"{_num(sold * price + Fraction(rest * price, 2))} dollars.")]
    return q, steps, _num(sold * price + Fraction(rest * price, 2))


def _num(x: Fraction | int) -> str:
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    return f"{float(x):.2f}".rstrip("0").rstrip(".") if (x * 100).denominator == 1 else _frac(x)


def _trains(r: random.Random) -> tuple[str, list[str], str]:
    v1, v2 = r.randint(40, 90), r.randint(50, 110)
    hours = r.choice([Fraction(3, 2), Fraction(2), Fraction(5, 2), Fraction(3), Fraction(4)])
    d = int((v1 + v2) * hours)
    q = (f"Two trains leave stations that are {d} km apart at the same time and travel toward each other, one at "
         f"{v1} km/h and the other at {v2} km/h. After how many hours do they meet?")
    steps = ["The trains close the gap between them at the sum of their speeds.",
             f"Closing speed: {v1} + {v2} = {v1 + v2} km/h.",
             f"Time to cover {d} km at {v1 + v2} km/h is {d} / {v1 + v2} hours.",
             f"{d} / {v1 + v2} = {_num(hours)}, so they meet after {_num(hours)} hours.",
             (f"Check: in {_num(hours)} hours the first train goes {_num(v1 * hours)} km and the second "
             f"{_num(v2 * hours)} km, and {_num(v1 * hours)} + {_num(v2 * hours)} = {d}. Correct.")]
    return q, steps, _num(hours)


def _percent(r: random.Random) -> tuple[str, list[str], str]:
    price = r.randrange(40, 400, 5)
    up, down = r.choice([10, 20, 25, 30, 40, 50]), r.choice([10, 20, 25, 30, 40, 50])
    after_up = Fraction(price * (100 + up), 100)
    final = after_up * Fraction(100 - down, 100)
    q = (f"A jacket costs ${price}. The store raises the price by {up}%, and later puts it on sale at {down}% off the "
         f"new price. What is the sale price, in dollars?")
    steps = [f"A {up}% increase multiplies the price by 1 + {up}/100 = {_num(Fraction(100 + up, 100))}.",
             f"New price: {price} * {_num(Fraction(100 + up, 100))} = {_num(after_up)}.",
             f"A {down}% discount multiplies by 1 - {down}/100 = {_num(Fraction(100 - down, 100))}.",
             f"Sale price: {_num(after_up)} * {_num(Fraction(100 - down, 100))} = {_num(final)}.",
             (f"Note that the result is not {price} {'+' if up >= down else '-'} {abs(up - down)}%: percentages of "
             "different bases do not simply add.")]
    return q, steps, _num(final)


def _linear(r: random.Random) -> tuple[str, list[str], str]:
    x = r.randint(-12, 15)
    a, c = r.randint(2, 9), r.randint(1, 7)
    while c == a:
        c = r.randint(1, 7)
    b, d = r.randint(-20, 20), r.randint(-20, 20)
    # a x + b = c x + d  -> d chosen so that x is the solution
    d = a * x + b - c * x
    q = f"Solve for $x$: ${a}x {'+' if b >= 0 else '-'} {abs(b)} = {c}x {'+' if d >= 0 else '-'} {abs(d)}$."
    steps = [(f"Collect the $x$ terms on the left: subtract ${c}x$ from both sides to get "
             f"${a - c}x {'+' if b >= 0 else '-'} {abs(b)} = {d}$."),
             f"Move the constant: ${a - c}x = {d} {'-' if b >= 0 else '+'} {abs(b)} = {d - b}$.",
             f"Divide by {a - c}: $x = {d - b} / {a - c} = {x}$.",
             (f"Check: left side {a}*{x} {'+' if b >= 0 else '-'} {abs(b)} = {a * x + b}, right side "
             f"{c}*{x} {'+' if d >= 0 else '-'} {abs(d)} = {c * x + d}. They agree.")]
    return q, steps, str(x)


def _system(r: random.Random) -> tuple[str, list[str], str]:
    x, y = r.randint(2, 20), r.randint(2, 20)
    item1, item2 = r.choice([("notebook", "pen"), ("adult ticket", "child ticket"), ("coffee", "muffin")])
    n1, n2 = r.randint(1, 5), r.randint(1, 5)
    q = (f"A {item1} and a {item2} cost ${x + y} together. {n1 + 1} {item1}s and {n2} {item2}s cost "
         f"${(n1 + 1) * x + n2 * y}. How much does one {item1} cost?")
    s, t = x + y, (n1 + 1) * x + n2 * y
    steps = [f"Let $a$ be the price of a {item1} and $b$ the price of a {item2}.",
             f"Then $a + b = {s}$ and ${n1 + 1}a + {n2}b = {t}$.",
             f"From the first equation, $b = {s} - a$. Substitute: ${n1 + 1}a + {n2}({s} - a) = {t}$.",
             f"Expand: ${n1 + 1}a + {n2 * s} - {n2}a = {t}$, so ${_coef(n1 + 1 - n2)}a = {t - n2 * s}$."]
    if n1 + 1 - n2 == 0:
        return _linear(r)
    steps += [f"Hence $a = {t - n2 * s} / {n1 + 1 - n2} = {x}$, and $b = {s} - {x} = {y}$.",
              f"Check: {n1 + 1}*{x} + {n2}*{y} = {(n1 + 1) * x + n2 * y}. Correct."]
    return q, steps, str(x)


def _coef(k: int) -> str:
    return {1: "", -1: "-"}.get(k, str(k))


def _quadratic(r: random.Random) -> tuple[str, list[str], str]:
    p, q_ = r.randint(-9, 9), r.randint(-9, 9)
    while p == q_:
        q_ = r.randint(-9, 9)
    b, c = -(p + q_), p * q_
    q = (f"Find the sum of the squares of the roots of $x^2 {'+' if b >= 0 else '-'} {abs(b)}x "
         f"{'+' if c >= 0 else '-'} {abs(c)} = 0$.")
    steps = [f"By Vieta's formulas the roots $r$ and $s$ satisfy $r + s = {-b}$ and $rs = {c}$.",
             "We want $r^2 + s^2 = (r + s)^2 - 2rs$.",
             f"So $r^2 + s^2 = ({-b})^2 - 2({c}) = {b * b} {'-' if c >= 0 else '+'} {abs(2 * c)} = {p * p + q_ * q_}$.",
             (f"Check by factoring: $x^2 {'+' if b >= 0 else '-'} {abs(b)}x {'+' if c >= 0 else '-'} {abs(c)} = "
             f"(x {'-' if p >= 0 else '+'} {abs(p)})(x {'-' if q_ >= 0 else '+'} {abs(q_)})$, roots {p} and {q_}, "
             f"and {p}^2 + {q_}^2 = {p * p} + {q_ * q_} = {p * p + q_ * q_}.")]
    return q, steps, str(p * p + q_ * q_)


def _gcd_lcm(r: random.Random) -> tuple[str, list[str], str]:
    g = r.choice([2, 3, 4, 5, 6, 7, 8, 9, 12, 15])
    a, b = g * r.randint(2, 15), g * r.randint(2, 15)
    while a == b:
        b = g * r.randint(2, 15)
    steps = [f"Use the Euclidean algorithm on {a} and {b}."]
    x, y = max(a, b), min(a, b)
    while y:
        steps.append(f"{x} = {x // y} * {y} + {x % y}.")
        x, y = y, x % y
    gg = x
    lcm = a * b // gg
    steps += [f"The last non-zero remainder is {gg}, so gcd({a}, {b}) = {gg}.",
              f"Then lcm({a}, {b}) = {a} * {b} / {gg} = {a * b} / {gg} = {lcm}.",
              f"The requested sum is {gg} + {lcm} = {gg + lcm}."]
    q = f"Let $g$ be the greatest common divisor and $m$ the least common multiple of {a} and {b}. Compute $g + m$."
    return q, steps, str(gg + lcm)


def _modular(r: random.Random) -> tuple[str, list[str], str]:
    base, m = r.choice([2, 3, 5, 7]), r.choice([11, 13, 17, 19])  # coprime: the powers return to 1
    e = r.randint(20, 400)
    powers = [1]
    while True:
        nxt = powers[-1] * base % m
        if nxt == 1:
            break
        powers.append(nxt)
    period = len(powers)
    ans = pow(base, e, m)
    steps = [f"Look at the powers of {base} modulo {m}: " +
             ", ".join(f"{base}^{k} = {powers[k]}" for k in range(min(period + 1, 13)) if k < period) +
             f", and {base}^{period} = 1 (mod {m}).",
             f"So the powers repeat with period {period}.",
             f"{e} = {e // period} * {period} + {e % period}, hence {base}^{e} = {base}^{e % period} (mod {m}).",
             f"{base}^{e % period} = {powers[e % period]} (mod {m})."]
    q = f"What is the remainder when ${base}^{{{e}}}$ is divided by {m}?"
    return q, steps, str(ans)


def _divisors(r: random.Random) -> tuple[str, list[str], str]:
    primes = r.sample([2, 3, 5, 7, 11], r.randint(2, 3))
    exps = [r.randint(1, 4) for _ in primes]
    n = math.prod(p ** e for p, e in zip(primes, exps))
    count = math.prod(e + 1 for e in exps)
    fact = " * ".join(f"{p}^{e}" if e > 1 else str(p) for p, e in sorted(zip(primes, exps)))
    steps = [f"Factor {n} into primes: {n} = {fact}.",
             "A divisor picks each prime with an exponent from 0 up to its exponent in n.",
             "The number of choices is the product of (exponent + 1): " +
             " * ".join(f"({e} + 1)" for _, e in sorted(zip(primes, exps))) + f" = {count}."]
    q = f"How many positive divisors does {n} have?"
    return q, steps, str(count)


def _choose(r: random.Random) -> tuple[str, list[str], str]:
    n, k = r.randint(6, 14), r.randint(2, 5)
    girls = r.randint(2, n - 2)
    boys = n - girls
    need = r.randint(1, min(girls, k))
    total = math.comb(n, k)
    none = sum(math.comb(girls, j) * math.comb(boys, k - j) for j in range(need))
    ans = total - none
    steps = [f"Without restriction there are C({n}, {k}) = {total} committees.",
             f"Count the committees with fewer than {need} girl{'s' if need > 1 else ''} and subtract them."]
    for j in range(need):
        steps.append(f"Exactly {j} girls: C({girls}, {j}) * C({boys}, {k - j}) = {math.comb(girls, j)} * "
                     f"{math.comb(boys, k - j)} = {math.comb(girls, j) * math.comb(boys, k - j)}.")
    steps.append(f"So the answer is {total} - {none} = {ans}.")
    q = (f"A club has {girls} girls and {boys} boys. In how many ways can a committee of {k} be chosen with at least "
         f"{need} girl{'s' if need > 1 else ''}?")
    return q, steps, str(ans)


def _dice(r: random.Random) -> tuple[str, list[str], str]:
    target = r.randint(4, 10)
    ways = [(a, b) for a in range(1, 7) for b in range(1, 7) if a + b == target]
    p = Fraction(len(ways), 36)
    steps = ["Two fair dice give 6 * 6 = 36 equally likely ordered outcomes.",
             f"The outcomes with sum {target}: " + ", ".join(f"({a},{b})" for a, b in ways) + f", {len(ways)} in all.",
             f"The probability is {len(ways)}/36 = {_frac(p)}."]
    q = f"Two fair six-sided dice are rolled. What is the probability that the sum of the numbers shown is {target}?"
    return q, steps, _frac(p)


def _arith_series(r: random.Random) -> tuple[str, list[str], str]:
    a, d, n = r.randint(1, 20), r.randint(2, 9), r.randint(10, 60)
    last = a + (n - 1) * d
    s = n * (a + last) // 2
    steps = [f"The terms form an arithmetic sequence with first term {a} and common difference {d}.",
             f"The {n}th term is {a} + ({n} - 1) * {d} = {last}.",
             f"The sum of {n} terms is n(first + last)/2 = {n} * ({a} + {last}) / 2 = {n} * {a + last} / 2 = {s}."]
    q = f"Find the sum of the first {n} terms of the sequence {a}, {a + d}, {a + 2 * d}, {a + 3 * d}, ..."
    return q, steps, str(s)


def _geometric(r: random.Random) -> tuple[str, list[str], str]:
    a, ratio, n = r.randint(1, 5), r.choice([2, 3]), r.randint(5, 10)
    s = a * (ratio ** n - 1) // (ratio - 1)
    steps = [f"This is a geometric series with first term {a}, ratio {ratio} and {n} terms.",
             f"S = a(r^n - 1)/(r - 1) = {a}({ratio}^{n} - 1)/({ratio} - 1).",
             f"{ratio}^{n} = {ratio ** n}, so S = {a} * {ratio ** n - 1} / {ratio - 1} = {s}."]
    q = (f"Compute ${a} + {a * ratio} + {a * ratio ** 2} + \\cdots + {a * ratio ** (n - 1)}$.")
    return q, steps, str(s)


def _triangle(r: random.Random) -> tuple[str, list[str], str]:
    m, n = r.randint(2, 7), r.randint(1, 6)
    while n >= m or math.gcd(m, n) != 1 or (m - n) % 2 == 0:
        m, n = r.randint(2, 7), r.randint(1, 6)
    k = r.randint(1, 4)
    a, b, c = k * (m * m - n * n), k * 2 * m * n, k * (m * m + n * n)
    area = a * b // 2
    h = Fraction(a * b, c)
    steps = [f"Check the triangle is right-angled: {a}^2 + {b}^2 = {a * a} + {b * b} = {a * a + b * b} = {c}^2.",
             f"So the legs are {a} and {b}, and the area is {a} * {b} / 2 = {area}.",
             f"The area is also (1/2) * {c} * h, where h is the altitude to the hypotenuse.",
             f"So h = 2 * {area} / {c} = {_frac(h)}."]
    q = (f"A triangle has sides {a}, {b} and {c}. Find the length of the altitude to its longest side.")
    return q, steps, _frac(h)


def _circle(r: random.Random) -> tuple[str, list[str], str]:
    side = r.randint(2, 20)
    ans = Fraction(side * side, 4)
    steps = [f"The circle inscribed in a square of side {side} has diameter {side}, so radius "
             f"{_frac(Fraction(side, 2))}.",
             f"Its area is pi * ({_frac(Fraction(side, 2))})^2 = {_frac(ans)} pi.",
             (f"The square's area is {side * side}, so the region outside the circle has area "
             f"{side * side} - {_frac(ans)} pi.")]
    q = (f"A circle is inscribed in a square of side length {side}. The area of the region inside the square but "
         f"outside the circle is $a - b\\pi$. Find $b$.")
    return q, steps, _frac(ans)


def _base(r: random.Random) -> tuple[str, list[str], str]:
    n, b = r.randint(50, 999), r.choice([2, 3, 5, 7, 8])
    digits, x, steps = [], n, [f"Divide repeatedly by {b} and keep the remainders."]
    while x:
        steps.append(f"{x} = {x // b} * {b} + {x % b}.")
        digits.append(x % b)
        x //= b
    rep = "".join(str(d) for d in reversed(digits))
    steps.append(f"Reading the remainders from last to first gives {rep} in base {b}.")
    steps.append(f"The sum of these digits is {' + '.join(str(d) for d in reversed(digits))} = {sum(digits)}.")
    q = f"Write {n} in base {b}. What is the sum of its digits in that base?"
    return q, steps, str(sum(digits))


def _work(r: random.Random) -> tuple[str, list[str], str]:
    a, b = r.choice([(3, 6), (4, 12), (6, 12), (5, 20), (10, 15), (6, 3), (12, 4), (9, 18), (8, 24), (20, 30)])
    t = Fraction(a * b, a + b)
    n1, n2 = r.sample(NAMES, 2)
    steps = [f"{n1} paints 1/{a} of the fence per hour and {n2} paints 1/{b} per hour.",
             f"Together they paint 1/{a} + 1/{b} = {_frac(Fraction(1, a) + Fraction(1, b))} of the fence per hour.",
             f"The time is the reciprocal: {_frac(t)} hours."]
    q = f"{n1} can paint a fence in {a} hours and {n2} can paint it in {b} hours. How many hours do they take together?"
    return q, steps, _frac(t)


def _digits(r: random.Random) -> tuple[str, list[str], str]:
    lo, hi = r.choice([(1, 99), (1, 199), (10, 250), (100, 300)])
    d = r.randint(1, 9)
    count = sum(str(k).count(str(d)) for k in range(lo, hi + 1))
    q = f"How many times is the digit {d} written when all the integers from {lo} to {hi} are written down?"
    units = sum(1 for k in range(lo, hi + 1) if k % 10 == d)
    tens = sum(1 for k in range(lo, hi + 1) if (k // 10) % 10 == d and k >= 10)
    hundreds = sum(1 for k in range(lo, hi + 1) if k // 100 == d)
    steps = ["Count the units place, the tens place and the hundreds place separately.",
             f"Units digit equal to {d}: {units} numbers.",
             f"Tens digit equal to {d}: {tens} numbers.",
             f"Hundreds digit equal to {d}: {hundreds} numbers.",
             f"Total: {units} + {tens} + {hundreds} = {count}."]
    return q, steps, str(count)


TEMPLATES: list[Callable[[random.Random], tuple[str, list[str], str]]] = [
    _bakery, _trains, _percent, _linear, _system, _quadratic, _gcd_lcm, _modular, _divisors, _choose, _dice,
    _arith_series, _geometric, _triangle, _circle, _base, _work, _digits]

OPENERS = ["Okay, let me work through this.", "Let me think about what is being asked.", "Alright.",
           "Let's see.", "I need to be careful here.", "Let me set this up step by step."]
CLOSERS = ["That matches the check, so I'm confident.", "Everything is consistent.", "So that's the answer.",
           "Let me make sure I answered the question that was asked: yes.", "Done."]


def math_item(r: random.Random) -> str:
    q, steps, ans = r.choice(TEMPLATES)(r)
    style = r.random()
    if style < 0.6:
        prompt = PROMPT.format(q=q, limit=r.choice(BUDGETS) if r.random() < 0.5 else f"maximum {r.choice(BUDGETS)}")
        body = "\n".join([r.choice(OPENERS), *steps, r.choice(CLOSERS)])
        last = next(s for s in reversed(steps) if not s.startswith(("Check", "Note")))
        return (f"User: {prompt}\nAssistant: <think>\n{body}\n</think>\n\n"
                f"{last} The answer is $\\boxed{{{ans}}}$.\n")
    if style < 0.85:
        body = "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(steps))
        return f"Problem. {q}\n\nSolution.\n{body}\nFinal answer: $\\boxed{{{ans}}}$\n"
    return f"Q: {q}\nA: {' '.join(steps)} So the answer is \\boxed{{{ans}}}.\n"


# ------------------------------------------------------------------------------------------- prose

PROSE = [
    ("The first mechanical calculators did only what their gears allowed. Pascal's machine could add and subtract by "
     "carrying a digit from one wheel to the next, and Leibniz added a stepped drum so that multiplication became "
     "repeated addition. Neither machine could decide anything on its own. The idea that a machine might follow a "
     "list of instructions, and choose the next instruction from the result of the last one, came later, and it "
     "changed the question from how fast a machine could count to what a machine could be told to do."),
    ("A river delta is built from what the river cannot carry any further. Where the current slows at the sea, sand "
     "drops first, then silt, then the finest clay, and the channel splits around its own deposits. Over centuries the "
     "channels wander: one is blocked, another breaks through a levee during a flood, and a new lobe of land begins to "
     "grow. Farmers have settled deltas for thousands of years because the soil is rich and water is close, and they "
     "have also learned that the ground there is never finished moving."),
    ("Bread is a small lesson in chemistry. Flour and water make gluten when they are mixed and worked, a network of "
     "proteins that can stretch and hold gas. Yeast eats the sugars in the dough and gives off carbon dioxide, which "
     "the gluten traps in thousands of small pockets. In the oven the gas expands, the water turns to steam, and the "
     "starches set, so the loaf keeps the shape the bubbles gave it. A baker who understands each step can fix a "
     "dense loaf by asking which one went wrong."),
    ("When people estimate, they often anchor on the first number they hear. Asked whether a city has more or fewer "
     "than two million people, and then asked for their best guess, they answer closer to two million than people who "
     "were first offered a different number. A useful habit is to build an estimate from parts instead: how many "
     "people live in a typical household, how many households fit on a block, how many blocks the city covers. Each "
     "part can be wrong, but the errors tend to cancel rather than pile up in one direction."),
    ("The lighthouse keeper's log was a plain record: the time the lamp was lit, the weather, the ships that passed, "
     "the oil used. Read a century later, those entries tell a story no one meant to write. The dates of the first "
     "autumn gales move, the number of sailing ships falls while steamers rise, and one winter the oil allowance is "
     "cut in half. Historians value such logs precisely because they were kept for a practical reason, by someone who "
     "had no interest in how the future would see them."),
    ("A good proof is a path that a reader can walk without being carried. Each step should follow from what came "
     "before, and the reader should be able to see why the step was taken, not only that it is valid. Mathematicians "
     "often write the final version backwards from how they found it: the discovery started from the conclusion and "
     "searched for a way in, while the written proof starts from the assumptions and walks forward. Both directions "
     "are part of the work, and students learn a great deal by reconstructing the search behind a tidy proof."),
    ("Migrating birds navigate with several senses at once. They use the position of the sun during the day, the "
     "rotation of the stars at night, landmarks such as coastlines and mountain ridges, and, for many species, the "
     "earth's magnetic field. Young birds on their first migration often fly the right direction for the right "
     "distance without having learned the route, which suggests that part of the plan is inherited. Older birds "
     "correct for storms and detours in a way the young ones cannot, because they have a map as well as a compass."),
    ("Compression works because most data is not random. A text uses some letters far more than others, repeats whole "
     "words and phrases, and follows patterns that a model can predict. An encoder that predicts the next symbol well "
     "can spend fewer bits on the likely symbols and more on the surprising ones, and the average length shrinks. The "
     "same idea sits under the measure called perplexity: a language model that is rarely surprised by the next token "
     "would also make a good compressor of the text it was tested on."),
    ("The small town library opened at ten and closed at six, except on Thursdays, when it stayed open late for the "
     "evening reading group. The group had read the same author for two years, one chapter a week, and argued about "
     "every chapter as if the outcome mattered. Newcomers were welcome but were warned that the discussion of the "
     "ending had been postponed indefinitely, since nobody wanted the book to be finished."),
    ("Engineers who design bridges think about loads that are rare as well as loads that are common. A bridge must "
     "carry its own weight every day, traffic most days, a crowd on a festival day, and the wind of a storm that comes "
     "once in a century. Each of these is multiplied by a safety factor, and the structure is checked against the "
     "worst combination that could plausibly happen at the same time. The hardest part is often not the calculation "
     "but deciding which combinations are plausible."),
    ("Rounding errors are small, but they are not always harmless. Adding a long list of numbers in floating point "
     "can give a different result depending on the order, because each addition rounds to the nearest representable "
     "value. Summing the small numbers first usually helps, and pairwise summation, which adds neighbours and then "
     "adds the partial sums, keeps the error growing slowly. Two programs that agree on every formula can still "
     "disagree in the last digits if they add in a different order."),
    ("In the hills above the village, terraces turn a steep slope into a staircase of narrow fields. Each wall of "
     "stacked stone holds back the soil of the field above it and drains the water that would otherwise wash the "
     "slope away. Keeping the walls in repair is constant work, passed down through families, and when a village "
     "empties the terraces slowly collapse. Walking there, one can read in the stones how much labour it took to "
     "make a flat place to grow a single row of beans."),
    ("A scientific instrument is trusted only after it has been compared with something already trusted. A new "
     "thermometer is checked in melting ice and in boiling water; a new telescope is pointed at stars whose positions "
     "are known. The comparison does not prove the instrument right everywhere, but it shows where it agrees and how "
     "large its errors are. Much of the progress in measurement has come from people who spent years on such "
     "comparisons, which rarely make headlines but make every later headline possible."),
    ("Chess players talk about tempo: a move that forces the opponent to respond gains time, while a move that does "
     "nothing useful loses it. The idea carries over to planning of any kind. A task that unblocks three others is "
     "worth doing first even if it is small, and a task that can wait without cost should wait. Good planners are "
     "not the ones who work fastest, but the ones who waste the fewest moves."),
    ("Tea reached Europe as an expensive curiosity and became a daily habit within a few generations. Its spread "
     "changed trade routes, taxes, porcelain, and even the hours at which people ate. Many things that now seem "
     "ordinary began as luxuries that someone found a way to make cheaper, and the history of everyday objects is "
     "often a history of patient improvements in shipping, storage and manufacture rather than of single inventions."),
    ("When a student is stuck on a problem, the most useful question is often the simplest: what is actually being "
     "asked? Rewriting the question in one's own words, drawing a picture, or trying the smallest possible case can "
     "reveal which quantity matters and which details are decoration. A worked example is valuable not because its "
     "numbers will appear again, but because it shows which step comes next when the page is blank."),
    ("Weather forecasts are stated as probabilities because the atmosphere is sensitive to small differences. "
     "Forecasters run the same model many times from slightly different starting conditions and count how often "
     "rain appears over a given place. If seventy of a hundred runs give rain, the forecast says seventy percent. "
     "Over many days, a well calibrated forecaster's seventy percent days should turn out rainy about seven times "
     "in ten, and checking that is how forecasts are graded."),
    ("Old maps are full of confident mistakes: islands that do not exist, rivers that run the wrong way, mountains "
     "placed from a traveller's guess. Mapmakers copied from each other, and an error could survive for centuries "
     "because no one went to check. The maps improved when surveyors started measuring angles and distances on the "
     "ground and when sailors began to record their longitude with accurate clocks, turning rumours into numbers."),
]


# ------------------------------------------------------------------------------------------- code

def _py_sieve(r: random.Random) -> str:
    fn, lim = r.choice(["primes_up_to", "sieve", "small_primes"]), r.choice([50, 100, 1000, 10_000])
    return f'''def {fn}(limit: int) -> list[int]:
    """All primes <= limit (sieve of Eratosthenes)."""
    if limit < 2:
        return []
    is_prime = [True] * (limit + 1)
    is_prime[0] = is_prime[1] = False
    for p in range(2, int(limit ** 0.5) + 1):
        if is_prime[p]:
            for multiple in range(p * p, limit + 1, p):
                is_prime[multiple] = False
    return [n for n, flag in enumerate(is_prime) if flag]


if __name__ == "__main__":
    found = {fn}({lim})
    print(len(found), "primes below", {lim}, "the largest is", found[-1])
'''


def _py_binsearch(r: random.Random) -> str:
    name = r.choice(["first_at_least", "lower_bound", "bisect_left"])
    return f'''def {name}(items, target):
    """Index of the first element >= target in the sorted list items (len(items) if none)."""
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid
    return lo


assert {name}([1, 3, 3, 7], 3) == 1
assert {name}([1, 3, 3, 7], 8) == 4
assert {name}([], {r.randint(0, 9)}) == 0
'''


def _py_quant(r: random.Random) -> str:
    qk = r.choice([32, 64])
    return f'''import numpy as np


def quantize_block_q8(x: np.ndarray) -> tuple[float, np.ndarray]:
    """Symmetric 8-bit quantization of one block of {qk} floats: a scale and int8 codes."""
    assert x.shape == ({qk},)
    amax = float(np.abs(x).max())
    scale = amax / 127.0 if amax > 0 else 0.0
    inv = 1.0 / scale if scale else 0.0
    codes = np.round(x * inv).astype(np.int8)
    return scale, codes


def dequantize_block_q8(scale: float, codes: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * np.float32(scale)


rng = np.random.default_rng({r.randint(0, 999)})
block = rng.standard_normal({qk}).astype(np.float32)
s, q = quantize_block_q8(block)
err = np.abs(dequantize_block_q8(s, q) - block).max()
print(f"scale={{s:.5f}} max error={{err:.5f}} (at most half a step: {{s / 2:.5f}})")
'''


def _py_bfs(r: random.Random) -> str:
    n = r.randint(5, 9)
    edges = sorted({(a, b) for a, b in ((r.randrange(n), r.randrange(n)) for _ in range(2 * n)) if a != b})
    return f'''from collections import deque


def shortest_hops(graph: dict[int, list[int]], start: int) -> dict[int, int]:
    """Breadth-first search: the number of edges from start to every reachable node."""
    dist = {{start: 0}}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in graph.get(node, []):
            if nxt not in dist:
                dist[nxt] = dist[node] + 1
                queue.append(nxt)
    return dist


edges = {edges}
graph: dict[int, list[int]] = {{}}
for a, b in edges:
    graph.setdefault(a, []).append(b)
    graph.setdefault(b, []).append(a)
print(shortest_hops(graph, 0))
'''


def _py_fraction(r: random.Random) -> str:
    return f'''from fractions import Fraction


def harmonic(n: int) -> Fraction:
    """1 + 1/2 + ... + 1/n as an exact fraction."""
    total = Fraction(0)
    for k in range(1, n + 1):
        total += Fraction(1, k)
    return total


for n in range(1, {r.randint(6, 12)}):
    h = harmonic(n)
    print(n, h, float(h))
'''


def _c_dot(r: random.Random) -> str:
    t = r.choice(["float", "double"])
    return f'''#include <stdio.h>
#include <stddef.h>

/* dot product with a running sum; the order of the additions fixes the rounding */
static {t} dot(const {t} *a, const {t} *b, size_t n) {{
    {t} sum = 0;
    for (size_t i = 0; i < n; ++i) {{
        sum += a[i] * b[i];
    }}
    return sum;
}}

int main(void) {{
    {t} x[{r.randint(3, 6)}] = {{1, 2, 3}};
    {t} y[sizeof x / sizeof x[0]] = {{4, 5, 6}};
    printf("%g\\n", (double) dot(x, y, sizeof x / sizeof x[0]));
    return 0;
}}
'''


def _c_gcd(r: random.Random) -> str:
    a, b = r.randint(100, 999), r.randint(100, 999)
    return f'''#include <stdio.h>

static unsigned gcd(unsigned a, unsigned b) {{
    while (b != 0) {{
        unsigned t = a % b;
        a = b;
        b = t;
    }}
    return a;
}}

int main(void) {{
    unsigned a = {a}, b = {b};
    printf("gcd(%u, %u) = %u, lcm = %u\\n", a, b, gcd(a, b), a / gcd(a, b) * b);
    return 0;
}}
'''


def _shell(r: random.Random) -> str:
    chunks = r.choice([50, 100, 200])
    return f'''#!/bin/sh
# Compute an importance matrix, then quantize with it (llama.cpp's tools, then the same with l1quant).
set -eu
MODEL=${{1:?usage: $0 MODEL_DIR}}
l1quant convert "$MODEL" --type bf16 --output model-BF16.gguf
l1quant imatrix model-BF16.gguf -f calibration.txt -o model.imatrix.gguf --chunks {chunks} -t "$(nproc)"
l1quant quantize model-BF16.gguf model-Q4_K_M.gguf q4_k_m --imatrix model.imatrix.gguf
ls -l model-*.gguf
'''


def _py_stats(r: random.Random) -> str:
    return f'''import math


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n))."""
    n = len(values)
    if n < 2:
        raise ValueError("need at least two values")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


nll = [{", ".join(f"{r.uniform(0.5, 4):.3f}" for _ in range(8))}]
m, se = mean_and_stderr(nll)
print(f"PPL = {{math.exp(m):.4f}} +/- {{math.exp(m) * se:.4f}}")
'''


CODE = [_py_sieve, _py_binsearch, _py_quant, _py_bfs, _py_fraction, _c_dot, _c_gcd, _shell, _py_stats]


def build() -> str:
    r = random.Random(SEED)
    items: list[str] = [math_item(r) for _ in range(N_MATH)]
    prose = list(PROSE)
    r.shuffle(prose)
    code = [CODE[i % len(CODE)](r) for i in range(4 * len(CODE))]
    r.shuffle(code)
    # interleave: a prose paragraph or a program after every few problems, so every 512-token chunk is mixed
    out: list[str] = []
    others = [p + "\n" for p in prose] + code
    r.shuffle(others)
    step = max(1, len(items) // (len(others) + 1))
    for i, item in enumerate(items):
        out.append(item)
        if i % step == step - 1 and others:
            out.append(others.pop())
    out += others
    return "\n".join(out)


def main() -> int:
    text = build()
    OUT.write_text(text, encoding="utf-8")
    print(f"{OUT}: {len(text.encode())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
