"""Past the first tile (DESIGN.md, "Tests"): what the kernels a test launched under the interpreter covered.

tests/conftest.py sets _common.TEST_TILES for every test, so that each kernel's interpreter blocks cut a test's shape
into several programs and its loops into several trips. record() notes every launch the interpreter runs (its
kernel, its grid, every argument by name with the block sizes the heuristics chose, and the tl.dot calls each
program made: the trips of a GEMM kernel's reduction loop); Launch.coverage() reads off each tiled dimension's
programs and each loop's trips, and uncovered() what falls short of TEST_PROGRAMS programs (with a partial last one)
or TEST_TRIPS trips. On a GPU nothing is interpreted, so nothing is recorded.
"""

import collections
import dataclasses

import triton
from alexnet_triton.kernels import _common


@dataclasses.dataclass
class Launch:
    kernel: str
    grid: tuple[int, int, int]
    args: dict  # every argument by name, the block sizes included
    dots: collections.Counter  # tl.dot calls per program, by its (x, y, z) index

    def tiled(self) -> dict[str, tuple[int, int]]:
        """Each dimension programs share: name -> (extent, block)."""
        return _TILED[self.kernel](self.args)

    def loops(self) -> dict[str, tuple[int, int]]:
        """Each loop a program runs: name -> (extent, step) per program; trips = cdiv(extent, step)."""
        return _LOOPS.get(self.kernel, lambda a: {})(self.args)

    def dot_trips(self) -> tuple[int, int] | None:
        """(fewest, most) tl.dot calls of a program that made any, and None for a kernel without tl.dot: the trips of
        a GEMM kernel's reduction loop as they ran (an empty split makes none)."""
        calls = [count for count in self.dots.values() if count]
        return (min(calls), max(calls)) if calls else None

    def coverage(self) -> dict[str, tuple]:
        """name -> (programs, partial last) for each tiled dimension, (trips,) for each loop, (fewest, most) tl.dot
        calls per program as "dot trips", and "splits" -> (splits,) for a split reduction."""
        covered = {}
        for name, (extent, block) in self.tiled().items():
            covered[name] = (triton.cdiv(extent, block), extent % block != 0)
        for name, (extent, step) in self.loops().items():
            covered[name] = (triton.cdiv(extent, step),)
        if self.dot_trips() is not None:
            covered["dot trips"] = self.dot_trips()
        if self.kernel in _SPLIT_AXIS:
            covered["splits"] = (self.grid[_SPLIT_AXIS[self.kernel]],)
        return covered

    def uncovered(self, *, partial: bool = True, exempt: tuple[str, ...] = ()) -> list[str]:
        """What this launch left short: a tiled dimension with fewer than TEST_PROGRAMS programs (or, with partial,
        no partial last one), a loop with fewer than TEST_TRIPS trips, a GEMM program whose reduction ran fewer
        (empty splits aside). exempt: names not to check (a dimension too small for a block's floor)."""
        short = []
        for name, (extent, block) in self.tiled().items():
            if name in exempt:
                continue
            programs = triton.cdiv(extent, block)
            if programs < _common.TEST_PROGRAMS:
                short.append(f"{self.kernel} {name}: {programs} program(s) of {block} over {extent}")
            elif partial and extent % block == 0:
                short.append(f"{self.kernel} {name}: {programs} full programs of {block} over {extent}, none partial")
        for name, (extent, step) in self.loops().items():
            if name not in exempt and triton.cdiv(extent, step) < _common.TEST_TRIPS:
                short.append(f"{self.kernel} {name}: {triton.cdiv(extent, step)} trip(s) of {step} over {extent}")
        trips = self.dot_trips()
        if "dot trips" not in exempt and trips is not None and trips[0] < _common.TEST_TRIPS:
            short.append(f"{self.kernel}: a program's reduction ran {trips[0]} trip(s)")
        return short


def _conv_fwd_reduction(a: dict) -> int:
    return a["TAPS"] * a["C_in_g"] if a["PACKED"] else a["C_in_g"]


# Per kernel: the dimensions its programs share, (extent, block) from its arguments.
_TILED = {
    "_conv_fwd_kernel": lambda a: {"pixels": (a["M"], a["BLOCK_M"]), "output channels": (a["C_out_g"], a["BLOCK_N"])},
    "_conv_wgrad_kernel": lambda a: {
        "output channels": (a["C_out_g"], a["BLOCK_M"]),
        "columns": (a["COLUMNS"], a["BLOCK_N"]),
    },
    "_conv_dgrad_gather_kernel": lambda a: {
        "input pixels": (a["GEMM_M"], a["BLOCK_M"]),
        "input channels": (a["GEMM_N"], a["BLOCK_N"]),
    },
    "_relu_grad_kernel": lambda a: {
        "pixels": (a["PIXELS"], a["PIXELS_PER_PROGRAM"]),
        "channels": (a["C"], a["BLOCK_C"]),
    },
    "_lrn_fwd_kernel": lambda a: {"pixels": (a["P"], a["BLOCK_S"])},
    "_lrn_bwd_kernel": lambda a: {"pixels": (a["P"], a["BLOCK_S"])},
    "_max_pool_fwd_kernel": lambda a: {"pixels": (a["P"], a["BLOCK_P"]), "channels": (a["C"], a["BLOCK_C"])},
    "_max_pool_bwd_kernel": lambda a: {"cells": (a["P"], a["BLOCK_P"]), "channels": (a["C"], a["BLOCK_C"])},
    "_lrn_max_pool_fwd_kernel": lambda a: {
        "column pairs x bands": (a["ITEMS"], a["BLOCK_P"]),
        "channel groups": (triton.cdiv(a["C"], a["VEC"]), a["BLOCK_G"]),
    },
    "_lrn_max_pool_bwd_kernel": lambda a: {
        "pixel blocks": (a["ITEMS"], a["BLOCK_P"]),
        "channel groups": (triton.cdiv(a["C"], a["VEC"]), a["BLOCK_G"]),
    },
    "_dropout_kernel": lambda a: {"elements": (a["numel"], a["BLOCK"])},
    "_space_to_depth_kernel": lambda a: {"blocked columns": (a["BW"], a["BLOCK_W"])},
    "_crop_normalize_kernel": lambda a: {
        "rows": (a["size"], a["ROWS"]),
        "values of a row": (3 * a["size"], a["BLOCK"]),
    },
}

# Per kernel: the loops of one program, (extent, step) from its arguments (the GEMM kernels' reductions are also
# counted as they ran, in tl.dot calls).
_LOOPS = {
    "_conv_fwd_kernel": lambda a: {"channel blocks": (_conv_fwd_reduction(a), a["BLOCK_K"])},
    "_conv_wgrad_kernel": lambda a: {"pixels of a split": (a["PIXELS_PER_SPLIT"], a["BLOCK_K"])},
    "_conv_dgrad_gather_kernel": lambda a: {"reduction": (a["GEMM_K"], a["BLOCK_K"])},
    "_relu_grad_kernel": lambda a: {"pixels of a program": (a["PIXELS_PER_PROGRAM"], a["BLOCK_P"])},
    "_lrn_fwd_kernel": lambda a: {"channel walk": (a["C"], a["CH"])},
    "_lrn_bwd_kernel": lambda a: {"channel walk": (a["C"] + a["CH"], a["CH"])},
    "_crop_normalize_kernel": lambda a: {"rows a program walks": (a["ROWS"], 1)} if a["TAPS"] else {},
    "_lrn_max_pool_fwd_kernel": lambda a: {"band rows": (a["ROWS"], 1)},
}

# The grid axis of a split reduction.
_SPLIT_AXIS = {"_conv_fwd_kernel": 2, "_conv_wgrad_kernel": 1}


def record(monkeypatch) -> list[Launch]:
    """Every launch the interpreter runs from now until monkeypatch undoes it, in order."""
    from triton.runtime import interpreter

    launches: list[Launch] = []
    run = interpreter.InterpretedFunction.run
    create_dot = interpreter.interpreter_builder.create_dot

    def recording_run(self, *args, grid, warmup, **kwargs):
        if warmup:
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)
        named = {**dict(zip(self.arg_names, args, strict=False)), **kwargs}
        shape = tuple(grid(named) if callable(grid) else grid)
        launch = Launch(self.fn.__name__, (*shape, *(1,) * (3 - len(shape))), named, collections.Counter())
        launches.append(launch)
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    def counting_dot(*args, **kwargs):
        if launches:
            launches[-1].dots[interpreter.interpreter_builder.grid_idx] += 1
        return create_dot(*args, **kwargs)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", recording_run)
    monkeypatch.setattr(interpreter.interpreter_builder, "create_dot", counting_dot)
    return launches


def uncovered(launches: list[Launch], *, partial: bool = True, exempt: dict | None = None) -> list[str]:
    """Everything the launches left short (Launch.uncovered); exempt: kernel -> names not to check."""
    exempt = exempt or {}
    return [
        problem
        for launch in launches
        for problem in launch.uncovered(partial=partial, exempt=tuple(exempt.get(launch.kernel, ())))
    ]


def table(launches: list[Launch]) -> str:
    """One line per launch: kernel, grid and coverage (for a failing assertion's message)."""
    return "\n".join(f"{launch.kernel} grid {launch.grid}: {launch.coverage()}" for launch in launches)
