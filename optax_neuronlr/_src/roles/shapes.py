"""What shapes say: stack and expert axes, the unnamed output head.

Without axis names, a leaf's batch axes are found here:

* a *stack axis* (scanned layers: linen ``nn.scan``, NNX ``nnx.vmap`` /
  ``nnx.scan``): a leading axis of the same length shared by every leaf of a
  module's subtree, where at least one leaf has more dimensions than its
  name allows (a ``(L, out)`` bias, a ``(L, d)`` norm scale, a
  ``(L, d, heads, head_dim)`` query kernel). Found by shape, so the layout
  says ``source="shape"`` for such leaves; ``axis_names=`` says it for sure.
  Repeated, it finds nested stacks.
* an *expert axis*: the leading axis of a leaf under a module whose name has
  the word ``expert``, ``experts`` or ``moe`` (``MoeBlock_0``, ``experts``)
  with more dimensions than its name allows (an ``(E, in, out)`` kernel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from optax_neuronlr._src import paths as paths_lib
from optax_neuronlr._src.roles import kinds as k
from optax_neuronlr._src.roles import names as names_lib

EXPERT_WORDS = frozenset({"expert", "experts", "moe", "moes", "mixture"})

Entries = Sequence[tuple[list[str], tuple[int, ...]]]


def _excess(keys: Sequence[str], ndim: int) -> bool:
  natural = names_lib.natural_ndim(keys)
  return natural is not None and ndim > natural


def stack_axes(entries: Entries) -> list[int]:
  """How many leading stack axes each leaf has (0 for most)."""
  stripped = [0] * len(entries)
  nodes: dict[tuple[str, ...], list[int]] = {}
  for i, (keys, _) in enumerate(entries):
    for d in range(len(keys)):
      nodes.setdefault(tuple(keys[:d]), []).append(i)

  def stacked(members: list[int]) -> bool:
    # A lone leaf shares its leading axis with nothing: no evidence of a stack.
    if len(members) < 2:
      return False
    lengths, evidence = set(), False
    for i in members:
      keys, shape = entries[i]
      rest = shape[stripped[i]:]
      if len(rest) < 1:
        return False
      lengths.add(rest[0])
      if len(lengths) > 1:
        return False
      evidence = evidence or _excess(keys, len(rest))
    return evidence

  for prefix in sorted(nodes, key=len):
    members = nodes[prefix]
    while stacked(members):
      for i in members:
        stripped[i] += 1
  return stripped


def expert_axis(keys: Sequence[str], core_ndim: int) -> bool:
  """Whether the leaf's first core axis indexes experts."""
  if not in_experts(keys):
    return False
  name = keys[-1].lower() if keys else ""
  # Experts are MLPs: their kernels (``wi``, ``wo`` included) are (in, out) each.
  natural = 2 if name not in names_lib.FLAX_LEAF_NAMES or name == "kernel" else (
      names_lib.natural_ndim(keys) or 2)
  return core_ndim > natural


def in_experts(keys: Sequence[str]) -> bool:
  """Whether a leaf sits under a module named like a mixture of experts."""
  return any(names_lib.words(key) & EXPERT_WORDS for key in keys[:-1])


def _top_level(keys: Sequence[str]) -> bool:
  """A module at the root of the tree (linen's ``{"params": ...}`` root included)."""
  depth = len(keys) - 2
  return depth == 0 or (depth == 1 and keys[0] == "params")


def find_head(entries: Entries, head: Any,
              context: names_lib.Context) -> tuple[set[str], str, dict[str, str]]:
  """``(paths of the output head's kernel, source, notes by path)``.

  ``entries`` hold each leaf's core shape. At most one head is found unless
  ``head=`` selects more; none in a model whose embedding is tied (no head
  kernel), even where a hidden kernel has the embedding's shape transposed.
  """
  if head is False:
    return set(), k.GIVEN, {}
  paths = {"/".join(keys): shape for keys, shape in entries}
  if head is not None:
    selector = paths_lib.Selector(head, "head")
    found = {p for p, s in paths.items() if len(s) >= 2 and selector.selects(p)}
    if not found and paths:
      raise ValueError(
          f"head={head!r} selects no leaf with two or more dimensions (a misspelt "
          f"path?); the leaves are {sorted(paths)}. Pass head=None to find the head "
          "by name, or head=False for none.")
    return found, k.GIVEN, {}
  by_name = []
  for keys, shape in entries:
    if len(shape) != 2 or len(keys) < 2 or keys[-1].lower() != "kernel":
      continue
    module = keys[-2].lower()
    if module in names_lib.HEAD_NAMES or (
        module in names_lib.AMBIGUOUS_OUT and _top_level(keys)
        and not context.is_attention(keys)):
      by_name.append(keys)
  if len(by_name) > 1:
    top = [keys for keys in by_name if _top_level(keys)]
    by_name = top if top else by_name
  if len(by_name) == 1:
    return {"/".join(by_name[0])}, k.NAME, {}
  if by_name:
    note = (f"one of {len(by_name)} kernels named like an output head; pass head= to "
            "say which is")
    return set(), k.NAME, {"/".join(keys): note for keys in by_name}
  # An unnamed read-out: the one top-level (d, vocab) kernel whose shape is an
  # embedding's transposed. Nested kernels of that shape (q_proj when vocab == d,
  # an MLP up-projection of a byte-level model) are never taken.
  embeds = {s for keys, s in entries if keys and keys[-1].lower() == "embedding" and len(s) == 2}
  found = [keys for keys, s in entries
           if len(s) == 2 and keys and keys[-1].lower() == "kernel" and (s[1], s[0]) in embeds
           and _top_level(keys) and not context.is_attention(keys)
           and keys[-2].lower() not in (names_lib.QKV_MODULES | names_lib.OUT_NAMES
                                        | names_lib.QKV_NAMES)]
  if len(found) == 1:
    return {"/".join(found[0])}, k.SHAPE, {
        "/".join(found[0]): "the output head by its shape (an embedding's, transposed)"}
  return set(), k.SHAPE, {}


def batch_of(keys: list[str], shape: tuple[int, ...], stacks: int) -> tuple[
    tuple[int, ...], tuple[str, ...], Optional[str]]:
  """``(batch axes, their roles, note)`` of an unnamed leaf with ``stacks``
  leading stack axes."""
  batch = tuple(range(stacks))
  roles = (k.STACK,) * stacks
  note = None
  if stacks:
    note = "stack axis by shape (axis_names= says it for sure)"
  if expert_axis(keys, len(shape) - stacks):
    batch += (stacks,)
    roles += (k.EXPERT,)
  return batch, roles, note
