"""Reading a checkpoint's flat ``name -> array`` mapping, with one clear error for the first bad key.

Every converter in :mod:`wsjax.pretrained` reads its source through a :class:`WeightReader`: it asks for each
tensor by the source's own name and expected shape, and calls :meth:`WeightReader.finish` at the end, so that
a missing name, a shape mismatch or a name nobody asked for is reported by name, at once, instead of surfacing
as a broadcasting error deep inside ``apply`` or as silently ignored weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np


class WeightsMismatchError(ValueError):
    """The weights do not fit the architecture: a missing or unknown name, or a shape that differs."""


class WeightReader:
    """Hands out a checkpoint's arrays by name, checking shapes and remembering which names were used.

    Args:
      weights: the checkpoint as a mapping of parameter names to arrays (NumPy, or anything with
        ``__array__``: ``np.load``'s ``NpzFile``, ``safetensors.numpy.load_file``, or a torch state dict
        converted with ``{k: v.numpy() for k, v in sd.items()}``).
      source: what the weights are (e.g. ``"BiT .npz"``), for the error messages.
      ignore: names (or name suffixes) that carry no parameters, e.g. PyTorch's ``num_batches_tracked``.
    """

    def __init__(self, weights: Mapping[str, Any], source: str, ignore: Iterable[str] = ()) -> None:
        if not isinstance(weights, Mapping) and not hasattr(weights, "keys"):
            raise TypeError(
                f"{source} weights must be a mapping of names to arrays, got {type(weights).__name__}."
            )
        self._weights = weights
        self._source = source
        self._ignore = tuple(ignore)
        self._used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._weights

    def names(self) -> list[str]:
        """The checkpoint's names, in its own order."""
        return list(self._weights.keys())

    def take(self, name: str, shape: Sequence[int] | None = None) -> np.ndarray:
        """The array called ``name`` as float32 NumPy, checked against ``shape`` (None: any shape).

        Raises:
          WeightsMismatchError: ``name`` is missing, or its shape is not ``shape``.
        """
        if name not in self._weights:
            raise WeightsMismatchError(
                f"{self._source} weights have no {name!r}, which the architecture needs "
                f"({len(self._weights)} names present; e.g. {self.names()[:3]})."
            )
        array = np.asarray(self._weights[name])
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise WeightsMismatchError(
                f"{self._source} weight {name!r} has shape {tuple(array.shape)}, but the architecture "
                f"needs {tuple(shape)} (in the {self._source}'s own layout)."
            )
        self._used.add(name)
        return array.astype(np.float32)

    def finish(self) -> None:
        """Checks that every name of the checkpoint was used (ignored names aside).

        Raises:
          WeightsMismatchError: naming the first unused name, in the checkpoint's order.
        """
        unused = [n for n in self.names() if n not in self._used and not n.endswith(self._ignore)]
        if unused:
            raise WeightsMismatchError(
                f"{self._source} weights have {len(unused)} name(s) the architecture does not use, "
                f"first {unused[0]!r}: wrong architecture, or not a {self._source} checkpoint."
            )


class RenamedView(Mapping[str, Any]):
    """A lazy view of a checkpoint under other names (``np.load`` reads each array when asked)."""

    def __init__(
        self, weights: Mapping[str, Any], rename: Callable[[str], str], source: str
    ) -> None:
        self._weights = weights
        self._keys: dict[str, str] = {}
        for key in weights.keys():
            new = rename(key)
            if new in self._keys:
                raise WeightsMismatchError(
                    f"{source} weights have both {self._keys[new]!r} and {key!r} for {new!r}."
                )
            self._keys[new] = key

    def __getitem__(self, name: str) -> Any:
        return self._weights[self._keys[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
