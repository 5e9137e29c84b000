"""Reading SASS, the instructions an NVIDIA GPU runs: `cuobjdump -sass` of a cubin parsed into instructions,
its loops found from the branches back, the hot loop picked out and counted (tensor-core instructions, async
copies, 128-bit loads), and the modeled issue bound of one trip round it. bench/census.py applies this to every
compiled kernel; tests/data holds a sample it is tested on.
"""

import dataclasses
import re
import subprocess
from pathlib import Path

import triton

# Dense tensor-core FLOP per clock per SM on an H100 (989 bf16 TFLOP/s = 132 SMs x 1.83 GHz x 4096), by the
# precision an MMA multiplies in. fp32 without TF32 and fp64 run tl.dot on the FMA units: no bound is modeled.
TENSOR_FLOP_PER_CLOCK = {"bf16": 4096, "fp16": 4096, "tf32": 2048}
ISSUE_SLOTS_PER_CLOCK = 4  # warp schedulers per SM, each issuing one instruction per clock

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"

# One instruction of cuobjdump -sass: /*0a30*/  @!P1 BRA 0x73c0 ;  /* encoding */
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)\s*(.*?)\s*;")
_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")


@dataclasses.dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with its modifiers: HGMMA.64x64x16.F32.BF16
    operands: str
    predicated: bool


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    """cuobjdump -sass output -> function name -> its instructions in address order."""
    functions: dict[str, list[Instruction]] = {}
    current = None
    for line in text.splitlines():
        found = _FUNCTION.match(line)
        if found:
            current = functions.setdefault(found.group(1), [])
            continue
        found = _INSTRUCTION.match(line)
        if found and current is not None:
            address, predicate, opcode, operands = found.groups()
            current.append(Instruction(int(address, 16), opcode, operands, predicate is not None))
    return functions


def branch_target(instruction: Instruction) -> int | None:
    """The address a direct branch jumps to, or None for any other instruction. A branch may name a predicate operand
    before its target (`BRA !P3, 0x...`: taken where the predicate holds, on top of any guard)."""
    if instruction.opcode.split(".")[0] != "BRA":
        return None
    found = re.match(r"(?:!?U?P[T\d]+\s*,\s*)?(?:`\()?\s*0x([0-9a-f]+)", instruction.operands)
    return int(found.group(1), 16) if found else None


def loops(instructions: list[Instruction]) -> list[tuple[int, int]]:
    """Loops as (first, last) instruction indices, outermost first, then in program order: a branch back to an earlier
    address. Back edges from blocks the compiler parks after the exit (a barrier's retry path jumping into the loop)
    are not loops: a loop's span holds no unconditional EXIT (a conditional one is the loop's own way out, as where
    the loop ends the kernel). Branches back to one header make one loop, which the last of them ends; the
    unconditional branch to itself that pads a function's end is none."""
    index = {instruction.address: i for i, instruction in enumerate(instructions)}
    ends: dict[int, int] = {}
    for last, instruction in enumerate(instructions):
        target = branch_target(instruction)
        if target is None or target > instruction.address or target not in index:
            continue
        first = index[target]
        if first == last and not instruction.predicated:
            continue
        if any(i.opcode.split(".")[0] == "EXIT" and not i.predicated for i in instructions[first : last + 1]):
            continue
        ends[first] = max(ends.get(first, last), last)
    return sorted(ends.items(), key=lambda span: (span[0], -span[1]))


def is_tensor_core(opcode: str) -> bool:
    return opcode.startswith(("HGMMA", "HMMA"))


def innermost(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The loops that contain no other loop."""
    return [(a, b) for a, b in spans if not any((c, d) != (a, b) and a <= c and d <= b for c, d in spans)]


def hot_loop(instructions: list[Instruction]) -> list[Instruction] | None:
    """The loop holding the most tensor-core instructions (of those, the shortest: the innermost); without any,
    the longest innermost loop; None for straight-line code."""
    spans = loops(instructions)

    def tensor_core_count(span):
        return sum(is_tensor_core(i.opcode) for i in instructions[span[0] : span[1] + 1])

    counts = {span: tensor_core_count(span) for span in spans}
    if any(counts.values()):
        first, last = max(spans, key=lambda span: (counts[span], span[0] - span[1]))
    elif spans:
        first, last = max(innermost(spans), key=lambda span: span[1] - span[0])
    else:
        return None
    return instructions[first : last + 1]


def mma_flops(opcode: str) -> tuple[int, str] | None:
    """FLOPs of one tensor-core instruction and who issues it as a unit: HGMMA.MxNxK is one warpgroup's (4 warps)
    M x N x K product, HMMA.16816 / HMMA.1688 one warp's 16 x 8 x 16 / 16 x 8 x 8."""
    found = re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)", opcode)
    if found:
        m, n, k = map(int, found.groups())
        return 2 * m * n * k, "warpgroup"
    found = re.match(r"HMMA\.(\d\d)(\d)(\d+)", opcode)
    if found:
        m, n, k = map(int, found.groups())
        return 2 * m * n * k, "warp"
    return None


@dataclasses.dataclass(frozen=True)
class LoopCensus:
    length: int  # instructions
    tensor_core: int  # HGMMA / HMMA instructions
    async_copies: int  # LDGSTS and UTMALDG
    wide_loads: int  # 128-bit global loads, plain or async
    flops_per_warp: float  # tensor-core FLOPs one warp's pass through the loop accounts for

    def issue_bound(self, num_warps: int, precision: str) -> float | None:
        """Tensor-core cycles / issue cycles of one trip for a block of num_warps warps, capped at 1; None where
        the precision has no tensor-core rate or the loop has no tensor-core instruction."""
        rate = TENSOR_FLOP_PER_CLOCK.get(precision)
        if rate is None or self.tensor_core == 0:
            return None
        tensor_cycles = self.flops_per_warp * num_warps / rate
        issue_cycles = self.length * num_warps / ISSUE_SLOTS_PER_CLOCK
        return min(1.0, tensor_cycles / issue_cycles)


def census_of_loop(body: list[Instruction]) -> LoopCensus:
    flops = 0.0
    for instruction in body:
        mma = mma_flops(instruction.opcode)
        if mma is not None:
            amount, unit = mma
            flops += amount / 4 if unit == "warpgroup" else amount  # a warpgroup's product, per warp
    return LoopCensus(
        length=len(body),
        tensor_core=sum(is_tensor_core(i.opcode) for i in body),
        async_copies=sum(i.opcode.startswith(("LDGSTS", "UTMALDG")) for i in body),
        wide_loads=sum(i.opcode.startswith(("LDG", "LDGSTS")) and ".128" in i.opcode for i in body),
        flops_per_warp=flops,
    )


def disassemble(cubin: str) -> str:
    result = subprocess.run([str(CUOBJDUMP), "-sass", cubin], capture_output=True, text=True, check=True)
    return result.stdout
