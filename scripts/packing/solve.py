#!/usr/bin/env python3
"""Small bin-packing snapshots with exact optima, for `scheduler/benches/optimal.rs`.

Generates 60-100-task snapshots on identical hosts (64 vCPU, 256 GiB, 1,600 GiB
disk, 25 Gbps: the mixed-shape bench's host) in three families, solves each
to proven optimality (the fewest hosts that hold every task, in all four
dimensions) with OR-Tools CP-SAT, and writes one JSON file per family to
`scheduler/testdata/packing/<family>.json`. The files are committed; the
bench reads them and compares the scheduler's hosts used with the optimum.

Families (requests in integer units: cpu_millis, memory_mib, disk_mib,
network_mbps):
  encoding       a few encoding-chunk shapes per case (4-16 vCPU, 1-2 GiB per
                 vCPU, 50-200 GiB scratch disk, 1-3 Gbps), repeated: mostly
                 CPU-bound, some disk- or network-bound.
  complementary  half CPU-heavy (4-16 vCPU, 1-16 GiB), half memory-heavy
                 (0.5-2 vCPU, 32-96 GiB); disk and network 0.25%-2.5% of a
                 host (scheduler/benches/packing.rs, `Mix::Complementary`).
  uniform        every dimension uniform in 0.5%-12.5% of a host
                 (scheduler/benches/packing.rs, `Mix::Uniform`).

Run by hand, not by CI (the outputs are committed as testdata). From the
repository root:

    python3 -m venv /var/cache/ebb-ortools
    /var/cache/ebb-ortools/bin/pip install ortools==9.15.6755
    /var/cache/ebb-ortools/bin/python scripts/packing/solve.py            # all families
    /var/cache/ebb-ortools/bin/python scripts/packing/solve.py uniform    # one family

    python3 scripts/packing/solve.py --verify   # no OR-Tools needed: regenerate
                                                # every snapshot from its seed and
                                                # re-check the committed files
    /var/cache/ebb-ortools/bin/python scripts/packing/solve.py --audit
        # re-solve without symmetry breaking and compare the optima (writes nothing)

Deterministic: a case's tasks depend only on its family and seed (SplitMix64,
the generator packing.rs uses, not Python's `random`, whose algorithms may
change between versions). The optimum is unique; which optimal packing the
solver returns as the witness, and its time, may differ from run to run.

Nothing non-optimal is written as an optimum: `optimum` is set only when
CP-SAT reports OPTIMAL, and the witness packing is checked here (every task on
one host, no host over capacity in any dimension, as many hosts as the
optimum) before the file is written. A case that is not proven within the
time limit keeps `optimum: null`, its status (FEASIBLE), the best packing
found (`hosts_found`) and the solver's best bound (`best_bound`).
"""

import argparse
import json
import math
import os
import sys
import time

# The pinned solver version. Another version may take a different time and
# return a different witness; the optimum cannot differ.
ORTOOLS_VERSION = "9.15.6755"

# One host: 64 vCPU, 256 GiB, 1,600 GiB disk, 25 Gbps (m5.16xlarge-like; the
# host of packing.rs's mixed-shape bench).
HOST = {
    "cpu_millis": 64_000,
    "memory_mib": 256 * 1024,
    "disk_mib": 1_600 * 1024,
    "network_mbps": 25_000,
}
DIMS = ("cpu_millis", "memory_mib", "disk_mib", "network_mbps")

FAMILIES = ("encoding", "complementary", "uniform")

# Ten seeds per family (the issue asks for several; ten keeps a one-host
# miss on one case visible in the mean without the bench taking long).
SEEDS = range(1, 11)

# Task counts per case: the "60-100 tasks".
MIN_TASKS, MAX_TASKS = 60, 100

# Per-family salt XORed into the seed, so seed 1 of two families does not
# start the generator in the same state.
SALT = {
    "encoding": 0xEBB0_E4C0_0000_0000,
    "complementary": 0xEBB0_C0A1_0000_0000,
    "uniform": 0xEBB0_0F1F_0000_0000,
}

# Seconds CP-SAT may spend on one case before the case is written as not
# proven. Every case of the committed files was proven in far less.
DEFAULT_TIME_LIMIT_S = 120.0

MASK64 = (1 << 64) - 1


class SplitMix64:
    """The generator of scheduler/benches/packing.rs, bit for bit."""

    def __init__(self, state):
        self.state = state & MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        x = self.state
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
        return x ^ (x >> 31)

    def range(self, lo, hi):
        """Uniform in lo..=hi (with packing.rs's slight modulo bias)."""
        return lo + self.next() % (hi - lo + 1)

    def choice(self, items):
        return items[self.next() % len(items)]


def task(cpu_millis, memory_mib, disk_mib, network_mbps):
    return {
        "cpu_millis": cpu_millis,
        "memory_mib": memory_mib,
        "disk_mib": disk_mib,
        "network_mbps": network_mbps,
    }


# Encoding-chunk shape catalog: vCPUs per chunk (ladder rungs from SD to 4K),
# GiB of memory per vCPU (encoders need 1-2 GiB a core, a quarter to half of
# the host's 4 GiB per vCPU, so memory never binds), GiB of scratch disk
# (source chunk plus outputs) and Mbps (reading the source, writing outputs).
ENC_VCPUS = (4, 6, 8, 12, 16)
ENC_GIB_PER_VCPU = (1, 2)
ENC_DISK_GIB = (50, 100, 150, 200)
ENC_NETWORK_MBPS = (1_000, 2_000, 3_000)


def encoding_tasks(rng, n):
    # Three to five distinct shapes per case, each with its own weight, as an
    # encoding season submits a few ladders of many equal chunks.
    n_shapes = rng.range(3, 5)
    shapes = []
    while len(shapes) < n_shapes:
        vcpu = rng.choice(ENC_VCPUS)
        shape = task(
            vcpu * 1000,
            vcpu * rng.choice(ENC_GIB_PER_VCPU) * 1024,
            rng.choice(ENC_DISK_GIB) * 1024,
            rng.choice(ENC_NETWORK_MBPS),
        )
        if shape not in shapes:
            shapes.append(shape)
    weights = [rng.range(1, 4) for _ in shapes]
    total = sum(weights)
    out = []
    for _ in range(n):
        pick = rng.range(1, total)
        for shape, w in zip(shapes, weights):
            if pick <= w:
                out.append(dict(shape))
                break
            pick -= w
    return out


def complementary_tasks(rng, n):
    def small(c):
        return rng.range(c // 400, c // 40)

    out = []
    for _ in range(n):
        if rng.next() % 2 == 0:
            cpu, mem = rng.range(4_000, 16_000), rng.range(1_024, 16 * 1024)
        else:
            cpu, mem = rng.range(500, 2_000), rng.range(32 * 1024, 96 * 1024)
        out.append(task(cpu, mem, small(HOST["disk_mib"]), small(HOST["network_mbps"])))
    return out


def uniform_tasks(rng, n):
    def frac(c):
        return rng.range(c // 200, c // 8)

    return [task(*(frac(HOST[d]) for d in DIMS)) for _ in range(n)]


GENERATORS = {
    "encoding": encoding_tasks,
    "complementary": complementary_tasks,
    "uniform": uniform_tasks,
}


def generate(family, seed):
    """The case's tasks, in generated (random submit) order."""
    rng = SplitMix64(SALT[family] ^ seed)
    n = rng.range(MIN_TASKS, MAX_TASKS)
    return GENERATORS[family](rng, n)


def lower_bound(tasks):
    """max over dimensions of ceil(total demand / host capacity)."""
    return max(math.ceil(sum(t[d] for t in tasks) / HOST[d]) for d in DIMS)


def check_packing(tasks, assignment):
    """Number of hosts the packing uses; raises if it is not a valid packing."""
    if len(assignment) != len(tasks):
        raise ValueError(f"assignment has {len(assignment)} entries for {len(tasks)} tasks")
    loads = {}
    for t, h in zip(tasks, assignment):
        load = loads.setdefault(h, dict.fromkeys(DIMS, 0))
        for d in DIMS:
            load[d] += t[d]
    for h, load in loads.items():
        for d in DIMS:
            if load[d] > HOST[d]:
                raise ValueError(f"host {h} over capacity in {d}: {load[d]} > {HOST[d]}")
    if sorted(loads) != list(range(len(loads))):
        raise ValueError("assignment's host indices are not 0..n_hosts")
    return len(loads)


def first_fit_decreasing(tasks, order):
    """Host index per task, first fit in `order`: the solver's upper bound."""
    loads, assignment = [], [None] * len(tasks)
    for i in order:
        for h, load in enumerate(loads):
            if all(load[d] + tasks[i][d] <= HOST[d] for d in DIMS):
                break
        else:
            h = len(loads)
            loads.append(dict.fromkeys(DIMS, 0))
        for d in DIMS:
            loads[h][d] += tasks[i][d]
        assignment[i] = h
    return assignment


def size_order(tasks):
    """Task indices largest first: dominant share, then the sum of shares."""

    def key(i):
        shares = [tasks[i][d] / HOST[d] for d in DIMS]
        return (-max(shares), -sum(shares), i)

    return sorted(range(len(tasks)), key=key)


def solve(tasks, time_limit_s, workers, plain=False):
    """Minimum hosts with CP-SAT. Returns (status, hosts_found, best_bound,
    assignment, seconds). `plain` drops the symmetry breaking and the hint
    (slow; only to audit that they cut off no optimum)."""
    from ortools.sat.python import cp_model

    order = size_order(tasks)  # solver item k is task order[k]
    items = [tasks[i] for i in order]
    n = len(items)
    ffd = first_fit_decreasing(items, range(n))
    n_bins = check_packing(items, ffd)  # FFD's host count bounds the optimum above
    lb = lower_bound(items)

    m = cp_model.CpModel()
    # x[k][b]: item k on host b. Symmetry breaking for identical hosts: label
    # hosts by the first (largest) item they hold, in item order, so item k
    # sits on a host labelled at most k, and used hosts are a prefix.
    width = (lambda k: n_bins) if plain else (lambda k: min(k + 1, n_bins))
    x = [[m.new_bool_var(f"x{k}_{b}") for b in range(width(k))] for k in range(n)]
    y = [m.new_bool_var(f"y{b}") for b in range(n_bins)]
    for k in range(n):
        m.add_exactly_one(x[k])
        for b, v in enumerate(x[k]):
            m.add_implication(v, y[b])
    for b in range(1, n_bins if not plain else 0):
        m.add_implication(y[b], y[b - 1])
    for b in range(n_bins):
        on = [(k, x[k][b]) for k in range(n) if b < len(x[k])]
        for d in DIMS:
            m.add(sum(items[k][d] * v for k, v in on) <= HOST[d] * y[b])
    # Identical items are interchangeable: keep their hosts in item order
    # (compatible with the labelling above: fill a shape's existing hosts in
    # label order before opening new ones).
    host_of = [sum(b * v for b, v in enumerate(row)) for row in x]
    for k in range(1, n if not plain else 0):
        if items[k] == items[k - 1]:
            m.add(host_of[k - 1] <= host_of[k])
    m.add(sum(y) >= lb)
    m.minimize(sum(y))
    if plain:
        return run(m, x, order, time_limit_s, workers)
    # Start from first-fit-decreasing, already in the labelled form (item k
    # opens at most host k: FFD opens hosts in item order).
    for k in range(n):
        for b, v in enumerate(x[k]):
            m.add_hint(v, ffd[k] == b)
    for v in y:
        m.add_hint(v, True)
    return run(m, x, order, time_limit_s, workers)


def run(m, x, order, time_limit_s, workers):
    """Solves the model; maps the packing back to the tasks' own order."""
    from ortools.sat.python import cp_model

    n = len(order)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    start = time.monotonic()
    status = solver.solve(m)
    seconds = time.monotonic() - start
    name = solver.status_name(status)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise RuntimeError(f"solver returned {name}: FFD's packing is a solution, so this is a bug")
    by_item = [next(b for b, v in enumerate(row) if solver.boolean_value(v)) for row in x]
    assignment = [None] * n
    for k, i in enumerate(order):
        assignment[i] = by_item[k]
    # Renumber hosts 0.. in first-use order of the original task list (a
    # canonical form; the labelled hosts are already a prefix).
    renumber = {}
    assignment = [renumber.setdefault(h, len(renumber)) for h in assignment]
    hosts_found = round(solver.objective_value)
    best_bound = math.ceil(solver.best_objective_bound - 1e-6)
    return name, hosts_found, best_bound, assignment, seconds


def build_case(family, seed, time_limit_s, workers, plain=False):
    tasks = generate(family, seed)
    status, hosts_found, best_bound, assignment, seconds = solve(
        tasks, time_limit_s, workers, plain
    )
    used = check_packing(tasks, assignment)
    if used != hosts_found:
        raise RuntimeError(
            f"{family} seed {seed}: witness uses {used} hosts, solver said {hosts_found}"
        )
    lb = lower_bound(tasks)
    if not lb <= best_bound <= hosts_found:
        raise RuntimeError(
            f"{family} seed {seed}: bounds out of order: {lb} {best_bound} {hosts_found}"
        )
    optimal = status == "OPTIMAL"
    if optimal and best_bound != hosts_found:
        raise RuntimeError(f"{family} seed {seed}: OPTIMAL but bound {best_bound} < {hosts_found}")
    return {
        "seed": seed,
        "n_tasks": len(tasks),
        "lower_bound": lb,
        "optimum": hosts_found if optimal else None,
        "status": status,
        "hosts_found": hosts_found,
        "best_bound": best_bound,
        "solve_seconds": round(seconds, 3),
        "tasks": tasks,
        "assignment": assignment,
    }


DESCRIPTIONS = {
    "encoding": "3-5 encoding-chunk shapes per case (4-16 vCPU, 1-2 GiB per vCPU, "
    "50-200 GiB disk, 1-3 Gbps), repeated: mostly CPU-bound",
    "complementary": "half CPU-heavy (4-16 vCPU, 1-16 GiB), half memory-heavy "
    "(0.5-2 vCPU, 32-96 GiB); disk and network 0.25%-2.5% of a host",
    "uniform": "every dimension uniform in 0.5%-12.5% of a host",
}


def dump(family, cases, meta):
    """JSON with one task per line, so diffs of the testdata stay readable."""
    one = lambda v: json.dumps(v, separators=(", ", ": "))  # noqa: E731
    lines = ["{"]
    lines.append(f'  "family": {one(family)},')
    lines.append(f'  "description": {one(DESCRIPTIONS[family])},')
    lines.append(f'  "generator": {one(meta)},')
    lines.append(f'  "host": {one(HOST)},')
    lines.append('  "cases": [')
    for c_idx, case in enumerate(cases):
        lines.append("    {")
        for key in ("seed", "n_tasks", "lower_bound", "optimum", "status", "hosts_found",
                    "best_bound", "solve_seconds"):
            lines.append(f'      "{key}": {one(case[key])},')
        lines.append('      "tasks": [')
        for t_idx, t in enumerate(case["tasks"]):
            comma = "," if t_idx + 1 < len(case["tasks"]) else ""
            lines.append(f"        {one(t)}{comma}")
        lines.append("      ],")
        lines.append(f'      "assignment": {one(case["assignment"])}')
        lines.append("    }" + ("," if c_idx + 1 < len(cases) else ""))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def out_path(root, family):
    return os.path.join(root, "scheduler", "testdata", "packing", f"{family}.json")


def verify(root, families):
    """Re-checks committed files without a solver: same tasks from the same
    seeds, valid witnesses, consistent bounds. Returns the number of errors."""
    n_errors = 0
    for family in families:
        path = out_path(root, family)
        with open(path) as f:
            doc = json.load(f)
        if doc["host"] != HOST:
            print(f"{path}: host capacity differs from this script's", file=sys.stderr)
            n_errors += 1
        for case in doc["cases"]:
            where = f"{path} seed {case['seed']}"
            try:
                if case["tasks"] != generate(family, case["seed"]):
                    raise ValueError("tasks differ from what the seed generates")
                used = check_packing(case["tasks"], case["assignment"])
                if used != case["hosts_found"]:
                    raise ValueError(f"witness uses {used} hosts, file says {case['hosts_found']}")
                if case["lower_bound"] != lower_bound(case["tasks"]):
                    raise ValueError("lower_bound is not the dimension-sum bound")
                if not case["lower_bound"] <= case["best_bound"] <= case["hosts_found"]:
                    raise ValueError("bounds out of order")
                if (case["status"] == "OPTIMAL") != (case["optimum"] is not None):
                    raise ValueError("optimum set without OPTIMAL status, or the reverse")
                if case["optimum"] is not None and case["optimum"] != case["best_bound"]:
                    raise ValueError("optimum is not equal to the proven bound")
            except (ValueError, KeyError) as e:
                print(f"{where}: {e}", file=sys.stderr)
                n_errors += 1
        print(f"{path}: {len(doc['cases'])} cases checked")
    return n_errors


def require_ortools():
    """Exits with instructions unless the pinned OR-Tools is importable."""
    try:
        import ortools
    except ImportError:
        sys.exit(f"ortools is not installed for {sys.executable}; see this script's header "
                 f"(python3 -m venv /var/cache/ebb-ortools && "
                 f"/var/cache/ebb-ortools/bin/pip install ortools=={ORTOOLS_VERSION})")
    if ortools.__version__ != ORTOOLS_VERSION:
        sys.exit(f"ortools {ortools.__version__} installed; pin {ORTOOLS_VERSION} "
                 f"(pip install ortools=={ORTOOLS_VERSION})")


def audit(root, families, time_limit_s, workers):
    """Solves every committed case again with the plain model (no symmetry
    breaking, no hint) and compares: a plain optimum below a committed one
    would mean the symmetry breaking cut off solutions. Returns the number
    of disagreements."""
    n_bad = 0
    for family in families:
        with open(out_path(root, family)) as f:
            doc = json.load(f)
        for case in doc["cases"]:
            plain = build_case(family, case["seed"], time_limit_s, workers, plain=True)
            same = plain["optimum"] == case["optimum"]
            # A plain run that is not proven can still refute: a packing with
            # fewer hosts than the committed optimum.
            refuted = case["optimum"] is not None and plain["hosts_found"] < case["optimum"]
            unproven = plain["optimum"] is None and not refuted
            if same:
                verdict = "agrees"
            elif refuted:
                verdict = "REFUTES"
            elif unproven:
                verdict = "not proven"
            else:
                verdict = "DIFFERS"
            print(f"{family} seed {case['seed']:2}: committed {case['optimum']}, plain "
                  f"{plain['status']} {plain['hosts_found']} (bound {plain['best_bound']}), "
                  f"{plain['solve_seconds']:.2f} s: {verdict}", flush=True)
            n_bad += verdict in ("REFUTES", "DIFFERS")
    return n_bad


def main():
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("families", nargs="*", metavar="FAMILY",
                   help=f"families to generate or verify, of {', '.join(FAMILIES)} (default: all)")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S,
                   help="CP-SAT seconds per case (default %(default)s)")
    # Eight workers even on two cores: CP-SAT's portfolio (LNS, core-based
    # bounds, propagation-heavy search) proves these far sooner than one worker.
    p.add_argument("--workers", type=int, default=8, help="CP-SAT workers (default %(default)s)")
    p.add_argument("--audit", action="store_true",
                   help="solve again without symmetry breaking and compare with the committed "
                        "optima (slow; writes nothing)")
    p.add_argument("--verify", action="store_true",
                   help="check the committed files instead of solving (no OR-Tools needed)")
    args = p.parse_args()
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown family {unknown[0]!r}: expected one of {', '.join(FAMILIES)}")
    families = args.families or list(FAMILIES)

    if args.verify:
        sys.exit(1 if verify(root, families) else 0)
    require_ortools()
    if args.audit:
        sys.exit(1 if audit(root, families, args.time_limit, args.workers) else 0)

    meta = {
        "script": "scripts/packing/solve.py",
        "ortools": ORTOOLS_VERSION,
        "workers": args.workers,
        "time_limit_seconds": args.time_limit,
    }
    for family in families:
        cases = []
        for seed in SEEDS:
            case = build_case(family, seed, args.time_limit, args.workers)
            cases.append(case)
            print(f"{family} seed {seed:2}: {case['n_tasks']:3} tasks, lower bound "
                  f"{case['lower_bound']:2}, {case['status']} {case['hosts_found']:2} hosts "
                  f"(bound {case['best_bound']}), {case['solve_seconds']:.2f} s", flush=True)
        path = out_path(root, family)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(dump(family, cases, meta))
        n_open = sum(1 for c in cases if c["optimum"] is None)
        print(f"wrote {path}" + (f" ({n_open} cases NOT proven optimal)" if n_open else ""))


if __name__ == "__main__":
    main()
