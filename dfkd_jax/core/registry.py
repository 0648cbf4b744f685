"""The one registry style of the package: named entries of one kind, and their lookup.

Every kind that a config names -- models, methods, student update rules, student
losses, generator losses, replay sources -- is a :class:`Registry` of entries that carry
their traits (an update rule knows whether it takes a retention batch, a generator loss
whether it needs the teacher's BatchNorm moments), so code asks the entry instead of
testing its name::

  UPDATE_RULES = registry.Registry("student update")
  UPDATE_RULES.register("acquire", UpdateRule(acquire, needs_retention=False, ...))
  UPDATE_RULES.get("meta").needs_retention

:meth:`Registry.get` is the one lookup: an unknown name is a ``ValueError`` that lists
the valid names of that kind only. User code registers its own entries the same way
(a model: :func:`dfkd_jax.models.register`, ``models.register("my_net", MyNet)``).
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Named entries of one kind, in registration order.

  Args:
    kind: what an entry is, for errors (``"method"``, ``"generator loss"``).
    valid: the words before the list of valid names in the unknown-name error.
    sort_names: list the names sorted (else in registration order).
    unknown: the words before an unknown name (default ``"unknown <kind>"``).
  """

  def __init__(self, kind: str, *, valid: str = "valid", sort_names: bool = False,
               unknown: str = ""):
    self.kind = kind
    self._valid = valid
    self._unknown = unknown or f"unknown {kind}"
    self._sort = sort_names
    self._entries: dict[str, T] = {}

  def register(self, name: str, entry: T) -> T:
    """Adds ``entry`` as ``name``; returns it.

    Raises:
      ValueError: ``name`` is taken (an entry is never silently replaced).
    """
    if name in self._entries:
      raise ValueError(f"{self.kind} {name!r} is already registered")
    self._entries[name] = entry
    return entry

  def get(self, name: str) -> T:
    """The entry ``name``.

    Raises:
      ValueError: unknown name, listing the valid names of this kind.
    """
    try:
      return self._entries[name]
    except (KeyError, TypeError):
      raise ValueError(f"{self._unknown} {name!r}; {self._valid}: "
                       f"{', '.join(self.names())}") from None

  def names(self) -> tuple[str, ...]:
    """The registered names."""
    return tuple(sorted(self._entries)) if self._sort else tuple(self._entries)

  def items(self):
    return self._entries.items()

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self._entries)
