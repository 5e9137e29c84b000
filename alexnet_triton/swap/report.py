"""What a swap did, module by module: :class:`SwapReport`, its entries and its readable table."""

from dataclasses import dataclass, field

from torch import nn

from alexnet_triton import nn as fused


@dataclass(frozen=True)
class Swapped:
    """A module (or a conv and the ReLU after it) that now computes through a fused op, or back."""

    name: str  # qualified name in the model, as named_modules() gives it
    before: str
    after: str


@dataclass(frozen=True)
class NotSwapped:
    """A module of a swappable kind left as it was, and why."""

    name: str
    type: str
    reason: str


@dataclass
class SwapReport:
    """What :func:`swap_fused_ops` or :func:`unswap_fused_ops` did; ``str()`` gives a readable table."""

    action: str
    swapped: list[Swapped] = field(default_factory=list)
    left: list[NotSwapped] = field(default_factory=list)  # left as they were
    traced: bool = False  # the returned model is a torch.fx.GraphModule traced from the one passed in

    def add_swapped(self, name: str, before: str, after: str) -> None:
        self.swapped.append(Swapped(name, before, after))

    def add_not_swapped(self, name: str, module: nn.Module, reason: str) -> None:
        self.left.append(NotSwapped(name, type_name(type(module)), reason))

    def sort_as(self, model: nn.Module) -> None:
        """Order the entries as model.named_modules() lists the modules (the walks record them out of order)."""
        position = {name: index for index, (name, _) in enumerate(model.named_modules())}
        self.swapped.sort(key=lambda entry: position.get(entry.name, len(position)))
        self.left.sort(key=lambda entry: position.get(entry.name, len(position)))

    def __str__(self) -> str:
        lines = [f"{self.action}: {len(self.swapped)} swapped, {len(self.left)} left as they were"]
        if self.swapped:
            lines.append("swapped:")
            lines += _columns([(display_name(entry.name), entry.before, "->", entry.after) for entry in self.swapped])
        if self.left:
            lines.append("left as they were:")
            lines += _columns([(display_name(entry.name), entry.type, entry.reason) for entry in self.left])
        if self.traced:
            lines.append("The returned model is a torch.fx.GraphModule: use it in place of the one passed in.")
        return "\n".join(lines)


def type_name(cls: type) -> str:
    """A class as a user would write it: at.nn.X, nn.X, or its full path."""
    if cls.__module__ == fused.__name__:
        return f"at.nn.{cls.__name__}"
    if getattr(nn, cls.__name__, None) is cls:
        return f"nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def display_name(name: str) -> str:
    """A qualified module name, with the model itself (named "") spelled out."""
    return name or "(the model itself)"


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as lines of left-aligned columns; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  " + "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]) for row in rows]
